"""Sparse attention prefill (flash_mla_sparse_fwd) on the GPU (skipped without CUDA), with FlashMLA's tolerances for
this op (out abs 8e-4 / rel 3.01/128 / cos-diff 7e-6; max_logits and lse abs 1e-6 / rel 2.01/65536) against the
float32 reference on FlashMLA-style inputs (tritonmla.bench.sparse_prefill.make_prefill_inputs: out-of-range index
values, sinks with +-inf, NaN in every kv row no valid index names): both d_qk, h_q 16/64/128, topk 64/512/2048,
topk_length, all-invalid queries, h_kv 2, row strides, outputs poisoned through the caching allocator and
directly, CUDA-graph capture and replay, torch.compile, a 70000-token s_q."""
from __future__ import annotations

import itertools

import pytest
import torch

import tritonmla
from tritonmla.bench.sparse_prefill import make_prefill_inputs
from tritonmla.sparse_prefill import call as prefill_call

from helpers import assert_close, prefill_poisoned as run_poisoned

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OUT_TOL = dict(abs_tol=8e-4, rel_tol=3.01 / 128, cos_diff_tol=7e-6)
STAT_TOL = dict(abs_tol=1e-6, rel_tol=2.01 / 65536)


@pytest.fixture(params=["auto", "portable"], autouse=True)
def kernel(request, monkeypatch):
    """Every test on the default choice (the CuTe DSL kernel on SM90 where CuTe DSL is installed) and on the
    portable Triton kernel."""
    if request.param == "portable":
        monkeypatch.setenv("TRITONMLA_KERNEL", "portable")
    else:
        monkeypatch.delenv("TRITONMLA_KERNEL", raising=False)
    prefill_call.clear()
    yield request.param
    prefill_call.clear()


def check(x, out, max_logits, lse, rows=slice(None)):
    """Against the float32 reference's output before any bf16 rounding (what FlashMLA's test compares with)."""
    length = x.topk_length[rows] if x.topk_length is not None else None
    ref_out, ref_max, ref_lse = tritonmla.sparse_prefill_reference(x.q[rows].float(), x.kv.float(), x.indices[rows],
                                                                   x.sm_scale, attn_sink=x.attn_sink,
                                                                   topk_length=length)
    assert_close("out", out[rows], ref_out, **OUT_TOL)
    assert_close("max_logits", max_logits[rows], ref_max, **STAT_TOL)
    assert_close("lse", lse[rows], ref_lse, **STAT_TOL)


def grid():
    for d_qk, heads_q, (topk, s_kv) in itertools.product((576, 512), (16, 64, 128),
                                                         ((64, 1000), (512, 300), (2048, 4096))):
        for sink, have_len in ((True, True), (False, False)):
            yield d_qk, heads_q, topk, s_kv, sink, have_len


@pytest.mark.parametrize("d_qk,heads_q,topk,s_kv,sink,have_len", list(grid()))
def test_prefill_grid(d_qk, heads_q, topk, s_kv, sink, have_len):
    x = make_prefill_inputs(62, s_kv, topk, heads_q, d_qk, sink=sink, have_topk_length=have_len,
                            seed=d_qk + heads_q + topk)
    check(x, *run_poisoned(x))


@pytest.mark.parametrize("d_qk", [576, 512])
@pytest.mark.parametrize("heads_q", [64, 128])
@pytest.mark.parametrize("s_q,s_kv,topk", [(1, 128, 128), (213, 1521, 512), (1024, 32, 2048), (1234, 4321, 4096)])
def test_corner_cases_all_invalid(d_qk, heads_q, s_q, s_kv, topk):
    x = make_prefill_inputs(s_q, s_kv, topk, heads_q, d_qk, sink=True, have_topk_length=True, all_invalid=True,
                            seed=s_q + topk)
    check(x, *tritonmla.flash_mla_sparse_fwd(*x.args(), **x.kwargs()))


