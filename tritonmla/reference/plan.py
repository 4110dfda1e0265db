"""The split-KV plan in plain PyTorch, and a walk that checks any plan by what the decode kernel would do with it.

`plan_reference` states tritonmla.scheduler's formulas with torch ops (cumsum + searchsorted instead of the
kernel's chunked scans): the oracle for the scheduler kernel, and the plan of the CPU reference path.
`walk_plan` replays the decode kernel's loop over a plan and returns the work items it would run, so tests can
check coverage (every tile once, every split index once, every empty request once) for any plan.
"""
from __future__ import annotations

import torch

from ..kernels.constants import PLAN_TILE
from ..scheduler.metadata import FIXED_COST


def plan_reference(cache_seqlens: torch.Tensor, num_parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    seqlens = cache_seqlens.long().clamp(min=0)
    batch = seqlens.shape[0]
    tiles = (seqlens + PLAN_TILE - 1) // PLAN_TILE
    cost = tiles + FIXED_COST
    c_end = torch.cumsum(cost, 0)
    c_prev = c_end - cost
    total = c_end[-1]
    payload = torch.clamp((total + num_parts - 1) // num_parts, min=1)
    splits = torch.where(tiles > 0, (c_end - 1) // payload - (c_prev + FIXED_COST) // payload + 1, 1)
    num_splits = torch.cat([splits.new_zeros(1), torch.cumsum(splits, 0)])

    parts = torch.arange(num_parts, device=seqlens.device)
    first = parts * payload
    last = torch.minimum(first + payload, total) - 1
    idle = first >= total
    beg = torch.searchsorted(c_end, first, right=True).clamp(max=batch - 1)  # request holding position `first`
    end = torch.searchsorted(c_end, last, right=True).clamp(max=batch - 1)
    skip = (tiles[beg] == 0) & (c_prev[beg] < first)
    begin_tile = torch.where(skip, 0, (first - c_prev[beg] - FIXED_COST).clamp(min=0).minimum(tiles[beg]))
    begin_split = torch.where(skip, 0, (parts - (c_prev[beg] + FIXED_COST) // payload).clamp(min=0))
    begin_req = torch.where(skip, beg + 1, beg)
    end_tile = (last + 1 - c_prev[end] - FIXED_COST).clamp(min=0).minimum(tiles[end])

    zero = torch.zeros_like(parts)
    sched = torch.stack([
        torch.where(idle, batch, begin_req), torch.where(idle, 0, begin_tile),
        torch.where(idle, batch - 1, end), torch.where(idle, 0, end_tile),
        torch.where(idle, 0, begin_split), zero, zero, zero,
    ], dim=1)
    return sched.to(torch.int32), num_splits.to(torch.int32)


def walk_plan(sched: torch.Tensor, num_splits: torch.Tensor, cache_seqlens: torch.Tensor
              ) -> list[tuple[int, int, int, int, int]]:
    """Work items (part, request, split index, first token, end token) the decode kernel runs for this plan."""
    seqlens = cache_seqlens.tolist()
    items = []
    for part, (begin_req, begin_tile, end_req, end_tile, begin_split, *_) in enumerate(sched.tolist()):
        for b in range(begin_req, end_req + 1):
            seqlen = max(seqlens[b], 0)
            lo = (begin_tile if b == begin_req else 0) * PLAN_TILE
            hi = min((end_tile if b == end_req else -(-seqlen // PLAN_TILE)) * PLAN_TILE, seqlen)
            if hi > lo or seqlen == 0:
                items.append((part, b, begin_split if b == begin_req else 0, lo, hi))
    return items
