"""Sparse decoding over FP8 caches on the GPU (skipped without CUDA), with FlashMLA's tolerances for sparse decode
(out abs 1e-3 / rel 2.01/128 / cos-diff 5e-6; lse abs 1e-6 / rel 8.01/65536) against the float32 reference on
FlashMLA-style inputs (tritonmla.bench.sparse.make_sparse_inputs: NaN in every cache row no live index names,
garbage past topk_length, sinks with +-inf): both layouts, h_q 16/64/128, topk 64..16384, page sizes
2/61/64/69/576, extra cache and topk lengths on/off, all-invalid indices, zero lengths, out-of-range indices,
CUDA-graph capture and replay, many splits replayed bitwise, poisoned outputs and split partials. On SM90, h_q > 32
runs the Gluon kernel (tritonmla.sparse_decode.kernel_sm90) and h_q 16 the portable one; the Gluon kernel's own cases
(fp16 queries, values past fp16's range) are at the end."""
from __future__ import annotations

import itertools

import pytest
import torch

import tritonmla
from tritonmla.bench.sparse import make_sparse_inputs
from tritonmla.core import hopper as dispatch
from tritonmla.sparse_decode import call as sparse_call
from tritonmla.core.fp8_cache_layouts import (block_bytes, cache_view, dequantize_kv_cache, layout_for,
                                              quantize_blocks, quantize_kv_cache)

from helpers import assert_close, assert_graph_replays_bitwise, sparse_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OUT_TOL = dict(abs_tol=1e-3, rel_tol=2.01 / 128, cos_diff_tol=5e-6)
LSE_TOL = dict(abs_tol=1e-6, rel_tol=8.01 / 65536)


def reference(x):
    return tritonmla.sparse_decode_reference(*x.reference_args())


def run_api(x):
    meta, _ = tritonmla.get_mla_metadata()
    return tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, **x.kwargs())


def run_poisoned(x, kernel=None, expect_hopper=None):
    call = sparse_call.SparseCall(x.q, x.k_cache, x.indices, x.topk_length, x.attn_sink, x.extra_k_cache,
                                  x.extra_indices, x.extra_topk_length, x.softmax_scale, kernel)
    if expect_hopper is not None:
        assert call.hopper == expect_hopper
    sched, splits = call.plan(x.topk_length, x.extra_topk_length)
    out = torch.full(call.out_shape, float("nan"), dtype=x.q.dtype, device="cuda")
    lse = torch.full(call.lse_shape, float("nan"), device="cuda")
    workspace = torch.full((call.workspace_numel,), float("nan"), device="cuda")
    call(x.q, x.k_cache, x.indices, x.topk_length, x.attn_sink, x.extra_k_cache, x.extra_indices,
         x.extra_topk_length, sched, splits, out, lse, workspace)
    return out, lse


def check(x, out, lse):
    ref_out, ref_lse = reference(x)
    assert_close("out", out, ref_out, **OUT_TOL)
    assert_close("lse", lse, ref_lse, **LSE_TOL)


# (topk, page size, s_k): FlashMLA's correctness shapes, plus the 16384 peak topk
SHAPES = [(64, 2, 512), (64, 69, 512), (576, 2, 1024), (576, 61, 1024), (2048, 64, 2046), (2048, 576, 2046),
          (16384, 64, 16384)]


def grid():
    """Both layouts x h_q {16, 64, 128} x every shape in full; batch, s_q, extra cache, topk lengths and the
    sink rotate through them."""
    rotate = itertools.cycle([
        (4, 1, None, False, False, True), (74, 3, (64, 69, 512), True, True, True),
        (4, 3, (576, 61, 1024), False, True, False), (74, 1, None, True, False, True),
        (4, 2, (2048, 2, 2046), True, False, True), (74, 2, (64, 2, 512), False, False, False),
    ])
    cases = []
    for d_qk, heads_q, (topk, page, s_k) in itertools.product([576, 512], [16, 64, 128], SHAPES):
        batch, seq_q, extra, have_len, have_len2, sink = next(rotate)
        if topk == 16384:
            batch = 4  # (the float32 reference gathers b x s_q x topk rows)
        cases.append((d_qk, heads_q, topk, page, s_k, batch, seq_q, extra, have_len, have_len2 and extra is not None,
                      sink))
    return cases


