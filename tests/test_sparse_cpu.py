"""Sparse decoding over FP8 caches on the CPU: the Triton kernel (+ plan + sink-aware combine) under
TRITON_INTERPRET=1 against the float64 reference, both layouts, and the quantization helpers.

The interpreter's bf16 tl.dot is wrong (triton-lang/triton#11584): under it, the kernel multiplies bf16 operands
in fp32 (what the GPU's bf16 dot with fp32 accumulation computes), so bf16 runs here too; fp16 runs the plain
fp16 dot. The interpreter decodes the e4m3 NaN byte as 480 rather than NaN, so NaN rows also carry NaN scales
(V3.2 fp32 NaN, MODEL1 ue8m0 0xFF): a stray read still shows up as NaN / inf. Every run poisons its outputs and
split partials (NaN), NaN-fills every cache row no live index names, puts garbage (any int32) in index slots past
topk_length and out-of-range values (FlashMLA's test's: huge, negative, == num_tokens) among the live ones.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tritonmla
from tritonmla.core.runtime import interpreter_enabled
from tritonmla.bench.sparse import make_sparse_inputs
from tritonmla.sparse_decode import call as sparse_call
from tritonmla.core.fp8_cache_layouts import MODEL1, V32, dequantize_kv_cache, gather_rows, quantize_kv_cache

from helpers import assert_close, sparse_step

interpreted = pytest.mark.skipif(not interpreter_enabled(), reason="CPU kernel tests need TRITON_INTERPRET=1")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# FlashMLA's sparse decode tolerances (out abs 1e-3), with fp16 / bf16 output rounding of values up to ~1.
OUT_TOL = dict(abs_tol=2e-3, rel_tol=2.01 / 128, cos_diff_tol=5e-6)
LSE_TOL = dict(abs_tol=1e-5, rel_tol=8.01 / 65536)
BAD_INDICES = [-2147483648, -123456, 114514, 1919810, 2147480000, 2147483647]  # FlashMLA test's invalid values


def add_out_of_range(x, gen: torch.Generator) -> None:
    """Replace ~5% of the index slots with out-of-range values (and == num_tokens): treated as -1."""
    for indices, cache in ((x.indices, x.k_cache), (x.extra_indices, x.extra_k_cache)):
        if indices is None:
            continue
        bad = torch.tensor(BAD_INDICES + [cache.shape[0] * cache.shape[1]], dtype=torch.int32)
        pick = torch.rand(indices.shape, generator=gen) < 0.05
        indices[pick] = bad[torch.randint(0, len(bad), (int(pick.sum()),), generator=gen)]


def run_poisoned(x, parts_per_sm: int | None = None, monkeypatch=None):
    """The sparse step through its per-configuration call into NaN outputs and a NaN split workspace."""
    if parts_per_sm is not None:
        monkeypatch.setenv("TRITONMLA_SPARSE_CONFIG", f"16,32,4,2,{parts_per_sm}")
    call = sparse_call.SparseCall(x.q, x.k_cache, x.indices, x.topk_length, x.attn_sink, x.extra_k_cache,
                                  x.extra_indices, x.extra_topk_length, x.softmax_scale)
    sched, splits = call.plan(x.topk_length, x.extra_topk_length)
    out = torch.full(call.out_shape, float("nan"), dtype=x.q.dtype)
    lse = torch.full(call.lse_shape, float("nan"))
    workspace = torch.full((call.workspace_numel,), float("nan"))
    call(x.q, x.k_cache, x.indices, x.topk_length, x.attn_sink, x.extra_k_cache, x.extra_indices,
         x.extra_topk_length, sched, splits, out, lse, workspace)
    return out, lse, splits


def check(x, out, lse):
    ref_out, ref_lse = tritonmla.sparse_decode_reference(*x.reference_args(), compute_dtype=torch.float64)
    assert_close("out", out, ref_out, **OUT_TOL)
    assert_close("lse", lse, ref_lse, **LSE_TOL)
    return ref_out, ref_lse


# (d_qk, h_q, s_q, topk, page, extra (topk, page, s_k) or None, topk_length, extra_topk_length, sink, dtype)
GRID = [
    (576, 16, 1, 64, 2, None, False, False, True, torch.float16),
    (576, 20, 2, 100, 61, None, True, False, True, torch.bfloat16),  # h_q not a multiple of the head block
    (576, 64, 3, 576, 64, None, False, False, False, torch.float16),
    (576, 16, 2, 70, 69, (40, 2, 60), True, True, True, torch.bfloat16),
    (512, 16, 1, 64, 69, None, True, False, True, torch.float16),
    (512, 64, 2, 128, 256, (96, 64, 200), False, False, True, torch.bfloat16),
    (512, 16, 3, 50, 2, (64, 61, 150), True, True, False, torch.float16),
    (512, 32, 4, 33, 576, (17, 2, 40), False, True, True, torch.bfloat16),
]


@interpreted
@pytest.mark.parametrize("d_qk,heads_q,seq_q,topk,page,extra,have_len,have_len2,sink,dtype", GRID)
def test_sparse_grid(d_qk, heads_q, seq_q, topk, page, extra, have_len, have_len2, sink, dtype):
    seed = hash((d_qk, heads_q, seq_q, topk, page, extra, have_len, have_len2)) % 2 ** 31
    x = make_sparse_inputs(3, seq_q, heads_q, d_qk, topk, page, 2 * topk, extra=extra, have_topk_length=have_len,
                           have_extra_topk_length=have_len2, sink=sink, dtype=dtype, device="cpu", seed=seed)
    add_out_of_range(x, torch.Generator().manual_seed(seed))
    out, lse, _ = run_poisoned(x)
    check(x, out, lse)


@interpreted
@pytest.mark.parametrize("d_qk", [576, 512])
def test_many_splits_and_combine(d_qk, monkeypatch):
    """Many parts: every request cut several times, the sink applied by the combine."""
    x = make_sparse_inputs(3, 2, 16, d_qk, 300, 64, 600, extra=(70, 2, 100), have_topk_length=True,
                           dtype=torch.float16, device="cpu", seed=d_qk)
    x.topk_length[1] = 0  # one request attends only its extra tokens
    out, lse, splits = run_poisoned(x, parts_per_sm=16, monkeypatch=monkeypatch)
    assert int((splits[1:] - splits[:-1]).max()) >= 3
    check(x, out, lse)


@interpreted
@pytest.mark.parametrize("d_qk", [576, 512])
def test_nothing_to_attend(d_qk, monkeypatch):
    """All indices invalid in some requests, zero lengths in others (main and extra): out 0, lse +inf, also when
    the plan splits the rest; sinks of +inf, -inf and finite."""
    x = make_sparse_inputs(4, 2, 16, d_qk, 40, 61, 80, extra=(20, 2, 30), have_topk_length=True,
                           have_extra_topk_length=True, dtype=torch.float16, device="cpu", seed=5)
    x.indices[0] = -1
    x.extra_indices[0] = -1
    x.topk_length[1] = 0
    x.extra_topk_length[1] = 0
    x.indices[2, 1] = 2 ** 31 - 1  # one query position of request 2: only out-of-range main indices
    x.extra_indices[2, 1] = -1
    for parts in (None, 8):
        out, lse, _ = run_poisoned(x, parts, monkeypatch)
        check(x, out, lse)
        assert torch.all(out[:2] == 0) and torch.all(lse[:2] == float("inf"))
        assert torch.all(out[2, 1] == 0) and torch.all(lse[2, :, 1] == float("inf"))


@interpreted
def test_public_api_and_sched_meta():
    """flash_mla_with_kvcache with a FlashMLASchedMeta: planned on first use, reused, checked on reuse."""
    x = make_sparse_inputs(2, 2, 16, 576, 64, 64, 128, sink=True, dtype=torch.bfloat16, device="cpu", seed=9)
    meta, none = tritonmla.get_mla_metadata()
    assert none is None
    out1, lse1 = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, **x.kwargs())
    plan = meta.tile_scheduler_metadata
    assert meta.have_initialized and meta.config.topk == 64 and meta.config.is_fp8_kvcache
    out2, lse2 = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, **x.kwargs())
    assert meta.tile_scheduler_metadata is plan and torch.equal(out1, out2) and torch.equal(lse1, lse2)
    check(x, out1, lse1)
    with pytest.raises(ValueError, match="topk: 64 -> 32"):
        tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None,
                                         **{**x.kwargs(), "indices": x.indices[..., :32].contiguous()})
    with pytest.raises(ValueError, match="h_q"):
        tritonmla.flash_mla_with_kvcache(x.q[:, :, :8], x.k_cache, None, None, 512, meta, None,
                                         **{**x.kwargs(), "attn_sink": None})
    dense_meta, _ = tritonmla.get_mla_metadata()
    dense_meta.have_initialized, dense_meta.config = True, tritonmla.FlashMLASchedMeta.Config(
        2, 2, 16, 64, 1, False, False, None, None, None)
    with pytest.raises(ValueError, match="is_fp8_kvcache: False -> True"):
        tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, dense_meta, None, **x.kwargs())


@interpreted
def test_strided_inputs():
    """Non-contiguous q (heads strided), indices strided in batch, a V3.2 cache whose blocks are padded
    (FlashMLA's test quantizer lays blocks out with one spare row) give the same as contiguous ones."""
    x = make_sparse_inputs(2, 2, 16, 576, 48, 16, 90, dtype=torch.float16, device="cpu", seed=4)
    want, want_lse = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512,
                                                      tritonmla.get_mla_metadata()[0], None, **x.kwargs())
    wide_q = torch.zeros(2, 2, 16, 640, dtype=torch.float16)
    wide_q[..., :576] = x.q
    wide_idx = torch.zeros(2, 3, 2, 48, dtype=torch.int32)
    wide_idx[:, 1] = x.indices
    nb, ps = x.k_cache.shape[:2]
    padded = torch.zeros(nb, ps + 1, 1, 656, dtype=torch.float8_e4m3fn)
    padded.view(torch.uint8)[:, :ps] = x.k_cache.view(torch.uint8)
    got, got_lse = tritonmla.flash_mla_with_kvcache(wide_q[..., :576], padded[:, :ps], None, None, 512,
                                                    tritonmla.get_mla_metadata()[0], None,
                                                    **{**x.kwargs(), "indices": wide_idx[:, 1]})
    assert torch.equal(got, want) and torch.equal(got_lse, want_lse)
    check(x, got, got_lse)


