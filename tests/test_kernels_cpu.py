"""The Triton kernels on the CPU under TRITON_INTERPRET=1, against the float64 reference.

fp16 only: the interpreter's bf16 tl.dot is wrong (triton-lang/triton#11584); bf16 runs in tests/test_gpu.py.
Every run poisons its outputs (NaN) and split partials, NaN-fills unused cache slots and puts garbage in unused
block-table entries, so an unwritten element, a stray read or a wrong page shows up as NaN or a mismatch.
"""
from __future__ import annotations

import itertools

import pytest
import torch

import tritonmla
from tritonmla.core.runtime import interpreter_enabled
from tritonmla.api.op import decode_into
from tritonmla.reference.plan import plan_reference, walk_plan
from tritonmla.scheduler.planner import plan

from helpers import assert_close, make_decode_inputs, random_seqlens

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.skipif(not interpreter_enabled(), reason="CPU kernel tests need TRITON_INTERPRET=1")]

OUT_TOL = dict(abs_tol=2e-3, rel_tol=2.01 / 128, cos_diff_tol=1e-5)  # fp16 output rounding vs float64
LSE_TOL = dict(abs_tol=1e-5, rel_tol=8.01 / 65536)


def run_and_check(x, seq_q, causal, num_parts=None, softmax_scale=None):
    heads_q, heads_kv = x.q.shape[2], x.k_cache.shape[2]
    if num_parts is None:
        sched, splits = tritonmla.get_mla_metadata(x.cache_seqlens, seq_q * heads_q // heads_kv, heads_kv)
    else:
        sched, splits = plan(x.cache_seqlens, num_parts)
    batch = x.q.shape[0]
    out = torch.full((batch, seq_q, heads_q, 512), float("nan"), dtype=x.q.dtype)
    lse = torch.full((batch, heads_q, seq_q), float("nan"), dtype=torch.float32)
    scale = softmax_scale if softmax_scale is not None else 576 ** -0.5
    decode_into(x.q, x.k_cache, x.block_table, x.cache_seqlens, sched, splits, scale, causal, out, lse,
                partial_fill=float("nan"))
    ref_out, ref_lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                      softmax_scale=scale, causal=causal,
                                                      compute_dtype=torch.float64)
    assert_close("out", out, ref_out, **OUT_TOL)
    assert_close("lse", lse, ref_lse, **LSE_TOL)
    return splits


def grid_cases():
    """The full product of the issue's CPU grid (h_q % h_kv == 0 only)."""
    return [(heads_q, heads_kv, seq_q, page, causal)
            for heads_q, heads_kv, seq_q, page, causal in itertools.product(
                [1, 3, 16, 20, 64], [1, 2], [1, 2, 4], [1, 16, 64, 128], [False, True])
            if heads_q % heads_kv == 0]


@pytest.mark.parametrize("heads_q,heads_kv,seq_q,page_size,causal", grid_cases())
def test_decode_grid(heads_q, heads_kv, seq_q, page_size, causal):
    gen = torch.Generator().manual_seed(hash((heads_q, heads_kv, seq_q, page_size, causal)) % 2**31)
    seqlens = random_seqlens(gen, batch=4, max_len=260, zeros=1)
    x = make_decode_inputs(seqlens, seq_q, heads_q, heads_kv, page_size, torch.float16, "cpu", generator=gen)
    run_and_check(x, seq_q, causal)


@pytest.mark.parametrize("num_parts", [1, 3, 17])
def test_many_splits_and_combine(num_parts):
    """Few parts (no splits) to many (every request cut several times), causal rows seeing nothing in a split."""
    gen = torch.Generator().manual_seed(num_parts)
    seqlens = [450, 0, 3, 190, 64]
    x = make_decode_inputs(seqlens, 4, 16, 1, 16, torch.float16, "cpu", generator=gen)
    splits = run_and_check(x, 4, causal=True, num_parts=num_parts)
    per_request = (splits[1:] - splits[:-1]).tolist()
    if num_parts == 17:
        assert max(per_request) >= 3, per_request  # the combine kernel really merged several partials


@pytest.mark.parametrize("sms,seqlen,num_parts,cols_want", [(4, 1100, 40, 128), (64, 3000, 60, 32)])
def test_one_request_cut_into_more_splits_than_the_combine_reads_at_once(monkeypatch, sms, seqlen, num_parts,
                                                                          cols_want):
    """A small batch: the plan cuts its one request into a piece per part (18 / 47 here); the combine reads the
    splits SPLITS at a time (full loads and a partial one) over column blocks (a small grid; with 64 SMs the
    narrowest, MIN_COLS)."""
    from tritonmla.combine.combine import combine_shape
    from tritonmla.core import runtime
    monkeypatch.setattr(runtime, "INTERPRETER_SM_COUNT", sms)
    runtime.sm_count.cache_clear()  # (cached per device)
    try:
        gen = torch.Generator().manual_seed(11)
        x = make_decode_inputs([seqlen], 1, 16, 1, 16, torch.float16, "cpu", generator=gen)
        cols, per_load = combine_shape(2, 1, 1, 512, x.q.device)
        assert cols == cols_want
        splits = run_and_check(x, 1, causal=False, num_parts=num_parts)
        n = int(splits[1] - splits[0])
        assert per_load < n < 3 * per_load and n % per_load, (splits, per_load)
    finally:
        monkeypatch.undo()
        runtime.sm_count.cache_clear()


