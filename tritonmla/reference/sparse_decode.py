"""Pure-PyTorch sparse MLA decode over an FP8 cache: the test oracle, and the path CPU tensors take without the
Triton interpreter.

For query (b, i) the attended keys are the cache rows named by indices[b, i, :n] (n = topk_length[b], or all
topk), then those of extra_indices[b, i, :n2] in extra_k_cache, in one softmax. A slot is invalid if it is past
n, negative (FlashMLA's -1) or >= num_blocks * page_size (tritonmla treats these as -1; FlashMLA reads them).
With K the dequantized rows and V = K[:, :512]:

    lse = logsumexp_j(scale * q . k_j) over valid j,   out = softmax(...) V * sigmoid(lse - sink[h])

(the sink factor exp(lse) / (exp(lse) + exp(sink)); lse itself is returned without it). Rows with no valid key
give out 0, lse +inf. Math in `compute_dtype` on the exactly dequantized cache.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..core.fp8_cache_layouts import gather_rows


def _gather(k_cache: torch.Tensor, indices: torch.Tensor, topk_length: Optional[torch.Tensor],
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """-> keys [b, s_q, topk, d] (0 where invalid), valid [b, s_q, topk]."""
    idx = indices.long()
    valid = (idx >= 0) & (idx < k_cache.shape[0] * k_cache.shape[1])
    if topk_length is not None:
        slot = torch.arange(indices.shape[-1], device=indices.device)
        valid &= slot[None, None, :] < topk_length.long()[:, None, None]
    keys = gather_rows(k_cache, torch.where(valid, idx, 0), torch.float32).to(dtype)
    keys = torch.where(valid[..., None], keys, 0.0)  # an unused slot's NaN never reaches the result
    return keys, valid


def sparse_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    topk_length: Optional[torch.Tensor] = None,
    attn_sink: Optional[torch.Tensor] = None,
    extra_k_cache: Optional[torch.Tensor] = None,
    extra_indices: Optional[torch.Tensor] = None,
    extra_topk_length: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    head_dim_v: int = 512,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [b, s_q, h_q, d_qk], FP8 caches, indices [b, s_q, topk] -> out [b, s_q, h_q, 512] (q.dtype),
    lse [b, h_q, s_q] float32."""
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    keys, valid = _gather(k_cache, indices, topk_length, compute_dtype)
    if extra_k_cache is not None:
        keys2, valid2 = _gather(extra_k_cache, extra_indices, extra_topk_length, compute_dtype)
        keys, valid = torch.cat([keys, keys2], dim=2), torch.cat([valid, valid2], dim=2)
    scores = torch.einsum("bshd,bskd->bshk", q.to(compute_dtype), keys) * scale
    scores = scores.masked_fill(~valid[:, :, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [b, s_q, h_q]; -inf where nothing is valid
    seen = torch.isfinite(lse)
    probs = torch.where(seen[..., None], torch.exp(scores - lse[..., None]), 0.0)
    out = torch.einsum("bshk,bskd->bshd", probs, keys[..., :head_dim_v])
    if attn_sink is not None:
        factor = torch.sigmoid(lse - attn_sink.to(compute_dtype)[None, None, :])  # exp(l) / (exp(l) + exp(sink))
        out = out * torch.where(seen, factor, 0.0)[..., None]
    lse = torch.where(seen, lse, float("inf"))
    return out.to(q.dtype), lse.transpose(1, 2).float().contiguous()