@pytest.mark.parametrize("d_qk,heads_q,topk,page,s_k,batch,seq_q,extra,have_len,have_len2,sink", grid())
def test_sparse_grid(d_qk, heads_q, topk, page, s_k, batch, seq_q, extra, have_len, have_len2, sink):
    seed = hash((d_qk, heads_q, topk, page, batch, seq_q, extra, have_len)) % 2 ** 31
    x = make_sparse_inputs(batch, seq_q, heads_q, d_qk, topk, page, s_k, extra=extra, have_topk_length=have_len,
                           have_extra_topk_length=have_len2, sink=sink, device="cuda", seed=seed)
    out, lse = run_poisoned(x)
    check(x, out, lse)
    out2, lse2 = run_api(x)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


def corner_cases():
    cases = []
    for d_qk, heads_q, (topk, page, s_k), batch, all_invalid, zero_lengths, sink in itertools.product(
            [576, 512], [64, 128], [(64, 61, 512), (576, 53, 650)], [4, 74], [True, False], [True, False],
            [True, False]):
        if all_invalid or zero_lengths or sink:
            cases.append((d_qk, heads_q, topk, page, s_k, batch, all_invalid, zero_lengths, sink))
    return cases[::5]  # a fifth of FlashMLA's corner grid; every axis value still met


@pytest.mark.parametrize("d_qk,heads_q,topk,page,s_k,batch,all_invalid,zero_lengths,sink", corner_cases())
def test_corner_cases(d_qk, heads_q, topk, page, s_k, batch, all_invalid, zero_lengths, sink):
    extra = (topk, page, s_k) if d_qk == 512 else None
    x = make_sparse_inputs(batch, 3, heads_q, d_qk, topk, page, s_k, extra=extra, have_topk_length=zero_lengths,
                           have_extra_topk_length=zero_lengths and extra is not None, sink=sink,
                           zero_lengths=zero_lengths, all_invalid=all_invalid, device="cuda", seed=batch + heads_q)
    if zero_lengths:
        x.topk_length[0] = 0
        if x.extra_topk_length is not None:
            x.extra_topk_length[0] = 0
    out, lse = run_poisoned(x)
    check(x, out, lse)
    if all_invalid or (zero_lengths and extra is None):
        assert torch.all(out[0] == 0) and torch.all(lse[0] == float("inf"))


def test_out_of_range_indices_are_skipped():
    """Indices outside [0, num_blocks * page_size) (huge, negative, == the token count) count as -1."""
    x = make_sparse_inputs(8, 2, 64, 576, 256, 64, 512, device="cuda", seed=3)
    bad = torch.tensor([-2147483648, -123456, 114514 * 1000, 2147483647,
                        x.k_cache.shape[0] * x.k_cache.shape[1]], dtype=torch.int32, device="cuda")
    pick = torch.rand(x.indices.shape, device="cuda") < 0.1
    x.indices[pick] = bad[torch.randint(0, 5, (int(pick.sum()),), device="cuda")]
    x.indices[0, 0] = 2147483647
    out, lse = run_poisoned(x)
    check(x, out, lse)
    assert torch.all(out[0, 0] == 0) and torch.all(lse[0, :, 0] == float("inf"))


@pytest.mark.parametrize("d_qk", [576, 512])
def test_production_shapes(d_qk):
    """V3.2's (h_q 128, topk 2048) and MODEL1's (h_q 64, topk 128 in pages of 256 + 1024 extra in pages of 2)."""
    if d_qk == 576:
        x = make_sparse_inputs(16, 2, 128, 576, 2048, 64, 32768, device="cuda", seed=1)
    else:
        x = make_sparse_inputs(16, 2, 64, 512, 128, 256, 16384, extra=(1024, 2, 16384), have_extra_topk_length=True,
                               device="cuda", seed=2)
    check(x, *run_api(x))