@pytest.mark.parametrize("heads_q,heads_kv", [(16, 1), (6, 2)])
def test_eight_speculative_tokens(heads_q, heads_kv):
    """s_q = 8 (engines' largest speculative step): up to 128 rows per KV head, two 64-row blocks."""
    gen = torch.Generator().manual_seed(heads_q)
    x = make_decode_inputs([5, 333, 0, 129], 8, heads_q, heads_kv, 16, torch.float16, "cpu", generator=gen)
    run_and_check(x, 8, causal=True, num_parts=5)


def test_causal_rows_that_see_no_key():
    """s_q > seqlen: the first queries see no key under bottom-right alignment: out 0, lse +inf."""
    gen = torch.Generator().manual_seed(7)
    x = make_decode_inputs([2, 1, 0], 4, 16, 1, 1, torch.float16, "cpu", generator=gen)
    run_and_check(x, 4, causal=True, num_parts=2)
    out, lse = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                *tritonmla.get_mla_metadata(x.cache_seqlens, 64, 1), causal=True)
    assert torch.all(out[1, :3] == 0) and torch.all(lse[1, :, :3] == float("inf"))
    assert torch.all(out[2] == 0) and torch.all(lse[2] == float("inf"))
    assert torch.isfinite(lse[0, :, 2:]).all() and torch.isfinite(lse[1, :, 3]).all()


def test_all_requests_empty():
    gen = torch.Generator().manual_seed(3)
    x = make_decode_inputs([0, 0, 0], 1, 3, 1, 64, torch.float16, "cpu", generator=gen)
    run_and_check(x, 1, causal=False)


def test_custom_softmax_scale_and_long_pages():
    gen = torch.Generator().manual_seed(11)
    x = make_decode_inputs([600, 257], 2, 20, 2, 256, torch.float16, "cpu", generator=gen)
    run_and_check(x, 2, causal=True, softmax_scale=0.123)


def test_strided_q_matches_contiguous():
    gen = torch.Generator().manual_seed(5)
    x = make_decode_inputs([100, 37], 2, 16, 1, 16, torch.float16, "cpu", generator=gen)
    wide = torch.randn(2, 16, 2, 640, generator=gen).half()  # [b, h, s, 640] -> a [b, s, h, 576] strided view
    wide[..., :576] = x.q.transpose(1, 2)
    q_view = wide[..., :576].transpose(1, 2)
    assert not q_view.is_contiguous()
    meta = tritonmla.get_mla_metadata(x.cache_seqlens, 32, 1)
    got = tritonmla.flash_mla_with_kvcache(q_view, x.k_cache, x.block_table, x.cache_seqlens, 512, *meta,
                                           causal=True)
    want = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, *meta,
                                            causal=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_sched_meta_api_plans_once_and_checks_reuse():
    gen = torch.Generator().manual_seed(9)
    x = make_decode_inputs([70, 300], 2, 16, 1, 64, torch.float16, "cpu", generator=gen)
    meta, none = tritonmla.get_mla_metadata()
    assert none is None and not meta.have_initialized
    out1, lse1 = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, meta,
                                                  causal=True)
    assert meta.have_initialized and meta.tile_scheduler_metadata.shape[1] == 8
    first_plan = meta.tile_scheduler_metadata
    out2, _ = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, meta,
                                               causal=True)
    assert meta.tile_scheduler_metadata is first_plan and torch.equal(out1, out2)
    ref_out, ref_lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                      causal=True, compute_dtype=torch.float64)
    assert_close("out", out1, ref_out, **OUT_TOL)
    assert_close("lse", lse1, ref_lse, **LSE_TOL)
    with pytest.raises(ValueError, match="causal"):
        tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, meta, causal=False)
    with pytest.raises(ValueError, match="s_q"):
        tritonmla.flash_mla_with_kvcache(x.q[:, :1], x.k_cache, x.block_table, x.cache_seqlens, 512, meta,
                                         causal=True)


# --- scheduler -----------------------------------------------------------------------------------------------

def check_plan_covers(sched, splits, seqlens):
    """Each request's tokens covered once, its split indices 0..k-1 once each, each empty request once."""
    items = walk_plan(sched, splits, seqlens)
    for b, seqlen in enumerate(seqlens.tolist()):
        mine = sorted((split, lo, hi) for _, req, split, lo, hi in items if req == b)
        k = int(splits[b + 1] - splits[b])
        assert [s for s, _, _ in mine] == list(range(k)), (b, mine, k)
        covered = [t for _, lo, hi in mine for t in range(lo, hi)]
        assert covered == list(range(seqlen)), (b, mine)


