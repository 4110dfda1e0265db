"""GPU tests (skipped without CUDA): FlashMLA's own test grid in bf16 and fp16 with FlashMLA's tolerances,
page sizes, zero lengths, CUDA-graph capture/replay with changed lengths, torch.compile, repeated
replay, the cached call path (unaligned inputs, no compiles across batch sizes after warmup()); each for both
decode kernels (the Gluon Hopper kernel only where the GPU can run it)."""
from __future__ import annotations

import itertools

import pytest
import torch

import tritonmla
from tritonmla.api.op import decode_into
from tritonmla.dense_decode import dispatch
from tritonmla.dense_decode.kernel_portable import mla_decode_kernel
from tritonmla.dense_decode.plan import num_parts_for
from tritonmla.scheduler.planner import plan_kernel

from helpers import assert_close, assert_graph_replays_bitwise, make_decode_inputs, random_seqlens

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DTYPES = [torch.bfloat16, torch.float16]
# FlashMLA's tolerances, for FlashMLA's test values (q = clamp(randn), k = clamp(randn / 10): near-flat softmax).
OUT_TOL = dict(abs_tol=8e-4, rel_tol=2.01 / 128, cos_diff_tol=5e-6)
LSE_TOL = dict(abs_tol=1e-6, rel_tol=8.01 / 65536)
# Plain randn values make a peaked softmax; P is rounded to the input dtype before P.V (as FlashMLA does), which
# costs up to ~4 bf16 ulps on outputs that nearly cancel (seen: 7.8e-3 at |out| ~ 0.3). Bound that, not more.
PEAKED_OUT_TOL = dict(abs_tol=1.6e-2, rel_tol=2.01 / 128, cos_diff_tol=5e-6)
# Peaked scores put lse near 0 for some rows; fp32 exp2/log2 rounding there is ~4e-6 absolute (seen).
PEAKED_LSE_TOL = dict(abs_tol=1e-5, rel_tol=8.01 / 65536)


@pytest.fixture(params=["hopper", "cute", "portable"])
def kernel(request):
    if request.param == "hopper":
        why = dispatch.hopper_device(torch.device("cuda"))
        if why is not None:
            pytest.skip(why)
    if request.param == "cute":
        why = dispatch.cute_device(torch.device("cuda"))
        if why is not None:
            pytest.skip(why)
    return request.param


HEAD_PAIRS = [(h_q, h_kv) for h_kv in (1, 2, 3, 8) for h_q in (1, 3, 9, 63, 64, 126, 128) if h_q % h_kv == 0]


def flashmla_seqlens(gen, batch, seq_k, varlen):
    if not varlen:
        return [seq_k] * batch
    lens = (torch.randn(batch, generator=gen) * seq_k / 2 + seq_k).clamp(min=1).long().tolist()
    return lens


def check(x, seq_q, causal, dtype, kernel, use_api=False, out_tol=PEAKED_OUT_TOL, lse_tol=PEAKED_LSE_TOL):
    heads_q, heads_kv = x.q.shape[2], x.k_cache.shape[2]
    num_parts = num_parts_for(x.q.device, seq_q * heads_q // heads_kv, heads_kv, kernel)
    sched, splits = torch.ops.tritonmla.plan(x.cache_seqlens, num_parts)
    if use_api:
        out, lse = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                    sched, splits, causal=causal, kernel=kernel)
    else:  # poisoned outputs and partials: an unwritten element shows up as NaN
        out = torch.full((x.q.shape[0], seq_q, heads_q, 512), float("nan"), dtype=dtype, device="cuda")
        lse = torch.full((x.q.shape[0], heads_q, seq_q), float("nan"), device="cuda")
        ran = decode_into(x.q, x.k_cache, x.block_table, x.cache_seqlens, sched, splits, 576 ** -0.5, causal, out,
                          lse, partial_fill=float("nan"), kernel=kernel)
        assert ran == kernel
    ref_out, ref_lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                      causal=causal)
    assert_close("out", out, ref_out, **out_tol)
    assert_close("lse", lse, ref_lse, **lse_tol)


