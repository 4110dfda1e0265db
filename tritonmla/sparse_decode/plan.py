"""The split-KV plan of a sparse decode step: the dense scheduler (tritonmla.scheduler), run over per-request
KV lengths that count the tokens each request attends.

Request b attends n_b = topk_length[b] (or topk) main slots and n2_b = extra_topk_length[b] (or extra_topk, or 0)
extra slots; the kernel lays them out as one range [0, ceil(n_b / 64) * 64 + n2_b) (main slots rounded up to a
plan tile so that no tile mixes the two caches), and the scheduler balances those ranges over the parts with
FlashMLA's cost model (64-token tiles + a fixed 5 per request; FlashMLA's sparse scheduler counts the same).
The lengths are computed on the device (no host sync), so planning can be captured in a CUDA graph.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton

from ..core.constants import PLAN_TILE
from ..core.runtime import sm_count
from .kernel_portable import sparse_launch_config


def attended_lengths(batch: int, topk: int, topk_length: Optional[torch.Tensor], extra_topk: Optional[int],
                     extra_topk_length: Optional[torch.Tensor], device: torch.device) -> torch.Tensor:
    """int32 [batch]: each request's KV range as the kernel walks it (main slots rounded up to PLAN_TILE, then
    extra slots). The kernel clamps topk_length the same way."""
    if topk_length is None:
        main = torch.full((batch,), -(-topk // PLAN_TILE) * PLAN_TILE, dtype=torch.int32, device=device)
    else:
        main = (topk_length.clamp(0, topk) + (PLAN_TILE - 1)) // PLAN_TILE * PLAN_TILE
    if extra_topk is None:
        return main.to(torch.int32)
    extra = extra_topk_length.clamp(0, extra_topk) if extra_topk_length is not None else extra_topk
    return (main + extra).to(torch.int32)


def sparse_num_parts(device: torch.device, seq_q: int, heads_q: int) -> int:
    """Parts to cut the batch into: enough programs (head blocks x s_q x parts) to fill the GPU once."""
    cfg = sparse_launch_config(heads_q)
    m_blocks = triton.cdiv(heads_q, cfg.block_m)
    return max(1, sm_count(device) * cfg.programs_per_sm // (m_blocks * seq_q))
