"""The decode step and the planner as torch.library custom ops, so torch.compile and CUDA graphs see them whole.

Each op has a fake (meta) implementation giving output shapes only. On CUDA, or on the CPU under
TRITON_INTERPRET=1, they run the Triton kernels; other CPU calls take the pure-PyTorch reference.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._runtime import uses_triton
from ..combine.combine import launch_combine
from ..kernels import dispatch
from ..kernels.decode import D_V, SCHED_ROW, launch_decode
from ..reference.plan import plan_reference
from ..reference.reference import mla_decode_reference
from ..scheduler.metadata import plan


@torch.library.custom_op("tritonmla::plan", mutates_args=())
def plan_op(cache_seqlens: torch.Tensor, num_parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not uses_triton(cache_seqlens.device):
        return plan_reference(cache_seqlens, num_parts)
    return plan(cache_seqlens, num_parts)


@plan_op.register_fake
def _plan_fake(cache_seqlens: torch.Tensor, num_parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (cache_seqlens.new_empty((num_parts, SCHED_ROW)), cache_seqlens.new_empty((cache_seqlens.shape[0] + 1,)))


@torch.library.custom_op("tritonmla::mla_decode", mutates_args=())
def mla_decode_op(
    q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor, cache_seqlens: torch.Tensor,
    tile_scheduler_metadata: torch.Tensor, num_splits: torch.Tensor,
    head_dim_v: int, softmax_scale: float, causal: bool, kernel: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if not uses_triton(q.device):
        return mla_decode_reference(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal)
    batch, seq_q, heads_q, _ = q.shape
    out = torch.empty((batch, seq_q, heads_q, head_dim_v), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads_q, seq_q), dtype=torch.float32, device=q.device)
    decode_into(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                softmax_scale, causal, out, lse, kernel=kernel)
    return out, lse


def decode_into(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                softmax_scale: float, causal: bool, out: torch.Tensor, lse: torch.Tensor,
                partial_fill: float | None = None, kernel: Optional[str] = None) -> str:
    """Decode kernel + combine into given out/lse (tests pass poisoned ones; partial_fill poisons the partials).

    kernel: "auto" / "hopper" / "portable" / None (TRITONMLA_KERNEL, else auto). Returns the kernel that ran.
    """
    batch, seq_q, heads_q, _ = q.shape
    heads_kv = k_cache.shape[2]
    heads_per_kv = heads_q // heads_kv
    # Partials: a plan of P parts cuts at most P - 1 requests, so batch + P split slots always suffice.
    split_slots = batch + tile_scheduler_metadata.shape[0]
    partial_shape = (split_slots, heads_kv, seq_q * heads_per_kv)
    out_partial = torch.empty(partial_shape + (D_V,), dtype=torch.float32, device=q.device)
    lse_partial = torch.empty(partial_shape, dtype=torch.float32, device=q.device)
    if partial_fill is not None:
        out_partial.fill_(partial_fill)
        lse_partial.fill_(partial_fill)
    args = (q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
            out, lse, out_partial, lse_partial, softmax_scale, causal)
    chosen = dispatch.choose(kernel, q, k_cache)
    if chosen == "hopper":
        try:
            dispatch.decode_hopper.launch_decode_hopper(*args)
        except Exception as error:  # noqa: BLE001
            if dispatch.requested_kernel(kernel) == "hopper":
                raise
            dispatch.note_hopper_failure(error)  # "auto": stay correct on the portable kernel
            chosen = "portable"
    if chosen == "portable":
        launch_decode(*args)
    launch_combine(out_partial, lse_partial, num_splits, out, lse, heads_per_kv)
    return chosen


@mla_decode_op.register_fake
def _mla_decode_fake(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                     head_dim_v, softmax_scale, causal, kernel=None):
    batch, seq_q, heads_q, _ = q.shape
    return (q.new_empty((batch, seq_q, heads_q, head_dim_v)),
            q.new_empty((batch, heads_q, seq_q), dtype=torch.float32))