def grid():
    """b x s_q x s_k x varlen x causal in full; the 16 (h_q, h_kv) pairs rotate through them (each pair meets
    every b and s_k)."""
    pairs = itertools.cycle(HEAD_PAIRS)
    cases = []
    for batch, seq_q, seq_k, varlen, causal in itertools.product([1, 2, 6, 64], [1, 2, 4], [20, 140, 4096],
                                                                 [False, True], [False, True]):
        for _ in range(2):
            cases.append((batch, seq_q, seq_k, *next(pairs), varlen, causal))
    return cases


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("batch,seq_q,seq_k,heads_q,heads_kv,varlen,causal", grid())
def test_flashmla_grid(batch, seq_q, seq_k, heads_q, heads_kv, varlen, causal, dtype, kernel):
    gen = torch.Generator().manual_seed(hash((batch, seq_q, seq_k, heads_q, heads_kv, varlen, causal)) % 2**31)
    seqlens = flashmla_seqlens(gen, batch, seq_k, varlen)
    x = make_decode_inputs(seqlens, seq_q, heads_q, heads_kv, 64, dtype, "cuda", flashmla_values=True,
                           generator=torch.Generator("cuda").manual_seed(batch * 1000 + seq_k))
    check(x, seq_q, causal, dtype, kernel, out_tol=OUT_TOL, lse_tol=LSE_TOL)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("batch,seq_q,seq_k,heads_q,heads_kv,varlen,causal", grid()[::6])
def test_grid_peaked_softmax(batch, seq_q, seq_k, heads_q, heads_kv, varlen, causal, dtype, kernel):
    gen = torch.Generator().manual_seed(hash((batch, seq_q, seq_k, heads_q, heads_kv, varlen, causal)) % 2**31)
    x = make_decode_inputs(flashmla_seqlens(gen, batch, seq_k, varlen), seq_q, heads_q, heads_kv, 64, dtype,
                           "cuda", generator=torch.Generator("cuda").manual_seed(seq_k))
    check(x, seq_q, causal, dtype, kernel)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("page_size", [1, 2, 16, 32, 64, 128, 256])
def test_page_sizes(page_size, dtype, kernel):
    gen = torch.Generator().manual_seed(page_size)
    seqlens = random_seqlens(gen, batch=9, max_len=3000, zeros=2)
    x = make_decode_inputs(seqlens, 2, 16, 1, page_size, dtype, "cuda", generator=torch.Generator("cuda"))
    if kernel in ("hopper", "cute") and page_size % 64:  # TMA tiles of 64 tokens: "auto" takes the portable one
        with pytest.raises(ValueError, match="page_size a multiple of 64"):
            check(x, 2, True, dtype, kernel, use_api=True)
        assert dispatch.choose("auto", x.q, x.k_cache) == "portable"
        check(x, 2, True, dtype, "auto", use_api=True)
        return
    check(x, 2, True, dtype, kernel, use_api=True)
    check(x, 2, True, dtype, kernel)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_b128_sq2_with_zero_lengths(dtype, kernel):
    gen = torch.Generator().manual_seed(128)
    seqlens = random_seqlens(gen, batch=128, max_len=4096, zeros=20)
    x = make_decode_inputs(seqlens, 2, 128, 1, 64, dtype, "cuda", generator=torch.Generator("cuda"))
    check(x, 2, True, dtype, kernel)
    check(x, 2, True, dtype, kernel, use_api=True)


def test_cuda_graph_replay_with_new_lengths(kernel):
    dtype = torch.bfloat16
    batch, seq_q, heads_q = 16, 2, 64
    gen = torch.Generator().manual_seed(0)
    x = make_decode_inputs([2048] * batch, seq_q, heads_q, 1, 64, dtype, "cuda", generator=torch.Generator("cuda"))
    lens = x.cache_seqlens

    def step():
        sched, splits = tritonmla.get_mla_metadata(lens, seq_q * heads_q, 1)
        return tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, lens, 512, sched, splits,
                                                causal=True, kernel=kernel)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = step()
    for trial in range(3):
        lens.copy_(torch.tensor(random_seqlens(gen, batch, 2048, zeros=trial), dtype=torch.int32))
        x.q.normal_()
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref_out, ref_lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, lens, 512, causal=True)
        assert_close("out", out, ref_out, **PEAKED_OUT_TOL)
        assert_close("lse", lse, ref_lse, **PEAKED_LSE_TOL)


