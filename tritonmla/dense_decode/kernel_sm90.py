"""Hopper (SM90) MLA decode kernel in Gluon: the same math and plan walk as kernel_portable. It runs
up to 64 query rows per KV head (one row block: memory-bound); with more rows bind_decode_hopper hands the call
to the warp-specialized seesaw kernel (kernel_sm90_seesaw), which keeps the tensor cores busier.

Math (online softmax, log2 domain), per query row q and the keys k_j of its request, V = k_j[:512]:
    s_j = scale*log2e * q.k_j,  m' = max(m, rowmax s),  l' = l 2^(m-m') + sum_j 2^(s_j-m'),
    o' = o 2^(m-m') + sum_j 2^(s_j-m') v_j;   out = o / l,  lse = (m + log2 l) ln 2.

What Gluon buys over the portable kernel (which spills at 64 rows: Q and the accumulator both in registers):
- Q (64 rows x 576) is kept in shared memory as 9 NVMMA-swizzled 64x64 boxes and is the A operand of wgmma.
- K tiles (64 tokens x 576, one page of the paged cache per tile) arrive by TMA as 9 boxes into a ring of
  NUM_STAGES stages, each guarded by an mbarrier; the load of tile t+1 overlaps the math of tile t.
- S = Q K^T is 2 async wgmmas (512 + 64 columns); P goes to shared memory; O += P V is one async wgmma on
  the [64, 512] V tile (= the first 8 boxes of the same K tile). 8 warps = two warpgroups, each owning half
  the columns of S and of O, so the 64 x 512 fp32 accumulator is 128 registers per thread.

Tiles past the end of a request (a page's unused slots may hold NaN: 0 * NaN would poison P V) are zeroed in
shared memory before use. Requires PAGE_SIZE a multiple of 64 (a tile never crosses a page); the dispatcher
(tritonmla.dense_decode.dispatch) sends other caches to the portable kernel.
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ..core.constants import D_QK, D_V, LOG2E, LN2, PLAN_TILE, SCHED_ROW
from ..core.gluon_helpers import online_softmax
from ..core.launch import BoundKernel
from ..scheduler.planner import plan_row
from .kernel_portable import fixed_strides, request_tiles
from .kernel_sm90_seesaw import bind_decode_seesaw

BLOCK_M = gl.constexpr(64)  # query rows per program: the wgmma M of one warpgroup
BLOCK_N = gl.constexpr(64)  # tokens per KV tile: one TMA box height, = PLAN_TILE
BOX = gl.constexpr(64)  # columns per TMA box / wgmma K chunk
NUM_WARPS = 8
NUM_STAGES = gl.constexpr(2)  # 72 KB Q + 2 x 72 KB K + 8 KB P fit in 227 KB; 3 stages do not
QK_BOXES = gl.constexpr(D_QK // BOX.value)  # 9
V_BOXES = gl.constexpr(D_V // BOX.value)  # 8


@gluon.jit
def issue_kv_tile(k_desc, bt_row, start, col0, slot, kv_smem, rope_smem, ready, num_blocks,
                  PAGE_SIZE: gl.constexpr):
    """TMA the 64-token tile starting at token `start` (inside one page) into ring slot `slot`, as 9 boxes. The
    page id is clamped into [0, num_blocks) before it becomes a TMA row: a bad block-table entry loads some page
    of the cache (that request's result is meaningless), never rows outside it."""
    page = gl.minimum(gl.maximum(gl.load(bt_row + start // PAGE_SIZE), 0), num_blocks - 1)
    row = page * PAGE_SIZE + start % PAGE_SIZE
    bar = ready.index(slot)
    tile = kv_smem.index(slot)
    mbarrier.expect(bar, QK_BOXES * k_desc.block_type.nbytes)
    for c in gl.static_range(V_BOXES):
        tma.async_copy_global_to_shared(k_desc, [row, col0 + c * BOX], bar, tile.slice(c * BOX, BOX, 1))
    tma.async_copy_global_to_shared(k_desc, [row, col0 + V_BOXES * BOX], bar, rope_smem.index(slot))


@gluon.jit
def zero_rows_past(kv_tile, rope_tile, valid, box_layout: gl.constexpr):
    """Zero token rows >= valid of a landed tile (unused cache slots may hold NaN)."""
    keep = gl.expand_dims(gl.arange(0, BLOCK_N, gl.SliceLayout(1, box_layout)) < valid, 1)
    for c in gl.static_range(QK_BOXES):
        if c < V_BOXES:
            box = kv_tile.slice(c * BOX, BOX, 1)
        else:
            box = rope_tile
        x = box.load(box_layout)
        box.store(gl.where(keep, x, gl.zeros_like(x)))
    fence_async_shared()  # generic-proxy writes, read next by wgmma (async proxy)
    gl.thread_barrier()


@gluon.jit
def scores(q_nope, q_rope, kv_smem, rope_smem, ready, it, valid, box_l: gl.constexpr, s_mma: gl.constexpr):
    """Issue S = Q K^T (two async wgmma groups) on the it-th tile of the ring, once it has landed (rows >= valid
    zeroed first)."""
    slot = it % NUM_STAGES
    kv_tile = kv_smem.index(slot)
    rope_tile = rope_smem.index(slot)
    mbarrier.wait(ready.index(slot), (it // NUM_STAGES) & 1)
    if valid < BLOCK_N:
        zero_rows_past(kv_tile, rope_tile, valid, box_l)
    s = warpgroup_mma(q_nope, kv_tile.permute((1, 0)), gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_mma),
                      is_async=True)
    return warpgroup_mma(q_rope, rope_tile.permute((1, 0)), s, is_async=True)


@gluon.jit(do_not_specialize=["stride_btb", "seqlen_cap", "num_blocks"])  # engine-dependent; no variant per value
def mla_decode_hopper_kernel(
    Q, k_desc, BLOCK_TABLE, SEQLENS, SCHED, NUM_SPLITS,
    OUT, LSE, OUT_PARTIAL, LSE_PARTIAL,
    qk_scale_log2,
    stride_qb, stride_qs, stride_qh,
    stride_btb,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh,
    stride_ps, stride_ph, stride_pr,
    stride_pls, stride_plh,
    seq_q, heads_per_kv, seqlen_cap, num_blocks,
    PAGE_SIZE: gl.constexpr, CAUSAL: gl.constexpr, PLAN_TILE: gl.constexpr, SCHED_ROW: gl.constexpr,
    NUM_STAGES: gl.constexpr, num_warps: gl.constexpr,
):
    dtype: gl.constexpr = Q.dtype.element_ty
    # Two warpgroups side by side along N: each owns half the columns of S (32 of 64) and of O (256 of 512).
    s_mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, 32, 16])
    o_mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2], instr_shape=[16, 256, 16])
    s_row: gl.constexpr = gl.SliceLayout(1, s_mma)
    o_row: gl.constexpr = gl.SliceLayout(1, o_mma)
    box_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])  # coalesced 64x64 loads
    wide_smem: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, V_BOXES * BOX], dtype)
    box_smem: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BOX], dtype)

    m_block = gl.program_id(0)
    kv_head = gl.program_id(1)
    part = gl.program_id(2)

    # Q and each K tile as 512 latent + 64 RoPE columns; [64, 512] in the 128-byte swizzle is 8 slabs of 64
    # columns (one TMA box each), and is the B operand of O += P V in one wgmma.
    q_nope = gl.allocate_shared_memory(dtype, [BLOCK_M, V_BOXES * BOX], wide_smem)
    q_rope = gl.allocate_shared_memory(dtype, [BLOCK_M, BOX], box_smem)
    kv_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_N, V_BOXES * BOX], wide_smem)
    rope_smem = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_N, BOX], box_smem)
    p_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, BLOCK_N], box_smem)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(ready.index(i), count=1)

    # Query rows of this program: row r = q_pos * heads_per_kv + head-in-group (as the portable kernel).
    rows_q = m_block * BLOCK_M + gl.arange(0, BLOCK_M, gl.SliceLayout(1, box_l))
    row_ok_q = gl.expand_dims(rows_q < seq_q * heads_per_kv, 1)
    q_off = (rows_q // heads_per_kv) * stride_qs + (kv_head * heads_per_kv + rows_q % heads_per_kv) * stride_qh
    q_cols = gl.arange(0, BOX, gl.SliceLayout(0, box_l))
    s_rows = m_block * BLOCK_M + gl.arange(0, BLOCK_M, s_row)
    if CAUSAL:  # bottom-right alignment: query q_pos sees keys < seqlen - (seq_q - 1 - q_pos)
        key_shift = seq_q - 1 - s_rows // heads_per_kv
    else:
        key_shift = gl.zeros([BLOCK_M], gl.int32, s_row)
    s_cols = gl.arange(0, BLOCK_N, gl.SliceLayout(0, s_mma))
    col0 = kv_head * (QK_BOXES * BOX)  # the cache is seen by TMA as [tokens, heads_kv * 576]

    begin_req, begin_tile, end_req, end_tile, begin_split = plan_row(SCHED, part, SCHED_ROW)

    it = 0  # tiles consumed by this program so far: ring slot = it % NUM_STAGES, phase = (it // NUM_STAGES) & 1
    for b in range(begin_req, end_req + 1):
        b64 = b.to(gl.int64)
        seqlen, lo, hi, _, has_work = request_tiles(SEQLENS, b, begin_req, begin_tile, end_req, end_tile, seqlen_cap,
                                                    PLAN_TILE)
        key_end = gl.expand_dims(seqlen - key_shift, 1)
        bt_row = BLOCK_TABLE + b64 * stride_btb
        n_tiles = gl.cdiv(gl.maximum(hi - lo, 0), BLOCK_N)

        gl.thread_barrier()  # every warp is done with Q, P and the ring of the previous request
        for i in gl.static_range(NUM_STAGES):  # both slots are free: start the first two tiles
            if i < n_tiles:
                issue_kv_tile(k_desc, bt_row, lo + i * BLOCK_N, col0, (it + i) % NUM_STAGES, kv_smem, rope_smem,
                              ready, num_blocks, PAGE_SIZE)
        q_base = Q + b64 * stride_qb + gl.expand_dims(q_off, 1)
        for c in gl.static_range(QK_BOXES):
            x = gl.load(q_base + gl.expand_dims(c * BOX + q_cols, 0), mask=row_ok_q, other=0.0)
            if c < V_BOXES:
                q_nope.slice(c * BOX, BOX, 1).store(x)
            else:
                q_rope.store(x)
        fence_async_shared()
        gl.thread_barrier()

        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, s_row)
        l_i = gl.zeros([BLOCK_M], gl.float32, s_row)
        o = gl.zeros([BLOCK_M, V_BOXES * BOX], gl.float32, o_mma)
        s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_mma)
        if n_tiles > 0:
            s = scores(q_nope, q_rope, kv_smem, rope_smem, ready, it, hi - lo, box_l, s_mma)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        for t in range(n_tiles):
            start = lo + t * BLOCK_N
            slot = it % NUM_STAGES
            tok = gl.expand_dims(start + s_cols, 0)
            s = gl.where((tok < hi) & (tok < key_end), s * qk_scale_log2, float("-inf"))
            m_i, l_i, alpha, p = online_softmax(s, m_i, l_i)
            p_smem.store(p.to(dtype))
            fence_async_shared()
            gl.thread_barrier()  # P is read whole by both warpgroups

            o = o * gl.expand_dims(gl.convert_layout(alpha, o_row), 1)
            o = warpgroup_mma(p_smem, kv_smem.index(slot), o, is_async=True)
            # Refill the slot first, so two tiles stay in flight while tile t+1 lands (memory-bound rows; a
            # variant issuing S of t+1 right behind P V lost here and is superseded for many rows by
            # kernel_sm90_seesaw: NOTES.md runs 8, 12).
            o = warpgroup_mma_wait(num_outstanding=0, deps=(o,))
            gl.thread_barrier()
            if t + 2 < n_tiles:
                issue_kv_tile(k_desc, bt_row, start + 2 * BLOCK_N, col0, slot, kv_smem, rope_smem, ready,
                              num_blocks, PAGE_SIZE)
            if t + 1 < n_tiles:
                s = scores(q_nope, q_rope, kv_smem, rope_smem, ready, it + 1, hi - start - BLOCK_N, box_l, s_mma)
                s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            it += 1

        # Epilogue: a request wholly in this part writes out/lse; a cut one writes its fp32 partial.
        row_seen = l_i > 0.0
        l_safe = gl.where(row_seen, l_i, 1.0)
        lse2 = gl.where(row_seen, m_i + gl.log2(l_safe), float("-inf"))
        o = o * gl.expand_dims(gl.convert_layout(1.0 / l_safe, o_row), 1)
        rows = m_block * BLOCK_M + gl.arange(0, BLOCK_M, o_row)
        cols = gl.expand_dims(gl.arange(0, V_BOXES * BOX, gl.SliceLayout(0, o_mma)), 0)
        row_ok = rows < seq_q * heads_per_kv
        q_pos = rows // heads_per_kv
        head = kv_head * heads_per_kv + rows % heads_per_kv
        split_begin = gl.load(NUM_SPLITS + b)
        num_splits = gl.load(NUM_SPLITS + b + 1) - split_begin
        if num_splits == 1:
            direct = row_ok & has_work
            o_ptrs = OUT + b64 * stride_ob + gl.expand_dims(q_pos * stride_os + head * stride_oh, 1) + cols
            gl.store(o_ptrs, o.to(OUT.dtype.element_ty), mask=gl.expand_dims(direct, 1))
            lse = gl.convert_layout(gl.where(row_seen, lse2 * LN2, float("inf")), o_row)
            gl.store(LSE + b64 * stride_lb + head * stride_lh + q_pos, lse, mask=direct)
        else:
            partial = row_ok & has_work
            split_row = (split_begin + gl.where(b == begin_req, begin_split, 0)).to(gl.int64)
            po_ptrs = OUT_PARTIAL + split_row * stride_ps + kv_head * stride_ph + gl.expand_dims(rows * stride_pr, 1)
            gl.store(po_ptrs + cols, o, mask=gl.expand_dims(partial, 1))
            gl.store(LSE_PARTIAL + split_row * stride_pls + kv_head * stride_plh + rows,
                     gl.convert_layout(lse2, o_row), mask=partial)

    for i in gl.static_range(NUM_STAGES):
        mbarrier.invalidate(ready.index(i))


