"""CPU checks of the CuTe DSL Hopper kernels (no GPU needed): every shipped variant compiles for sm_90a, and its
SASS has what the schedule depends on (wgmma, TMA, the register re-split, stmatrix) and no local-memory spills. A
regression in the kernel's code shows here without a device; correctness and speed are the device's (test_gpu.py
with kernel="cute", scripts/device_cute.sh)."""
from __future__ import annotations

import pytest

from tritonmla.core import cute_runtime

# S = Q K^T: 2 warpgroups x (4 wgmmas per box as it lands, one group each); P V: 2 warpgroups x (4 wgmmas from
# registers + 4 from shared memory, one group each).
def hgmma(boxes: int = 9) -> int:
    return 2 * 4 * boxes + 16


def warpgroup_ops(boxes: int = 9) -> int:
    """WARPGROUP.ARRIVE (one per group issued) + WARPGROUP.DEPBAR (the schedule's 6 waits). Where ptxas thinks an
    accumulator is touched in flight it serializes the wgmmas: an ARRIVE and a DEPBAR around each HGMMA."""
    return 2 * boxes + 4 + 6


def assert_register_split(module, facts) -> None:
    """The setmaxnreg re-split fits the CTA's register pool: THREADS x the launch register count (not 64 K; a split
    over it leaves a consumer warp's setmaxnreg.inc retrying forever: a hang, no error)."""
    assert facts["usetmaxreg"] == 2, facts["opcodes"]
    need = 2 * 128 * module.CONSUMER_REGS + 128 * module.PRODUCER_REGS
    assert need <= module.THREADS * facts["registers"], (need, facts["registers"])


if cute_runtime.cute_error() is not None:
    pytest.skip(f"CuTe DSL unavailable: {cute_runtime.cute_error()}", allow_module_level=True)


@pytest.mark.parametrize("dtype,page_size", [("bf16", 64), ("fp16", 64), ("bf16", 256)])
def test_dense_decode_compiles_to_the_schedule(dtype, page_size):
    from tritonmla.dense_decode import kernel_sm90_cute
    facts = kernel_sm90_cute.compile_offline(dtype, page_size)
    (kernel,) = facts["kernels"].values()
    ops = kernel["opcodes"]
    assert facts["hgmma"] == hgmma(), ops
    assert ops.get("WARPGROUP", 0) <= warpgroup_ops(), ops  # the wgmmas stay asynchronous
    assert facts["utmaldg"] >= 9, ops  # one TMA load per 64 x 64 box of a K tile
    assert facts["usetmaxreg"] == 2, ops  # producer down, consumers up
    # stmatrix hands P over (8+) and stages each warpgroup's output rows (16 per warpgroup; 12 in all before)
    assert facts["stsm"] >= 8 + 2 * 16, ops
    assert facts["ldl"] == 0 and facts["stl"] == 0 and kernel["frame_bytes"] == 0, f"local memory: {kernel}"
    assert_register_split(kernel_sm90_cute, facts)


def test_dense_decode_timeline_variant_compiles():
    """scripts/cute_timeline.py's variant (SM clock stores at each event) builds and keeps the wgmmas asynchronous."""
    from tritonmla.dense_decode import kernel_sm90_cute
    facts = kernel_sm90_cute.compile_offline("bf16", 64, timeline=0x7F00_0000_0000)
    ops = facts["opcodes"]
    assert facts["hgmma"] == hgmma() and ops.get("WARPGROUP", 0) <= warpgroup_ops(), ops
    assert facts["ldl"] == 0 and facts["stl"] == 0, ops


@pytest.mark.parametrize("has_len,has_sink,d_qk", [(True, True, 576), (False, False, 576), (True, False, 512)])
def test_sparse_prefill_compiles_to_the_schedule(has_len, has_sink, d_qk):
    """The CuTe sparse prefill kernel (the decode schedule over gathered rows): same wgmmas, kept asynchronous (at
    d_qk 512 S skips the RoPE box: 4 wgmmas fewer in each warpgroup's S), a cp.async (LDGSTS) per row and box of a
    pair (4 rows x 9 or 8 boxes x 2 tiles per producer thread), no spills at its 216 / 72 register split."""
    from tritonmla.sparse_prefill import kernel_sm90_cute
    facts = kernel_sm90_cute.compile_offline(has_len, has_sink, d_qk)
    ops = facts["opcodes"]
    boxes = d_qk // 64
    assert facts["hgmma"] == hgmma(boxes) and ops.get("WARPGROUP", 0) <= warpgroup_ops(boxes), ops
    assert ops.get("LDGSTS", 0) == 4 * boxes * 2, ops
    assert facts["stsm"] >= 8 + 2 * 16, ops  # P and the staged output rows (the dense kernel's epilogue)
    assert facts["ldl"] == 0 and facts["stl"] == 0 and facts["frame_bytes"] == 0, ops
    assert_register_split(kernel_sm90_cute, facts)

