"""Hopper (SM90) sparse FP8 decode kernel in CuTe DSL, V3.2 cache layout (core.fp8_cache_layouts): the dense decode
kernel's seesaw schedule (dense_decode/kernel_sm90_cute.py: its consumers, plan walk, hand-offs, partials and pair
functions are reused as they are) over cache rows gathered by index and dequantized by a producer warpgroup, as
FlashMLA's sparse decode (docs/20250929-hopper-fp8-sparse-deep-dive.md) without its 2-CTA sharing (yet).

Math (as kernel_portable): query row (b, i, h) attends the slots j < n_b (topk_length[b], or topk) of indices[b, i]
whose value names a cache token (0 <= index < num_blocks * page_size); k_j = e4m3 code x its 128-column group's fp32
scale (the 512 NoPE values, = v_j) | its 64 bf16 RoPE values:
    s_j = scale log2(e) q.k_j,  m = max s_j,  l = sum 2^(s_j - m),  o = sum 2^(s_j - m) v_j,  lse2 = m + log2 l,
    out = o / l x 1 / (1 + 2^(sink_h log2(e) - lse2))  (a request held whole by a part; the combine applies the sink
    to split ones),  lse = lse2 ln 2 without the sink; rows with no valid slot: out 0, lse +inf.

Schedule: grid (s_q h_q / 64 row blocks, 1, parts); h_q % 64 == 0, so a CTA's 64 rows are 64 heads of one query
position and share its index list. The plan (sparse_decode.plan, main cache only: n_b rounded up to 64-slot tiles)
gives each part its requests and tiles; the consumers walk it with seqlen = n_b (request_tiles), masking by index
(core.cute_index_mask) and zeroing a tail tile's unused rows as in dense decoding. The producer is a warpgroup at 72
registers: 16 row groups x 8 column chunks; for each of its 4 rows of a tile a thread loads 8 e4m3 codes (8 bytes)
of every NoPE box and 16 bytes of the RoPE box, scales and converts them to bf16 and stores 16 bytes into the
swizzled slot (the DSL applies the swizzle); an invalid slot stores zeros (an unused cache row's NaN never reaches
a tile). Per box: a proxy fence (wgmma reads what generic stores wrote), then one arrival per thread on its ready
barrier (count 128), in the dense kernel's release order.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, const_expr

from ..core.constants import D_QK, D_V, SCHED_ROW
from ..core.cute_index_mask import IndexMask
from ..core.fp8_cache_layouts import V32
from ..dense_decode import kernel_sm90_cute as dense
from ..dense_decode.kernel_sm90_cute import (BLOCK_M, BLOCK_N, BOX, HALF_BOXES, QK_BOXES, THREADS, V_BOXES, _vector,
                                             pv_tiled_mma, qk_tiled_mma, shared_storage, smem_layouts)

CONSUMER_REGS = 232
PRODUCER_REGS = 48
LOG2E = 1.4426950408889634
SCALES_AT = V32.d_nope  # byte offset of a row's fp32 scales
ROPE_AT = V32.d_nope + V32.num_scales * V32.scale_bytes  # byte offset of its bf16 RoPE values


class MlaSparseDecodeSm90(IndexMask, dense.MlaDecodeSm90):
    """One compiled variant per (has_topk_length, has_sink); everything else is a runtime argument."""
    READY_ARRIVALS = 128  # a box is ready when every producer thread has stored (and fenced) its part of it

    def __init__(self, has_topk_length: bool, has_sink: bool):
        super().__init__(cutlass.BFloat16, BLOCK_N)
        self.has_len = has_topk_length
        self.has_sink = has_sink

    # ---------------------------------------------------------------- host side
    @cute.jit
    def __call__(self, q_ptr: cute.Pointer, k_ptr: cute.Pointer, idx_ptr: cute.Pointer, len_ptr: cute.Pointer,
                 sink_ptr: cute.Pointer, sched_ptr: cute.Pointer, splits_ptr: cute.Pointer, o_ptr: cute.Pointer,
                 lse_ptr: cute.Pointer, op_ptr: cute.Pointer, lp_ptr: cute.Pointer, scale_log2: Float32,
                 batch: Int32, seq_q: Int32, heads_q: Int32, topk: Int32, page_size: Int32, num_tokens: Int32,
                 sqb8: Int64, sqs8: Int64, sqh8: Int64, stride_block: Int64, sidx_b: Int64, sidx_s: Int64,
                 slots: Int32, num_parts: Int32, stream):
        """q [b, s_q, h_q, 576] bf16 (strides in units of 8 elements), k_cache as bytes (rows of 656 at
        stride_block per block of page_size), indices [b, s_q, topk] (last stride 1), topk_length [b], sink [h_q]
        fp32; out [b, s_q, h_q, 512], lse [b, h_q, s_q] and the partials contiguous, as in dense decoding."""
        rows = seq_q * heads_q
        mQ = cute.make_tensor(q_ptr, cute.make_layout((batch, seq_q, heads_q, D_QK),
                                                      stride=(sqb8 * 8, sqs8 * 8, sqh8 * 8, 1)))
        mIdx = cute.make_tensor(idx_ptr, cute.make_layout((batch, seq_q, topk), stride=(sidx_b, sidx_s, 1)))
        mLen = cute.make_tensor(len_ptr, cute.make_layout(batch))
        mSink = cute.make_tensor(sink_ptr, cute.make_layout(heads_q))
        mSched = cute.make_tensor(sched_ptr, cute.make_layout((num_parts, SCHED_ROW), stride=(SCHED_ROW, 1)))
        mNumSplits = cute.make_tensor(splits_ptr, cute.make_layout(batch + 1))
        mO = cute.make_tensor(o_ptr, cute.make_layout((batch, seq_q, heads_q, D_V),
                                                      stride=(Int64(seq_q) * heads_q * D_V, heads_q * D_V, D_V, 1)))
        mLse = cute.make_tensor(lse_ptr, cute.make_layout((batch, heads_q, seq_q), stride=(heads_q * seq_q, seq_q, 1)))
        mOp = cute.make_tensor(op_ptr, cute.make_layout((slots, 1, rows, D_V), stride=(Int64(rows) * D_V, 0, D_V, 1)))
        mLp = cute.make_tensor(lp_ptr, cute.make_layout((slots, 1, rows), stride=(rows, 0, 1)))
        swz, k_outer, q_outer, v_outer = smem_layouts(self.dtype)
        qk_mma = qk_tiled_mma(self.dtype)
        pv_mma_rs = pv_tiled_mma(self.dtype, True)
        pv_mma_ss = pv_tiled_mma(self.dtype, False)
        Storage = shared_storage(self.dtype)
        self.kernel(mQ, k_ptr, mIdx, mLen, mSink, mSched, mNumSplits, mO, mLse, mOp, mLp, scale_log2, seq_q, heads_q,
                    topk, page_size, num_tokens, stride_block, qk_mma, pv_mma_rs, pv_mma_ss, k_outer, q_outer,
                    v_outer, swz, Storage).launch(grid=[rows // BLOCK_M, 1, num_parts], block=[THREADS, 1, 1],
                                                  smem=Storage.size_in_bytes(), stream=stream)

    # ---------------------------------------------------------------- device side
    @cute.kernel
    def kernel(self, mQ: cute.Tensor, k_ptr: cute.Pointer, mIdx: cute.Tensor, mLen: cute.Tensor, mSink: cute.Tensor,
               mSched: cute.Tensor, mNumSplits: cute.Tensor, mO: cute.Tensor, mLse: cute.Tensor, mOp: cute.Tensor,
               mLp: cute.Tensor, scale_log2: Float32, seq_q: Int32, heads_q: Int32, topk: Int32, page_size: Int32,
               num_tokens: Int32, stride_block: Int64, qk_mma: cute.TiledMma, pv_mma_rs: cute.TiledMma,
               pv_mma_ss: cute.TiledMma, k_outer: cute.Layout, q_outer: cute.Layout, v_outer: cute.Layout, swz,
               Storage: cutlass.Constexpr):
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        wg = warp // 4
        ready, empty, hand, sQ, sK, sV, sRows = self.shared(Storage, swz, k_outer, q_outer, v_outer)
        part = cute.arch.block_idx()[2]
        begin_req = mSched[part, 0]
        begin_tile = mSched[part, 1]
        end_req = mSched[part, 2]
        end_tile = mSched[part, 3]
        begin_split = mSched[part, 4]
        q_pos = cute.arch.block_idx()[0] * BLOCK_M // heads_q  # this CTA's query position (h_q % 64 == 0)
        # What the hooks read (values of this kernel's trace).
        self.t_idx, self.t_rows, self.t_sink, self.t_q_pos = mIdx, num_tokens, mSink, q_pos
        if wg == 2:
            cute.arch.setmaxregister_decrease(PRODUCER_REGS)
            self.gather(k_ptr, mIdx, mLen, sK, ready, empty, begin_req, begin_tile, end_req, end_tile, topk, q_pos,
                        page_size, num_tokens, stride_block)
        else:
            cute.arch.setmaxregister_increase(CONSUMER_REGS)
            args = (mQ, mLen, mNumSplits, mO, mLse, mOp, mLp, sQ, sK, sV, sRows, ready, empty, hand, qk_mma,
                    pv_mma_rs, pv_mma_ss, scale_log2, seq_q, heads_q, Int32(0), topk, begin_req, begin_tile, end_req,
                    end_tile, begin_split)
            if wg == 0:
                self.consumer(0, *args)
            else:
                self.consumer(1, *args)

    @cute.jit
    def request_tiles(self, mLen, b, begin_req, begin_tile, end_req, end_tile, topk):
        """Request b's slots: the first topk_length[b] (clamped to [0, topk]) or all topk."""
        n = topk
        if const_expr(self.has_len):
            n = cutlass.min(cutlass.max(mLen[b], 0), topk)
        return self.part_range(n, b, begin_req, begin_tile, end_req, end_tile)

    # ---------------------------------------------------------------- producer: a warpgroup dequantizing rows
    @cute.jit
    def gather(self, k_ptr, mIdx, mLen, sK, ready, empty, begin_req, begin_tile, end_req, end_tile, topk, q_pos,
               page_size, num_tokens, stride_block):
        tidx, _, _ = cute.arch.thread_idx()
        t = tidx % 128
        group = t // 8  # rows group + 16 k of each tile
        chunk = t % 8  # 8-column chunk of every 64-column box
        k_base = k_ptr.toint()
        fills_a = Int32(0)  # fills of slot 0 / 1 so far: the k-th fill waits for the (k-1)-th release
        fills_b = Int32(0)
        for b in cutlass.range(begin_req, end_req + 1, unroll=1):
            _, lo, hi, n_tiles, _ = self.request_tiles(mLen, b, begin_req, begin_tile, end_req, end_tile, topk)
            for j in cutlass.range((n_tiles + 1) // 2, unroll=1):
                src = cute.make_rmem_tensor((2, BLOCK_N // 16), Int64)  # row addresses of both tiles (-1: invalid)
                for slot in cutlass.range_constexpr(2):
                    for k in cutlass.range_constexpr(BLOCK_N // 16):
                        col = lo + (2 * j + slot) * BLOCK_N + group + 16 * k
                        index = Int32(-1)
                        if col < hi:
                            index = mIdx[b, q_pos, col]
                        addr = Int64(-1)
                        if index >= 0 and index < num_tokens:
                            addr = (k_base + Int64(index // page_size) * stride_block
                                    + Int64(index % page_size) * V32.row_bytes)
                        src[slot, k] = addr
                for g in cutlass.range_constexpr(2):
                    for slot in cutlass.range_constexpr(2):
                        if 2 * j + slot < n_tiles:
                            fills = fills_a + j
                            if const_expr(slot == 1):
                                fills = fills_b + j
                            cute.arch.mbarrier_wait(empty + slot * 2 + g, (fills & 1) ^ 1)
                            for i in cutlass.range_constexpr(HALF_BOXES + g):
                                c = (i + (slot + g) * HALF_BOXES) % V_BOXES
                                if const_expr(i == HALF_BOXES):
                                    c = V_BOXES
                                box = sK[None, (None, c), slot]
                                for k in cutlass.range_constexpr(BLOCK_N // 16):
                                    self.dequantize(box, group + 16 * k, chunk, src[slot, k], c)
                                cute.arch.fence_proxy("async.shared", space="cta")
                                cute.arch.mbarrier_arrive(ready + slot * QK_BOXES + c)
            fills_a += (n_tiles + 1) // 2
            fills_b += n_tiles // 2

    @cute.jit
    def dequantize(self, box, row, chunk, addr, c: cutlass.Constexpr):
        """Columns chunk*8 .. +8 of box c of the cache row at addr (-1: an invalid slot, zeros) into the box's row."""
        vals = cute.make_rmem_tensor((8,), cutlass.BFloat16)
        vals.fill(0.0)
        if addr >= 0:
            if const_expr(c < V_BOXES):
                codes = cute.make_rmem_tensor((8,), cutlass.Float8E4M3FN)
                cute.autovec_copy(_vector(cutlass.Float8E4M3FN, addr + c * BOX + chunk * 8, 8), codes)
                scale = _vector(Float32, addr + SCALES_AT + 4 * (c * BOX // V32.group), 1)[0]
                vals.store((codes.load().to(Float32) * scale).to(cutlass.BFloat16))
            else:
                cute.autovec_copy(_vector(cutlass.BFloat16, addr + ROPE_AT + chunk * 16, 8), vals)
        cute.autovec_copy(vals, cute.local_tile(box[row, None], (8,), (chunk,)))

    # ---------------------------------------------------------------- consumer hooks
    def index_coords(self):
        """The index list of the current request (IndexMask): this CTA's query position's."""
        return self.t_cur_req[0], self.t_q_pos

    @cute.jit
    def out_factor(self, inv, lse2, seen, head):
        """1 / l, times the sink's factor 1 / (1 + 2^(sink log2 e - lse2)) for a row that saw a key."""
        factor = inv
        if const_expr(self.has_sink):
            mSink = self.t_sink
            if seen:
                factor = inv / (1.0 + cute.math.exp2(mSink[head] * LOG2E - lse2, fastmath=True))
        return factor


def placeholder_args() -> tuple:
    """__call__'s arguments for cute.compile: pointers with the alignment calls guarantee (16 bytes for q, the cache,
    out and the partials; 4 for the rest), placeholder scalars (not baked in)."""
    import cuda.bindings.driver as cuda
    from cutlass.cute.runtime import make_ptr

    bf16, f32, i32, i64, u8 = cutlass.BFloat16, cutlass.Float32, cutlass.Int32, cutlass.Int64, cutlass.Uint8

    def ptr(t, align):
        return make_ptr(t, 16, cute.AddressSpace.gmem, assumed_align=align)

    return (ptr(bf16, 16), ptr(u8, 16), ptr(i32, 4), ptr(i32, 4), ptr(f32, 4), ptr(i32, 4), ptr(i32, 4),
            ptr(bf16, 16), ptr(f32, 4), ptr(f32, 16), ptr(f32, 4), f32(1.0), *(i32(1),) * 6, *(i64(1),) * 6,
            i32(1), i32(1), cuda.CUstream(0))


def compile_offline(has_topk_length: bool = True, has_sink: bool = True) -> dict:
    """Compile one variant for sm_90a (no GPU; CUTE_DSL_ARCH=sm_90a) and return the SASS facts of its cubin
    (tritonmla.core.cute_runtime.sass_facts)."""
    from ..core.cute_runtime import sass_facts
    return sass_facts(cute.compile(MlaSparseDecodeSm90(has_topk_length, has_sink), *placeholder_args()))
