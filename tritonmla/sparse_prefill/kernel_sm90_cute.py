"""Hopper (SM90) sparse prefill kernel in CuTe DSL: FlashMLA's flash_mla_sparse_fwd, the seesaw schedule
(core/cute_seesaw.py: its consumers, hand-offs and pair functions are reused as they are) over KV rows gathered by
index instead of the dense decode kernel's TMA-loaded pages.

Math, per query token s and head h (V = the first 512 columns of the gathered rows; log2 domain as in decoding):
    valid j: j < topk_length[s] and 0 <= indices[s, h_kv, j] < s_kv;  s_j = scale*log2e * q.kv[indices[s, h_kv, j]]
    m = max_j s_j,  l = sum_j 2^(s_j - m),  out = sum_j 2^(s_j - m) v_j / l * 1 / (1 + 2^(sink_h log2e - lse2)),
    lse2 = m + log2 l;  lse = lse2 ln 2 (+inf where nothing is valid, out 0 there),  max_logits = m ln 2 (-inf there).

d_qk 576 (V3.2) or 512 (MODEL1, a compile-time parameter): at 512 S reads the 8 V boxes only (QK_USED) and the
producer gathers no RoPE box; the P exchange still goes through that box's shared memory, which nothing else uses.

One CTA per (64 heads of a KV head, KV head, query token), the token and the row block folded into the grid's x
(up to 2^31 - 1 CTAs: any s_q FlashMLA takes): the consumers see one "request" (the token) whose keys are its topk
slots, 64 per tile, no split. The producer is a whole warpgroup (FlashMLA's prefill, phase1.cuh): 8
threads per 128-byte row segment, 16 row groups of 4 rows, each thread gathering its 16 bytes of every box of its
rows with cp.async (an invalid slot's copy reads nothing and fills zeros, so no NaN of an unreferenced row reaches a
tile), arriving on the box's ready barrier with cp.async.mbarrier.arrive.noinc (count 128) so S starts as boxes
land, in the consumers' release order. Invalid slots get -inf scores (core.cute_index_mask); their zero rows add
nothing to P V.
Registers: consumers 216, producer warpgroup 72 (FlashMLA's split: 256 x 216 + 128 x 72 <= 64 K).
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, const_expr

from ..core.constants import D_QK, D_V
from ..core.cute_index_mask import IndexMask
from ..core.cute_seesaw import (BLOCK_M, BLOCK_N, BOX, HALF_BOXES, QK_BOXES, SLOT_ELEMS, THREADS, TIMELINE_CTAS,
                                TIMELINE_SLOTS, V_BOXES, SeesawSm90, _vector,
                                copy16_async, l2_evict_last, pv_tiled_mma, qk_tiled_mma, shared_storage,
                                smem_layouts, swizzled)

CONSUMER_REGS = 216
PRODUCER_REGS = 72
LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453
CTA_LOG = 6  # int64 words per CTA of a timeline variant's CTA log (log_cta)
TIMELINE_BYTES = TIMELINE_CTAS * 3 * TIMELINE_SLOTS * 16  # the seesaw timeline's part of the buffer, before the log


class MlaSparsePrefillSm90(IndexMask, SeesawSm90):
    """One compiled variant per (has_topk_length, has_sink, d_qk 576 or 512). Everything else is a runtime argument."""
    READY_ARRIVALS = 128  # a K box lands when every producer thread's cp.asyncs for it have (arrive.noinc)
    L2_EVICT_FIRST = True  # Q (64 KB a token) and the output stream through L2 without displacing kv rows

    def __init__(self, has_topk_length: bool, has_sink: bool, d_qk: int = D_QK, timeline: int = 0):
        """timeline: as SeesawSm90's (scripts/cute_timeline.py prefill); the producer's row records instead of
        releases: the CTA's start (0), warpgroup 0's end (1), Q stored by warpgroup 0 / 1 (2, 3), the row sums
        shared (4, 5), the producer's first indices read (6) and its first group of boxes issued (7)."""
        assert d_qk in (D_QK, D_V)
        super().__init__(cutlass.BFloat16, timeline=timeline)
        self.has_len = has_topk_length
        self.has_sink = has_sink
        self.d_qk = d_qk
        self.QK_USED = d_qk // BOX

    # ---------------------------------------------------------------- host side
    @cute.jit
    def __call__(self, q_ptr: cute.Pointer, kv_ptr: cute.Pointer, idx_ptr: cute.Pointer, len_ptr: cute.Pointer,
                 sink_ptr: cute.Pointer, o_ptr: cute.Pointer, max_ptr: cute.Pointer,
                 lse_ptr: cute.Pointer, scale_log2: Float32, s_q: Int32, heads_q: Int32, heads_kv: Int32,
                 s_kv: Int32, topk: Int32, sq_s8: Int64, sq_h8: Int64, skv_s8: Int64, skv_h8: Int64, sidx_s: Int64,
                 sidx_h: Int64, stream):
        """q [s_q, h_q, d_qk] and kv [s_kv, h_kv, d_qk] with row strides in units of 8 elements (16-byte rows), indices
        [s_q, h_kv, topk] (last stride 1), topk_length [s_q], sink [h_q] fp32; out [s_q, h_q, 512], max_logits and
        lse [s_q, h_q], contiguous. The grid puts (token, row block) on x (up to 2^31 - 1 CTAs; y and z stop at
        65535), KV heads on y."""
        heads_per_kv = heads_q // heads_kv
        # The decode consumers' view: a batch of s_q requests of one query position each.
        mQ = cute.make_tensor(q_ptr, cute.make_layout((s_q, 1, heads_q, self.d_qk),
                                                      stride=(sq_s8 * 8, 0, sq_h8 * 8, 1)))
        mO = cute.make_tensor(o_ptr, cute.make_layout((s_q, 1, heads_q, D_V),
                                                      stride=(Int64(heads_q) * D_V, 0, D_V, 1)))
        mLse = cute.make_tensor(lse_ptr, cute.make_layout((s_q, heads_q, 1), stride=(heads_q, 1, 0)))
        mMax = cute.make_tensor(max_ptr, cute.make_layout((s_q, heads_q), stride=(heads_q, 1)))
        mIdx = cute.make_tensor(idx_ptr, cute.make_layout((s_q, heads_kv, topk), stride=(sidx_s, sidx_h, 1)))
        mLen = cute.make_tensor(len_ptr, cute.make_layout(s_q))
        mSink = cute.make_tensor(sink_ptr, cute.make_layout(heads_q))
        dtype = self.dtype
        swz, k_outer, q_outer, v_outer = smem_layouts(dtype)
        qk_mma = qk_tiled_mma(dtype)
        pv_mma_rs = pv_tiled_mma(dtype, True)
        pv_mma_ss = pv_tiled_mma(dtype, False)
        Storage = shared_storage(dtype)
        m_blocks = (heads_per_kv + BLOCK_M - 1) // BLOCK_M
        self.kernel(mQ, kv_ptr, mIdx, mLen, mSink, mO, mMax, mLse, scale_log2, heads_per_kv, m_blocks, s_kv, topk,
                    skv_s8 * 8, skv_h8 * 8, qk_mma, pv_mma_rs, pv_mma_ss, k_outer, q_outer, v_outer, swz,
                    Storage).launch(grid=[s_q * m_blocks, heads_kv, 1], block=[THREADS, 1, 1],
                                    smem=Storage.size_in_bytes(), stream=stream)

    # ---------------------------------------------------------------- device side
    @cute.kernel
    def kernel(self, mQ: cute.Tensor, kv_ptr: cute.Pointer, mIdx: cute.Tensor, mLen: cute.Tensor,
               mSink: cute.Tensor, mO: cute.Tensor, mMax: cute.Tensor, mLse: cute.Tensor, scale_log2: Float32,
               heads_per_kv: Int32, m_blocks: Int32, s_kv: Int32, topk: Int32, skv_s: Int64, skv_h: Int64,
               qk_mma: cute.TiledMma, pv_mma_rs: cute.TiledMma, pv_mma_ss: cute.TiledMma, k_outer: cute.Layout,
               q_outer: cute.Layout, v_outer: cute.Layout, swz, Storage: cutlass.Constexpr):
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg = warp // 4
        self.log_cta(0)
        ready, empty, hand, sQ, sK, sV, sRows = self.shared(Storage, swz, k_outer, q_outer, v_outer)

        x = cute.arch.block_idx()[0]
        token = x // m_blocks
        self.t_token, self.t_m_block = token, x - token * m_blocks  # (cta_coords, index_coords)
        length = topk
        if const_expr(self.has_len):
            length = cutlass.min(cutlass.max(mLen[token], 0), topk)
        # What the overridden hooks below read (values of this kernel's trace).
        self.t_idx, self.t_len, self.t_rows, self.t_sink, self.t_max = mIdx, length, s_kv, mSink, mMax
        if wg == 2:
            cute.arch.setmaxregister_decrease(PRODUCER_REGS)
            self.gather(kv_ptr, mIdx, sK, ready, empty, token, length, s_kv, skv_s, skv_h)
            self.log_cta(5)
        else:
            cute.arch.setmaxregister_increase(CONSUMER_REGS)
            # (mSeq, mNumSplits and the partials are never read: request_tiles and epilogue are overridden)
            args = (mQ, mLen, mLen, mO, mLse, mO, mLse, sQ, sK, sV, sRows, ready, empty, hand, qk_mma, pv_mma_rs,
                    pv_mma_ss, scale_log2, Int32(1), heads_per_kv, Int32(0), topk, token, Int32(0), token, Int32(0),
                    Int32(0))
            if wg == 0:
                self.mark(2, 0, 0)
                self.log_cta(2)
                self.consumer(0, *args)
                self.mark(2, 1, 1)
                self.log_cta(3)
            else:
                self.consumer(1, *args)
                self.log_cta(4)

    @cute.jit
    def log_cta(self, what: cutlass.Constexpr):
        """Timeline variants only: every CTA's log row (after the timeline buffer, CTA_LOG words per CTA) gets the SM
        clock of `what`: its entry (0; also its SM id in word 1), the consumers' start (2), warpgroup 0's / 1's / the
        producer's end (3, 4, 5), each by the role's thread 0. No code in the shipped variant."""
        if const_expr(self.timeline != 0):
            tidx, _, _ = cute.arch.thread_idx()
            row = Int64(self.timeline) + TIMELINE_BYTES + Int64(cute.arch.block_idx()[0]) * CTA_LOG * 8
            if const_expr(what == 0):
                if tidx == 0:
                    entry = _vector(Int64, row, 2)
                    entry[0] = cute.arch.clock64()
                    entry[1] = Int64(cute.arch.smid())
            else:
                if tidx % 128 == 0:
                    _vector(Int64, row + what * 8, 1)[0] = cute.arch.clock64()

    def cta_coords(self):
        """(row block, KV head, token): the grid's x is token * m_blocks + row block (kernel)."""
        return self.t_m_block, cute.arch.block_idx()[1], self.t_token

    @cute.jit
    def request_tiles(self, mSeq, b, begin_req, begin_tile, end_req, end_tile, seqlen_cap):
        """The token's keys: its first `length` topk slots, all in this CTA."""
        length = self.t_len
        n_tiles = (length + BLOCK_N - 1) // BLOCK_N
        return length, Int32(0), length, n_tiles, True

    # ---------------------------------------------------------------- producer: a warpgroup gathering rows
    @cute.jit
    def gather(self, kv_ptr, mIdx, sK, ready, empty, token, length, s_kv, skv_s, skv_h):
        tidx, _, _ = cute.arch.thread_idx()
        t = tidx % 128
        group = t // 8  # rows group + 16 k of each tile
        chunk = t % 8  # 16-byte column chunk of every 64-column box
        kv_head = cute.arch.block_idx()[1]
        elem = self.dtype.width // 8
        kv_base = kv_ptr.toint() + kv_head * skv_h * elem
        k_base = sK.iterator.toint()  # the K slots' shared address (box c of slot s at s * SLOT + c * BOX_BYTES)
        n_tiles = (length + BLOCK_N - 1) // BLOCK_N
        policy = l2_evict_last()  # kv rows stay in L2 for the other tokens that name them (FlashMLA's)
        for j in cutlass.range((n_tiles + 1) // 2, unroll=1):
            src = cute.make_rmem_tensor((2, BLOCK_N // 16), Int64)  # row addresses of both tiles of the pair
            ok = cute.make_rmem_tensor((2, BLOCK_N // 16), Int32)  # 1: the slot names a row (else zero-filled)
            for slot in cutlass.range_constexpr(2):
                for k in cutlass.range_constexpr(BLOCK_N // 16):
                    col = (2 * j + slot) * BLOCK_N + group + 16 * k
                    index = Int32(-1)
                    if col < length:
                        index = mIdx[token, kv_head, col]
                    addr = kv_base
                    valid = Int32(0)
                    if index >= 0 and index < s_kv:
                        addr = kv_base + Int64(index) * skv_s * elem
                        valid = Int32(1)
                    src[slot, k] = addr + chunk * 16
                    ok[slot, k] = valid
            for g in cutlass.range_constexpr(2):
                for slot in cutlass.range_constexpr(2):
                    if 2 * j + slot < n_tiles:
                        if const_expr(g + slot == 0):
                            if j == 0:
                                self.mark(2, 6, 6)
                        cute.arch.mbarrier_wait(empty + slot * 2 + g, (j & 1) ^ 1)
                        # (the second group's extra box is the RoPE box, gathered only at d_qk 576)
                        for i in cutlass.range_constexpr(HALF_BOXES + g * (self.QK_USED - V_BOXES)):
                            c = (i + (slot + g) * HALF_BOXES) % V_BOXES
                            if i == HALF_BOXES:
                                c = V_BOXES
                            box = k_base + (slot * SLOT_ELEMS + c * BLOCK_N * BOX) * elem
                            for k in cutlass.range_constexpr(BLOCK_N // 16):
                                copy16_async(box + swizzled(group + 16 * k, chunk), src[slot, k] + c * BOX * elem,
                                             ok[slot, k], policy)
                            cute.arch.cp_async_mbarrier_arrive_noinc(ready + slot * QK_BOXES + c)
                        if const_expr(g + slot == 0):
                            if j == 0:
                                self.mark(2, 7, 7)

    # ---------------------------------------------------------------- consumer hooks
    @cute.jit
    def load_q(self, role: cutlass.Constexpr, t, mQ, sQ, b, m_block, kv_head, n_rows, heads_per_kv):
        SeesawSm90.load_q(self, role, t, mQ, sQ, b, m_block, kv_head, n_rows, heads_per_kv)
        self.mark(2, 2 + role, 2 + role)

    def index_coords(self):
        """The CTA's index list (IndexMask): its token's, for its KV head."""
        return self.t_token, cute.arch.block_idx()[1]

    @cute.jit
    def out_row(self, mO, b, row_g, kv_head, heads_per_kv):
        """Output row row_g (a head of the KV head's group) of query token b."""
        return mO[b, 0, kv_head * heads_per_kv + row_g, None].iterator.toint()

    @cute.jit
    def epilogue(self, role: cutlass.Constexpr, lane, r0, c0, b, m_block, kv_head, n_rows, heads_per_kv,
                 has_work, mNumSplits, mO, mLse, mOp, mLp, acc_o, m_i, l_i, sRows, hand, phase, begin_req,
                 begin_split, t, sQ):
        """l of both warpgroups; out = O / l (times the sink's factor), lse and max_logits (natural log)."""
        mSink, mMax = self.t_sink, self.t_max
        self.share_row_sums(role, lane, r0, l_i, sRows, hand, phase)
        self.mark(2, 4 + role, 4 + role)
        factor = cute.make_rmem_tensor((2,), Float32)
        for h in cutlass.range_constexpr(2):
            row = r0 + 8 * h
            row_g = m_block * BLOCK_M + row
            l = l_i[h] + sRows[row, 3 - role]
            seen = l > 0.0
            head = kv_head * heads_per_kv + row_g
            f = Float32(0.0)
            lse2 = Float32.inf
            if seen:
                lse2 = m_i[h] + cute.math.log2(l, fastmath=True)
                f = 1.0 / l
            if row_g < n_rows:
                if const_expr(self.has_sink):
                    if seen:
                        f = f / (1.0 + cute.math.exp2(mSink[head] * LOG2E - lse2, fastmath=True))
                if const_expr(role == 0):
                    if lane % 4 == 0:
                        mLse[b, head, 0] = lse2 * LN2
                        m = -Float32.inf
                        if seen:
                            m = m_i[h] * LN2
                        mMax[b, head] = m
            factor[h] = f
        self.store_out(role, t, lane, acc_o, factor, sQ, mO, b, m_block, kv_head, n_rows, heads_per_kv)


def placeholder_args() -> tuple:
    """__call__'s arguments for cute.compile: pointers with the alignment calls guarantee (16 bytes for q, kv and out;
    4 for the rest), placeholder scalars (not baked in)."""
    import cuda.bindings.driver as cuda
    from cutlass.cute.runtime import make_ptr

    bf16, f32, i32, i64 = cutlass.BFloat16, cutlass.Float32, cutlass.Int32, cutlass.Int64

    def ptr(t):
        return make_ptr(t, 16, cute.AddressSpace.gmem, assumed_align=16 if t is bf16 else 4)

    return (ptr(bf16), ptr(bf16), ptr(i32), ptr(i32), ptr(f32), ptr(bf16), ptr(f32), ptr(f32),
            f32(1.0), *(i32(1),) * 5, *(i64(1),) * 6, cuda.CUstream(0))


def compile_offline(has_topk_length: bool = True, has_sink: bool = True, d_qk: int = D_QK) -> dict:
    """Compile one variant for sm_90a (no GPU; CUTE_DSL_ARCH=sm_90a) and return the SASS facts of its cubin
    (tritonmla.core.cute_runtime.sass_facts)."""
    from ..core.cute_runtime import sass_facts
    return sass_facts(cute.compile(MlaSparsePrefillSm90(has_topk_length, has_sink, d_qk), *placeholder_args()))
