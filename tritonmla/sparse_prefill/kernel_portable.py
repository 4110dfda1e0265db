"""Portable sparse MLA prefill kernel (DeepSeek Sparse Attention, FlashMLA's `flash_mla_sparse_fwd`): plain Triton,
any GPU Triton supports, and the CPU interpreter.

The math, once. Query token i, head h (KV head g = h // (h_q / h_kv)) attends the kv rows indices[i, g, j] for the
slots j < n_i (n_i = topk_length[i] clamped to [0, topk], or topk); a slot whose index lies outside [0, s_kv) is
skipped and never read. K = kv[:, g, :] (all d_qk columns), V = its first 512 columns. In the log2 domain:

    s_j = scale log2(e) q . k_j,  m = max_j s_j,  l = sum_j 2^(s_j - m),  o = sum_j 2^(s_j - m) v_j / l
    max_logits = m ln 2,  lse = (m + log2 l) ln 2,  out = o / (1 + 2^(sink log2(e) - m - log2 l))

(the attention sink scales out by exp(lse) / (exp(lse) + exp(sink)); lse and max_logits are returned without it).
A query with no valid slot: out 0, max_logits -inf, lse +inf.

The schedule. One program per (query token, BLOCK_H query heads of one KV head), a 1-D grid with the head blocks of
one token next to each other (h_q 128: the second block finds the token's rows in L2). The program walks its index
list in BLOCK_N-slot tiles: it gathers the tile's kv rows (masked: an invalid slot loads zeros, so NaN in rows no
valid index names never enters a dot), computes S = Q K^T (for d_qk 576 the 512 latent and the 64 RoPE columns as
two dots), runs the online softmax and accumulates O += P V with V = the same rows' first 512 columns
(tritonmla.core.triton_helpers.attend, shared with sparse decode). No split over the index list: a prefill has s_q x
h_q / BLOCK_H programs, enough to fill a GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..core.triton_helpers import attend, round_to
from ..core.constants import D_V, LN2, LOG2E, LOG2E_JIT
from ..core.launch import BoundKernel
from ..core.runtime import interpreter_enabled


@dataclass(frozen=True)
class PrefillLaunchConfig:
    block_h: int  # query heads per program
    block_n: int  # index slots (gathered kv rows) per inner iteration
    num_warps: int
    num_stages: int


def prefill_launch_config(heads_per_kv: int) -> PrefillLaunchConfig:
    """Tiles by query heads per KV head. TRITONMLA_PREFILL_CONFIG="block_h,block_n,warps,stages" overrides."""
    override = os.environ.get("TRITONMLA_PREFILL_CONFIG")
    if override:
        return PrefillLaunchConfig(*(int(v) for v in override.split(",")))
    if heads_per_kv <= 16:
        return PrefillLaunchConfig(16, 64, 4, 2)
    if heads_per_kv <= 32:
        return PrefillLaunchConfig(32, 64, 4, 2)
    return PrefillLaunchConfig(64, 64, 8, 2)


# (Named after FlashMLA's kernel, so FlashMLA's own test file, which times kernels by name, times this one.)
@triton.jit(do_not_specialize=["s_kv"])  # the kv length changes from call to call: no variant per value
def sparse_attn_fwd_kernel(
    Q, KV, INDICES, TOPK_LEN, SINK, OUT, MAX_LOGITS, LSE,
    s_kv,
    qk_scale_log2,
    stride_qs, stride_qh,
    stride_kvs, stride_kvh,
    stride_is, stride_ih,
    stride_os, stride_oh,
    stride_ms, stride_mh,
    stride_ls, stride_lh,
    heads_per_kv, head_blocks, blocks_per_kv, topk,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LEN: tl.constexpr, HAS_SINK: tl.constexpr, DOT_F32: tl.constexpr,
):
    pid = tl.program_id(0)
    token = (pid // head_blocks).to(tl.int64)
    block = pid % head_blocks
    kv_head = block // blocks_per_kv
    head_in_group = (block % blocks_per_kv) * BLOCK_H + tl.arange(0, BLOCK_H)
    head_ok = head_in_group < heads_per_kv
    heads = kv_head * heads_per_kv + head_in_group
    HAS_ROPE: tl.constexpr = D_QK > D_V
    D_ROPE: tl.constexpr = 64
    offs_v = tl.arange(0, D_V)
    offs_rope = tl.arange(0, D_ROPE)
    offs_n = tl.arange(0, BLOCK_N)

    q_rows = Q + token * stride_qs + heads.to(tl.int64) * stride_qh
    q_main = tl.load(q_rows[:, None] + offs_v[None, :], mask=head_ok[:, None], other=0.0)
    if HAS_ROPE:
        q_rope = tl.load(q_rows[:, None] + D_V + offs_rope[None, :], mask=head_ok[:, None], other=0.0)
    else:
        q_rope = tl.zeros([BLOCK_H, D_ROPE], Q.dtype.element_ty)

    n = topk
    if HAS_LEN:
        n = tl.minimum(tl.maximum(tl.load(TOPK_LEN + token), 0), topk)
    idx_row = INDICES + token * stride_is + kv_head * stride_ih
    kv_base = KV + kv_head * stride_kvh
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, D_V], dtype=tl.float32)
    for start in range(0, n, BLOCK_N):
        slot = start + offs_n
        ok = slot < n
        idx = tl.load(idx_row + slot, mask=ok, other=-1)
        ok = ok & (idx >= 0) & (idx < s_kv)  # outside the kv rows: skipped like -1, never read
        rows = kv_base + tl.where(ok, idx, 0).to(tl.int64) * stride_kvs
        k = tl.load(rows[:, None] + offs_v[None, :], mask=ok[:, None], other=0.0)
        if HAS_ROPE:
            k_rope = tl.load(rows[:, None] + D_V + offs_rope[None, :], mask=ok[:, None], other=0.0)
        else:
            k_rope = tl.zeros([BLOCK_N, D_ROPE], Q.dtype.element_ty)
        m_i, l_i, acc = attend(q_main, q_rope, k, k_rope, ok, m_i, l_i, acc, qk_scale_log2, HAS_ROPE, DOT_F32)

    row_seen = l_i > 0.0
    l_safe = tl.where(row_seen, l_i, 1.0)
    lse2 = tl.where(row_seen, m_i + tl.math.log2(l_safe), 0.0)
    factor = 1.0 / l_safe
    if HAS_SINK:
        sink2 = tl.load(SINK + heads, mask=head_ok, other=0.0) * LOG2E_JIT
        factor = tl.where(row_seen, factor / (1.0 + tl.math.exp2(sink2 - lse2)), 0.0)
    o_rows = OUT + token * stride_os + heads.to(tl.int64) * stride_oh
    tl.store(o_rows[:, None] + offs_v[None, :], round_to(acc * factor[:, None], OUT.dtype.element_ty, DOT_F32),
             mask=head_ok[:, None])
    tl.store(MAX_LOGITS + token * stride_ms + heads * stride_mh, tl.where(row_seen, m_i * LN2, float("-inf")),
             mask=head_ok)
    tl.store(LSE + token * stride_ls + heads * stride_lh, tl.where(row_seen, lse2 * LN2, float("inf")),
             mask=head_ok)


def bind_sparse_prefill(varying: tuple, q, kv, indices, out, max_logits, lse, softmax_scale: float, has_len: bool,
                        has_sink: bool) -> BoundKernel:
    """sparse_attn_fwd_kernel for one configuration. `varying`: the 8 per-call pointer arguments (tensors; absent
    optional ones replaced by any tensor) and s_kv, in the kernel's order. The grid (s_q x head blocks) is given
    per launch: s_q and s_kv change from call to call, nothing compiled depends on them."""
    _, heads_q, d_qk = q.shape
    heads_kv = kv.shape[1]
    heads_per_kv = heads_q // heads_kv
    cfg = prefill_launch_config(heads_per_kv)
    blocks_per_kv = triton.cdiv(heads_per_kv, cfg.block_h)
    fixed = (softmax_scale * LOG2E,
             q.stride(0), q.stride(1), kv.stride(0), kv.stride(1), indices.stride(0), indices.stride(1),
             out.stride(0), out.stride(1), max_logits.stride(0), max_logits.stride(1), lse.stride(0), lse.stride(1),
             heads_per_kv, heads_kv * blocks_per_kv, blocks_per_kv, indices.shape[-1],
             d_qk, D_V, cfg.block_h, cfg.block_n, has_len, has_sink,
             interpreter_enabled() and q.dtype == torch.bfloat16)
    return BoundKernel(sparse_attn_fwd_kernel, (max(q.shape[0], 1) * heads_kv * blocks_per_kv, 1, 1), varying, fixed,
                       dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))


def head_blocks(heads_q: int, heads_kv: int) -> int:
    """Programs per query token."""
    return heads_kv * triton.cdiv(heads_q // heads_kv, prefill_launch_config(heads_q // heads_kv).block_h)
