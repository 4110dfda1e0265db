"""The combine stage, fused into the decode kernels: the last split of a request to finish merges its partials.

A request the plan cuts into n splits is computed by n parts (x every 64-row block and KV head of the grid); each
writes an fp32 partial (o_i, lse_i) into its split slot. LSE merge, in the log2 domain the decode kernels use:
    m = max_i lse_i,  w_i = 2^(lse_i - m),  o = sum_i w_i o_i / sum_i w_i,  lse = (m + log2 sum_i w_i) * ln 2.
Splits that saw no key have lse_i = -inf (w_i = 0); a row no split saw gets o = 0, lse = +inf.

Who merges: after writing its partial, every program arrives at the request's counter (one int32 in the plan,
tile_scheduler_metadata[p0, SCHED_MERGE_COUNTER], p0 = the part holding the request's first tile). The program
that arrives last (n x m-blocks x KV heads arrivals) merges every row of the request, in split order (so the
result is the same bits whoever is last), and sets the counter back to 0 for the next call with the same plan.

Ordering (PTX memory model, CUTLASS's semaphore pattern): all threads store their partial -> CTA barrier ->
one thread's atom.add.acq_rel.gpu (releases the whole CTA's stores, cumulatively through the barrier) ... the
last arriver's atom (acquire) -> CTA barrier (Triton's broadcast of the atomic's result) -> every thread loads
the partials, with .cg (L2) loads.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..kernels.constants import LN2


@triton.jit(noinline=True)  # a call: the merge's registers do not add to the decode loop's
def arrive_and_merge(
    SCHED, OUT_PARTIAL, LSE_PARTIAL, OUT, LSE,
    b, first_part, split_begin, num_splits, heads_kv, rows_per_kv, heads_per_kv,
    stride_ps, stride_ph, stride_pr, stride_pls, stride_plh,
    stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
    D_V: tl.constexpr, SCHED_ROW: tl.constexpr, SCHED_MERGE_COUNTER: tl.constexpr, MERGE_ROWS: tl.constexpr,
):
    """Call after this program stored its partial of request b (a split one). Merges if it is the last."""
    tl.debug_barrier()  # every thread's partial stores come before the arrival (released by it)
    counter = SCHED + first_part * SCHED_ROW + SCHED_MERGE_COUNTER
    arrivals = num_splits * tl.num_programs(0) * tl.num_programs(1)
    if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == arrivals - 1:
        tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")  # ready for the next launch on this plan
        merge_splits(OUT_PARTIAL, LSE_PARTIAL, OUT, LSE, b, split_begin, num_splits, heads_kv, rows_per_kv,
                     heads_per_kv, stride_ps, stride_ph, stride_pr, stride_pls, stride_plh,
                     stride_ob, stride_os, stride_oh, stride_lb, stride_lh, D_V, MERGE_ROWS)


@triton.jit
def merge_splits(
    OUT_PARTIAL, LSE_PARTIAL, OUT, LSE,
    b, split_begin, num_splits, heads_kv, rows_per_kv, heads_per_kv,
    stride_ps, stride_ph, stride_pr, stride_pls, stride_plh,
    stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
    D_V: tl.constexpr, MERGE_ROWS: tl.constexpr,
):
    """Merge the partials in slots split_begin .. split_begin + num_splits - 1 into out/lse of request b (an int64
    index, as the decode kernel's loop makes it)."""
    offs_v = tl.arange(0, D_V)
    first = split_begin.to(tl.int64)
    for kv_head in range(heads_kv):
        for r0 in range(0, rows_per_kv, MERGE_ROWS):
            rows = r0 + tl.arange(0, MERGE_ROWS)
            ok = rows < rows_per_kv
            lse_ptr = LSE_PARTIAL + first * stride_pls + kv_head * stride_plh + rows
            o_ptr = (OUT_PARTIAL + first * stride_ps + kv_head * stride_ph + rows[:, None] * stride_pr
                     + offs_v[None, :])
            lse_max = tl.full([MERGE_ROWS], float("-inf"), tl.float32)
            for i in range(num_splits):
                lse_i = tl.load(lse_ptr + i * stride_pls, mask=ok, other=float("-inf"), cache_modifier=".cg")
                lse_max = tl.maximum(lse_max, lse_i)
            lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
            weight_sum = tl.zeros([MERGE_ROWS], tl.float32)
            acc = tl.zeros([MERGE_ROWS, D_V], tl.float32)
            for i in range(num_splits):
                lse_i = tl.load(lse_ptr + i * stride_pls, mask=ok, other=float("-inf"), cache_modifier=".cg")
                w = tl.math.exp2(lse_i - lse_max)
                weight_sum += w
                acc += w[:, None] * tl.load(o_ptr + i * stride_ps, mask=ok[:, None], other=0.0, cache_modifier=".cg")
            seen = weight_sum > 0.0
            out = acc / tl.where(seen, weight_sum, 1.0)[:, None]
            lse = tl.where(seen, (lse_max + tl.math.log2(tl.where(seen, weight_sum, 1.0))) * LN2, float("inf"))
            q_pos = rows // heads_per_kv
            head = kv_head * heads_per_kv + rows % heads_per_kv
            o_dst = OUT + b * stride_ob + q_pos * stride_os + head * stride_oh
            tl.store(o_dst[:, None] + offs_v[None, :], out.to(OUT.dtype.element_ty), mask=ok[:, None])
            tl.store(LSE + b * stride_lb + head * stride_lh + q_pos, lse, mask=ok)
