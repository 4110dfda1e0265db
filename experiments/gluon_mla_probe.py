"""Gluon probe for issue 3 (not product code): does MLA decode on Hopper stop spilling once Q stays in shared
memory and the 64x512 accumulator is split over two warpgroups? Single partition (no warp specialization),
TMA K tiles in a 2-stage ring, wgmma for S = Q K^T (9 chunks of 64) and O += P V (8 chunks of 64), page 64,
seqlen a multiple of 64, no causal mask, no split-KV: one program per (64 query rows, request).
Run on the device: PYTHONPATH=. python3 experiments/gluon_mla_probe.py
"""
import math

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)

NCHUNK = gl.constexpr(9)  # 576 / 64
VCHUNK = gl.constexpr(8)  # 512 / 64


@gluon.jit
def issue_k_tile(k_desc, bt_row, t, stage, k_smem, ready):
    page = gl.load(bt_row + t)
    mbarrier.expect(ready.index(stage), NCHUNK * k_desc.block_type.nbytes)
    for c in gl.static_range(NCHUNK):
        tma.async_copy_global_to_shared(k_desc, [page * 64, c * 64], ready.index(stage),
                                        k_smem.index(stage * NCHUNK + c))


@gluon.jit
def mla_probe_kernel(q_desc, k_desc, bt_ptr, bt_stride, seqlen, out_ptr, rows_per_req, qk_scale_log2,
                     num_warps: gl.constexpr):
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, 32, 16])
    row_l: gl.constexpr = gl.SliceLayout(1, mma)
    col_l: gl.constexpr = gl.SliceLayout(0, mma)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([64, 64], gl.bfloat16)
    m_block = gl.program_id(0)
    b = gl.program_id(1)
    q_smem = gl.allocate_shared_memory(gl.bfloat16, [NCHUNK, 64, 64], q_desc.layout)
    k_smem = gl.allocate_shared_memory(gl.bfloat16, [2 * NCHUNK, 64, 64], k_desc.layout)
    p_smem = gl.allocate_shared_memory(gl.bfloat16, [64, 64], p_layout)
    ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    qbar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(ready.index(0), count=1)
    mbarrier.init(ready.index(1), count=1)
    mbarrier.init(qbar, count=1)

    q_row = b * rows_per_req + m_block * 64
    mbarrier.expect(qbar, NCHUNK * q_desc.block_type.nbytes)
    for c in gl.static_range(NCHUNK):
        tma.async_copy_global_to_shared(q_desc, [q_row, c * 64], qbar, q_smem.index(c))
    bt_row = bt_ptr + b * bt_stride
    n_tiles = seqlen // 64
    issue_k_tile(k_desc, bt_row, 0, 0, k_smem, ready)
    mbarrier.wait(qbar, 0)

    m_i = gl.full([64], float("-inf"), gl.float32, row_l)
    l_i = gl.zeros([64], gl.float32, row_l)
    o0 = gl.zeros([64, 64], gl.float32, mma)
    o1 = gl.zeros([64, 64], gl.float32, mma)
    o2 = gl.zeros([64, 64], gl.float32, mma)
    o3 = gl.zeros([64, 64], gl.float32, mma)
    o4 = gl.zeros([64, 64], gl.float32, mma)
    o5 = gl.zeros([64, 64], gl.float32, mma)
    o6 = gl.zeros([64, 64], gl.float32, mma)
    o7 = gl.zeros([64, 64], gl.float32, mma)
    for t in range(n_tiles):
        stage = t % 2
        gl.thread_barrier()  # both warpgroups are done with the stage and P of tile t-1
        if t + 1 < n_tiles:
            issue_k_tile(k_desc, bt_row, t + 1, 1 - stage, k_smem, ready)
        mbarrier.wait(ready.index(stage), (t // 2) & 1)
        s = gl.zeros([64, 64], gl.float32, mma)
        for c in gl.static_range(NCHUNK):
            s = warpgroup_mma(q_smem.index(c), k_smem.index(stage * NCHUNK + c).permute((1, 0)), s, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        s = s * qk_scale_log2
        m_new = gl.maximum(m_i, gl.max(s, 1))
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s - gl.expand_dims(m_new, 1))
        l_i = l_i * alpha + gl.sum(p, 1)
        m_i = m_new
        p_smem.store(p.to(gl.bfloat16))
        fence_async_shared()
        gl.thread_barrier()
        a2 = gl.expand_dims(alpha, 1)
        vb = stage * NCHUNK
        o0 = warpgroup_mma(p_smem, k_smem.index(vb + 0), o0 * a2, is_async=True)
        o1 = warpgroup_mma(p_smem, k_smem.index(vb + 1), o1 * a2, is_async=True)
        o2 = warpgroup_mma(p_smem, k_smem.index(vb + 2), o2 * a2, is_async=True)
        o3 = warpgroup_mma(p_smem, k_smem.index(vb + 3), o3 * a2, is_async=True)
        o4 = warpgroup_mma(p_smem, k_smem.index(vb + 4), o4 * a2, is_async=True)
        o5 = warpgroup_mma(p_smem, k_smem.index(vb + 5), o5 * a2, is_async=True)
        o6 = warpgroup_mma(p_smem, k_smem.index(vb + 6), o6 * a2, is_async=True)
        o7 = warpgroup_mma(p_smem, k_smem.index(vb + 7), o7 * a2, is_async=True)
        o0, o1, o2, o3, o4, o5, o6, o7 = warpgroup_mma_wait(
            num_outstanding=0, deps=(o0, o1, o2, o3, o4, o5, o6, o7))

    inv_l = gl.expand_dims(1.0 / l_i, 1)
    rows = q_row + gl.arange(0, 64, row_l)
    cols = gl.arange(0, 64, col_l)
    base = out_ptr + gl.expand_dims(rows, 1) * 512 + gl.expand_dims(cols, 0)
    gl.store(base + 0 * 64, (o0 * inv_l).to(gl.bfloat16))
    gl.store(base + 1 * 64, (o1 * inv_l).to(gl.bfloat16))
    gl.store(base + 2 * 64, (o2 * inv_l).to(gl.bfloat16))
    gl.store(base + 3 * 64, (o3 * inv_l).to(gl.bfloat16))
    gl.store(base + 4 * 64, (o4 * inv_l).to(gl.bfloat16))
    gl.store(base + 5 * 64, (o5 * inv_l).to(gl.bfloat16))
    gl.store(base + 6 * 64, (o6 * inv_l).to(gl.bfloat16))
    gl.store(base + 7 * 64, (o7 * inv_l).to(gl.bfloat16))


def run(batch, s_q, h_q, seqlen):
    rows = s_q * h_q
    q = torch.randn(batch * rows, 576, device="cuda", dtype=torch.bfloat16)
    pages = seqlen // 64
    k = torch.randn(batch * pages * 64, 576, device="cuda", dtype=torch.bfloat16)
    bt = torch.randperm(batch * pages, device="cuda").int().view(batch, pages)
    out = torch.full((batch * rows, 512), float("nan"), device="cuda", dtype=torch.bfloat16)
    lay = gl.NVMMASharedLayout.get_default_for([64, 64], gl.bfloat16)
    q_desc = TensorDescriptor(q, list(q.shape), list(q.stride()), [64, 64], lay)
    k_desc = TensorDescriptor(k, list(k.shape), list(k.stride()), [64, 64], lay)
    scale = 576 ** -0.5 * 1.4426950408889634
    grid = (rows // 64, batch)
    launch = lambda: mla_probe_kernel[grid](q_desc, k_desc, bt, bt.stride(0), seqlen, out, rows, scale, num_warps=8)
    launch()
    torch.cuda.synchronize()
    kc = k.view(batch * pages, 64, 576)
    for bb in (0, batch - 1):
        keys = kc[bt[bb].long()].reshape(-1, 576).float()
        qq = q[bb * rows:(bb + 1) * rows].float()
        ref = torch.softmax(qq @ keys.T * 576 ** -0.5, -1) @ keys[:, :512]
        err = (out[bb * rows:(bb + 1) * rows].float() - ref).abs().max().item()
        assert math.isfinite(err) and err < 3e-2, err
    ms = triton.testing.do_bench(launch, warmup=30, rep=200, return_mode="median")
    flops = 2 * rows * batch * seqlen * 1088
    nbytes = 2 * batch * seqlen * 576
    k_info = ""
    try:
        kern = list(mla_probe_kernel.device_caches[0][0].values())[-1]
        kern._init_handles()
        k_info = f"{kern.n_regs} regs, {kern.n_spills} spills"
    except Exception as e:  # noqa: BLE001
        k_info = type(e).__name__
    print(f"b={batch} s_q={s_q} h_q={h_q} sk={seqlen}: err ok, {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOPS, "
          f"{nbytes / ms / 1e6:.0f} GB/s K, {k_info}", flush=True)


if __name__ == "__main__":
    run(128, 1, 64, 8192)
    run(128, 2, 128, 8192)