@pytest.mark.parametrize("kernel", ["hopper", "cute", "portable", None])  # None: the default, "auto"
def test_torch_compile(kernel):
    if kernel == "hopper" and dispatch.hopper_device(torch.device("cuda")) is not None:
        pytest.skip(dispatch.hopper_device(torch.device("cuda")))
    if kernel == "cute" and dispatch.cute_device(torch.device("cuda")) is not None:
        pytest.skip(dispatch.cute_device(torch.device("cuda")))
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(1)
    x = make_decode_inputs(random_seqlens(gen, 8, 1500, zeros=1), 2, 32, 1, 64, dtype, "cuda",
                           generator=torch.Generator("cuda"))
    sched, splits = tritonmla.get_mla_metadata(x.cache_seqlens, 64, 1)

    @torch.compile(fullgraph=True)
    def decode_layer(q, k_cache, block_table, seqlens, sched, splits):
        out, lse = tritonmla.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, sched, splits,
                                                    causal=True, kernel=kernel)
        return out * 2, lse

    out, lse = decode_layer(x.q, x.k_cache, x.block_table, x.cache_seqlens, sched, splits)
    ref_out, ref_lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                      causal=True)
    assert_close("out", out / 2, ref_out, **PEAKED_OUT_TOL)
    assert_close("lse", lse, ref_lse, **PEAKED_LSE_TOL)


def test_sched_meta_api_on_gpu(kernel):
    gen = torch.Generator().manual_seed(2)
    x = make_decode_inputs(random_seqlens(gen, 5, 5000, zeros=1), 1, 128, 1, 64, torch.bfloat16, "cuda",
                           generator=torch.Generator("cuda"))
    meta, _ = tritonmla.get_mla_metadata()
    for _ in range(2):
        out, lse = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, meta,
                                                    None, causal=False, kernel=kernel)
    ref_out, ref_lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512)
    assert_close("out", out, ref_out, **PEAKED_OUT_TOL)
    assert_close("lse", lse, ref_lse, **PEAKED_LSE_TOL)


def test_strided_q_on_gpu(kernel):
    x = make_decode_inputs([300, 1000], 2, 16, 1, 64, torch.bfloat16, "cuda", generator=torch.Generator("cuda"))
    wide = torch.randn(2, 2, 16, 1024, device="cuda", dtype=torch.bfloat16)
    wide[..., :576] = x.q
    meta = tritonmla.get_mla_metadata(x.cache_seqlens, 32, 1)
    out, lse = tritonmla.flash_mla_with_kvcache(wide[..., :576], x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                *meta, causal=True, kernel=kernel)
    ref_out, ref_lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                      causal=True)
    assert_close("out", out, ref_out, **PEAKED_OUT_TOL)
    assert_close("lse", lse, ref_lse, **PEAKED_LSE_TOL)


@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
@pytest.mark.parametrize("heads_q,heads_kv", [(16, 1), (128, 1), (64, 8)])
def test_eight_speculative_tokens_gpu(heads_q, heads_kv, dtype, kernel):
    gen = torch.Generator().manual_seed(heads_q)
    x = make_decode_inputs(random_seqlens(gen, 12, 3000, zeros=2), 8, heads_q, heads_kv, 64, dtype, "cuda",
                           flashmla_values=True, generator=torch.Generator("cuda").manual_seed(8))
    check(x, 8, True, dtype, kernel, out_tol=OUT_TOL, lse_tol=LSE_TOL)


def auto_expected() -> str:
    """The kernel "auto" should take for TMA-readable inputs on this GPU: CuTe, else Gluon, else portable."""
    if dispatch.cute_device(torch.device("cuda")) is None:
        return "cute"
    return "hopper" if dispatch.hopper_device(torch.device("cuda")) is None else "portable"


def test_auto_takes_the_fastest_kernel_that_can_run():
    expected = auto_expected()
    for seq_q, heads_q in ((1, 1), (1, 16), (2, 16)):
        x = make_decode_inputs([100], seq_q, heads_q, 1, 64, torch.bfloat16, "cuda", generator=torch.Generator("cuda"))
        assert dispatch.choose("auto", x.q, x.k_cache) == expected
    sliced = x.k_cache[:, :, :, :]  # same strides: still fine
    assert dispatch.choose("auto", x.q, sliced) == expected
    padded = torch.zeros(x.k_cache.shape[0], 64, 1, 640, dtype=torch.bfloat16, device="cuda")[..., :576]
    assert dispatch.choose("auto", x.q, padded) == "portable"  # non-contiguous rows: no TMA view


