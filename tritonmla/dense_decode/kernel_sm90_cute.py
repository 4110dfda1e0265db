"""Hopper (SM90) dense MLA decode kernel in CUTLASS's CuTe DSL: the seesaw consumers (core/cute_seesaw.py: the math,
the pair schedule, the hand-offs, the epilogue) over K tiles TMA-loaded from the paged cache. Same plan walk, split-KV
partials, causal mask and combine protocol as the Gluon kernels (kernel_sm90*.py) and the portable one.

Grid (row blocks of 64 query rows, KV heads, plan parts); a CTA walks its plan row's requests (request_tiles: a
request's tokens in this part, seqlen clamped to the block table's capacity). Threads: warpgroups 0 and 1 consume
(240 registers each by setmaxnreg), warpgroup 2 produces: one warp issues the TMA loads (24 registers), 9 boxes of
64 tokens x 64 columns per tile (one page of page_size >= 64 holds whole tiles), each box arriving on its own
mbarrier with expect_tx, with an L2 policy (EVICT_FIRST, as FlashMLA). It refills a slot's two halves in the order
the consumers release them. Page ids are clamped into [0, num_blocks): a bad block-table entry reads some page of
the cache, never out of bounds (README; tritonmla.check_inputs reports it).
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, const_expr
from cutlass.cute.nvgpu import cpasync

from ..core.constants import D_QK, D_V, SCHED_ROW
from ..core.cute_seesaw import (BLOCK_M, BLOCK_N, BOX, HALF_BOXES, QK_BOXES, THREADS, V_BOXES, SeesawSm90,
                                pv_tiled_mma, qk_tiled_mma, shared_storage, smem_layouts)

CONSUMER_REGS = 240
PRODUCER_REGS = 24
# L2 policy of the K tile loads (CUTLASS's CacheHintSm90): EVICT_FIRST as FlashMLA (whose notes report better L2 hit
# rates; on H200 here no difference beyond noise, scripts/cute_ab.py).
EVICT_FIRST, EVICT_NORMAL = 0x12F0000000000000, 0x1000000000000000
TMA_CACHE_POLICY = EVICT_FIRST


class MlaDecodeSm90(SeesawSm90):
    """One compiled variant per (dtype, page_size, L2 policy of the K loads); heads_kv and causal are runtime
    arguments. timeline: as SeesawSm90's."""
    READY_ARRIVALS = 1  # a K box lands by one TMA (arrive + expect_tx)

    def __init__(self, dtype, page_size: int, cache_policy: int = TMA_CACHE_POLICY, timeline: int = 0):
        assert page_size % BLOCK_N == 0
        super().__init__(dtype, timeline)
        self.page_size = page_size
        self.cache_policy = cache_policy

    # ---------------------------------------------------------------- host side (traced once per variant)
    @cute.jit
    def __call__(self, q_ptr: cute.Pointer, k_ptr: cute.Pointer, bt_ptr: cute.Pointer, seq_ptr: cute.Pointer,
                 sched_ptr: cute.Pointer, splits_ptr: cute.Pointer, o_ptr: cute.Pointer, lse_ptr: cute.Pointer,
                 op_ptr: cute.Pointer, lp_ptr: cute.Pointer, scale_log2: Float32, batch: Int32, seq_q: Int32,
                 heads_per_kv: Int32, heads_kv: Int32, causal: Int32, sqb8: Int64, sqs8: Int64, sqh8: Int64,
                 stride_btb: Int32, max_pages: Int32, num_blocks: Int32, slots: Int32, num_parts: Int32, stream):
        """Pointers and sizes only (no tensor objects: cheap to call). q's strides come in units of 8 elements so
        its rows load 16 bytes at a time; out, lse and the partials are contiguous."""
        heads_q = heads_per_kv * heads_kv
        rows = seq_q * heads_per_kv
        sqb, sqs, sqh = sqb8 * 8, sqs8 * 8, sqh8 * 8
        seqlen_cap = max_pages * self.page_size
        mQ = cute.make_tensor(q_ptr, cute.make_layout((batch, seq_q, heads_q, D_QK), stride=(sqb, sqs, sqh, 1)))
        mBT = cute.make_tensor(bt_ptr, cute.make_layout((batch, max_pages), stride=(stride_btb, 1)))
        mSeq = cute.make_tensor(seq_ptr, cute.make_layout(batch))
        mSched = cute.make_tensor(sched_ptr, cute.make_layout((num_parts, SCHED_ROW), stride=(SCHED_ROW, 1)))
        mNumSplits = cute.make_tensor(splits_ptr, cute.make_layout(batch + 1))
        mO = cute.make_tensor(o_ptr, cute.make_layout((batch, seq_q, heads_q, D_V),
                                                      stride=(Int64(seq_q) * heads_q * D_V, heads_q * D_V, D_V, 1)))
        mLse = cute.make_tensor(lse_ptr, cute.make_layout((batch, heads_q, seq_q),
                                                          stride=(heads_q * seq_q, seq_q, 1)))
        mOp = cute.make_tensor(op_ptr, cute.make_layout((slots, heads_kv, rows, D_V),
                                                        stride=(Int64(heads_kv) * rows * D_V, rows * D_V, D_V, 1)))
        mLp = cute.make_tensor(lp_ptr, cute.make_layout((slots, heads_kv, rows),
                                                        stride=(heads_kv * rows, rows, 1)))
        m_blocks = (rows + BLOCK_M - 1) // BLOCK_M
        dtype = self.dtype
        swz, k_outer, q_outer, v_outer = smem_layouts(dtype)
        # One box [64 tokens, 64 columns], 128-byte swizzle: 8 atoms of 8 rows down the tokens.
        box_layout = cute.make_composed_layout(swz, 0, cute.make_layout(((8, 8), BOX), stride=((BOX, 8 * BOX), 1)))

        # The cache as TMA sees it: [num_blocks * page_size, heads_kv * 576].
        mK2 = cute.make_tensor(k_ptr, cute.make_layout((num_blocks * self.page_size, heads_kv * D_QK),
                                                       stride=(heads_kv * D_QK, 1)))
        tma_atom, tma_k = cpasync.make_tiled_tma_atom(cpasync.CopyBulkTensorTileG2SOp(), mK2, box_layout,
                                                      (BLOCK_N, BOX))

        qk_mma = qk_tiled_mma(dtype)
        pv_mma_rs = pv_tiled_mma(dtype, True)
        pv_mma_ss = pv_tiled_mma(dtype, False)
        Storage = shared_storage(dtype)
        self.kernel(mQ, tma_atom, tma_k, mBT, mSeq, mSched, mNumSplits, mO, mLse, mOp, mLp,
                    scale_log2, seq_q, heads_per_kv, causal, seqlen_cap, num_blocks,
                    qk_mma, pv_mma_rs, pv_mma_ss, k_outer, q_outer, v_outer, swz, Storage).launch(
            grid=[m_blocks, heads_kv, num_parts], block=[THREADS, 1, 1], smem=Storage.size_in_bytes(),
            stream=stream)

    # ---------------------------------------------------------------- device side
    @cute.kernel
    def kernel(self, mQ: cute.Tensor, tma_atom: cute.CopyAtom, tma_k: cute.Tensor, mBT: cute.Tensor,
               mSeq: cute.Tensor, mSched: cute.Tensor, mNumSplits: cute.Tensor, mO: cute.Tensor, mLse: cute.Tensor,
               mOp: cute.Tensor, mLp: cute.Tensor, scale_log2: Float32, seq_q: Int32, heads_per_kv: Int32,
               causal: Int32, seqlen_cap: Int32, num_blocks: Int32, qk_mma: cute.TiledMma, pv_mma_rs: cute.TiledMma,
               pv_mma_ss: cute.TiledMma, k_outer: cute.Layout,
               q_outer: cute.Layout, v_outer: cute.Layout, swz, Storage: cutlass.Constexpr):
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg = warp // 4
        ready, empty, hand, sQ, sK, sV, sRows = self.shared(Storage, swz, k_outer, q_outer, v_outer)

        part = cute.arch.block_idx()[2]
        begin_req = mSched[part, 0]
        begin_tile = mSched[part, 1]
        end_req = mSched[part, 2]
        end_tile = mSched[part, 3]
        begin_split = mSched[part, 4]

        if wg == 2:
            cute.arch.setmaxregister_decrease(PRODUCER_REGS)
            if warp == 8:
                self.producer(tma_atom, tma_k, sK, mBT, mSeq, ready, empty, begin_req, begin_tile, end_req,
                              end_tile, seqlen_cap, num_blocks)
        else:
            cute.arch.setmaxregister_increase(CONSUMER_REGS)
            args = (mQ, mSeq, mNumSplits, mO, mLse, mOp, mLp, sQ, sK, sV, sRows, ready, empty, hand, qk_mma, pv_mma_rs,
                    pv_mma_ss, scale_log2, seq_q, heads_per_kv, causal, seqlen_cap, begin_req, begin_tile, end_req,
                    end_tile, begin_split)
            if wg == 0:  # the role is a compile-time constant of each branch
                self.consumer(0, *args)
            else:
                self.consumer(1, *args)

    @cute.jit
    def request_tiles(self, mSeq: cute.Tensor, b: Int32, begin_req: Int32, begin_tile: Int32, end_req: Int32,
                      end_tile: Int32, seqlen_cap: Int32):
        """Request b's part in this plan row (as kernel_portable.request_tiles): seqlen clamped to
        [0, seqlen_cap], the part's tokens [lo, hi), its tile count, and whether the part writes the output."""
        seqlen = cutlass.min(cutlass.max(mSeq[b], 0), seqlen_cap)
        lo = Int32(0)
        if b == begin_req:
            lo = begin_tile * BLOCK_N
        hi_tiles = (seqlen + BLOCK_N - 1) // BLOCK_N
        if b == end_req:
            hi_tiles = end_tile
        hi = cutlass.min(hi_tiles * BLOCK_N, seqlen)
        n_tiles = (cutlass.max(hi - lo, 0) + BLOCK_N - 1) // BLOCK_N
        has_work = (hi > lo) or (seqlen == 0)
        return seqlen, lo, hi, n_tiles, has_work

    # ---------------------------------------------------------------- producer: one warp of TMA
    @cute.jit
    def producer(self, tma_atom, tma_k, sK, mBT, mSeq, ready, empty, begin_req, begin_tile, end_req, end_tile,
                 seqlen_cap, num_blocks):
        kv_head = cute.arch.block_idx()[1]
        # Boxes: gK[(box elems), row tile, column box]; sK boxes[(box elems), column box, slot].
        gK = cute.flat_divide(tma_k, (BLOCK_N, BOX))
        sKb = cute.flat_divide(sK, (BLOCK_N, BOX))  # (64, 64, 1, 9, 2)
        tKsK, tKgK = cpasync.tma_partition(tma_atom, 0, cute.make_layout(1), cute.group_modes(sKb, 0, 2),
                                           cute.group_modes(gK, 0, 2))
        box_bytes = BLOCK_N * BOX * self.dtype.width // 8
        fills_a = Int32(0)  # fills of slot 0 / 1 so far: the k-th fill waits for the (k-1)-th release
        fills_b = Int32(0)
        for b in cutlass.range(begin_req, end_req + 1, unroll=1):
            seqlen, lo, hi, n_tiles, has_work = self.request_tiles(mSeq, b, begin_req, begin_tile, end_req,
                                                                   end_tile, seqlen_cap)
            for j in cutlass.range((n_tiles + 1) // 2, unroll=1):
                row_tile = cute.make_rmem_tensor((2,), Int32)
                for slot in cutlass.range_constexpr(2):
                    start = lo + (2 * j + slot) * BLOCK_N
                    page = cutlass.min(cutlass.max(mBT[b, cutlass.min(start, hi - 1) // self.page_size], 0),
                                       num_blocks - 1)
                    row_tile[slot] = (page * self.page_size + start % self.page_size) // BLOCK_N
                # A slot is released in two groups: first the V half only its owner reads, then the other half
                # and the RoPE box. The four releases of a pair come in this order (A's left half after P_A V_A,L,
                # B's right half after P_B V_B,R, then A's and B's rest), so each refill starts as soon as it can.
                for g in cutlass.range_constexpr(2):
                    for slot in cutlass.range_constexpr(2):
                        if 2 * j + slot < n_tiles:
                            fills = fills_a + j
                            if const_expr(slot == 1):
                                fills = fills_b + j
                            cute.arch.mbarrier_wait(empty + slot * 2 + g, (fills & 1) ^ 1)
                            self.mark(2, (fills_a + j) * 8 + g * 2 + slot, g * 2 + slot)
                            for i in cutlass.range_constexpr(HALF_BOXES + g):
                                c = (i + (slot + g) * HALF_BOXES) % V_BOXES
                                if i == HALF_BOXES:
                                    c = V_BOXES
                                bar = ready + slot * QK_BOXES + c
                                with cute.arch.elect_one():
                                    cute.arch.mbarrier_arrive_and_expect_tx(bar, box_bytes)
                                cute.copy(tma_atom, tKgK[None, row_tile[slot], kv_head * QK_BOXES + c],
                                          tKsK[None, 0, c, slot], tma_bar_ptr=bar,
                                          cache_policy=Int64(self.cache_policy))
            fills_a += (n_tiles + 1) // 2
            fills_b += n_tiles // 2


def placeholder_args(dtype_name: str) -> tuple:
    """__call__'s arguments for cute.compile: pointers with the alignment calls guarantee (16 bytes), placeholder
    scalars (their values are not baked in)."""
    import cuda.bindings.driver as cuda
    from cutlass.cute.runtime import make_ptr

    dtype = {"bf16": cutlass.BFloat16, "fp16": cutlass.Float16}[dtype_name]
    f32, i32, i64 = cutlass.Float32, cutlass.Int32, cutlass.Int64

    def ptr(t):
        return make_ptr(t, 16, cute.AddressSpace.gmem, assumed_align=16)

    return (ptr(dtype), ptr(dtype), ptr(i32), ptr(i32), ptr(i32), ptr(i32), ptr(dtype), ptr(f32), ptr(f32), ptr(f32),
            f32(1.0), *(i32(1),) * 5, *(i64(1),) * 3, *(i32(1),) * 5, cuda.CUstream(0))


def compile_offline(dtype_name: str = "bf16", page_size: int = 64, timeline: int = 0) -> dict:
    """Compile one variant with placeholder pointers (no GPU needed: set CUTE_DSL_ARCH=sm_90a before cutlass is
    imported) and return the SASS facts of its cubin (tritonmla.core.cute_runtime.sass_facts): the CPU tests'
    view of the kernel."""
    from ..core.cute_runtime import sass_facts
    dtype = {"bf16": cutlass.BFloat16, "fp16": cutlass.Float16}[dtype_name]
    return sass_facts(cute.compile(MlaDecodeSm90(dtype, page_size, timeline=timeline), *placeholder_args(dtype_name)))
