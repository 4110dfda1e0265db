"""Pure-PyTorch MLA decode: the test oracle, and the path CPU tensors take without the Triton interpreter.

Straightforward math in `compute_dtype` (float32 by default, float64 for tight checks): gather each request's
keys through the block table, softmax(scale * Q K^T) V with V = K[..., :dv], bottom-right causal mask.
Rows that see no key give out = 0 and lse = +inf, as FlashMLA does.
"""
from __future__ import annotations

import math

import torch


def mla_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    softmax_scale: float | None = None,
    causal: bool = False,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [b, s_q, h_q, d], k_cache [blocks, page, h_kv, d] -> out [b, s_q, h_q, dv] (q.dtype), lse [b, h_q, s_q] fp32."""
    batch, seq_q, heads_q, head_dim = q.shape
    page_size, heads_kv = k_cache.shape[1], k_cache.shape[2]
    heads_per_kv = heads_q // heads_kv
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    out = torch.zeros(batch, seq_q, heads_q, head_dim_v, dtype=compute_dtype, device=q.device)
    lse = torch.full((batch, heads_q, seq_q), float("inf"), dtype=torch.float32, device=q.device)
    num_blocks, capacity = k_cache.shape[0], block_table.shape[1] * page_size
    seqlens = cache_seqlens.tolist()
    for b in range(batch):
        seqlen = min(seqlens[b], capacity)  # clamped as the kernels clamp it (and page ids below)
        if seqlen <= 0:
            continue
        tok = torch.arange(seqlen, device=q.device)
        pages = block_table[b, tok // page_size].long().clamp(0, num_blocks - 1)
        keys = k_cache[pages, tok % page_size].to(compute_dtype)  # [seqlen, h_kv, d]
        keys = keys.repeat_interleave(heads_per_kv, dim=1)  # [seqlen, h_q, d]
        scores = torch.einsum("shd,khd->hsk", q[b].to(compute_dtype), keys) * scale  # [h_q, s_q, seqlen]
        if causal:
            visible_end = seqlen - seq_q + 1 + torch.arange(seq_q, device=q.device)  # query i sees keys < this
            scores = scores.masked_fill(tok[None, :] >= visible_end[:, None], float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)  # [h_q, s_q]; -inf where nothing is visible
        seen = torch.isfinite(row_lse)
        probs = torch.where(seen[..., None], torch.exp(scores - row_lse[..., None]), 0.0)
        out[b] = torch.einsum("hsk,khd->shd", probs, keys[..., :head_dim_v])
        lse[b] = torch.where(seen, row_lse, float("inf")).float()
    return out.to(q.dtype), lse
