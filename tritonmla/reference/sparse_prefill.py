"""Pure-PyTorch sparse attention prefill (FlashMLA's flash_mla_sparse_fwd): the test oracle, and the path CPU tensors
take without the Triton interpreter.

Query token i, head h (KV head g = h // (h_q / h_kv)) attends the kv rows indices[i, g, j] for the slots
j < topk_length[i] (all topk without it) whose index lies in [0, s_kv); K = kv[:, g] (d_qk columns), V = its
first d_v columns. With P_j = sm_scale * q . k_j over those slots:

    max_logits = max_j P_j,   lse = logsumexp_j P_j,   out = softmax(P) V * exp(lse) / (exp(lse) + exp(sink[h]))

(the sink factor only where attn_sink is given; +inf sinks give 0, -inf none). A query with no valid slot:
out 0, max_logits -inf, lse +inf. Math in `compute_dtype`; rows no valid slot names are never read into it.
"""
from __future__ import annotations

from typing import Optional

import torch


def sparse_prefill_reference(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    sm_scale: float,
    d_v: int = 512,
    attn_sink: Optional[torch.Tensor] = None,
    topk_length: Optional[torch.Tensor] = None,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [s_q, h_q, d_qk], kv [s_kv, h_kv, d_qk], indices [s_q, h_kv, topk] int32 -> out [s_q, h_q, d_v]
    (q.dtype), max_logits [s_q, h_q] float32, lse [s_q, h_q] float32."""
    s_q, heads_q, d_qk = q.shape
    s_kv, heads_kv, _ = kv.shape
    topk = indices.shape[-1]
    idx = indices.long()
    valid = (idx >= 0) & (idx < s_kv)  # [s_q, h_kv, topk]
    if topk_length is not None:
        slot = torch.arange(topk, device=indices.device)
        valid &= slot[None, None, :] < topk_length.long()[:, None, None]
    safe = torch.where(valid, idx, 0)
    # keys[i, g, j] = kv[safe[i, g, j], g]
    keys = kv.to(compute_dtype)[safe, torch.arange(heads_kv, device=kv.device)[None, :, None]]
    keys = torch.where(valid[..., None], keys, 0.0)  # NaN in a row no valid slot names never reaches the result
    group = heads_q // heads_kv
    qg = q.to(compute_dtype).view(s_q, heads_kv, group, d_qk)
    scores = torch.einsum("sgrd,sgkd->sgrk", qg, keys) * sm_scale
    scores = scores.masked_fill(~valid[:, :, None, :], float("-inf"))
    max_logits = scores.amax(dim=-1)  # -inf where nothing is valid
    lse = torch.logsumexp(scores, dim=-1)
    seen = torch.isfinite(lse)
    probs = torch.where(seen[..., None], torch.exp(scores - lse[..., None]), 0.0)
    out = torch.einsum("sgrk,sgkd->sgrd", probs, keys[..., :d_v])
    if attn_sink is not None:
        sink = attn_sink.to(compute_dtype).view(heads_kv, group)
        out = out * torch.where(seen, torch.sigmoid(lse - sink[None]), 0.0)[..., None]
    lse = torch.where(seen, lse, float("inf"))
    return (out.reshape(s_q, heads_q, d_v).to(q.dtype), max_logits.reshape(s_q, heads_q).float(),
            lse.reshape(s_q, heads_q).float())