@pytest.mark.parametrize("d_qk", [576, 512])
def test_cuda_graph_replay_with_new_lengths_and_indices(d_qk):
    """A decode step captured whole (planning included: a fresh FlashMLASchedMeta inside the capture), replayed
    with new topk lengths, indices and queries."""
    extra = (64, 2, 256) if d_qk == 512 else None
    shape = dict(extra=extra, have_topk_length=True, have_extra_topk_length=extra is not None, varlen=False,
                 nan_unused=False, device="cuda")  # fixed lengths: every trial's indices fit the same caches
    x = make_sparse_inputs(12, 2, 64, d_qk, 512, 61, 1024, seed=7, **shape)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run_api(x)  # compile and bind outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = run_api(x)
    for trial in range(3):
        fresh = make_sparse_inputs(12, 2, 64, d_qk, 512, 61, 1024, seed=100 + trial, **shape)
        x.q.copy_(fresh.q)
        x.indices.copy_(fresh.indices)
        x.topk_length.copy_(fresh.topk_length)
        if extra is not None:
            x.extra_indices.copy_(fresh.extra_indices)
            x.extra_topk_length.copy_(fresh.extra_topk_length)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        check(x, out, lse)


def test_many_splits_replayed_are_bitwise_deterministic():
    x = make_sparse_inputs(6, 2, 128, 576, 16384, 64, 16384, device="cuda", seed=11)
    meta, _ = tritonmla.get_mla_metadata()

    def step():
        return tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, **x.kwargs())

    first_out, first_lse = step()
    assert int((meta.num_splits[1:] - meta.num_splits[:-1]).max()) >= 4
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = step()
    for _ in range(50):
        out.fill_(float("nan"))
        graph.replay()
        assert torch.equal(out, first_out) and torch.equal(lse, first_lse)
    check(x, first_out, first_lse)


def test_unaligned_indices_take_their_own_binding():
    x = make_sparse_inputs(4, 1, 64, 576, 64, 64, 256, device="cuda", seed=12)
    want = run_api(x)
    buf = torch.empty(x.indices.numel() + 2, dtype=torch.int32, device="cuda")
    odd = buf[1:1 + x.indices.numel()].view(x.indices.shape)
    odd.copy_(x.indices)
    assert odd.data_ptr() % 16 != 0
    for indices in (odd, x.indices):
        x_args = {**x.kwargs(), "indices": indices}
        got = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, tritonmla.get_mla_metadata()[0],
                                               None, **x_args)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


needs_sm90 = pytest.mark.skipif(
    not torch.cuda.is_available() or dispatch.hopper_device(torch.device("cuda")) is not None,
    reason="needs an SM90 GPU (the Gluon sparse kernel)")


@needs_sm90
@pytest.mark.parametrize("d_qk", [576, 512])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads_q", [48, 128])
def test_gluon_kernel_is_taken_and_agrees_with_portable(d_qk, dtype, heads_q):
    """auto takes the Gluon kernel for h_q > 32 (h_q 48: one 64-head block, rows past h_q masked); both kernels
    meet the reference's tolerances on the same inputs, fp16 queries included."""
    extra = (64, 2, 512) if d_qk == 512 else None
    x = make_sparse_inputs(5, 2, heads_q, d_qk, 576, 61, 1024, extra=extra, have_topk_length=True,
                           have_extra_topk_length=extra is not None, dtype=dtype, device="cuda", seed=heads_q)
    gluon_out, gluon_lse = run_poisoned(x, expect_hopper=True)
    check(x, gluon_out, gluon_lse)
    portable_out, portable_lse = run_poisoned(x, kernel="portable", expect_hopper=False)
    check(x, portable_out, portable_lse)