@pytest.mark.parametrize("d_qk", [576, 512])
@pytest.mark.parametrize("heads_q,heads_kv", [(64, 1), (128, 1), (128, 2)])
def test_many_tokens(d_qk, heads_q, heads_kv):
    """More query tokens than SMs (several waves of CTAs; a persistent kernel walks several per CTA), per-token
    lengths (odd tile counts: a pair without its second tile), sinks and invalid indices, every row checked."""
    x = make_prefill_inputs(700, 3000, 448, heads_q, d_qk, heads_kv, sink=True, have_topk_length=True,
                            seed=heads_q + heads_kv)
    check(x, *run_poisoned(x))


@pytest.mark.parametrize("d_qk", [576, 512])
def test_two_kv_heads_row_strides_and_odd_heads(d_qk):
    x = make_prefill_inputs(33, 777, 200, 24, d_qk, 2, sink=True, have_topk_length=True, strided=True,
                            sm_scale=0.5, seed=1)
    check(x, *run_poisoned(x))
    y = make_prefill_inputs(17, 300, 100, 5, d_qk, sink=True, seed=2)
    check(y, *tritonmla.flash_mla_sparse_fwd(*y.args(), **y.kwargs()))


def test_outputs_from_a_poisoned_allocator_are_all_written():
    x = make_prefill_inputs(40, 2000, 512, 128, 576, sink=True, have_topk_length=True, seed=4)
    for _ in range(3):  # the caching allocator hands the NaN-filled blocks back to the next call
        junk = [torch.full((40, 128, 512), float("nan"), dtype=torch.bfloat16, device="cuda"),
                torch.full((40, 128), float("nan"), device="cuda"), torch.full((40, 128), float("nan"), device="cuda")]
        del junk
        check(x, *tritonmla.flash_mla_sparse_fwd(*x.args(), **x.kwargs()))


def test_large_s_q_runs_and_spot_checks():
    """FlashMLA's 70000 x 256 x 256 case: more query tokens than a grid's y or z dimension holds (the CuTe kernel
    folds tokens into x)."""
    x = make_prefill_inputs(70000, 256, 256, 128, 576, sink=True, have_topk_length=True, nan_unused=False, seed=7)
    out, max_logits, lse = tritonmla.flash_mla_sparse_fwd(*x.args(), **x.kwargs())
    for rows in (slice(0, 64), slice(69936, 70000)):
        check(x, out, max_logits, lse, rows)


@pytest.mark.parametrize("d_qk", [576, 512])
def test_cuda_graph_replays_with_new_indices(d_qk):
    x = make_prefill_inputs(100, 5000, 512, 64, d_qk, sink=True, have_topk_length=True, seed=8)
    y = make_prefill_inputs(100, 5000, 512, 64, d_qk, sink=True, have_topk_length=True, seed=9)
    tritonmla.flash_mla_sparse_fwd(*x.args(), **x.kwargs())  # bound before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = tritonmla.flash_mla_sparse_fwd(*x.args(), **x.kwargs())
    want_x = tritonmla.flash_mla_sparse_fwd(*x.args(), **x.kwargs())
    want_y = tritonmla.flash_mla_sparse_fwd(*y.args(), **y.kwargs())
    x0 = [t.clone() for t in (x.q, x.kv, x.indices, x.topk_length, x.attn_sink)]
    for src, want in ((y, want_y), (None, want_x)):  # new inputs copied into the captured ones, then the old back
        values = x0 if src is None else (src.q, src.kv, src.indices, src.topk_length, src.attn_sink)
        for dst, value in zip((x.q, x.kv, x.indices, x.topk_length, x.attn_sink), values):
            dst.copy_(value)
        for t in outs:
            t.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        for name, got, expect in zip(("out", "max_logits", "lse"), outs, want):
            assert torch.equal(got, expect), name


