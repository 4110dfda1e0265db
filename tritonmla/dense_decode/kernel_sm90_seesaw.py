"""Hopper (SM90) MLA decode kernel for many query rows (several 64-row blocks): FlashMLA's "seesaw" schedule in
Gluon, warp-specialized. Same plan walk, split-KV partials, causal mask and combine as kernel_sm90.

Math (online softmax, log2 domain), per query row and the keys k_j of its request, V = k_j[:512]:
    s_j = scale*log2e * q.k_j,  m' = max(m, rowmax s),  l' = l 2^(m-m') + sum_j 2^(s_j-m'),
    o' = o 2^(m-m') + sum_j 2^(s_j-m') v_j;   out = o / l,  lse = (m + log2 l) ln 2.

Seesaw (FlashMLA, docs/20250422-new-kernel-deep-dive.md): the 64 x 512 fp32 output is split into O_L (columns
0..255, warpgroup 0) and O_R (256..511, warpgroup 1). KV tiles come in pairs (A, B); each warpgroup computes the
full 64 x 64 scores of its own tile (wgmma N = 64), so the two S products run at the same time. Per pair, with m
the running max both warpgroups share:
    [0] S_A = Q K_A^T;  m_A = max(m, rowmax S_A);  P_A = 2^(S_A - m_A);  O_L = O_L 2^(m - m_A) + P_A V_A,L
    [1] S_B = Q K_B^T;  m_B = max(m_A, rowmax S_B);  P_B = 2^(S_B - m_B);
        O_R = O_R 2^(m - m_B) + P_B V_B,R + (P_A 2^(m_A - m_B)) V_A,R
    [0] O_L = O_L 2^(m_A - m_B) + P_B V_B,L;   m = m_B
Each warpgroup keeps the row sum l of the P it made; the two are added at the end. A warpgroup's own P is the
register A operand of its wgmma; the other's comes through shared memory, written over the RoPE box of its K
tile (no longer needed once S is done). The softmax of one warpgroup overlaps the other's wgmmas.

Partitions: warpgroup 0 (default), warpgroup 1, and one producer warp issuing TMA. Tile A of each pair lives in
ring slot 0, tile B in slot 1; a slot is 9 boxes of 64 tokens x 64 columns with one mbarrier per box, so S starts
as the first box lands. A slot is refilled in two groups, each as soon as its last reader is done: the V half
only its owner reads (released mid-pair), then the other half and the RoPE box / P.

Hand-offs between the warpgroups (m_A, m_B, P_A, the row sums, Q) go through hardware named barriers over the
256 consumer threads (`bar.arrive` by the writers, `bar.sync` by the readers, as FlashMLA's NamedBarrier): every
writing thread arrives itself, so each write is ordered before the reads by the barrier (PTX memory model), not
by another thread's release. Writers of what a wgmma reads (P, zeroed tails, Q) fence the async proxy first.
Tail tiles (unused cache slots may hold NaN, and 0 * NaN would poison P V) are zeroed in shared memory by the
warpgroup that owns the tile before anyone uses them.
"""
from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)

from ..core.constants import D_QK, D_V, LOG2E, LN2, PLAN_TILE, SCHED_ROW
from ..core.gluon_helpers import named_barrier, stall
from ..core.launch import BoundKernel
from ..scheduler.planner import plan_row
from .kernel_portable import fixed_strides, request_tiles

