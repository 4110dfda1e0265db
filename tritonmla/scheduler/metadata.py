"""Split-KV tile scheduler: one balanced plan per decode step, computed on the device in one program.

Cost model (FlashMLA's): request b costs n_b + F units, n_b = ceil(seqlen_b / PLAN_TILE) KV tiles and F a fixed
per-request overhead (loading Q, writing the output, a combine input). Requests are laid end to end in cost
space [0, T), C_b = sum of costs up to and including b. Part p owns [p*P, (p+1)*P) with P = ceil(T / parts), so
every part gets the same work up to one tile. Tile j of request b sits at position C_{b-1} + F + j; a request's
tiles falling in k parts make k splits, merged later by the combine kernel. A request with no tiles (seqlen 0)
is owned by the part holding its first position, which writes its empty output.

Output, FlashMLA's shapes so engines can preallocate them:
  sched      int32 [parts, 8]: begin_req, begin_tile, end_req, end_tile, begin_split, 0, 0, 0
             (the part runs requests begin_req..end_req; tiles [begin_tile, ...) of the first,
             [..., end_tile) of the last; its first request's split index is begin_split)
  num_splits int32 [batch + 1]: exclusive prefix sum of splits per request (num_splits[b+1]-num_splits[b]).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._runtime import sm_count
from ..kernels import dispatch
from ..kernels.constants import PLAN_TILE, SCHED_ROW
from ..kernels.decode import launch_config
from ..kernels.launch import BoundKernel

FIXED_COST = 5  # per-request overhead in tiles, as FlashMLA's scheduler counts it


def num_parts_for(device: torch.device, rows_per_kv_head: int, num_heads_k: int, kernel: str | None = None) -> int:
    """How many KV ranges to cut the batch into: enough programs to fill the GPU once (for the kernel that
    will run there; any plan is correct for either kernel)."""
    if dispatch.plans_for_hopper(device, kernel):  # 64-row blocks, one program per SM (224 KB of smem)
        block_m, programs_per_sm = dispatch.HOPPER_BLOCK_M, 1
    else:
        cfg = launch_config(rows_per_kv_head)
        block_m, programs_per_sm = cfg.block_m, cfg.programs_per_sm
    m_blocks = triton.cdiv(rows_per_kv_head, block_m)
    return max(1, sm_count(device) * programs_per_sm // (num_heads_k * m_blocks))


BLOCK_B = 32  # requests per scan chunk (one value for every batch size: one compiled variant)


@triton.jit(do_not_specialize=["batch", "num_parts"])  # no variant per batch size
def plan_kernel(
    SEQLENS, SCHED, NUM_SPLITS, batch, num_parts,
    PLAN_TILE: tl.constexpr, FIXED_COST: tl.constexpr, SCHED_ROW: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr,
):
    # Pass 1: total cost T, then the per-part payload P.
    total = 0
    for start in range(0, batch, BLOCK_B):
        offs = start + tl.arange(0, BLOCK_B)
        seqlen = tl.load(SEQLENS + offs, mask=offs < batch, other=0)
        tiles = tl.cdiv(tl.maximum(seqlen, 0), PLAN_TILE)
        total += tl.sum(tl.where(offs < batch, tiles + FIXED_COST, 0))
    payload = tl.maximum(tl.cdiv(total, num_parts), 1)

    parts = tl.arange(0, BLOCK_P)
    first = parts * payload  # first cost position of each part
    last = tl.minimum(first + payload, total) - 1  # its last position
    # Per part: the request holding its first / last position, that request's C_{b-1} and tile count.
    beg_req = tl.zeros([BLOCK_P], tl.int32)
    beg_prev = tl.zeros([BLOCK_P], tl.int32)
    beg_tiles = tl.zeros([BLOCK_P], tl.int32)
    end_req = tl.zeros([BLOCK_P], tl.int32)
    end_prev = tl.zeros([BLOCK_P], tl.int32)
    end_tiles = tl.zeros([BLOCK_P], tl.int32)

    # Pass 2: prefix sums of cost and of splits, chunk by chunk.
    cost_carry = 0
    split_carry = 0
    tl.store(NUM_SPLITS, 0)
    for start in range(0, batch, BLOCK_B):
        offs = start + tl.arange(0, BLOCK_B)
        valid = offs < batch
        seqlen = tl.load(SEQLENS + offs, mask=valid, other=0)
        tiles = tl.cdiv(tl.maximum(seqlen, 0), PLAN_TILE)
        cost = tl.where(valid, tiles + FIXED_COST, 0)
        c_end = cost_carry + tl.cumsum(cost, 0)  # C_b
        c_prev = c_end - cost  # C_{b-1}
        first_tile_pos = c_prev + FIXED_COST
        splits = tl.where(tiles > 0, (c_end - 1) // payload - first_tile_pos // payload + 1, 1)
        splits = tl.where(valid, splits, 0)
        tl.store(NUM_SPLITS + 1 + offs, split_carry + tl.cumsum(splits, 0), mask=valid)

        holds_first = valid[None, :] & (c_prev[None, :] <= first[:, None]) & (first[:, None] < c_end[None, :])
        beg_req += tl.sum(tl.where(holds_first, offs[None, :], 0), 1)
        beg_prev += tl.sum(tl.where(holds_first, c_prev[None, :], 0), 1)
        beg_tiles += tl.sum(tl.where(holds_first, tiles[None, :], 0), 1)
        holds_last = valid[None, :] & (c_prev[None, :] <= last[:, None]) & (last[:, None] < c_end[None, :])
        end_req += tl.sum(tl.where(holds_last, offs[None, :], 0), 1)
        end_prev += tl.sum(tl.where(holds_last, c_prev[None, :], 0), 1)
        end_tiles += tl.sum(tl.where(holds_last, tiles[None, :], 0), 1)

        cost_carry += tl.sum(cost, 0)
        split_carry += tl.sum(splits, 0)

    # An empty request whose first position lies in an earlier part is that part's: start at the next one.
    skip = (beg_tiles == 0) & (beg_prev < first)
    begin_tile = tl.where(skip, 0, tl.minimum(tl.maximum(first - beg_prev - FIXED_COST, 0), beg_tiles))
    begin_split = tl.where(skip, 0, tl.maximum(parts - (beg_prev + FIXED_COST) // payload, 0))
    begin_req = tl.where(skip, beg_req + 1, beg_req)
    end_tile = tl.minimum(tl.maximum(last + 1 - end_prev - FIXED_COST, 0), end_tiles)

    idle = first >= total  # parts past the end of the work run no request
    begin_req = tl.where(idle, batch, begin_req)
    end_req = tl.where(idle, batch - 1, end_req)
    begin_tile = tl.where(idle, 0, begin_tile)
    end_tile = tl.where(idle, 0, end_tile)
    begin_split = tl.where(idle, 0, begin_split)

    row = SCHED + parts * SCHED_ROW
    live = parts < num_parts
    tl.store(row + 0, begin_req, mask=live)
    tl.store(row + 1, begin_tile, mask=live)
    tl.store(row + 2, end_req, mask=live)
    tl.store(row + 3, end_tile, mask=live)
    tl.store(row + 4, begin_split, mask=live)
    for unused in tl.static_range(5, SCHED_ROW):
        tl.store(row + unused, tl.zeros([BLOCK_P], tl.int32), mask=live)


def bind_plan(cache_seqlens: torch.Tensor, sched: torch.Tensor, num_splits: torch.Tensor) -> BoundKernel:
    """plan_kernel for a plan of sched.shape[0] parts over cache_seqlens.shape[0] requests: one program."""
    num_parts = sched.shape[0]
    fixed = (cache_seqlens.shape[0], num_parts, PLAN_TILE, FIXED_COST, SCHED_ROW, BLOCK_B,
             max(16, triton.next_power_of_2(num_parts)))
    return BoundKernel(plan_kernel, (1, 1, 1), (cache_seqlens, sched, num_splits), fixed, dict(num_warps=8))


def plan(cache_seqlens: torch.Tensor, num_parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan for `num_parts` parts (sched [parts, 8], num_splits [batch + 1]), on cache_seqlens' device
    (through the JIT: tests and one-off use; the API keeps bound kernels, tritonmla.api.calls)."""
    batch = cache_seqlens.shape[0]
    sched = torch.empty((num_parts, SCHED_ROW), dtype=torch.int32, device=cache_seqlens.device)
    num_splits = torch.empty((batch + 1,), dtype=torch.int32, device=cache_seqlens.device)
    plan_kernel[(1,)](
        cache_seqlens, sched, num_splits, batch, num_parts,
        PLAN_TILE=PLAN_TILE, FIXED_COST=FIXED_COST, SCHED_ROW=SCHED_ROW,
        BLOCK_B=BLOCK_B, BLOCK_P=max(16, triton.next_power_of_2(num_parts)), num_warps=8,
    )
    return sched, num_splits
