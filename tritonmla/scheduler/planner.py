"""Split-KV tile scheduler: one balanced plan per decode step, computed on the device in one program.

FlashMLA's scheduler (its get_decoding_sched_meta kernel), cost model and greedy walk alike: request b costs
n_b + F units, n_b = ceil(seqlen_b / PLAN_TILE) KV tiles and F a fixed per-request overhead (loading Q, writing
the output, a combine input), T = sum of the costs. Every part gets a payload of ceil(T / parts) + F units and
takes requests in order: the rest of the current request whole while it fits (its remaining tiles + F, since a
piece pays the overhead again), else, if more than F units are left, that many tiles less F of it (a split,
merged later by the combine kernel), and stops. So a part's load lies within [ceil(T / parts), ceil(T / parts)
+ F], every part runs at most two split pieces (its first and last request), and a request is only split where
no request boundary lies within F units after the cut: with equal requests (a production batch) parts mostly take
whole requests, and no partials are written or merged (NOTES.md run 18). Parts past the end run nothing. A
request with no tiles (seqlen 0) is never split: the part that takes it writes its empty output.

Output, FlashMLA's shapes so engines can preallocate them:
  sched      int32 [parts, 8]: begin_req, begin_tile, end_req, end_tile, begin_split, 0, 0, 0
             (the part runs requests begin_req..end_req; tiles [begin_tile, ...) of the first,
             [..., end_tile) of the last; its first request's split index is begin_split; a part with no work
             has begin_req = batch)
  num_splits int32 [batch + 1]: exclusive prefix sum of splits per request (num_splits[b+1]-num_splits[b]).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core.constants import FIXED_COST, PLAN_TILE, SCHED_ROW
from ..core.launch import BoundKernel

BLOCK_B = 32  # requests per chunk of the total's sum (one value for every batch size: one compiled variant)


@triton.jit
def plan_row(SCHED, part, SCHED_ROW: tl.constexpr):
    """A part's row of the plan (plan_kernel's output): begin_req, begin_tile, end_req, end_tile,
    begin_split. Every decode kernel, dense and sparse, Triton and Gluon, walks the plan from it."""
    sched = SCHED + part * SCHED_ROW
    return tl.load(sched + 0), tl.load(sched + 1), tl.load(sched + 2), tl.load(sched + 3), tl.load(sched + 4)


@triton.jit
def tiles_of(SEQLENS, b, batch, PLAN_TILE: tl.constexpr):
    """KV tiles of request b (0 past the batch)."""
    return tl.cdiv(tl.maximum(tl.load(SEQLENS + b, mask=b < batch, other=0), 0), PLAN_TILE)


@triton.jit(do_not_specialize=["batch", "num_parts"])  # no variant per batch size
def plan_kernel(
    SEQLENS, SCHED, NUM_SPLITS, batch, num_parts,
    PLAN_TILE: tl.constexpr, FIXED_COST: tl.constexpr, SCHED_ROW: tl.constexpr, BLOCK_B: tl.constexpr,
):
    total = 0
    for start in range(0, batch, BLOCK_B):
        offs = start + tl.arange(0, BLOCK_B)
        seqlen = tl.load(SEQLENS + offs, mask=offs < batch, other=0)
        total += tl.sum(tl.where(offs < batch, tl.cdiv(tl.maximum(seqlen, 0), PLAN_TILE) + FIXED_COST, 0))
    payload = tl.cdiv(total, num_parts) + FIXED_COST

    # The greedy walk: one thread's worth of scalar work, parts + batch steps in all.
    req = 0  # the request the walk stands in
    done = 0  # its tiles given to earlier parts
    piece = 0  # its pieces given to earlier parts (the next piece's split index)
    splits_so_far = 0
    prev_tiles = 0  # tiles of the request before req
    tiles = tiles_of(SEQLENS, req, batch, PLAN_TILE)
    tl.store(NUM_SPLITS, 0)
    for part in range(num_parts):
        begin_req = req
        begin_tile = done
        begin_split = piece
        remain = payload
        need = tiles - done + FIXED_COST
        while (req < batch) & (remain >= need):  # the rest of request req fits: take it whole
            remain -= need
            splits_so_far += piece + 1
            tl.store(NUM_SPLITS + 1 + req, splits_so_far)
            prev_tiles = tiles
            req += 1
            done = 0
            piece = 0
            tiles = tiles_of(SEQLENS, req, batch, PLAN_TILE)
            need = tiles + FIXED_COST
        split = (req < batch) & (remain > FIXED_COST)  # else: take what fits of it and stop
        end_req = tl.where(split, req, req - 1)
        end_tile = tl.where(split, done + remain - FIXED_COST, prev_tiles)
        done = tl.where(split, end_tile, done)
        piece = tl.where(split, piece + 1, piece)

        idle = begin_req >= batch  # (then begin_req = batch, end_req = batch - 1)
        row = SCHED + part * SCHED_ROW
        tl.store(row + 0, begin_req)
        tl.store(row + 1, tl.where(idle, 0, begin_tile))
        tl.store(row + 2, end_req)
        tl.store(row + 3, tl.where(idle, 0, end_tile))
        tl.store(row + 4, tl.where(idle, 0, begin_split))
        for unused in tl.static_range(5, SCHED_ROW):
            tl.store(row + unused, 0)


def bind_plan(cache_seqlens: torch.Tensor, sched: torch.Tensor, num_splits: torch.Tensor) -> BoundKernel:
    """plan_kernel for a plan of sched.shape[0] parts over cache_seqlens.shape[0] requests: one program."""
    num_parts = sched.shape[0]
    fixed = (cache_seqlens.shape[0], num_parts, PLAN_TILE, FIXED_COST, SCHED_ROW, BLOCK_B)
    return BoundKernel(plan_kernel, (1, 1, 1), (cache_seqlens, sched, num_splits), fixed, dict(num_warps=1))


def plan(cache_seqlens: torch.Tensor, num_parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan for `num_parts` parts (sched [parts, 8], num_splits [batch + 1]), on cache_seqlens' device
    (through the JIT: tests and one-off use; the API keeps bound kernels, tritonmla.scheduler.call)."""
    batch = cache_seqlens.shape[0]
    sched = torch.empty((num_parts, SCHED_ROW), dtype=torch.int32, device=cache_seqlens.device)
    num_splits = torch.empty((batch + 1,), dtype=torch.int32, device=cache_seqlens.device)
    plan_kernel[(1,)](
        cache_seqlens, sched, num_splits, batch, num_parts,
        PLAN_TILE=PLAN_TILE, FIXED_COST=FIXED_COST, SCHED_ROW=SCHED_ROW, BLOCK_B=BLOCK_B, num_warps=1,
    )
    return sched, num_splits