BLOCK_M = gl.constexpr(64)  # query rows per program: the wgmma M of one warpgroup
BLOCK_N = gl.constexpr(64)  # tokens per KV tile: one TMA box height, = PLAN_TILE
BOX = gl.constexpr(64)  # columns per TMA box / wgmma K chunk
HALF = gl.constexpr(D_V // 2)  # output columns per warpgroup
QK_BOXES = gl.constexpr(D_QK // BOX.value)  # 9
V_BOXES = gl.constexpr(D_V // BOX.value)  # 8
HALF_BOXES = gl.constexpr(V_BOXES.value // 2)  # 4
NUM_WARPS = 4  # per consumer warpgroup (the default partition); the kernel runs 4 + 4 + 1 warps
MAXNREG = 168  # 12 warps (rounded up) x 168 = the register file; re-split as 240 / 240 / 24
STRESS_DELAY_NS = 0  # tests set it (then rebind) to delay every writer of a hand-off; 0 in use
CONSUMER_REGS = gl.constexpr(240)
PRODUCER_REGS = gl.constexpr(24)
# Named barriers over both consumer warpgroups. Triton's warp_specialize uses ids 0 and 1 and one per partition
# from 2; ids 8-11 are ours. "sync" waits for all 256 threads, "arrive" counts this warpgroup and goes on. Not the
# .aligned forms (`bar.sync`/`bar.arrive`): those require every participating thread to execute the same
# instruction, and here the two warpgroups reach a barrier from different code (compute-sanitizer synccheck flags
# `bar.sync` met at two program counters: scripts/racecheck_named_barrier.py, NOTES.md run 12).
SYNC_BOTH = gl.constexpr("barrier.sync 8, 256;")  # both warpgroups meet (Q stored, row sums stored)
ARRIVE_M_A = gl.constexpr("barrier.arrive 9, 256;")  # warpgroup 0 -> 1: m_A stored, tile A zeroed
SYNC_M_A = gl.constexpr("barrier.sync 9, 256;")
ARRIVE_M_B = gl.constexpr("barrier.arrive 10, 256;")  # warpgroup 1 -> 0: m_B and P_B stored, tile B zeroed
SYNC_M_B = gl.constexpr("barrier.sync 10, 256;")
ARRIVE_P_A = gl.constexpr("barrier.arrive 11, 256;")  # warpgroup 0 -> 1: P_A stored
SYNC_P_A = gl.constexpr("barrier.sync 11, 256;")


@gluon.jit
def issue_box(k_desc, row, col0, kv_smem, rope_smem, ready, SLOT: gl.constexpr, c: gl.constexpr):
    bar = ready.index(SLOT * QK_BOXES + c)
    mbarrier.expect(bar, k_desc.block_type.nbytes)
    if c < V_BOXES:
        tma.async_copy_global_to_shared(k_desc, [row, col0 + c * BOX], bar, kv_smem.index(SLOT).slice(c * BOX, BOX, 1))
    else:
        tma.async_copy_global_to_shared(k_desc, [row, col0 + c * BOX], bar, rope_smem.index(SLOT))


@gluon.jit
def issue_boxes(k_desc, row, col0, kv_smem, rope_smem, ready, empty, fills, SLOT: gl.constexpr):
    """TMA one tile into SLOT in two groups, each once its previous contents are released: first the V half only
    the owning warpgroup reads (slot 0: columns 0..255, slot 1: 256..511), then the other half and the RoPE box
    (read by both warpgroups: the other half by P V, the RoPE box as P). tile_scores takes the boxes in this
    order."""
    mbarrier.wait(empty.index(SLOT * 2), (fills & 1) ^ 1)
    for i in gl.static_range(HALF_BOXES):
        issue_box(k_desc, row, col0, kv_smem, rope_smem, ready, SLOT, (i + SLOT * HALF_BOXES) % V_BOXES)
    mbarrier.wait(empty.index(SLOT * 2 + 1), (fills & 1) ^ 1)
    for i in gl.static_range(HALF_BOXES):
        issue_box(k_desc, row, col0, kv_smem, rope_smem, ready, SLOT, (i + (SLOT + 1) * HALF_BOXES) % V_BOXES)
    issue_box(k_desc, row, col0, kv_smem, rope_smem, ready, SLOT, V_BOXES)


@gluon.jit
def kv_producer(k_desc, kv_smem, rope_smem, ready, empty, BLOCK_TABLE, SEQLENS, SCHED, stride_btb, seqlen_cap,
                num_blocks, PAGE_SIZE: gl.constexpr, SCHED_ROW: gl.constexpr):
    """One warp: walk the same plan as the consumers and TMA tile t of each request into slot t % 2. Page ids
    are clamped into [0, num_blocks) before they become TMA rows (a bad block-table entry loads some page of the
    cache, never rows outside it)."""
    col0 = gl.program_id(1) * (QK_BOXES * BOX)  # the cache is seen by TMA as [tokens, heads_kv * 576]
    begin_req, begin_tile, end_req, end_tile, _ = plan_row(SCHED, gl.program_id(2), SCHED_ROW)
    fills_a = 0  # fills of slot 0 so far; the k-th fill waits for the (k-1)-th release: phase (k & 1) ^ 1
    fills_b = 0
    for b in range(begin_req, end_req + 1):
        seqlen, lo, hi, n_tiles, has_work = request_tiles(SEQLENS, b, begin_req, begin_tile, end_req, end_tile,
                                                          seqlen_cap, BLOCK_N)
        bt_row = BLOCK_TABLE + b.to(gl.int64) * stride_btb
        for t in range(n_tiles):
            slot = t % 2
            fills = gl.where(slot == 0, fills_a, fills_b) + t // 2
            start = lo + t * BLOCK_N
            page = gl.minimum(gl.maximum(gl.load(bt_row + start // PAGE_SIZE), 0), num_blocks - 1)
            row = page * PAGE_SIZE + start % PAGE_SIZE
            if slot == 0:
                issue_boxes(k_desc, row, col0, kv_smem, rope_smem, ready, empty, fills, 0)
            else:
                issue_boxes(k_desc, row, col0, kv_smem, rope_smem, ready, empty, fills, 1)
        fills_a += (n_tiles + 1) // 2
        fills_b += n_tiles // 2


@gluon.jit
def release(empty, slot: gl.constexpr, group: gl.constexpr, pred):
    """This warpgroup is done with box group `group` of `slot` (see issue_boxes): the producer may refill it. The
    reads were wgmma's (async proxy, complete at their wait in every thread); the partition barrier orders every
    thread's wait before the one thread's arrive."""
    gl.thread_barrier()
    mbarrier.arrive(empty.index(slot * 2 + group), pred=pred)


@gluon.jit
def wait_boxes(ready, slot: gl.constexpr, first: gl.constexpr, count: gl.constexpr, phase):
    for c in gl.static_range(count):
        mbarrier.wait(ready.index(slot * QK_BOXES + first + c), phase)


@gluon.jit
def score_box(s, q_nope, q_rope, kv_smem, rope_smem, ready, slot: gl.constexpr, c: gl.constexpr, phase, valid,
              keep, box_l: gl.constexpr, STRESS_DELAY_NS: gl.constexpr):
    """S += Q[:, box c] K[:, box c]^T once box c of the tile in `slot` has landed (zeroing rows >= valid)."""
    mbarrier.wait(ready.index(slot * QK_BOXES + c), phase)
    if c < V_BOXES:
        box = kv_smem.index(slot).slice(c * BOX, BOX, 1)
        q_box = q_nope.slice(c * BOX, BOX, 1)
    else:
        box = rope_smem.index(slot)
        q_box = q_rope
    if valid < BLOCK_N:
        x = box.load(box_l)
        stall(STRESS_DELAY_NS)
        box.store(gl.where(keep, x, gl.zeros_like(x)))
        fence_async_shared()  # generic-proxy writes, read next by wgmma (async proxy)
        gl.thread_barrier()
    return warpgroup_mma(q_box, box.permute((1, 0)), s, is_async=True)


@gluon.jit
def tile_scores(q_nope, q_rope, kv_smem, rope_smem, ready, slot: gl.constexpr, phase, valid, box_l: gl.constexpr,
                s_mma: gl.constexpr, STRESS_DELAY_NS: gl.constexpr):
    """S = Q K^T of the tile in `slot`, one wgmma per box as it lands, in the producer's order."""
    s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_mma)
    keep = gl.expand_dims(gl.arange(0, BLOCK_N, gl.SliceLayout(1, box_l)) < valid, 1)
    for i in gl.static_range(QK_BOXES):
        s = score_box(s, q_nope, q_rope, kv_smem, rope_smem, ready, slot,
                      (i + slot * HALF_BOXES) % V_BOXES if i < V_BOXES else V_BOXES, phase, valid, keep, box_l,
                      STRESS_DELAY_NS)
    return warpgroup_mma_wait(num_outstanding=0, deps=(s,))


@gluon.jit
def safe(m):
    """The max to subtract: a row with nothing visible yet (m = -inf) uses 0, so 2^(-inf - 0) = 0."""
    return gl.where(m == float("-inf"), 0.0, m)


@gluon.jit
def seesaw_consumer(
    ROLE: gl.constexpr, Q, SEQLENS, SCHED, NUM_SPLITS, OUT, LSE, OUT_PARTIAL, LSE_PARTIAL,
    q_nope, q_rope, kv_smem, rope_smem, row_smem, ready, empty,
    qk_scale_log2, strides, seq_q, heads_per_kv, seqlen_cap,
    CAUSAL: gl.constexpr, SCHED_ROW: gl.constexpr, STRESS_DELAY_NS: gl.constexpr,
):
    """Warpgroup ROLE (0 or 1): owns output columns [ROLE*256, ROLE*256 + 256) and tile A (0) / B (1) of each
    pair; see the module docstring for the schedule."""
    (stride_qb, stride_qs, stride_qh, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
     stride_ps, stride_ph, stride_pr, stride_pls, stride_plh) = strides
    dtype: gl.constexpr = Q.dtype.element_ty
    s_mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
    o_mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                    instr_shape=[16, HALF, 16])
    p_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_mma, k_width=2)
    s_row: gl.constexpr = gl.SliceLayout(1, s_mma)
    o_row: gl.constexpr = gl.SliceLayout(1, o_mma)
    box_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])  # coalesced 64x64 loads

    m_block = gl.program_id(0)
    kv_head = gl.program_id(1)
    col_lo = ROLE * HALF

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

    begin_req, begin_tile, end_req, end_tile, begin_split = plan_row(SCHED, gl.program_id(2), SCHED_ROW)
    uses_a = 0  # uses of ring slot 0 / 1 so far (the phase of their `ready` barriers)
    uses_b = 0
    for b in range(begin_req, end_req + 1):
        b64 = b.to(gl.int64)
        seqlen, lo, hi, n_tiles, has_work = request_tiles(SEQLENS, b, begin_req, begin_tile, end_req, end_tile,
                                                          seqlen_cap, BLOCK_N)
        key_end = gl.expand_dims(seqlen - key_shift, 1)

        # Q of this request: each warpgroup stores half of the boxes. Both finished every wgmma on the previous
        # request's Q before they met at its row sums (SYNC_BOTH below), so Q is free.
        q_base = Q + b64 * stride_qb + gl.expand_dims(q_off, 1)
        for c in gl.static_range(QK_BOXES):
            if c % 2 == ROLE:
                x = gl.load(q_base + gl.expand_dims(c * BOX + q_cols, 0), mask=row_ok_q, other=0.0)
                stall(STRESS_DELAY_NS)
                if c < V_BOXES:
                    q_nope.slice(c * BOX, BOX, 1).store(x)
                else:
                    q_rope.store(x)
        fence_async_shared()
        named_barrier(SYNC_BOTH)

        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, s_row)
        l_i = gl.zeros([BLOCK_M], gl.float32, s_row)
        o = gl.zeros([BLOCK_M, HALF], gl.float32, o_mma)
        for j in range(gl.cdiv(n_tiles, 2)):
            start_a = lo + 2 * j * BLOCK_N
            start_b = start_a + BLOCK_N
            has_b = start_b < hi
            phase_a = uses_a & 1
            phase_b = uses_b & 1
            if ROLE == 0:
                s = tile_scores(q_nope, q_rope, kv_smem, rope_smem, ready, 0, phase_a, hi - start_a, box_l, s_mma,
                                STRESS_DELAY_NS)
                tok = gl.expand_dims(start_a + s_cols, 0)
                s = gl.where((tok < hi) & (tok < key_end), s * qk_scale_log2, float("-inf"))
                m_a = gl.maximum(m_i, gl.max(s, 1))
                stall(STRESS_DELAY_NS)
                row_smem[0].store(m_a)
                named_barrier(ARRIVE_M_A)
                scale_a = gl.exp2(m_i - safe(m_a))
                p = gl.exp2(s - gl.expand_dims(safe(m_a), 1))
                l_i = l_i * scale_a + gl.sum(p, 1)
                o = o * gl.expand_dims(gl.convert_layout(scale_a, o_row), 1)
                o = warpgroup_mma(gl.convert_layout(p.to(dtype), p_op), kv_smem.index(0).slice(0, HALF, 1), o,
                                  is_async=True)
                # m_B from warpgroup 1; P_A, rescaled to it, goes over the RoPE box of tile A for O_R.
                named_barrier(SYNC_M_B)
                stall(STRESS_DELAY_NS)  # a reader late to read: what a hand-off must also order
                m_b = row_smem[1].load(s_row)
                scale_b = gl.exp2(m_a - safe(m_b))
                stall(STRESS_DELAY_NS)
                rope_smem.index(0).store((p * gl.expand_dims(scale_b, 1)).to(dtype))
                fence_async_shared()
                named_barrier(ARRIVE_P_A)
                o = warpgroup_mma_wait(num_outstanding=0, deps=(o,))
                release(empty, 0, 0, True)  # tile A's left half: only this warpgroup reads it
                o = o * gl.expand_dims(gl.convert_layout(scale_b, o_row), 1)
                l_i = l_i * scale_b
                if has_b:  # O_L += P_B V_B,L (P_B is in tile B's RoPE box since M_B)
                    wait_boxes(ready, 1, 0, HALF_BOXES, phase_b)
                    o = warpgroup_mma(rope_smem.index(1), kv_smem.index(1).slice(0, HALF, 1), o, is_async=True)
                    o = warpgroup_mma_wait(num_outstanding=0, deps=(o,))
                release(empty, 1, 1, has_b)  # tile B's left half and P_B
                m_i = m_b
            else:
                s = gl.full([BLOCK_M, BLOCK_N], float("-inf"), gl.float32, s_mma)
                if has_b:
                    s = tile_scores(q_nope, q_rope, kv_smem, rope_smem, ready, 1, phase_b, hi - start_b, box_l,
                                    s_mma, STRESS_DELAY_NS)
                    tok = gl.expand_dims(start_b + s_cols, 0)
                    s = gl.where((tok < hi) & (tok < key_end), s * qk_scale_log2, float("-inf"))
                named_barrier(SYNC_M_A)
                wait_boxes(ready, 0, HALF_BOXES, HALF_BOXES, phase_a)  # tile A landed (and zeroed) by now
                stall(STRESS_DELAY_NS)  # a reader late to read: what a hand-off must also order
                m_a = row_smem[0].load(s_row)
                m_b = gl.maximum(m_a, gl.max(s, 1))
                p = gl.exp2(s - gl.expand_dims(safe(m_b), 1))  # all 0 without tile B
                stall(STRESS_DELAY_NS)
                if has_b:
                    rope_smem.index(1).store(p.to(dtype))
                    fence_async_shared()
                row_smem[1].store(m_b)
                named_barrier(ARRIVE_M_B)
                scale = gl.exp2(m_i - safe(m_b))  # = 2^(m - m_A) 2^(m_A - m_B)
                l_i = l_i * scale + gl.sum(p, 1)
                o = o * gl.expand_dims(gl.convert_layout(scale, o_row), 1)
                # Without tile B, p is 0 and the V operand is tile A's (finite: tails are zeroed), not slot 1's.
                o = warpgroup_mma(gl.convert_layout(p.to(dtype), p_op),
                                  kv_smem.index(has_b.to(gl.int32)).slice(HALF, HALF, 1), o, is_async=True)
                named_barrier(SYNC_P_A)
                o = warpgroup_mma(rope_smem.index(0), kv_smem.index(0).slice(HALF, HALF, 1), o, is_async=True)
                o = warpgroup_mma_wait(num_outstanding=1, deps=(o,))
                release(empty, 1, 0, has_b)  # tile B's right half: only this warpgroup reads it
                o = warpgroup_mma_wait(num_outstanding=0, deps=(o,))
                release(empty, 0, 1, True)  # tile A's right half and P_A
                m_i = m_b
            uses_a += 1
            uses_b += has_b.to(gl.int32)

        # Epilogue: l = l of warpgroup 0 + l of warpgroup 1; a request wholly in this part writes out/lse, a cut
        # one its partial.
        stall(STRESS_DELAY_NS)
        row_smem[2 + ROLE].store(l_i)
        named_barrier(SYNC_BOTH)
        stall(STRESS_DELAY_NS)
        l_i = l_i + row_smem[3 - ROLE].load(s_row)
        row_seen = l_i > 0.0
        l_safe = gl.where(row_seen, l_i, 1.0)
        lse2 = gl.where(row_seen, m_i + gl.log2(l_safe), float("-inf"))
        o = o * gl.expand_dims(gl.convert_layout(1.0 / l_safe, o_row), 1)
        rows = m_block * BLOCK_M + gl.arange(0, BLOCK_M, o_row)
        cols = gl.expand_dims(col_lo + gl.arange(0, HALF, gl.SliceLayout(0, o_mma)), 0)
        row_ok = rows < seq_q * heads_per_kv
        q_pos = rows // heads_per_kv
        head = kv_head * heads_per_kv + rows % heads_per_kv
        split_begin = gl.load(NUM_SPLITS + b)
        num_splits = gl.load(NUM_SPLITS + b + 1) - split_begin
        if num_splits == 1:
            direct = row_ok & has_work
            o_ptrs = OUT + b64 * stride_ob + gl.expand_dims(q_pos * stride_os + head * stride_oh, 1) + cols
            gl.store(o_ptrs, o.to(OUT.dtype.element_ty), mask=gl.expand_dims(direct, 1))
            if ROLE == 0:
                lse = gl.convert_layout(gl.where(row_seen, lse2 * LN2, float("inf")), o_row)
                gl.store(LSE + b64 * stride_lb + head * stride_lh + q_pos, lse, mask=direct)
        else:
            partial = row_ok & has_work
            split_row = (split_begin + gl.where(b == begin_req, begin_split, 0)).to(gl.int64)
            po_ptrs = OUT_PARTIAL + split_row * stride_ps + kv_head * stride_ph + gl.expand_dims(rows * stride_pr, 1)
            gl.store(po_ptrs + cols, o, mask=gl.expand_dims(partial, 1))
            if ROLE == 0:
                gl.store(LSE_PARTIAL + split_row * stride_pls + kv_head * stride_plh + rows,
                         gl.convert_layout(lse2, o_row), mask=partial)


@gluon.jit(do_not_specialize=["stride_btb", "seqlen_cap", "num_blocks"])  # engine-dependent; no variant per value
def mla_decode_seesaw_kernel(
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
    STRESS_DELAY_NS: gl.constexpr, num_warps: gl.constexpr,
):
    gl.static_assert(PLAN_TILE == BLOCK_N, "the plan cuts requests at 64-token tiles")
    dtype: gl.constexpr = Q.dtype.element_ty
    wide_smem: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, V_BOXES * BOX], dtype)
    box_smem: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BOX], dtype)
    # [64, 512] in the 128-byte swizzle is 8 slabs of 64 columns (one TMA box each); a 256-column half of a
    # K tile is the B operand of O_L / O_R += P V in one wgmma. 216 KB in all.
    q_nope = gl.allocate_shared_memory(dtype, [BLOCK_M, V_BOXES * BOX], wide_smem)
    q_rope = gl.allocate_shared_memory(dtype, [BLOCK_M, BOX], box_smem)
    kv_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, V_BOXES * BOX], wide_smem)
    rope_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_N, BOX], box_smem)  # then P_A / P_B
    # m_A, m_B, l of warpgroup 0, l of warpgroup 1
    row_l: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    row_smem = (gl.allocate_shared_memory(gl.float32, [BLOCK_M], row_l),
                gl.allocate_shared_memory(gl.float32, [BLOCK_M], row_l),
                gl.allocate_shared_memory(gl.float32, [BLOCK_M], row_l),
                gl.allocate_shared_memory(gl.float32, [BLOCK_M], row_l))
    ready = gl.allocate_shared_memory(gl.int64, [2 * QK_BOXES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [4, 1], mbarrier.MBarrierLayout())  # [slot * 2 + group]
    for i in gl.static_range(2 * QK_BOXES):
        mbarrier.init(ready.index(i), count=1)
    for i in gl.static_range(4):
        mbarrier.init(empty.index(i), count=1)
    fence_async_shared()

    strides = (stride_qb, stride_qs, stride_qh, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
               stride_ps, stride_ph, stride_pr, stride_pls, stride_plh)
    consumer_args = (Q, SEQLENS, SCHED, NUM_SPLITS, OUT, LSE, OUT_PARTIAL, LSE_PARTIAL,
                     q_nope, q_rope, kv_smem, rope_smem, row_smem, ready, empty,
                     qk_scale_log2, strides, seq_q, heads_per_kv, seqlen_cap, CAUSAL, SCHED_ROW,
                     STRESS_DELAY_NS)
    gl.warp_specialize([
        (seesaw_consumer, (0,) + consumer_args),
        (seesaw_consumer, (1,) + consumer_args),
        (kv_producer, (k_desc, kv_smem, rope_smem, ready, empty, BLOCK_TABLE, SEQLENS, SCHED, stride_btb,
                       seqlen_cap, num_blocks, PAGE_SIZE, SCHED_ROW)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


def bind_decode_seesaw(varying: tuple, q, k_cache, block_table, sched, out, lse, softmax_scale: float,
                       causal: bool) -> BoundKernel:
    """mla_decode_seesaw_kernel for one configuration (same contract as kernel_sm90.bind_decode_hopper)."""
    batch, seq_q, heads_q, _ = q.shape
    _, page_size, heads_kv, _ = k_cache.shape
    heads_per_kv = heads_q // heads_kv
    rows = seq_q * heads_per_kv
    grid = (triton.cdiv(rows, BLOCK_M.value), heads_kv, sched.shape[0])
    fixed = (softmax_scale * LOG2E, *fixed_strides(q, k_cache, block_table, out, lse, rows),
             seq_q, heads_per_kv, block_table.shape[1] * page_size, k_cache.shape[0],
             page_size, causal, PLAN_TILE, SCHED_ROW, STRESS_DELAY_NS)
    return BoundKernel(mla_decode_seesaw_kernel, grid, varying, fixed, dict(num_warps=NUM_WARPS, maxnreg=MAXNREG))