def test_auto_falls_back_when_the_cute_kernel_fails_to_build(monkeypatch):
    if dispatch.cute_device(torch.device("cuda")) is not None:
        pytest.skip(dispatch.cute_device(torch.device("cuda")))
    from tritonmla.api import interface
    from tritonmla.dense_decode import bind_cute

    def broken(*args, **kwargs):
        raise RuntimeError("simulated CuTe DSL compile failure")

    monkeypatch.setattr(bind_cute, "BoundCute", broken)
    monkeypatch.setattr(dispatch, "_cute_failed", None)
    interface.clear()
    x = make_decode_inputs([300, 70], 1, 16, 1, 64, torch.bfloat16, "cuda", generator=torch.Generator("cuda"))
    with pytest.warns(RuntimeWarning, match="CuTe DSL Hopper kernel failed to build"):
        check(x, 1, False, torch.bfloat16, None, use_api=True)
    assert dispatch._cute_failed is not None
    expected = "hopper" if dispatch.hopper_device(torch.device("cuda")) is None else "portable"
    assert dispatch.choose("auto", x.q, x.k_cache) == expected
    with pytest.raises(RuntimeError, match="simulated"):  # asked for by name: the error, not a fallback
        check(x, 1, False, torch.bfloat16, "cute", use_api=True)
    interface.clear()


def compiled_variants() -> int:
    """Compiled variants of every tritonmla kernel in this process (Triton's per-device JIT caches)."""
    fns = [plan_kernel, mla_decode_kernel]
    if dispatch.kernel_sm90 is not None:
        from tritonmla.dense_decode.kernel_sm90_seesaw import mla_decode_seesaw_kernel
        fns += [dispatch.kernel_sm90.mla_decode_hopper_kernel, mla_decode_seesaw_kernel]
    return sum(len(cache[0]) for fn in fns for cache in fn.device_caches.values())


@pytest.mark.parametrize("heads_q", [16, 128])
def test_no_compile_after_warmup_across_batch_sizes(heads_q):
    """warmup() compiles what a configuration uses; then batches of every size 1..512, random lengths and block
    table widths, both API forms, causal or not, compile nothing."""
    seq_qs = (1, 2)
    tritonmla.warmup(heads_q, seq_q=seq_qs, causal=(False, True))
    before = compiled_variants()
    gen = torch.Generator().manual_seed(heads_q)
    for batch in range(1, 513):
        seq_q, causal = seq_qs[batch % 2], batch % 3 > 0
        x = make_decode_inputs(random_seqlens(gen, batch, int(torch.randint(1, 700, (1,), generator=gen))), seq_q,
                               heads_q, 1, 64, torch.bfloat16, "cuda", generator=torch.Generator("cuda"))
        if batch % 4 == 0:
            meta = tritonmla.get_mla_metadata()
        else:
            meta = tritonmla.get_mla_metadata(x.cache_seqlens, seq_q * heads_q, 1)
        out, lse = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, *meta,
                                                    causal=causal)
        if batch in (1, 5, 64, 333, 512):
            ref_out, ref_lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                              causal=causal)
            assert_close("out", out, ref_out, **PEAKED_OUT_TOL)
            assert_close("lse", lse, ref_lse, **PEAKED_LSE_TOL)
    torch.cuda.synchronize()
    assert compiled_variants() == before


def test_many_splits_replayed_are_bitwise_deterministic(kernel):
    """8 long requests cut over every part (4 row blocks at h_q 128 s_q 2), replayed 300 times in a CUDA graph:
    the results never change by a bit, and the plan is left as it was."""
    x = make_decode_inputs([16384, 9000, 12000, 700, 16000, 5000, 14000, 3000], 2, 128, 1, 64, torch.bfloat16,
                           "cuda", generator=torch.Generator("cuda").manual_seed(5))
    num_parts = num_parts_for(x.q.device, 256, 1, kernel)
    sched, splits = torch.ops.tritonmla.plan(x.cache_seqlens, num_parts)
    assert int((splits[1:] - splits[:-1]).max()) >= 4
    plan_before = sched.clone()

    def step():
        return tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, sched, splits,
                                                causal=True, kernel=kernel)

    first_out, first_lse = step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = step()
    for _ in range(300):
        out.fill_(float("nan"))
        graph.replay()
        assert torch.equal(out, first_out) and torch.equal(lse, first_lse)
    assert torch.equal(sched, plan_before)
    ref_out, ref_lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                      causal=True)
    assert_close("out", first_out, ref_out, **PEAKED_OUT_TOL)
    assert_close("lse", first_lse, ref_lse, **PEAKED_LSE_TOL)


