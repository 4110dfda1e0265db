"""Portable split-KV sparse MLA decode kernel over an FP8 cache (plain Triton: any GPU Triton supports, and the
CPU interpreter).

The math, once. Query row (b, i, h) attends the cache rows named by its request's index lists: slots
[0, n) of indices[b, i] in k_cache, then [0, n2) of extra_indices[b, i] in extra_k_cache (n = topk_length[b]
or topk; slots holding -1 or anything outside [0, num_blocks * page_size) are skipped). A row is dequantized in
registers, value = e4m3 * its group's scale, RoPE part bf16, then rounded to q's dtype (exact for power-of-two
scales); V is its first 512 values (V32: the NoPE part; MODEL1: NoPE + RoPE, the whole row). Then, as in the
dense kernel (tritonmla.dense_decode.kernel_portable), online softmax in the log2 domain:

    s_j = scale log2(e) q . k_j,  m = max s_j,  l = sum 2^(s_j - m),  o = sum 2^(s_j - m) v_j / l,  lse2 = m + log2 l

and FlashMLA's attention sink: out = o / (1 + 2^(sink log2(e) - lse2)); lse = lse2 ln 2 is returned without it.
Rows with no valid key: out 0, lse +inf.

Parallelism. Each request's work is laid out as one KV range: its main slots rounded up to a 64-token plan tile,
then its extra slots, so no tile mixes the two caches. The dense scheduler (tritonmla.scheduler) plans over these
lengths (tritonmla.sparse_decode.plan); a program = (BLOCK_M query heads) x (one query position) x (one part). A
request wholly inside a part writes out/lse directly, one cut across parts writes fp32 partials merged by
tritonmla.combine's sink-aware combine kernel.

Byte layouts (tritonmla.core.fp8_cache_layouts): V32 rows of 656 bytes (512 e4m3 | 4 fp32 scales | 64 bf16);
MODEL1 blocks of page_size rows of 576 bytes (448 e4m3 | 64 bf16) followed by page_size x 8 ue8m0 scale bytes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..core.triton_helpers import attend, round_to
from ..core.constants import D_V, LN2, LOG2E, LOG2E_JIT, PLAN_TILE, SCHED_ROW
from ..core.fp8_cache_layouts import FP8Layout, V32
from ..core.launch import BoundKernel
from ..core.runtime import interpreter_enabled
from ..scheduler.planner import plan_row


@dataclass(frozen=True)
class SparseLaunchConfig:
    block_m: int  # query heads per program
    block_n: int  # cache rows per inner iteration
    num_warps: int
    num_stages: int
    programs_per_sm: int


def sparse_launch_config(heads_q: int) -> SparseLaunchConfig:
    """Tile shapes by h_q. TRITONMLA_SPARSE_CONFIG="block_m,block_n,warps,stages,programs_per_sm" overrides."""
    override = os.environ.get("TRITONMLA_SPARSE_CONFIG")
    if override:
        return SparseLaunchConfig(*(int(v) for v in override.split(",")))
    if heads_q <= 16:
        return SparseLaunchConfig(16, 32, 4, 2, 2)
    if heads_q <= 32:
        return SparseLaunchConfig(32, 32, 4, 2, 2)
    return SparseLaunchConfig(64, 64, 8, 3, 1)  # H100, V3.2 h_q 128 topk 2048 b 64: 0.49 ms vs 0.63 (64, 32, 8, 2)


@triton.jit
def load_rows(K, idx, ok, stride_block, offs_d, offs_rope,
              IS_V32: tl.constexpr, PAGE_SIZE: tl.constexpr, D_NOPE: tl.constexpr, GROUP: tl.constexpr,
              NUM_SCALES: tl.constexpr, ROW_BYTES: tl.constexpr, D_ROPE: tl.constexpr, BLOCK_N: tl.constexpr,
              DTYPE: tl.constexpr, RNE_BF16: tl.constexpr):
    """Cache rows idx (where ok) dequantized: (k [BLOCK_N, 512] = V, k_rope [BLOCK_N, D_ROPE] (V32 only)).
    Rows not ok load nothing and come out 0, so an unused slot's NaN never enters a dot. (The rounding to DTYPE
    is exact for power-of-two scales; RNE_BF16: the interpreter's, see round_to.)"""
    idx = tl.where(ok, idx, 0).to(tl.int64)
    page = idx // PAGE_SIZE
    pos = idx % PAGE_SIZE
    base = K.to(tl.pointer_type(tl.uint8))
    row = page * stride_block + pos * ROW_BYTES  # byte offset of each row
    is_nope = offs_d < D_NOPE
    codes = tl.load(base + row[:, None] + offs_d[None, :], mask=ok[:, None] & is_nope[None, :], other=0)
    codes = codes.to(tl.float8e4nv, bitcast=True).to(tl.float32)  # e4m3 bytes (0 where masked: +0.0)
    # One scale per GROUP columns: NUM_SCALES row vectors, spread over the columns by selects.
    scale = tl.zeros_like(codes)
    group = offs_d // GROUP
    if not IS_V32:  # a row's 8 ue8m0 bytes (7 scales + pad) after the block's rows, in one 8-byte load
        exps = tl.load((base + page * stride_block + PAGE_SIZE * ROW_BYTES + pos * 8).to(tl.pointer_type(tl.uint64)),
                       mask=ok, other=0)
    for i in tl.static_range(NUM_SCALES):
        if IS_V32:  # fp32 scales right after the 512 codes
            s_i = tl.load((base + row + D_NOPE + 4 * i).to(tl.pointer_type(tl.float32)), mask=ok, other=0.0)
        else:  # 2^(e - 127), built from its bits (exact)
            e = ((exps >> (8 * i)) & 0xFF).to(tl.int32)
            s_i = (e << 23).to(tl.float32, bitcast=True)
        scale = tl.where((group == i)[None, :], s_i[:, None], scale)
    nope = codes * scale
    if IS_V32:
        k = round_to(nope, DTYPE, RNE_BF16)
        # Row pointers cast to bf16 first, then indexed in elements: the loads stay contiguous (vectorized).
        rope_rows = (base + row + (D_NOPE + 4 * NUM_SCALES)).to(tl.pointer_type(tl.bfloat16))
        k_rope = tl.load(rope_rows[:, None] + offs_rope[None, :], mask=ok[:, None], other=0.0).to(DTYPE)
    else:  # columns D_NOPE.. of the row are the bf16 RoPE values
        rope_rows = (base + row + D_NOPE).to(tl.pointer_type(tl.bfloat16))
        rope = tl.load(rope_rows[:, None] + (offs_d - D_NOPE)[None, :], mask=ok[:, None] & ~is_nope[None, :],
                       other=0.0)
        k = round_to(tl.where(is_nope[None, :], nope, rope.to(tl.float32)), DTYPE, RNE_BF16)
        k_rope = tl.zeros([BLOCK_N, D_ROPE], DTYPE)
    return k, k_rope