@pytest.mark.parametrize("d_qk", [576, 512])
def test_torch_compile(d_qk):
    x = make_prefill_inputs(50, 1000, 256, 64, d_qk, sink=True, have_topk_length=True, seed=10)

    def step(q, kv, indices, sink, length):
        out, max_logits, lse = tritonmla.flash_mla_sparse_fwd(q, kv, indices, x.sm_scale, attn_sink=sink,
                                                              topk_length=length)
        return out * 2, max_logits, lse

    compiled = torch.compile(step, fullgraph=True)
    args = (x.q, x.kv, x.indices, x.attn_sink, x.topk_length)
    for got, want in zip(compiled(*args), step(*args)):
        assert torch.equal(got, want)


def _cute_or_skip():
    from tritonmla.core.hopper import cute_device
    why = cute_device(torch.device("cuda"))
    if why is not None:
        pytest.skip(why)


@pytest.mark.parametrize("d_qk,heads_q,heads_kv,topk,s_kv,sink,have_len,all_invalid,strided", [
    (576, 128, 1, 2048, 4096, True, True, False, False), (576, 64, 1, 512, 300, False, False, False, False),
    (576, 16, 1, 64, 1000, True, False, False, False), (576, 128, 1, 100, 777, False, True, False, True),
    (576, 24, 2, 200, 777, True, True, False, True), (576, 64, 1, 512, 1521, True, True, True, False),
    (576, 128, 1, 4096, 4321, True, True, False, False), (512, 128, 1, 1024, 4096, True, True, False, False),
    (512, 64, 1, 512, 300, False, False, False, True), (512, 24, 2, 200, 777, True, True, True, True)])
def test_cute_kernel(monkeypatch, kernel, d_qk, heads_q, heads_kv, topk, s_kv, sink, have_len, all_invalid, strided):
    """The CuTe DSL Hopper kernel named (TRITONMLA_KERNEL=cute), both d_qk: the grid's cases, h_kv 2, row strides,
    all-invalid queries, a topk past 2048; poisoned outputs."""
    if kernel != "auto":
        pytest.skip("names its kernel")
    _cute_or_skip()
    monkeypatch.setenv("TRITONMLA_KERNEL", "cute")
    prefill_call.clear()
    x = make_prefill_inputs(45, s_kv, topk, heads_q, d_qk, heads_kv, sink=sink, have_topk_length=have_len,
                            all_invalid=all_invalid, strided=strided, seed=topk + heads_q)
    call = prefill_call.SparsePrefillCall(x.q, x.kv, x.indices, x.topk_length, x.attn_sink, x.sm_scale)
    assert call.cute is not None  # the CuTe kernel runs, not the portable one
    check(x, *run_poisoned(x))
    check(x, *tritonmla.flash_mla_sparse_fwd(*x.args(), **x.kwargs()))
    prefill_call.clear()


def test_default_takes_the_cute_kernel_and_falls_back_when_it_fails_to_build(monkeypatch, kernel):
    """By default an SM90 GPU with CuTe DSL runs the CuTe kernel; if it fails to build, the call warns and the
    portable kernel serves (correctly); TRITONMLA_KERNEL=cute raises instead."""
    if kernel != "auto":
        pytest.skip("names its kernel")
    _cute_or_skip()
    from tritonmla.sparse_prefill import bind_cute
    x = make_prefill_inputs(20, 700, 128, 64, 512, sink=True, have_topk_length=True, seed=11)
    call = prefill_call.SparsePrefillCall(x.q, x.kv, x.indices, x.topk_length, x.attn_sink, x.sm_scale)
    assert call.cute is not None

    def broken(*args, **kwargs):
        raise RuntimeError("simulated build failure")
    monkeypatch.setattr(bind_cute, "BoundPrefillCute", broken)
    prefill_call.clear()
    with pytest.warns(RuntimeWarning, match="simulated build failure"):
        check(x, *tritonmla.flash_mla_sparse_fwd(*x.args(), **x.kwargs()))
    monkeypatch.setenv("TRITONMLA_KERNEL", "cute")
    prefill_call.clear()
    with pytest.raises(RuntimeError, match="simulated"):
        tritonmla.flash_mla_sparse_fwd(*x.args(), **x.kwargs())
