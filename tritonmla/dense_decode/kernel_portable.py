"""Portable split-KV MLA decode kernel (plain Triton: any GPU Triton supports, and the CPU interpreter).

The math, once. For one query row q (576 = 512 latent + 64 RoPE columns) and the keys k_j of its request
(V = the first 512 columns of the same cached rows):

    s_j = scale * q . k_j                      (masked to -inf where key j is not visible)
    m   = max_j s_j,  l = sum_j 2^(s_j*log2e - m*log2e),  o = sum_j 2^(...) v_j / l,  lse = m + ln l

computed online over KV tiles (flash-decoding): per tile, m' = max(m, rowmax(s)); acc, l are rescaled by
2^(m - m') before the tile's terms are added. Rows that see no key keep l = 0 and come out as o = 0,
lse = +inf (FlashMLA's convention). Work is in the log2 domain so exp is one exp2.

Parallelism. The scheduler (tritonmla.scheduler) cuts the concatenated KV of all requests into one contiguous
range per "part"; a program = (64-or-fewer query rows of one KV head) x (one part). A part walks its requests
in order; a request wholly inside one part writes `out`/`lse` directly, a request cut across parts writes an
fp32 partial (o, lse) that tritonmla.combine merges.

Tiles. Query rows are (s_q x heads of one KV head), row r = q_pos * heads_per_kv + head. Each KV tile of BLOCK_N
tokens is loaded once as 512 + 64 columns; its 512 block is reused as V. Tokens are gathered through the block
table per row (any power-of-two page size), or per tile when a tile lies within one page (PAGE_SIZE >= BLOCK_N).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import triton
import triton.language as tl

from ..core.constants import D_ROPE, D_V, LOG2E, LN2, PLAN_TILE, SCHED_ROW
from ..core.launch import BoundKernel
from ..scheduler.planner import plan_row


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int  # query rows per program (heads x s_q of one KV head)
    block_n: int  # KV tokens per inner iteration
    num_warps: int
    num_stages: int
    programs_per_sm: int  # how many parts the scheduler makes per SM, divided among m-blocks and KV heads


def launch_config(rows_per_kv_head: int) -> LaunchConfig:
    """Tile shapes by query rows per KV head (s_q * h_q / h_kv). Tuned on H100 (see BENCHMARKS.md / NOTES.md).

    TRITONMLA_CONFIG="block_m,block_n,warps,stages,programs_per_sm" overrides it (for tuning sweeps).
    """
    override = os.environ.get("TRITONMLA_CONFIG")
    if override:
        return LaunchConfig(*(int(v) for v in override.split(",")))
    if rows_per_kv_head <= 16:
        return LaunchConfig(16, 64, 4, 2, 2)
    if rows_per_kv_head <= 32:
        return LaunchConfig(32, 64, 4, 2, 2)
    return LaunchConfig(64, 64, 8, 2, 1)


@triton.jit
def load_kv_tile(K_CACHE, bt_row, head_off, stride_kblock, stride_kpos, start, hi, offs_v, offs_rope, offs_n,
                 num_blocks, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr):
    """Tile [start, start + BLOCK_N) of a request: (latent 512 cols, RoPE 64 cols, token ids, valid mask).
    Page ids are clamped into [0, num_blocks): a bad block-table entry reads some page of the cache (that
    request's result is then meaningless), never memory outside it."""
    tok = start + offs_n
    tok_ok = tok < hi  # keys past hi belong to another part (or are not valid at all)
    if PAGE_SIZE >= BLOCK_N:  # the whole tile lies in one page
        page = tl.load(bt_row + start // PAGE_SIZE)
    else:
        page = tl.load(bt_row + tok // PAGE_SIZE, mask=tok_ok, other=0)
    page = tl.minimum(tl.maximum(page, 0), num_blocks - 1).to(tl.int64)
    k_ptrs = K_CACHE + head_off + page * stride_kblock + (tok % PAGE_SIZE) * stride_kpos
    # Masked loads give 0, never the NaN an unused slot may hold (0 * NaN would poison P.V).
    k_nope = tl.load(k_ptrs[:, None] + offs_v[None, :], mask=tok_ok[:, None], other=0.0)
    k_rope = tl.load(k_ptrs[:, None] + offs_rope[None, :], mask=tok_ok[:, None], other=0.0)
    return k_nope, k_rope, tok, tok_ok


@triton.jit
def attend_tiles(q_nope, q_rope, K_CACHE, bt_row, head_off, stride_kblock, stride_kpos,
                 lo, hi, key_end, qk_scale_log2, offs_v, offs_rope, offs_n, num_blocks,
                 D_V: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online softmax over keys [lo, hi) with rows as M: S = Q K^T, O += P V."""
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_V], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        k_nope, k_rope, tok, tok_ok = load_kv_tile(K_CACHE, bt_row, head_off, stride_kblock, stride_kpos, start,
                                                   hi, offs_v, offs_rope, offs_n, num_blocks, PAGE_SIZE, BLOCK_N)
        s = tl.dot(q_nope, tl.trans(k_nope))
        s = tl.dot(q_rope, tl.trans(k_rope), s)
        s = s * qk_scale_log2
        visible = tok_ok[None, :] & (tok[None, :] < key_end[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet stays at 0
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(k_nope.dtype), k_nope)
        m_i = m_new
    row_seen = l_i > 0.0
    l_safe = tl.where(row_seen, l_i, 1.0)
    return acc / l_safe[:, None], tl.where(row_seen, m_i + tl.math.log2(l_safe), float("-inf")), row_seen


@triton.jit
def request_tiles(SEQLENS, b, begin_req, begin_tile, end_req, end_tile, seqlen_cap, PLAN_TILE: tl.constexpr):
    """Request b's part in this plan row: (seqlen, lo, hi, n_tiles, has_work). seqlen is clamped to
    [0, seqlen_cap] (never read past the block table); [lo, hi) the part's tokens in n_tiles PLAN_TILE-token
    tiles; has_work: the part writes the request's output (an empty request is owned by exactly one part)."""
    seqlen = tl.minimum(tl.maximum(tl.load(SEQLENS + b), 0), seqlen_cap)
    lo = tl.where(b == begin_req, begin_tile, 0) * PLAN_TILE
    hi = tl.minimum(tl.where(b == end_req, end_tile, tl.cdiv(seqlen, PLAN_TILE)) * PLAN_TILE, seqlen)
    return seqlen, lo, hi, tl.cdiv(tl.maximum(hi - lo, 0), PLAN_TILE), (hi > lo) | (seqlen == 0)


@triton.jit(do_not_specialize=["stride_btb", "seqlen_cap", "num_blocks"])  # engine-dependent; no variant per value
def mla_decode_kernel(
    Q, K_CACHE, BLOCK_TABLE, SEQLENS, SCHED, NUM_SPLITS,
    OUT, LSE, OUT_PARTIAL, LSE_PARTIAL,
    qk_scale_log2,
    stride_qb, stride_qs, stride_qh,
    stride_kblock, stride_kpos, stride_khead,
    stride_btb,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh,
    stride_ps, stride_ph, stride_pr,  # partial out [split, h_kv, row, D_V]
    stride_pls, stride_plh,  # partial lse [split, h_kv, row]
    seq_q, heads_per_kv, seqlen_cap, num_blocks,
    D_V: tl.constexpr, D_ROPE: tl.constexpr, PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PLAN_TILE: tl.constexpr, SCHED_ROW: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    m_block = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)

    rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seq_q * heads_per_kv
    q_pos = rows // heads_per_kv
    head = kv_head * heads_per_kv + rows % heads_per_kv
    offs_v = tl.arange(0, D_V)
    offs_rope = D_V + tl.arange(0, D_ROPE)
    offs_n = tl.arange(0, BLOCK_N)
    # Bottom-right causal alignment: query q_pos sees keys < seqlen - (seq_q - 1 - q_pos).
    if CAUSAL:
        key_shift = seq_q - 1 - q_pos
    else:
        key_shift = tl.zeros([BLOCK_M], dtype=tl.int32)

    begin_req, begin_tile, end_req, end_tile, begin_split = plan_row(SCHED, part, SCHED_ROW)
    begin_req = begin_req.to(tl.int64)  # int64 request index: batch offsets can pass 2**31
    end_req = end_req.to(tl.int64)

    q_rows = Q + q_pos * stride_qs + head * stride_qh
    for b in range(begin_req, end_req + 1):
        seqlen, lo, hi, _, has_work = request_tiles(SEQLENS, b, begin_req, begin_tile, end_req, end_tile, seqlen_cap,
                                                    PLAN_TILE)
        key_end = seqlen - key_shift

        q_ptrs = q_rows + b * stride_qb
        q_nope = tl.load(q_ptrs[:, None] + offs_v[None, :], mask=row_ok[:, None], other=0.0)
        q_rope = tl.load(q_ptrs[:, None] + offs_rope[None, :], mask=row_ok[:, None], other=0.0)
        bt_row = BLOCK_TABLE + b * stride_btb

        out, lse2, row_seen = attend_tiles(
            q_nope, q_rope, K_CACHE, bt_row, kv_head * stride_khead, stride_kblock, stride_kpos,
            lo, hi, key_end, qk_scale_log2, offs_v, offs_rope, offs_n, num_blocks,
            D_V, PAGE_SIZE, BLOCK_M, BLOCK_N)

        split_begin = tl.load(NUM_SPLITS + b)
        num_splits = tl.load(NUM_SPLITS + b + 1) - split_begin
        direct = row_ok & has_work & (num_splits == 1)
        partial = row_ok & has_work & (num_splits > 1)

        o_ptrs = OUT + b * stride_ob + q_pos * stride_os + head * stride_oh
        tl.store(o_ptrs[:, None] + offs_v[None, :], out.to(OUT.dtype.element_ty), mask=direct[:, None])
        lse = tl.where(row_seen, lse2 * LN2, float("inf"))
        tl.store(LSE + b * stride_lb + head * stride_lh + q_pos, lse, mask=direct)

        # Only a part's first request can be entered mid-way, so only it starts at a split index > 0.
        split_row = (split_begin + tl.where(b == begin_req, begin_split, 0)).to(tl.int64)
        po_ptrs = OUT_PARTIAL + split_row * stride_ps + kv_head * stride_ph + rows * stride_pr
        tl.store(po_ptrs[:, None] + offs_v[None, :], out, mask=partial[:, None])
        tl.store(LSE_PARTIAL + split_row * stride_pls + kv_head * stride_plh + rows, lse2, mask=partial)


def fixed_strides(q, k_cache, block_table, out, lse, partial_rows: int) -> tuple[int, ...]:
    """The stride arguments of both decode kernels from stride_qb to stride_plh (K's own strides left out: the
    Hopper kernel reads K through a TMA descriptor). Partials are contiguous [split, h_kv, rows, D_V] / [.., rows]."""
    heads_kv = k_cache.shape[2]
    return (q.stride(0), q.stride(1), q.stride(2),
            block_table.stride(0),
            out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(1),
            heads_kv * partial_rows * D_V, partial_rows * D_V, D_V,
            heads_kv * partial_rows, partial_rows)


def bind_decode(varying: tuple, q, k_cache, block_table, sched, out, lse, softmax_scale: float,
                causal: bool) -> BoundKernel:
    """mla_decode_kernel for one configuration: grid = (query-row blocks, KV heads, parts). `varying` holds the
    10 per-call pointer arguments (tensors) in the kernel's order."""
    batch, seq_q, heads_q, _ = q.shape
    _, page_size, heads_kv, _ = k_cache.shape
    heads_per_kv = heads_q // heads_kv
    rows = seq_q * heads_per_kv
    cfg = launch_config(rows)
    strides = fixed_strides(q, k_cache, block_table, out, lse, rows)
    fixed = (softmax_scale * LOG2E,
             *strides[:3], k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), *strides[3:],
             seq_q, heads_per_kv, block_table.shape[1] * page_size, k_cache.shape[0],
             D_V, D_ROPE, page_size, cfg.block_m, min(cfg.block_n, PLAN_TILE), PLAN_TILE, SCHED_ROW, causal)
    grid = (triton.cdiv(rows, cfg.block_m), heads_kv, sched.shape[0])
    return BoundKernel(mla_decode_kernel, grid, varying, fixed,
                       dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))
