"""The split-KV plan in plain Python, and a walk that checks any plan by what the decode kernel would do with it.

`plan_reference` walks tritonmla.scheduler's greedy plan in plain Python (FlashMLA's scheduler): the oracle for
the scheduler kernel, and the plan of the CPU reference path.
`walk_plan` replays the decode kernel's loop over a plan and returns the work items it would run, so tests can
check coverage (every tile once, every split index once, every empty request once) for any plan.
"""
from __future__ import annotations

import torch

from ..core.constants import FIXED_COST, PLAN_TILE, SCHED_ROW


def plan_reference(cache_seqlens: torch.Tensor, num_parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    seqlens = cache_seqlens.clamp(min=0).tolist()
    batch = len(seqlens)
    tiles = [-(-s // PLAN_TILE) for s in seqlens] + [0]
    payload = -(-sum(t + FIXED_COST for t in tiles[:batch]) // num_parts) + FIXED_COST
    rows, num_splits = [], [0]
    req = done = piece = 0
    for _ in range(num_parts):
        begin = (req, done, piece)
        remain = payload
        while req < batch and remain >= tiles[req] - done + FIXED_COST:  # the rest of req fits whole
            remain -= tiles[req] - done + FIXED_COST
            num_splits.append(num_splits[-1] + piece + 1)
            req, done, piece = req + 1, 0, 0
        if req < batch and remain > FIXED_COST:  # a piece of it
            done, piece = done + remain - FIXED_COST, piece + 1
            end = (req, done)
        else:
            end = (req - 1, tiles[req - 1] if req > 0 else 0)
        if begin[0] >= batch:  # nothing left for this part
            rows.append([batch, 0, batch - 1, 0, 0] + [0] * (SCHED_ROW - 5))
        else:
            rows.append([begin[0], begin[1], end[0], end[1], begin[2]] + [0] * (SCHED_ROW - 5))
    assert req == batch, "the payload covers every request"
    device = cache_seqlens.device
    return (torch.tensor(rows, dtype=torch.int32, device=device).reshape(num_parts, SCHED_ROW),
            torch.tensor(num_splits, dtype=torch.int32, device=device))


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