@needs_sm90
@pytest.mark.parametrize("d_qk", [576, 512])
@pytest.mark.parametrize("what", ["q", "k"])
def test_gluon_kernel_values_past_fp16_range(d_qk, what):
    """The Gluon kernel multiplies in fp16 (exact for FlashMLA-quantized caches and |q| < 2^15); larger values
    take a power-of-two shift per row. q x 2^16 (past fp16's 65504) with the softmax scale / 2^16, or every key
    row (codes' scales and RoPE values) x 2^17 with the scale / 2^17: the same softmax, checked against the
    reference (out x 2^17 in the second case). Without the shift these give inf / NaN."""
    extra = (64, 2, 512) if d_qk == 512 else None
    x = make_sparse_inputs(4, 2, 64, d_qk, 576, 64, 1024, extra=extra, have_topk_length=True, nan_unused=False,
                           device="cuda", seed=5)
    if what == "q":
        x.q = x.q * 2.0 ** 16
        x.softmax_scale *= 2.0 ** -16
        assert x.q.float().abs().max() > 65504
    else:
        lay = layout_for(None, d_qk=d_qk)
        x.k_cache = quantize_kv_cache(dequantize_kv_cache(x.k_cache, lay) * 2.0 ** 17, lay)
        if extra is not None:
            x.extra_k_cache = quantize_kv_cache(dequantize_kv_cache(x.extra_k_cache, lay) * 2.0 ** 17, lay)
        x.softmax_scale *= 2.0 ** -17
    out, lse = run_poisoned(x, expect_hopper=True)
    assert torch.isfinite(out).all()
    ref_out, ref_lse = reference(x)
    unit = 1.0 if what == "q" else 2.0 ** 17  # (out / 2^17 is exact: the tolerances apply at the usual scale)
    assert_close("out", out / unit, ref_out / unit, **OUT_TOL)
    assert_close("lse", lse, ref_lse, **LSE_TOL)


def compiled_sparse_variants() -> int:
    from tritonmla.combine import combine
    from tritonmla.sparse_decode import kernel_portable as kernel, kernel_sm90 as kernel_hopper
    fns = [kernel.sparse_decode_kernel, kernel_hopper.sparse_decode_hopper_kernel, combine.mla_combine_sink_kernel]
    return sum(len(cache[0]) for fn in fns for cache in fn.device_caches.values())


@pytest.mark.parametrize("d_qk, heads_q", [(576, 128), (512, 64), (576, 16)])
def test_no_compile_after_warmup_sparse_across_batch_sizes(d_qk, heads_q):
    """warmup_sparse() compiles what a configuration uses (V3.2: topk_length and a sink; MODEL1: an extra cache
    with its lengths; h_q 16: the portable kernel); then batches of many sizes, s_q 1 and 2, fresh caches and
    indices compile nothing."""
    extra = (512, 2, 1024) if d_qk == 512 else None
    tritonmla.warmup_sparse(heads_q, d_qk, 2048, seq_q=(1, 2), page_size=64, topk_length=True, attn_sink=True,
                            extra_topk=extra[0] if extra else None, extra_page_size=2, extra_topk_length=bool(extra))
    before = compiled_sparse_variants()
    for batch in (1, 3, 17, 64, 130):
        x = make_sparse_inputs(batch, 1 + batch % 2, heads_q, d_qk, 2048, 64, 4096, extra=extra,
                               have_topk_length=True, have_extra_topk_length=bool(extra), device="cuda", seed=batch)
        out, lse = run_api(x)
        if batch in (3, 64):
            check(x, out, lse)
    torch.cuda.synchronize()
    assert compiled_sparse_variants() == before


