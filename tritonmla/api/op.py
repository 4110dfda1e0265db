"""The decode step (dense and sparse) and the planner as torch.library custom ops, so torch.compile and CUDA graphs
see them whole.

Each op has a fake (meta) implementation giving output shapes only; the real implementations run the same
per-configuration calls as eager mode (tritonmla.dense_decode.call, tritonmla.sparse_decode.call,
tritonmla.scheduler.call). Eager calls skip the ops: their dispatch costs more
host time than the rest of a call.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..core.constants import D_V, SCHED_ROW
from ..dense_decode import call as dense_call
from ..scheduler import call as plan_calls
from ..sparse_decode import call as sparse_call
from ..sparse_prefill import call as prefill_call


@torch.library.custom_op("tritonmla::plan", mutates_args=())
def plan_op(cache_seqlens: torch.Tensor, num_parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    return plan_calls.plan_call(plan_calls.parts_key(cache_seqlens, num_parts), cache_seqlens,
                                lambda: num_parts)(cache_seqlens)


@plan_op.register_fake
def _plan_fake(cache_seqlens: torch.Tensor, num_parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (cache_seqlens.new_empty((num_parts, SCHED_ROW)), cache_seqlens.new_empty((cache_seqlens.shape[0] + 1,)))


@torch.library.custom_op("tritonmla::mla_decode", mutates_args=())
def mla_decode_op(
    q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor, cache_seqlens: torch.Tensor,
    tile_scheduler_metadata: torch.Tensor, num_splits: torch.Tensor,
    head_dim_v: int, softmax_scale: float, causal: bool, kernel_name: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    # (not "kernel": inductor passes defaulted arguments by keyword, and its FallbackKernel.create has a `kernel`)
    key = dense_call.decode_key(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                                head_dim_v, softmax_scale, causal, kernel_name)
    call = dense_call.decode_call(key, q, k_cache, block_table, tile_scheduler_metadata, head_dim_v, softmax_scale,
                                  causal, kernel_name)
    return call(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits)


@mla_decode_op.register_fake
def _mla_decode_fake(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                     head_dim_v, softmax_scale, causal, kernel_name=None):
    batch, seq_q, heads_q, _ = q.shape
    return (q.new_empty((batch, seq_q, heads_q, head_dim_v)),
            q.new_empty((batch, heads_q, seq_q), dtype=torch.float32))


@torch.library.custom_op("tritonmla::sparse_decode", mutates_args=())
def sparse_decode_op(
    q: torch.Tensor, k_cache: torch.Tensor, indices: torch.Tensor, topk_length: Optional[torch.Tensor],
    attn_sink: Optional[torch.Tensor], extra_k_cache: Optional[torch.Tensor], extra_indices: Optional[torch.Tensor],
    extra_topk_length: Optional[torch.Tensor], tile_scheduler_metadata: torch.Tensor, num_splits: torch.Tensor,
    softmax_scale: float, kernel_name: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    key = sparse_call.sparse_key(q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices,
                                 extra_topk_length, D_V, softmax_scale, False, True, kernel_name)
    call = sparse_call.sparse_call(key, q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices,
                                   extra_topk_length, softmax_scale, kernel_name)
    return call(q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices, extra_topk_length,
                tile_scheduler_metadata, num_splits)


@sparse_decode_op.register_fake
def _sparse_decode_fake(q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices,
                        extra_topk_length, tile_scheduler_metadata, num_splits, softmax_scale, kernel_name=None):
    batch, seq_q, heads_q, _ = q.shape
    return q.new_empty((batch, seq_q, heads_q, D_V)), q.new_empty((batch, heads_q, seq_q), dtype=torch.float32)


def decode_into(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                softmax_scale: float, causal: bool, out: torch.Tensor, lse: torch.Tensor,
                partial_fill: float | None = None, kernel: Optional[str] = None) -> str:
    """The decode step into given contiguous out/lse (tests pass poisoned ones; partial_fill poisons the split
    workspace). kernel: "auto" / "hopper" / "cute" / "portable" / None (TRITONMLA_KERNEL, else auto). Returns the
    kernel that ran."""
    key = dense_call.decode_key(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                                out.shape[-1], softmax_scale, causal, kernel)
    call = dense_call.decode_call(key, q, k_cache, block_table, tile_scheduler_metadata, out.shape[-1], softmax_scale,
                                  causal, kernel)
    assert out.is_contiguous() and lse.is_contiguous() and out.shape == call.out_shape
    workspace = torch.empty(call.workspace_numel, dtype=torch.float32, device=q.device)
    if partial_fill is not None:
        workspace.fill_(partial_fill)
    call(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits, out, lse, workspace)
    return call.kernel


@torch.library.custom_op("tritonmla::sparse_prefill", mutates_args=())
def sparse_prefill_op(
    q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sm_scale: float, attn_sink: Optional[torch.Tensor],
    topk_length: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    key = prefill_call.prefill_key(q, kv, indices, topk_length, attn_sink, sm_scale, D_V)
    call = prefill_call.prefill_call(key, q, kv, indices, topk_length, attn_sink, sm_scale)
    return call(q, kv, indices, topk_length, attn_sink)


@sparse_prefill_op.register_fake
def _sparse_prefill_fake(q, kv, indices, sm_scale, attn_sink, topk_length):
    s_q, heads_q, _ = q.shape
    return (q.new_empty((s_q, heads_q, D_V)), q.new_empty((s_q, heads_q), dtype=torch.float32),
            q.new_empty((s_q, heads_q), dtype=torch.float32))