@interpreted
def test_cached_call_repeats_bitwise_and_skips_nothing():
    """A configuration's second call is a lookup: same results; a changed argument type still gets checked."""
    x = make_sparse_inputs(2, 1, 16, 512, 40, 69, 80, extra=(24, 2, 30), dtype=torch.float16, device="cpu",
                           seed=6)
    meta, _ = tritonmla.get_mla_metadata()
    first = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, **x.kwargs())
    again = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, **x.kwargs())
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    with pytest.raises(TypeError, match="is_fp8_kvcache must be a bool"):
        tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None,
                                         **{**x.kwargs(), "is_fp8_kvcache": 1})


def test_reference_matches_a_hand_computed_row():
    """The oracle itself, on one row done the long way: two valid keys, one -1, one past topk_length, a sink."""
    k = (torch.randn(3, 4, 1, 576) / 10).to(torch.bfloat16)
    cache = quantize_kv_cache(k, "V32")
    rows = dequantize_kv_cache(cache, dtype=torch.float64).view(12, 576)
    q = torch.randn(1, 1, 2, 576).to(torch.bfloat16)
    indices = torch.tensor([[[5, -1, 11, 2]]], dtype=torch.int32)
    sink = torch.tensor([0.3, float("inf")])
    out, lse = tritonmla.sparse_decode_reference(q, cache, indices, torch.tensor([3], dtype=torch.int32), sink,
                                                 softmax_scale=0.1, compute_dtype=torch.float64)
    scores = torch.stack([q[0, 0, 0].double() @ rows[t] for t in (5, 11)]) * 0.1
    weights = torch.softmax(scores, 0)
    want_lse = torch.logsumexp(scores, 0)
    want = (weights[:, None] * rows[[5, 11], :512]).sum(0) * torch.exp(want_lse) / (torch.exp(want_lse) + 
                                                                                  torch.exp(torch.tensor(0.3)))
    assert torch.allclose(out[0, 0, 0].double(), want, atol=1e-2, rtol=1e-2)
    assert abs(lse[0, 0, 0].item() - want_lse.item()) < 1e-5
    assert torch.all(out[0, 0, 1] == 0) and torch.isfinite(lse[0, 1, 0])  # +inf sink: out 0, lse kept