@needs_sm90
@pytest.mark.parametrize("one_site,delay_ns", [(False, 4000), (True, 30000)], ids=["every-site", "one-site"])
@pytest.mark.parametrize("d_qk", [576, 512])
def test_gluon_handoffs_with_delayed_writers_are_bitwise_stable(d_qk, one_site, delay_ns):
    """The Gluon kernel's warpgroups hand over K slots (producer -> softmax warpgroup -> warpgroup 1), P, the row
    rescale, the epilogue factor and the query maxima. Rebuilt with threads sleeping a different 0..delay_ns each
    before they write what another warpgroup reads (and before they read what another writes next), and replayed
    in a CUDA graph, it gives bit for bit what the undelayed kernel gives: a hand-off that did not order every
    writer before the readers would lose the late writers' values, one that did not order the readers before the
    next write would hand them the next value. every-site: all delay sites at every tile (the warpgroups stay in
    step); one-site: at most one site per tile (and one per request), drawn by a hash, so one warpgroup at a time
    runs late while the others go on. (nanosleep sleeps far less than asked: 30 us asked per site added ~6 us to
    a whole replay. A build without the P_FREE syncs failed one-site at 30 us in all 4 layout runs, every-site in
    1 of 8: NOTES.md run 16.)"""
    from tritonmla.sparse_decode import kernel_sm90 as kernel_hopper

    extra = (64, 2, 512) if d_qk == 512 else None
    x = make_sparse_inputs(6, 2, 128, d_qk, 2048, 64, 4096, extra=extra, have_topk_length=True, device="cuda",
                           seed=13)
    meta, _ = tritonmla.get_mla_metadata()

    def step():
        return tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, **x.kwargs())

    sparse_call.clear()
    want_out, want_lse = step()
    assert int((meta.num_splits[1:] - meta.num_splits[:-1]).max()) >= 2  # (partials and the combine too)
    try:
        kernel_hopper.STRESS_DELAY_NS = delay_ns
        kernel_hopper.STRESS_ONE_SITE = one_site
        sparse_call.clear()
        step()  # (binds the delayed build outside the capture)
        assert_graph_replays_bitwise(step, want_out, want_lse, 30)
    finally:
        kernel_hopper.STRESS_DELAY_NS = 0
        kernel_hopper.STRESS_ONE_SITE = False
        sparse_call.clear()
    check(x, want_out, want_lse)


@needs_sm90
@pytest.mark.parametrize("d_qk", [576, 512])
def test_gluon_kernel_cache_at_the_smallest_accepted_alignment(d_qk):
    """Caches need only 4-byte (V3.2) / 8-byte (MODEL1) aligned addresses: such a cache binds a variant without
    16-byte vector loads; its results equal the aligned cache's bit for bit."""
    x = make_sparse_inputs(4, 2, 64, d_qk, 576, 64, 1024, device="cuda", seed=9)
    want = run_poisoned(x, expect_hopper=True)
    offset = 4 if d_qk == 576 else 8
    lay = layout_for(None, d_qk=d_qk)
    num_blocks, page_size = x.k_cache.shape[:2]
    size = block_bytes(lay, page_size)
    raw = torch.zeros(num_blocks * size + 64, dtype=torch.uint8, device="cuda")
    blocks = raw[offset:offset + num_blocks * size].view(num_blocks, size)
    assert blocks.data_ptr() % 16 != 0
    quantize_blocks(dequantize_kv_cache(x.k_cache, lay)[:, :, 0].float(), lay, blocks)  # the same bytes, moved
    moved = cache_view(blocks, lay, page_size)
    same = dequantize_kv_cache(moved, lay).nan_to_num(7.0) == dequantize_kv_cache(x.k_cache, lay).nan_to_num(7.0)
    assert same.all()
    x.k_cache = moved
    got = run_poisoned(x, expect_hopper=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("d_qk,heads_q", [(576, 128), (512, 16)])
def test_torch_compile(d_qk, heads_q):
    """torch.compile (inductor, fullgraph) of a step that plans (a FlashMLASchedMeta made inside) and decodes:
    the custom ops run the same calls as eager (the Gluon kernel at h_q 128 on SM90, portable at 16)."""
    extra = (64, 2, 512) if d_qk == 512 else None
    x = make_sparse_inputs(6, 2, heads_q, d_qk, 576, 64, 1024, extra=extra, have_topk_length=True,
                           have_extra_topk_length=extra is not None, device="cuda", seed=13)
    step, args = sparse_step(x)
    torch._dynamo.reset()
    out, lse = torch.compile(step, fullgraph=True)(*args)
    want_out, want_lse = step(*args)
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
    check(x, out / 2, lse)
