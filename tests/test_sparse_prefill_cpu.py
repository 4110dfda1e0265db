"""Sparse attention prefill (flash_mla_sparse_fwd) on the CPU: the portable Triton kernel under TRITON_INTERPRET=1
against the float64 reference, and the API's argument checks.

Inputs as FlashMLA's tests build them (tritonmla.bench.sparse_prefill.make_prefill_inputs): distinct random kv
rows per query, FlashMLA's out-of-range index values (huge, negative, == s_kv) wherever topk > s_kv, sinks with
+-inf, topk_length in [0, topk], NaN in every kv row no valid index names; outputs poisoned (NaN) before each run.
bf16 runs with its operands multiplied in fp32 (the interpreter's bf16 tl.dot is wrong: triton-lang/triton#11584).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tritonmla
from tritonmla.core.runtime import interpreter_enabled
from tritonmla.bench.sparse_prefill import make_prefill_inputs, poison_unused_rows
from tritonmla.sparse_prefill import call as prefill_call

from helpers import assert_close, prefill_poisoned as run_poisoned

interpreted = pytest.mark.skipif(not interpreter_enabled(), reason="CPU kernel tests need TRITON_INTERPRET=1")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# FlashMLA's sparse prefill tolerances (out abs 8e-4 / rel 3.01/128 / cos-diff 7e-6; max_logits and lse abs 1e-6 /
# rel 2.01/65536), against a float64 reference here.
OUT_TOL = dict(abs_tol=8e-4, rel_tol=3.01 / 128, cos_diff_tol=7e-6)
STAT_TOL = dict(abs_tol=1e-6, rel_tol=2.01 / 65536)


def check(x, out, max_logits, lse):
    ref_out, ref_max, ref_lse = tritonmla.sparse_prefill_reference(*x.args(), **x.kwargs(),
                                                                   compute_dtype=torch.float64)
    assert_close("out", out, ref_out.double(), **OUT_TOL)
    assert_close("max_logits", max_logits, ref_max, **STAT_TOL)
    assert_close("lse", lse, ref_lse, **STAT_TOL)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d_qk,heads_q,heads_kv,s_q,s_kv,topk,sink,have_len,strided", [
    (576, 128, 1, 3, 300, 128, True, True, False),
    (512, 64, 1, 4, 300, 100, False, True, True),
    (576, 16, 1, 5, 95, 128, True, False, False),    # topk > s_kv: FlashMLA's out-of-range values in every row
    (512, 16, 2, 4, 153, 64, True, True, True),      # two KV heads, each with its own indices
    (576, 3, 1, 2, 40, 32, True, True, False),       # h_q below any tile
    (512, 40, 4, 3, 500, 70, False, False, False),   # 10 heads per KV head, topk not a tile multiple
])
def test_prefill_grid(d_qk, heads_q, heads_kv, s_q, s_kv, topk, sink, have_len, strided, dtype):
    x = make_prefill_inputs(s_q, s_kv, topk, heads_q, d_qk, heads_kv, sink=sink, have_topk_length=have_len,
                            strided=strided, sm_scale=0.5 if strided else None, dtype=dtype, device="cpu",
                            seed=d_qk + heads_q + s_kv)
    check(x, *run_poisoned(x))


@interpreted
@pytest.mark.parametrize("d_qk", [576, 512])
def test_all_invalid_and_zero_length_queries(d_qk):
    x = make_prefill_inputs(6, 64, 96, 16, d_qk, sink=True, have_topk_length=True, all_invalid=True,
                            nan_unused=False, dtype=torch.float16, device="cpu", seed=3)
    x.indices[0] = -1                                  # every slot -1
    x.indices[1] = torch.randint(64, 2 ** 31 - 1, x.indices[1].shape, dtype=torch.int32)  # every slot >= s_kv
    x.topk_length[2] = 0                               # nothing counts
    x.topk_length[3] = 96
    poison_unused_rows(x)
    out, max_logits, lse = run_poisoned(x)
    check(x, out, max_logits, lse)
    for i in (0, 1, 2):
        assert torch.all(out[i] == 0) and torch.all(lse[i] == math.inf) and torch.all(max_logits[i] == -math.inf)


@interpreted
def test_garbage_past_topk_length_is_never_read():
    """Slots past topk_length may hold anything, in range or not; out-of-range lengths are clamped to [0, topk]."""
    x = make_prefill_inputs(4, 80, 64, 16, 576, have_topk_length=True, nan_unused=False, dtype=torch.float16,
                            device="cpu", seed=5)
    x.topk_length.copy_(torch.tensor([10, 0, 64, 33], dtype=torch.int32))
    for i, n in enumerate(x.topk_length.tolist()):  # in range (rows made NaN below) or not
        x.indices[i, :, n:] = torch.randint(-100, 200, (1, 64 - n), dtype=torch.int32)
    poison_unused_rows(x)
    out, max_logits, lse = run_poisoned(x)
    check(x, out, max_logits, lse)
    clamped = x.topk_length.clone()
    x.topk_length.copy_(torch.tensor([10, -7, 1000, 33], dtype=torch.int32))
    got = tritonmla.flash_mla_sparse_fwd(*x.args(), **x.kwargs())
    x.topk_length.copy_(clamped.clamp(0, 64))
    x.topk_length[2] = 64
    want = tritonmla.flash_mla_sparse_fwd(*x.args(), **x.kwargs())
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@interpreted
def test_public_api_matches_reference_and_repeats_bitwise():
    x = make_prefill_inputs(5, 200, 64, 64, 576, sink=True, have_topk_length=True, dtype=torch.float16,
                            device="cpu", seed=11)
    first = tritonmla.flash_mla_sparse_fwd(x.q, x.kv, x.indices, x.sm_scale, 512, x.attn_sink, x.topk_length)
    check(x, *first)
    again = tritonmla.flash_mla_sparse_fwd(x.q, x.kv, x.indices, x.sm_scale, d_v=512, attn_sink=x.attn_sink,
                                           topk_length=x.topk_length)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # Another s_q and s_kv reuse the configuration (nothing compiled depends on them).
    y = make_prefill_inputs(9, 333, 64, 64, 576, sink=True, have_topk_length=True, dtype=torch.float16,
                            device="cpu", seed=12)
    key = prefill_call.prefill_key(y.q, y.kv, y.indices, y.topk_length, y.attn_sink, y.sm_scale, 512)
    assert prefill_call.cached_prefill_call(key) is not None
    check(y, *tritonmla.flash_mla_sparse_fwd(*y.args(), **y.kwargs()))
    # Zero query tokens: empty outputs.
    out, max_logits, lse = tritonmla.flash_mla_sparse_fwd(y.q[:0], y.kv, y.indices[:0], y.sm_scale,
                                                          attn_sink=y.attn_sink, topk_length=y.topk_length[:0])
    assert out.shape == (0, 64, 512) and max_logits.shape == lse.shape == (0, 64)


@interpreted
def test_non_contiguous_last_dims_are_copied():
    x = make_prefill_inputs(3, 100, 64, 16, 512, dtype=torch.float16, device="cpu", seed=13)
    q_t = x.q.transpose(1, 2).contiguous().transpose(1, 2)           # head_dim strided
    idx_t = x.indices.transpose(0, 2).contiguous().transpose(0, 2)   # topk strided
    got = tritonmla.flash_mla_sparse_fwd(q_t, x.kv, idx_t, x.sm_scale)
    check(x, *got)


def test_reference_matches_a_hand_computed_row():
    torch.manual_seed(0)
    q = torch.randn(1, 2, 576, dtype=torch.float64)
    kv = torch.randn(5, 1, 576, dtype=torch.float64)
    indices = torch.tensor([[[4, -1, 1, 5]]], dtype=torch.int32)  # -1 and 5 (== s_kv) skipped
    sink = torch.tensor([0.3, float("inf")])
    out, max_logits, lse = tritonmla.sparse_prefill_reference(q, kv, indices, 0.1, attn_sink=sink)
    keys = kv[[4, 1], 0]
    for h in range(2):
        s = 0.1 * keys @ q[0, h]
        p = torch.softmax(s, 0)
        want = p @ keys[:, :512]
        lse_h = torch.logsumexp(s, 0)
        want = want * torch.exp(lse_h) / (torch.exp(lse_h) + torch.exp(sink[h]))
        assert torch.allclose(out[0, h], want) and torch.isclose(lse[0, h], lse_h.float())
        assert torch.isclose(max_logits[0, h], s.max().float())


@pytest.fixture
def good():
    return make_prefill_inputs(2, 16, 8, 4, 576, sink=True, have_topk_length=True, dtype=torch.bfloat16,
                               device="cpu", nan_unused=False)


@pytest.mark.parametrize("change,error,match", [
    (dict(q=[1.0]), TypeError, "q must be a torch.Tensor"),
    (dict(q=lambda x: x.q.float()), TypeError, "q must have dtype"),
    (dict(q=lambda x: x.q[None]), ValueError, "q must be 3-D"),
    (dict(q=lambda x: x.q[0, 0, 0]), ValueError, "q must be 3-D"),
    (dict(indices=lambda x: x.indices[0, 0, 0]), ValueError, "indices must be 3-D"),
    (dict(q=lambda x: x.q[..., :500]), ValueError, "q head_dim must be 576"),
    (dict(kv=lambda x: x.kv.half()), TypeError, "kv dtype float16 must match q"),
    (dict(kv=lambda x: x.kv[..., :512]), ValueError, "kv head_dim"),
    (dict(kv=lambda x: x.kv[:, None]), ValueError, "kv must be 3-D"),
    (dict(kv=lambda x: x.kv.expand(-1, 3, -1)), ValueError, "q heads \\(4\\) must be a multiple of kv heads \\(3\\)"),
    (dict(kv=lambda x: x.kv.expand(-1, 2, -1)), ValueError, "indices must be \\[s_q=2, heads_kv=2"),
    (dict(kv=lambda x: x.kv.transpose(0, 2).contiguous().transpose(0, 2)), ValueError, "kv must be contiguous"),
    (dict(indices=lambda x: x.indices.long()), TypeError, "indices must have dtype int32"),
    (dict(indices=lambda x: x.indices[:1]), ValueError, "indices must be \\[s_q=2"),
    (dict(indices=lambda x: x.indices[:, :, :0]), ValueError, "topk >= 1"),
    (dict(indices=lambda x: x.indices[0]), ValueError, "indices must be 3-D"),
    (dict(sm_scale="0.1"), TypeError, "sm_scale must be a float"),
    (dict(sm_scale=True), TypeError, "sm_scale must be a float"),
    (dict(d_v=576), ValueError, "d_v must be 512"),
    (dict(d_v=512.0), TypeError, "d_v must be an int"),
    (dict(attn_sink=lambda x: x.attn_sink.double()), TypeError, "attn_sink must have dtype float32"),
    (dict(attn_sink=lambda x: x.attn_sink[:3]), ValueError, "attn_sink must be \\[heads_q=4\\]"),
    (dict(topk_length=lambda x: x.topk_length.long()), TypeError, "topk_length must have dtype int32"),
    (dict(topk_length=lambda x: x.topk_length[:1]), ValueError, "topk_length must be \\[s_q=2\\]"),
    (dict(topk_length=lambda x: x.topk_length[:, None]), ValueError, "topk_length must be \\[s_q=2\\]"),
])
def test_bad_input_is_named(good, change, error, match):
    args = dict(q=good.q, kv=good.kv, indices=good.indices, sm_scale=good.sm_scale, d_v=512,
                attn_sink=good.attn_sink, topk_length=good.topk_length)
    tritonmla.flash_mla_sparse_fwd(**args)  # the good configuration is cached first: misuse is still caught
    for name, value in change.items():
        args[name] = value(good) if callable(value) else value
    with pytest.raises(error, match=match):
        tritonmla.flash_mla_sparse_fwd(**args)


def test_torch_compile_traces_sparse_prefill():
    x = make_prefill_inputs(3, 50, 32, 16, 576, sink=True, have_topk_length=True, dtype=torch.float16,
                            device="cpu", nan_unused=False)

    def step(q, kv, indices, sink, length):
        out, max_logits, lse = tritonmla.flash_mla_sparse_fwd(q, kv, indices, 0.25, attn_sink=sink,
                                                              topk_length=length)
        return out * 2, max_logits, lse

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    args = (x.q, x.kv, x.indices, x.attn_sink, x.topk_length)
    for got, want in zip(compiled(*args), step(*args)):
        assert torch.equal(got, want)


def test_bench_cpu_demo_runs():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "tritonmla.bench", "sparse-prefill"], cwd=root,
                            capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(root)})
    if torch.cuda.is_available():
        pytest.skip("a GPU box runs the real benchmark")
    assert result.returncode == 0 and "CPU demo passed." in result.stdout, result.stdout + result.stderr


def test_checked_mode_names_a_bad_topk_length(good, monkeypatch):
    """TRITONMLA_CHECK=1: topk_length outside [0, topk] is a ValueError naming the token (default: clamped)."""
    good.topk_length[1] = 9  # topk is 8
    tritonmla.flash_mla_sparse_fwd(good.q, good.kv, good.indices, good.sm_scale, topk_length=good.topk_length)
    monkeypatch.setenv("TRITONMLA_CHECK", "1")
    with pytest.raises(ValueError, match=r"topk_length\[1\] = 9 \(query token 1\) is outside \[0, topk = 8\]"):
        tritonmla.flash_mla_sparse_fwd(good.q, good.kv, good.indices, good.sm_scale, topk_length=good.topk_length)
    good.topk_length[1] = -1
    with pytest.raises(ValueError, match=r"topk_length\[1\] = -1"):
        tritonmla.flash_mla_sparse_fwd(good.q, good.kv, good.indices, good.sm_scale, topk_length=good.topk_length)
    good.topk_length[1] = 8
    tritonmla.flash_mla_sparse_fwd(good.q, good.kv, good.indices, good.sm_scale, topk_length=good.topk_length)