@triton.jit
def request_range(b, begin_req, begin_tile, end_req, end_tile, TOPK_LEN, TOPK_LEN2, topk, topk2,
                  HAS_LEN: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_LEN2: tl.constexpr, PLAN_TILE: tl.constexpr):
    """Request b's KV range as tritonmla.sparse_decode.plan lays it out (main slots rounded up to a plan tile, then extra
    slots) and this part's share of it: (len1, main_end, len2, lo, hi, n_tiles, has_work). len1 / len2: the main /
    extra slots that count; [lo, hi): this part's slots, n_tiles PLAN_TILE-slot tiles; has_work: it writes the
    request's output (an empty request is owned by exactly one part). (As dense_decode.kernel_portable.request_tiles for dense.)"""
    len1 = topk
    if HAS_LEN:
        len1 = tl.minimum(tl.maximum(tl.load(TOPK_LEN + b), 0), topk)
    main_end = tl.cdiv(len1, PLAN_TILE) * PLAN_TILE
    len2 = 0
    if HAS_EXTRA:
        len2 = topk2
        if HAS_LEN2:
            len2 = tl.minimum(tl.maximum(tl.load(TOPK_LEN2 + b), 0), topk2)
    total = main_end + len2
    lo = tl.where(b == begin_req, begin_tile, 0) * PLAN_TILE
    hi = tl.minimum(tl.where(b == end_req, end_tile, tl.cdiv(total, PLAN_TILE)) * PLAN_TILE, total)
    has_work = (hi > lo) | (total == 0)
    return len1, main_end, len2, lo, hi, tl.cdiv(tl.maximum(hi - lo, 0), PLAN_TILE), has_work