def kv_descriptor(k_cache: torch.Tensor) -> TensorDescriptor:
    """The cache as TMA sees it: [num_blocks * page_size, heads_kv * 576], boxes of 64 tokens x 64 columns."""
    num_blocks, page_size, heads_kv, d = k_cache.shape
    flat = k_cache.view(num_blocks * page_size, heads_kv * d)
    dtype = gl.bfloat16 if k_cache.dtype == torch.bfloat16 else gl.float16
    layout = gl.NVMMASharedLayout.get_default_for([BLOCK_N.value, BOX.value], dtype)
    return TensorDescriptor(flat, list(flat.shape), list(flat.stride()), [BLOCK_N.value, BOX.value], layout)


def bind_decode_hopper(varying: tuple, q, k_cache, block_table, sched, out, lse, softmax_scale: float,
                       causal: bool) -> BoundKernel:
    """mla_decode_hopper_kernel for one configuration (same contract as kernel_portable.bind_decode; the second of the
    `varying` arguments is the cache's TMA descriptor). grid = (64-row blocks, KV heads, parts)."""
    batch, seq_q, heads_q, _ = q.shape
    _, page_size, heads_kv, _ = k_cache.shape
    heads_per_kv = heads_q // heads_kv
    rows = seq_q * heads_per_kv
    if rows > BLOCK_M.value:  # several 64-row blocks: compute-bound, the warp-specialized seesaw kernel
        return bind_decode_seesaw(varying, q, k_cache, block_table, sched, out, lse, softmax_scale, causal)
    grid = (triton.cdiv(rows, BLOCK_M.value), heads_kv, sched.shape[0])
    fixed = (softmax_scale * LOG2E, *fixed_strides(q, k_cache, block_table, out, lse, rows),
             seq_q, heads_per_kv, block_table.shape[1] * page_size, k_cache.shape[0],
             page_size, causal, PLAN_TILE, SCHED_ROW, NUM_STAGES.value)
    return BoundKernel(mla_decode_hopper_kernel, grid, varying, fixed, dict(num_warps=NUM_WARPS))
