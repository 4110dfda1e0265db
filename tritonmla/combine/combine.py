"""Combine kernel: merge the fp32 partials of requests that the scheduler split across parts.

LSE merge, in the log2 domain the decode kernel writes: with split i giving (o_i, lse_i),
    m = max_i lse_i,  w_i = 2^(lse_i - m),  o = sum_i w_i o_i / sum_i w_i,  lse = (m + log2 sum_i w_i) * ln 2.
Splits that saw no key have lse_i = -inf (w_i = 0); a row no split saw gets o = 0, lse = +inf.
One program per (query row, request, KV head); requests with a single split were written by the decode kernel.

(Folding this into the decode kernel, the last split to finish merging its request, was tried and measured:
NOTES.md run 11. One program merging n splits x all rows of a request is slow where n is large, e.g. one long
request split over every SM, so the merge stays a grid of its own.)
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..kernels.constants import LN2
from ..kernels.launch import BoundKernel


@triton.jit
def mla_combine_kernel(
    OUT_PARTIAL, LSE_PARTIAL, NUM_SPLITS, OUT, LSE,
    stride_ps, stride_ph, stride_pr,
    stride_pls, stride_plh,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh,
    heads_per_kv,
    D_V: tl.constexpr,
):
    row = tl.program_id(0)
    b = tl.program_id(1)
    kv_head = tl.program_id(2)
    split_begin = tl.load(NUM_SPLITS + b)
    num_splits = tl.load(NUM_SPLITS + b + 1) - split_begin
    if num_splits > 1:
        offs_v = tl.arange(0, D_V)
        lse_ptr = LSE_PARTIAL + split_begin.to(tl.int64) * stride_pls + kv_head * stride_plh + row
        o_ptr = OUT_PARTIAL + split_begin.to(tl.int64) * stride_ps + kv_head * stride_ph + row * stride_pr + offs_v

        lse_max = tl.full([], float("-inf"), tl.float32)
        for i in range(num_splits):
            lse_max = tl.maximum(lse_max, tl.load(lse_ptr + i * stride_pls))
        lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
        weight_sum = tl.zeros([], tl.float32)
        acc = tl.zeros([D_V], tl.float32)
        for i in range(num_splits):
            w = tl.math.exp2(tl.load(lse_ptr + i * stride_pls) - lse_max)
            weight_sum += w
            acc += w * tl.load(o_ptr + i * stride_ps)

        seen = weight_sum > 0.0
        out = acc / tl.where(seen, weight_sum, 1.0)
        lse = tl.where(seen, (lse_max + tl.math.log2(weight_sum)) * LN2, float("inf"))
        q_pos = row // heads_per_kv
        head = kv_head * heads_per_kv + row % heads_per_kv
        b64 = b.to(tl.int64)
        tl.store(OUT + b64 * stride_ob + q_pos * stride_os + head * stride_oh + offs_v, out.to(OUT.dtype.element_ty))
        tl.store(LSE + b64 * stride_lb + head * stride_lh + q_pos, lse)


def bind_combine(out_partial, lse_partial, num_splits, out, lse, heads_per_kv: int) -> BoundKernel:
    """mla_combine_kernel for one configuration: grid = (query rows per KV head, requests, KV heads); requests
    with one split exit at once. out_partial / lse_partial: contiguous [slot, h_kv, rows, D_V] / [.., rows]."""
    batch, seq_q, _, d_v = out.shape
    heads_kv = out_partial.shape[1]
    fixed = (out_partial.stride(0), out_partial.stride(1), out_partial.stride(2),
             lse_partial.stride(0), lse_partial.stride(1),
             out.stride(0), out.stride(1), out.stride(2),
             lse.stride(0), lse.stride(1),
             heads_per_kv, d_v)
    return BoundKernel(mla_combine_kernel, (seq_q * heads_per_kv, batch, heads_kv),
                       (out_partial, lse_partial, num_splits, out, lse), fixed, dict(num_warps=4))