@triton.jit(do_not_specialize=["num_tokens", "num_tokens2", "topk", "topk2"])  # no variant per value
def sparse_decode_kernel(
    Q, K, INDICES, TOPK_LEN, K2, INDICES2, TOPK_LEN2, SINK, SCHED, NUM_SPLITS,
    OUT, LSE, OUT_PARTIAL, LSE_PARTIAL,
    qk_scale_log2,
    stride_qb, stride_qs, stride_qh,
    stride_kblock, stride_k2block,
    stride_ib, stride_is, stride_i2b, stride_i2s,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh,
    stride_ps, stride_pr, stride_pls,  # partials [split, 1, s_q * h_q, D_V] / [split, 1, s_q * h_q]
    heads_q, num_tokens, num_tokens2, topk, topk2,
    IS_V32: tl.constexpr, D_NOPE: tl.constexpr, D_ROPE: tl.constexpr, GROUP: tl.constexpr,
    NUM_SCALES: tl.constexpr, ROW_BYTES: tl.constexpr, PAGE_SIZE: tl.constexpr, PAGE_SIZE2: tl.constexpr,
    HAS_LEN: tl.constexpr, HAS_EXTRA: tl.constexpr, HAS_LEN2: tl.constexpr, HAS_SINK: tl.constexpr,
    D_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PLAN_TILE: tl.constexpr,
    SCHED_ROW: tl.constexpr, DOT_F32: tl.constexpr,
):
    m_block = tl.program_id(0)
    q_pos = tl.program_id(1)
    part = tl.program_id(2)

    heads = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    head_ok = heads < heads_q
    offs_d = tl.arange(0, D_V)
    offs_rope = tl.arange(0, D_ROPE)
    offs_n = tl.arange(0, BLOCK_N)
    dtype = Q.dtype.element_ty

    begin_req, begin_tile, end_req, end_tile, begin_split = plan_row(SCHED, part, SCHED_ROW)
    begin_req = begin_req.to(tl.int64)
    end_req = end_req.to(tl.int64)
    if HAS_SINK:
        sink2 = tl.load(SINK + heads, mask=head_ok, other=0.0) * LOG2E_JIT

    for b in range(begin_req, end_req + 1):
        len1, main_end, len2, lo, hi, _, has_work = request_range(b, begin_req, begin_tile, end_req, end_tile,
                                                                  TOPK_LEN, TOPK_LEN2, topk, topk2, HAS_LEN,
                                                                  HAS_EXTRA, HAS_LEN2, PLAN_TILE)

        q_ptrs = Q + b * stride_qb + q_pos * stride_qs + heads * stride_qh
        q_main = tl.load(q_ptrs[:, None] + offs_d[None, :], mask=head_ok[:, None], other=0.0)
        if IS_V32:
            q_rope = tl.load(q_ptrs[:, None] + D_V + offs_rope[None, :], mask=head_ok[:, None], other=0.0)
        else:
            q_rope = tl.zeros([BLOCK_M, D_ROPE], dtype)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, D_V], dtype=tl.float32)
        idx_row = INDICES + b * stride_ib + q_pos * stride_is
        for start in range(lo, tl.minimum(hi, main_end), BLOCK_N):
            slot = start + offs_n
            ok = slot < len1
            idx = tl.load(idx_row + slot, mask=ok, other=-1)
            ok = ok & (idx >= 0) & (idx < num_tokens)  # out of range: skipped like -1, never read
            k, k_rope = load_rows(K, idx, ok, stride_kblock, offs_d, offs_rope, IS_V32, PAGE_SIZE, D_NOPE, GROUP,
                                  NUM_SCALES, ROW_BYTES, D_ROPE, BLOCK_N, dtype, DOT_F32)
            m_i, l_i, acc = attend(q_main, q_rope, k, k_rope, ok, m_i, l_i, acc, qk_scale_log2, IS_V32, DOT_F32)
        if HAS_EXTRA:
            idx_row2 = INDICES2 + b * stride_i2b + q_pos * stride_i2s
            for start in range(tl.maximum(lo, main_end), hi, BLOCK_N):
                slot = start - main_end + offs_n
                ok = slot < len2
                idx = tl.load(idx_row2 + slot, mask=ok, other=-1)
                ok = ok & (idx >= 0) & (idx < num_tokens2)
                k, k_rope = load_rows(K2, idx, ok, stride_k2block, offs_d, offs_rope, IS_V32, PAGE_SIZE2, D_NOPE,
                                      GROUP, NUM_SCALES, ROW_BYTES, D_ROPE, BLOCK_N, dtype, DOT_F32)
                m_i, l_i, acc = attend(q_main, q_rope, k, k_rope, ok, m_i, l_i, acc, qk_scale_log2, IS_V32, DOT_F32)

        row_seen = l_i > 0.0
        l_safe = tl.where(row_seen, l_i, 1.0)
        lse2 = tl.where(row_seen, m_i + tl.math.log2(l_safe), float("-inf"))
        split_begin = tl.load(NUM_SPLITS + b)
        num_splits = tl.load(NUM_SPLITS + b + 1) - split_begin
        direct = head_ok & has_work & (num_splits == 1)
        partial = head_ok & has_work & (num_splits > 1)

        factor = 1.0 / l_safe
        if HAS_SINK:
            seen_lse2 = tl.where(row_seen, lse2, 0.0)  # (no -inf - -inf in lanes the select drops)
            factor = tl.where(row_seen, factor / (1.0 + tl.math.exp2(sink2 - seen_lse2)), 0.0)
        o_ptrs = OUT + b * stride_ob + q_pos * stride_os + heads * stride_oh
        tl.store(o_ptrs[:, None] + offs_d[None, :], round_to(acc * factor[:, None], OUT.dtype.element_ty, DOT_F32),
                 mask=direct[:, None])
        tl.store(LSE + b * stride_lb + heads * stride_lh + q_pos, tl.where(row_seen, lse2 * LN2, float("inf")),
                 mask=direct)

        # Only a part's first request can be entered mid-way, so only it starts at a split index > 0.
        split_row = (split_begin + tl.where(b == begin_req, begin_split, 0)).to(tl.int64)
        rows = q_pos * heads_q + heads
        po_ptrs = OUT_PARTIAL + split_row * stride_ps + rows * stride_pr
        tl.store(po_ptrs[:, None] + offs_d[None, :], acc / l_safe[:, None], mask=partial[:, None])
        tl.store(LSE_PARTIAL + split_row * stride_pls + rows, lse2, mask=partial)


