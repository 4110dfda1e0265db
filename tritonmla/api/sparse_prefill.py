"""flash_mla_sparse_fwd: FlashMLA's sparse attention prefill (DeepSeek-V3.2's DSA prefill), same signature and
results (its flash_mla/flash_mla_interface.py and tests/ref.py define them).

An eager call whose configuration (all but s_q and s_kv) was seen before is a dictionary lookup, three allocations
and one launch (tritonmla.sparse_prefill.call); the checks run on a configuration's first call. Under
torch.compile and other tracing it goes through the custom op torch.ops.tritonmla.sparse_prefill.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..core.config_cache import checked_mode
from ..core.runtime import tracing as tracing_now
from ..sparse_prefill import call as prefill
from . import op  # noqa: F401  (registers torch.ops.tritonmla.*)
from .checks import check_sparse_prefill_inputs, check_sparse_prefill_values


def flash_mla_sparse_fwd(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    sm_scale: float,
    d_v: int = 512,
    attn_sink: Optional[torch.Tensor] = None,
    topk_length: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse attention prefill.

    q [s_q, h_q, d_qk] bf16 (fp16 accepted), kv [s_kv, h_kv, d_qk] (q's dtype; d_qk 576 = V3.2 or 512 = MODEL1;
    V = the first d_v = 512 columns), indices [s_q, h_kv, topk] int32: the kv rows each query token attends (-1 or
    any value outside [0, s_kv) is skipped, never read). Any h_q with h_q % h_kv == 0; row strides allowed.
    attn_sink [h_q] fp32: out scaled by exp(lse) / (exp(lse) + exp(sink)) (+inf: 0, -inf: no effect);
    topk_length [s_q] int32: only the first topk_length[i] indices of token i count (values are clamped to
    [0, topk]; with TRITONMLA_CHECK=1 they raise ValueError instead: a host sync).

    Returns out [s_q, h_q, 512] (q's dtype), max_logits [s_q, h_q] fp32 (the largest scaled logit, -inf where
    nothing is attended) and lse [s_q, h_q] fp32 (natural-log sum-exp of the scaled logits, before the sink; +inf
    where nothing is attended, out 0 there).
    """
    if type(q) is torch.Tensor and q.dim() and q.stride(-1) != 1:
        q = q.contiguous()
    if type(indices) is torch.Tensor and indices.dim() and indices.stride(-1) != 1:
        indices = indices.contiguous()
    tracing = tracing_now()
    call = key = None
    if not tracing:
        try:
            key = prefill.prefill_key(q, kv, indices, topk_length, attn_sink, sm_scale, d_v)
            call = prefill.cached_prefill_call(key)
        except (AttributeError, TypeError):  # not a tensor, or unhashable: the checks say so
            key, call = None, None
    if call is None or not prefill.same_tokens(q, indices, topk_length):
        check_sparse_prefill_inputs(q, kv, indices, sm_scale, d_v, attn_sink, topk_length)
        if tracing:
            return torch.ops.tritonmla.sparse_prefill(q, kv, indices, float(sm_scale), attn_sink, topk_length)
        call = prefill.prefill_call(key, q, kv, indices, topk_length, attn_sink, float(sm_scale))
    if checked_mode():
        check_sparse_prefill_values(indices, topk_length)
    return call(q, kv, indices, topk_length, attn_sink)