@pytest.mark.parametrize("layout,page_size", [("V32", 2), ("V32", 61), ("MODEL1", 2), ("MODEL1", 69)])
def test_quantize_round_trip_and_layout(layout, page_size):
    lay = V32 if layout == "V32" else MODEL1
    k = (torch.randn(3, page_size, 1, lay.d_qk) / 10).to(torch.bfloat16)
    k[0, 0, 0, :64] = 0.0  # an all-zero scale group
    cache = quantize_kv_cache(k, layout)
    assert cache.dtype == torch.float8_e4m3fn and cache.shape == (3, page_size, 1, lay.token_bytes)
    assert cache.stride(1) == lay.token_bytes and cache.stride(0) % (16 if lay is V32 else 576) == 0
    back = dequantize_kv_cache(cache)
    assert back.dtype == torch.bfloat16 and back.shape == k.shape
    assert torch.equal(back[..., lay.d_nope:], k[..., lay.d_nope:])  # RoPE: bf16 as given
    nope, want = back[..., :lay.d_nope].float(), k[..., :lay.d_nope].float()
    group_max = want.unflatten(-1, (-1, lay.group)).abs().amax(-1, keepdim=True)
    err = (nope - want).unflatten(-1, (-1, lay.group)).abs() / group_max.clamp(min=1e-30)
    assert err.max() <= 1 / 16 + 1e-6  # e4m3: 3 mantissa bits, power-of-two scale with max|x| <= 448 * scale
    assert torch.equal(back[0, 0, 0, :64], torch.zeros(64, dtype=torch.bfloat16))
    idx = torch.tensor([[0, 3 * page_size - 1], [page_size, 1]])
    assert torch.equal(gather_rows(cache, idx), back.float().view(-1, lay.d_qk)[idx])