@pytest.mark.parametrize("seed", range(40))
def test_plan_kernel_matches_reference_and_covers(seed):
    gen = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 40, (1,), generator=gen))
    seqlens = torch.tensor(random_seqlens(gen, batch, int(torch.randint(1, 3000, (1,), generator=gen)),
                                          zeros=int(torch.randint(0, batch + 1, (1,), generator=gen))),
                           dtype=torch.int32)
    num_parts = int(torch.randint(1, 70, (1,), generator=gen))
    sched, splits = plan(seqlens, num_parts)
    ref_sched, ref_splits = plan_reference(seqlens, num_parts)
    assert torch.equal(sched, ref_sched) and torch.equal(splits, ref_splits)
    check_plan_covers(sched, splits, seqlens)


def test_plan_is_balanced():
    """Every part's tiles + per-request overheads stay within one payload (+ one overhead) of the mean."""
    seqlens = torch.tensor([16384, 64, 0, 9000, 1, 30000, 4096, 700] * 4, dtype=torch.int32)
    num_parts = 66
    sched, splits = plan(seqlens, num_parts)
    items = walk_plan(sched, splits, seqlens)
    load = [0] * num_parts
    for part, _, _, lo, hi in items:
        load[part] += -(-(hi - lo) // 64) + 5
    total = sum(-(-int(s) // 64) + 5 for s in seqlens)
    assert max(load) <= -(-total // num_parts) + 5, (max(load), total / num_parts)


def test_plan_keeps_an_equal_batch_whole():
    """FlashMLA's greedy plan: 64 equal requests over 33 parts go two whole requests per part (no splits, so no
    partials and nothing to merge), the last part idle; an equal-cut plan would split 29 of them."""
    seqlens = torch.full((64,), 2048, dtype=torch.int32)
    sched, splits = plan(seqlens, 33)
    assert torch.equal(splits, torch.arange(65, dtype=torch.int32))
    assert sched[:32, 0].tolist() == list(range(0, 64, 2)) and sched[:32, 2].tolist() == list(range(1, 64, 2))
    assert sched[32, 0] == 64  # idle
    check_plan_covers(sched, splits, seqlens)


# --- the cached call path ------------------------------------------------------------------------------------

def test_repeated_calls_on_one_plan_are_bitwise_equal():
    """The same plan serves every layer of a decode step: calls leave it as they found it and repeat exactly."""
    gen = torch.Generator().manual_seed(21)
    x = make_decode_inputs([450, 3, 190, 0, 333], 2, 16, 1, 16, torch.float16, "cpu", generator=gen)
    sched, splits = plan(x.cache_seqlens, 20)
    assert int((splits[1:] - splits[:-1]).max()) >= 3
    plan_before = sched.clone()
    results = [tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, sched, splits,
                                                causal=True) for _ in range(3)]
    assert torch.equal(sched, plan_before)
    for out, lse in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(lse, results[0][1])
    ref_out, ref_lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                      causal=True, compute_dtype=torch.float64)
    assert_close("out", results[0][0], ref_out, **OUT_TOL)
    assert_close("lse", results[0][1], ref_lse, **LSE_TOL)


def test_cached_path_equals_custom_op_path():
    gen = torch.Generator().manual_seed(22)
    x = make_decode_inputs([260, 70], 2, 16, 1, 64, torch.float16, "cpu", generator=gen)
    sched, splits = plan(x.cache_seqlens, 5)
    eager = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, sched, splits,
                                             causal=True)
    op = torch.ops.tritonmla.mla_decode(x.q, x.k_cache, x.block_table, x.cache_seqlens, sched, splits, 512,
                                        576 ** -0.5, True, None)
    assert torch.equal(eager[0], op[0]) and torch.equal(eager[1], op[1])


def test_cached_configuration_still_checks_argument_types():
    """A cached configuration skips the checks only for arguments equal to a checked call's, types included."""
    gen = torch.Generator().manual_seed(23)
    x = make_decode_inputs([40, 7], 1, 4, 1, 16, torch.float16, "cpu", generator=gen)
    meta = tritonmla.get_mla_metadata(x.cache_seqlens, 4, 1)
    args = (x.q, x.k_cache, x.block_table, x.cache_seqlens)
    tritonmla.flash_mla_with_kvcache(*args, 512, *meta, causal=True)
    with pytest.raises(TypeError, match="causal must be a bool"):
        tritonmla.flash_mla_with_kvcache(*args, 512, *meta, causal=1)
    with pytest.raises(TypeError, match="head_dim_v must be an int"):
        tritonmla.flash_mla_with_kvcache(*args, 512.0, *meta, causal=True)
    with pytest.raises(TypeError, match="q must have dtype"):
        tritonmla.flash_mla_with_kvcache(x.q.float(), *args[1:], 512, *meta, causal=True)


def test_warmup_runs_every_combination():
    assert tritonmla.warmup(16, seq_q=(1, 2), page_size=16, dtype=torch.float16, causal=True) == 2