def test_eager_path_equals_custom_op_path(kernel):
    x = make_decode_inputs([3000, 17, 900], 2, 64, 1, 64, torch.bfloat16, "cuda", generator=torch.Generator("cuda"))
    sched, splits = torch.ops.tritonmla.plan(x.cache_seqlens, num_parts_for(x.q.device, 128, 1, kernel))
    eager = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, sched, splits,
                                             causal=True, kernel=kernel)
    op = torch.ops.tritonmla.mla_decode(x.q, x.k_cache, x.block_table, x.cache_seqlens, sched, splits, 512,
                                        576 ** -0.5, True, kernel)
    assert torch.equal(eager[0], op[0]) and torch.equal(eager[1], op[1])


def test_unaligned_q_takes_a_one_off_binding(kernel):
    """The cached variants assume 16-byte aligned pointers; an 8-byte aligned q runs through its own binding, and
    the aligned calls around it stay on the cached one."""
    x = make_decode_inputs([300, 1000], 2, 64, 1, 64, torch.bfloat16, "cuda", generator=torch.Generator("cuda"))
    buf = torch.empty(x.q.numel() + 8, dtype=torch.bfloat16, device="cuda")
    q_odd = buf[4:4 + x.q.numel()].view(x.q.shape)
    q_odd.copy_(x.q)
    assert q_odd.data_ptr() % 16 == 8
    meta = tritonmla.get_mla_metadata(x.cache_seqlens, 128, 1)
    ref_out, ref_lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                      causal=True)
    for q in (x.q, q_odd, x.q):
        out, lse = tritonmla.flash_mla_with_kvcache(q, x.k_cache, x.block_table, x.cache_seqlens, 512, *meta,
                                                    causal=True, kernel=kernel)
        assert_close("out", out, ref_out, **PEAKED_OUT_TOL)
        assert_close("lse", lse, ref_lse, **PEAKED_LSE_TOL)


@pytest.mark.parametrize("seqlens", [[16384, 9000, 130, 0, 700, 16000, 63, 3000], [6000] * 96])
def test_seesaw_handoffs_with_delayed_writers_are_bitwise_stable(seqlens):
    """The warp-specialized kernel (rows > 64) hands m_A, m_B, P_A, P_B, the row sums, Q and zeroed tails from one
    warpgroup to the other. Rebuilt with every thread sleeping a different 0-4 us before it writes what the other
    warpgroup reads (and before it reads what the other writes next), and replayed many times in a CUDA graph, it
    gives bit for bit what the undelayed kernel gives: a hand-off that did not order every writer before the
    readers would lose the late writers' values (the negative control in NOTES.md run 12 fails here), one that did
    not order the readers before the next write would hand them the next value."""
    why = dispatch.hopper_device(torch.device("cuda"))
    if why is not None:
        pytest.skip(why)
    from tritonmla.api import interface as calls  # (calls.clear(): every configuration)
    from tritonmla.dense_decode import kernel_sm90_seesaw as decode_hopper_seesaw

    x = make_decode_inputs(seqlens, 2, 128, 1, 64, torch.bfloat16, "cuda",
                           generator=torch.Generator("cuda").manual_seed(len(seqlens)))
    sched, splits = torch.ops.tritonmla.plan(x.cache_seqlens, num_parts_for(x.q.device, 256, 1, "hopper"))

    def step():
        return tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, sched, splits,
                                                causal=True, kernel="hopper")

    calls.clear()
    want_out, want_lse = step()
    try:
        decode_hopper_seesaw.STRESS_DELAY_NS = 4000
        calls.clear()
        assert_graph_replays_bitwise(step, want_out, want_lse, 200 if len(seqlens) < 16 else 30)
    finally:
        decode_hopper_seesaw.STRESS_DELAY_NS = 0
        calls.clear()
    ref_out, ref_lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                      causal=True)
    assert_close("out", want_out, ref_out, **PEAKED_OUT_TOL)
    assert_close("lse", want_lse, ref_lse, **PEAKED_LSE_TOL)