FLASHMLA_QUANT = Path(__file__).resolve().parents[1] / ".flashmla" / "tests" / "quant.py"


@pytest.mark.skipif(not FLASHMLA_QUANT.exists(), reason="FlashMLA's tests/quant.py (the layout spec) not here")
@pytest.mark.parametrize("layout,page_size", [("V32", 61), ("MODEL1", 2), ("MODEL1", 69)])
def test_bytes_match_flashmla_test_quantizer(layout, page_size):
    """Our cache bytes equal those of FlashMLA's own test quantizer, and each reads the other's."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("flashmla_quant", FLASHMLA_QUANT)
    fq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fq)
    fl = fq.FP8KVCacheLayout.V32_FP8Sparse if layout == "V32" else fq.FP8KVCacheLayout.MODEL1_FP8Sparse
    d = 576 if layout == "V32" else 512
    k = (torch.randn(4, page_size, 1, d) / 10).clamp(-1, 1).to(torch.bfloat16)
    theirs, ours = fq.quantize_k_cache(k, fl), quantize_kv_cache(k, layout)
    assert theirs.shape == ours.shape
    if layout == "V32":
        assert torch.equal(theirs.view(torch.uint8), ours.view(torch.uint8))
    else:  # the rows and scale bytes of each block (padding aside)
        used = page_size * 584
        raw = lambda c: c.view(torch.uint8).as_strided((4, used), (c.stride(0), 1), c.view(torch.uint8)
                                                       .storage_offset())  # noqa: E731
        their_raw, our_raw = raw(theirs).clone(), raw(ours)
        pad = torch.arange(used) >= page_size * 576
        pad &= (torch.arange(used) - page_size * 576) % 8 == 7  # each token's pad byte (uninitialized there)
        their_raw[:, pad] = 0
        assert torch.equal(their_raw, our_raw)
    assert torch.equal(dequantize_kv_cache(theirs), fq.dequantize_k_cache(theirs, fl))


@interpreted
def test_bench_cpu_demo_runs():
    from tritonmla.bench.sparse import cpu_demo
    cpu_demo()


def test_plan_lengths_cover_main_then_extra():
    """Each request's range is its main slots rounded up to a 64-token tile, then its extra slots; the dense
    scheduler's plan over these ranges covers every token once (tritonmla.reference.plan's walk)."""
    from tritonmla.reference.plan import plan_reference, walk_plan
    from tritonmla.sparse_decode.plan import attended_lengths
    topk_length = torch.tensor([0, 1, 64, 65, 300, -5], dtype=torch.int32)
    extra_length = torch.tensor([7, 0, 100, 3, 900, 2], dtype=torch.int32)
    lengths = attended_lengths(6, 200, topk_length, 50, extra_length, torch.device("cpu"))
    assert lengths.tolist() == [7, 64, 114, 131, 306, 2]  # clamped to [0, topk] / [0, extra_topk]
    assert attended_lengths(2, 100, None, None, None, torch.device("cpu")).tolist() == [128, 128]
    for parts in (1, 3, 17):
        sched, splits = plan_reference(lengths, parts)
        items = walk_plan(sched, splits, lengths)
        for b, n in enumerate(lengths.tolist()):
            covered = sorted(t for _, req, _, lo, hi in items if req == b for t in range(lo, hi))
            assert covered == list(range(n))


@interpreted
@pytest.mark.parametrize("d_qk", [576, 512])
def test_torch_compile_traces_sparse_decoding(d_qk):
    """Under torch.compile (fullgraph; aot_eager here, inductor in the GPU test) sparse decoding plans and runs
    through the custom ops, a FlashMLASchedMeta made inside the compiled step: same result as eager."""
    extra = (24, 2, 40) if d_qk == 512 else None
    x = make_sparse_inputs(3, 2, 16, d_qk, 48, 61, 150, extra=extra, have_topk_length=True,
                           have_extra_topk_length=extra is not None, dtype=torch.float16, device="cpu", seed=d_qk)
    step, args = sparse_step(x)
    torch._dynamo.reset()
    out, lse = torch.compile(step, backend="aot_eager", fullgraph=True)(*args)
    want_out, want_lse = step(*args)
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
    check(x, out / 2, lse)


def test_warmup_sparse_runs_each_seq_q_and_rejects_bad_configs():
    """warmup_sparse runs one call per s_q of the configuration (both layouts, every optional argument); a
    configuration flash_mla_with_kvcache rejects raises the same error here (h_q 128 with d_qk 500: no layout)."""
    assert tritonmla.warmup_sparse(16, 576, 64, seq_q=(1, 2), page_size=3, topk_length=True, attn_sink=True) == 2
    assert tritonmla.warmup_sparse(16, 512, 64, seq_q=1, page_size=2, dtype=torch.float16, extra_topk=32,
                                   extra_page_size=5, extra_topk_length=True) == 1
    with pytest.raises(ValueError):
        tritonmla.warmup_sparse(16, 576, 64, page_size=3, kernel="no-such-kernel")