def fixed_common(q, k_cache, indices, extra_k_cache, extra_indices, out, lse, softmax_scale: float) -> tuple:
    """The fixed arguments both sparse kernels (this one and kernel_sm90's) take after the pointers, qk scale ..
    topk2."""
    heads_q = q.shape[2]
    rows = q.shape[1] * heads_q
    k2 = extra_k_cache if extra_k_cache is not None else k_cache
    i2 = extra_indices if extra_k_cache is not None else indices
    return (softmax_scale * LOG2E,
            q.stride(0), q.stride(1), q.stride(2),
            k_cache.stride(0), k2.stride(0),
            indices.stride(0), indices.stride(1), i2.stride(0), i2.stride(1),
            out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(1),
            rows * D_V, D_V, rows,
            heads_q, k_cache.shape[0] * k_cache.shape[1], k2.shape[0] * k2.shape[1],
            indices.shape[-1], i2.shape[-1])


def bind_sparse_decode(varying: tuple, q, k_cache, indices, extra_k_cache, extra_indices, out, lse,
                       layout: FP8Layout, num_parts: int, softmax_scale: float, has_len: bool, has_len2: bool,
                       has_sink: bool) -> BoundKernel:
    """sparse_decode_kernel for one configuration: grid = (head blocks, s_q, parts). `varying` holds the 14
    per-call pointer arguments (tensors; absent optional ones replaced by any tensor) in the kernel's order.
    (kernel_sm90.bind_sparse_hopper takes the same arguments.)"""
    batch, seq_q, heads_q, _ = q.shape
    cfg = sparse_launch_config(heads_q)
    has_extra = extra_k_cache is not None
    k2 = extra_k_cache if has_extra else k_cache
    fixed = (*fixed_common(q, k_cache, indices, extra_k_cache, extra_indices, out, lse, softmax_scale),
             layout is V32, layout.d_nope, layout.d_rope, layout.group, layout.num_scales, layout.row_bytes,
             k_cache.shape[1], k2.shape[1],
             has_len, has_extra, has_len2, has_sink,
             D_V, cfg.block_m, cfg.block_n, PLAN_TILE, SCHED_ROW,
             interpreter_enabled() and q.dtype == torch.bfloat16)
    grid = (triton.cdiv(heads_q, cfg.block_m), seq_q, num_parts)
    return BoundKernel(sparse_decode_kernel, grid, varying, fixed,
                       dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
