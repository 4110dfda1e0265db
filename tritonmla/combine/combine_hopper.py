"""The fused combine of tritonmla.combine.combine, in Gluon for the Hopper decode kernel: same protocol and math
(see that module's docstring), with explicit register layouts. Gluon kernels cannot call @triton.jit code."""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from ..kernels.constants import LN2


@gluon.jit(noinline=True)  # a call: the merge's registers do not add to the decode loop's (no spills there)
def arrive_and_merge(
    SCHED, OUT_PARTIAL, LSE_PARTIAL, OUT, LSE,
    b, first_part, split_begin, num_splits, heads_kv, rows_per_kv, heads_per_kv,
    stride_ps, stride_ph, stride_pr, stride_pls, stride_plh,
    stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
    D_V: gl.constexpr, SCHED_ROW: gl.constexpr, SCHED_MERGE_COUNTER: gl.constexpr, MERGE_ROWS: gl.constexpr,
    num_warps: gl.constexpr,
):
    """Call after this program stored its partial of request b (a split one). Merges if it is the last."""
    gl.thread_barrier()  # every thread's partial stores come before the arrival (released by it)
    counter = SCHED + first_part * SCHED_ROW + SCHED_MERGE_COUNTER
    arrivals = num_splits * gl.num_programs(0) * gl.num_programs(1)
    if gl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == arrivals - 1:
        gl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")  # ready for the next launch on this plan
        merge_splits(OUT_PARTIAL, LSE_PARTIAL, OUT, LSE, b, split_begin, num_splits, heads_kv, rows_per_kv,
                     heads_per_kv, stride_ps, stride_ph, stride_pr, stride_pls, stride_plh,
                     stride_ob, stride_os, stride_oh, stride_lb, stride_lh, D_V, MERGE_ROWS, num_warps)


@gluon.jit
def merge_splits(
    OUT_PARTIAL, LSE_PARTIAL, OUT, LSE,
    b, split_begin, num_splits, heads_kv, rows_per_kv, heads_per_kv,
    stride_ps, stride_ph, stride_pr, stride_pls, stride_plh,
    stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
    D_V: gl.constexpr, MERGE_ROWS: gl.constexpr, num_warps: gl.constexpr,
):
    """Merge the partials in slots split_begin .. split_begin + num_splits - 1 into out/lse of request b."""
    tile: gl.constexpr = gl.BlockedLayout([1, 4], [1, 32], [num_warps, 1], [1, 0])  # 16-byte row-major loads
    row_l: gl.constexpr = gl.SliceLayout(1, tile)
    offs_v = gl.expand_dims(gl.arange(0, D_V, gl.SliceLayout(0, tile)), 0)
    first = split_begin.to(gl.int64)
    b64 = b.to(gl.int64)
    for kv_head in range(heads_kv):
        for r0 in range(0, rows_per_kv, MERGE_ROWS):
            rows = r0 + gl.arange(0, MERGE_ROWS, row_l)
            ok = rows < rows_per_kv
            lse_ptr = LSE_PARTIAL + first * stride_pls + kv_head * stride_plh + rows
            o_ptr = OUT_PARTIAL + first * stride_ps + kv_head * stride_ph + gl.expand_dims(rows * stride_pr, 1) + offs_v
            lse_max = gl.full([MERGE_ROWS], float("-inf"), gl.float32, row_l)
            for i in range(num_splits):
                lse_i = gl.load(lse_ptr + i * stride_pls, mask=ok, other=float("-inf"), cache_modifier=".cg")
                lse_max = gl.maximum(lse_max, lse_i)
            lse_max = gl.where(lse_max == float("-inf"), 0.0, lse_max)
            weight_sum = gl.zeros([MERGE_ROWS], gl.float32, row_l)
            acc = gl.zeros([MERGE_ROWS, D_V], gl.float32, tile)
            for i in range(num_splits):
                lse_i = gl.load(lse_ptr + i * stride_pls, mask=ok, other=float("-inf"), cache_modifier=".cg")
                w = gl.exp2(lse_i - lse_max)
                weight_sum += w
                acc += gl.expand_dims(w, 1) * gl.load(o_ptr + i * stride_ps, mask=gl.expand_dims(ok, 1), other=0.0,
                                                      cache_modifier=".cg")
            seen = weight_sum > 0.0
            out = acc / gl.expand_dims(gl.where(seen, weight_sum, 1.0), 1)
            lse = gl.where(seen, (lse_max + gl.log2(gl.where(seen, weight_sum, 1.0))) * LN2, float("inf"))
            q_pos = rows // heads_per_kv
            head = kv_head * heads_per_kv + rows % heads_per_kv
            o_dst = OUT + b64 * stride_ob + gl.expand_dims(q_pos * stride_os + head * stride_oh, 1) + offs_v
            gl.store(o_dst, out.to(OUT.dtype.element_ty), mask=gl.expand_dims(ok, 1))
            gl.store(LSE + b64 * stride_lb + head * stride_lh + q_pos, lse, mask=ok)
