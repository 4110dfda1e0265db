"""Combine kernel: merge the fp32 partials of requests that the scheduler split across parts.

LSE merge, in the log2 domain the decode kernel writes: with split i giving (o_i, lse_i),
    m = max_i lse_i,  w_i = 2^(lse_i - m),  o = sum_i w_i o_i / sum_i w_i,  lse = (m + log2 sum_i w_i) * ln 2.
Splits that saw no key have lse_i = -inf (w_i = 0); a row no split saw gets o = 0, lse = +inf.
One program per (COMBINE_ROWS query rows, block of output columns, request, KV head); requests the plan kept whole
(one split) were written by the decode kernel. The splits are read SPLITS at a time (one wide load of o and lse
each, one pass with a running max), not one after another: a small batch has one request cut into up to one piece
per SM (b 1, sk 4096: 64 splits), and a loop of 64 dependent loads cost 64 us where the decode kernel took a few
(H200, NOTES.md run 21); there the columns are cut into blocks too (combine_shape, down to MIN_COLS), so that the
merge runs on more SMs. The column blocks depend on the batch size: warmup() runs one call per variant
(combine_batches).
mla_combine_sink_kernel is the same merge for the sparse path (one KV head), with FlashMLA's attention sink.

(Folding this into the decode kernel, the last split to finish merging its request, was tried and measured:
NOTES.md run 11. One program merging n splits x all rows of a request is slow where n is large, e.g. one long
request split over every SM, so the merge stays a grid of its own.)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core.constants import LN2, LOG2E_JIT
from ..core.launch import BoundKernel
from ..core.runtime import interpreter_enabled, sm_count
from ..core.triton_helpers import round_to


@triton.jit
def merge_splits(o_ptr, lse_ptr, row_ok, num_splits, stride_ps, stride_pls, ROWS: tl.constexpr, COLS: tl.constexpr,
                 SPLITS: tl.constexpr):
    """(sum_i w_i o_i, sum_i w_i, m) over the splits of ROWS rows (o_ptr [ROWS, COLS], lse_ptr [ROWS] at split 0;
    rows not row_ok read nothing), w_i = 2^(lse_i - m), m = max lse_i (0 if all -inf); SPLITS splits per load.
    One pass, the running max rescaling what is summed so far: a chunk's lse and o loads go out together, so a
    request of n splits costs n / SPLITS dependent loads."""
    offs_s = tl.arange(0, SPLITS)
    lse_max = tl.full([ROWS], float("-inf"), tl.float32)
    weight_sum = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, COLS], tl.float32)
    for first in range(0, num_splits, SPLITS):
        split = first + offs_s
        ok = (split < num_splits)[:, None] & row_ok[None, :]
        lse = tl.load(lse_ptr[None, :] + split[:, None] * stride_pls, mask=ok, other=float("-inf"))
        o = tl.load(o_ptr[None, :, :] + split[:, None, None] * stride_ps, mask=ok[:, :, None], other=0.0)
        new_max = tl.maximum(lse_max, tl.max(lse, axis=0))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        alpha = tl.math.exp2(lse_max - safe_max)  # 0 while nothing was seen
        w = tl.math.exp2(lse - safe_max[None, :])
        weight_sum = weight_sum * alpha + tl.sum(w, axis=0)
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * o, axis=0)
        lse_max = new_max
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    return acc, weight_sum, lse_max


@triton.jit
def mla_combine_kernel(
    OUT_PARTIAL, LSE_PARTIAL, NUM_SPLITS, OUT, LSE,
    stride_ps, stride_ph, stride_pr,
    stride_pls, stride_plh,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh,
    heads_per_kv, num_rows,
    D_V: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, SPLITS: tl.constexpr,
):
    block = tl.program_id(0) // (D_V // COLS)
    cols = (tl.program_id(0) % (D_V // COLS)) * COLS
    b = tl.program_id(1)
    kv_head = tl.program_id(2)
    split_begin = tl.load(NUM_SPLITS + b)
    num_splits = tl.load(NUM_SPLITS + b + 1) - split_begin
    if num_splits > 1:
        rows = block * ROWS + tl.arange(0, ROWS)  # row = q_pos * heads_per_kv + head within the KV head
        row_ok = rows < num_rows
        offs_v = cols + tl.arange(0, COLS)
        lse_ptr = LSE_PARTIAL + split_begin.to(tl.int64) * stride_pls + kv_head * stride_plh + rows
        o_ptr = (OUT_PARTIAL + split_begin.to(tl.int64) * stride_ps + kv_head * stride_ph
                 + rows[:, None] * stride_pr + offs_v[None, :])

        acc, weight_sum, lse_max = merge_splits(o_ptr, lse_ptr, row_ok, num_splits, stride_ps, stride_pls,
                                                ROWS, COLS, SPLITS)

        seen = weight_sum > 0.0
        safe_sum = tl.where(seen, weight_sum, 1.0)
        out = acc / safe_sum[:, None]
        lse = tl.where(seen, (lse_max + tl.math.log2(safe_sum)) * LN2, float("inf"))
        q_pos = rows // heads_per_kv
        head = kv_head * heads_per_kv + rows % heads_per_kv
        b64 = b.to(tl.int64)
        out_rows = OUT + b64 * stride_ob + q_pos * stride_os + head * stride_oh
        tl.store(out_rows[:, None] + offs_v[None, :], out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
        if cols == 0:
            tl.store(LSE + b64 * stride_lb + head * stride_lh + q_pos, lse, mask=row_ok)


# Query rows per program (sparse V3.2 case, H100: 1 / 4 / 8 / 16 rows -> 245.3 / 243.5 / 243.6 / 246.3 us).
COMBINE_ROWS = 8
MIN_COLS = 32  # narrowest column block (b 1, h_q 16: 2 row blocks x 16 column blocks, 32 splits per load)
TILE = 8192  # partial elements one load of a program reads (SPLITS x ROWS x COLS): 64 registers a thread at 4 warps


def combine_shape(row_blocks: int, batch: int, heads_kv: int, d_v: int, device: torch.device) -> tuple[int, int]:
    """(COLS, SPLITS): output columns per program and splits per load. A batch whose programs do not fill the GPU
    twice (a small batch, whose requests the plan cuts into many splits) gets its columns cut into blocks of down
    to MIN_COLS; a large one keeps whole rows (most of its programs exit at once: it has few splits)."""
    programs = row_blocks * batch * heads_kv
    col_blocks = 1
    while col_blocks < d_v // MIN_COLS and programs * col_blocks < 2 * sm_count(device):
        col_blocks *= 2
    cols = d_v // col_blocks
    return cols, max(1, TILE // (COMBINE_ROWS * cols))


def combine_batches(rows: int, heads_kv: int, d_v: int, device: torch.device) -> list[int]:
    """The smallest batch size of each combine variant (combine_shape) that decode calls with `rows` query rows per
    KV head can take: what warmup runs so that no batch size compiles while serving."""
    row_blocks = triton.cdiv(rows, COMBINE_ROWS)
    first: dict = {}
    for batch in range(1, 2 * sm_count(device) + 1):  # from 2 * SMs requests on, whole rows (col_blocks 1)
        first.setdefault(combine_shape(row_blocks, batch, heads_kv, d_v, device), batch)
    return sorted(first.values())


def bind_combine(out_partial, lse_partial, num_splits, out, lse, heads_per_kv: int) -> BoundKernel:
    """mla_combine_kernel for one configuration: grid = (blocks of COMBINE_ROWS query rows per KV head x column
    blocks, requests, KV heads); requests with one split exit at once. out_partial / lse_partial: contiguous
    [slot, h_kv, rows, D_V] / [.., rows]."""
    batch, seq_q, _, d_v = out.shape
    heads_kv = out_partial.shape[1]
    row_blocks = triton.cdiv(seq_q * heads_per_kv, COMBINE_ROWS)
    cols, splits = combine_shape(row_blocks, batch, heads_kv, d_v, out.device)
    fixed = (out_partial.stride(0), out_partial.stride(1), out_partial.stride(2),
             lse_partial.stride(0), lse_partial.stride(1),
             out.stride(0), out.stride(1), out.stride(2),
             lse.stride(0), lse.stride(1),
             heads_per_kv, seq_q * heads_per_kv, d_v, COMBINE_ROWS, cols, splits)
    return BoundKernel(mla_combine_kernel, (row_blocks * (d_v // cols), batch, heads_kv),
                       (out_partial, lse_partial, num_splits, out, lse), fixed, dict(num_warps=4))


@triton.jit
def mla_combine_sink_kernel(
    OUT_PARTIAL, LSE_PARTIAL, NUM_SPLITS, SINK, OUT, LSE,
    stride_ps, stride_pr,
    stride_pls,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh,
    heads_q, num_rows,
    D_V: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, SPLITS: tl.constexpr, HAS_SINK: tl.constexpr,
    RNE_BF16: tl.constexpr,
):
    """The merge above for one KV head (the sparse path), ROWS query rows (row = q_pos * h_q + head) of a request
    per program, then FlashMLA's attention sink: out is scaled by exp(lse) / (exp(lse) + exp(sink[head])) =
    1 / (1 + 2^(sink log2 e - lse2)); lse is written without it."""
    block = tl.program_id(0) // (D_V // COLS)
    cols = (tl.program_id(0) % (D_V // COLS)) * COLS
    b = tl.program_id(1)
    split_begin = tl.load(NUM_SPLITS + b)
    num_splits = tl.load(NUM_SPLITS + b + 1) - split_begin
    if num_splits > 1:
        rows = block * ROWS + tl.arange(0, ROWS)
        row_ok = rows < num_rows
        offs_v = cols + tl.arange(0, COLS)
        lse_ptr = LSE_PARTIAL + split_begin.to(tl.int64) * stride_pls + rows
        o_ptr = OUT_PARTIAL + split_begin.to(tl.int64) * stride_ps + rows[:, None] * stride_pr + offs_v[None, :]

        acc, weight_sum, lse_max = merge_splits(o_ptr, lse_ptr, row_ok, num_splits, stride_ps, stride_pls,
                                                ROWS, COLS, SPLITS)

        seen = weight_sum > 0.0
        lse2 = lse_max + tl.math.log2(tl.where(seen, weight_sum, 1.0))
        factor = tl.where(seen, 1.0 / tl.where(seen, weight_sum, 1.0), 0.0)
        q_pos = rows // heads_q
        head = rows % heads_q
        if HAS_SINK:
            sink2 = tl.load(SINK + head, mask=row_ok, other=0.0) * LOG2E_JIT
            factor = tl.where(seen, factor / (1.0 + tl.math.exp2(sink2 - lse2)), 0.0)
        out = acc * factor[:, None]
        lse = tl.where(seen, lse2 * LN2, float("inf"))
        b64 = b.to(tl.int64)
        out_rows = OUT + b64 * stride_ob + q_pos * stride_os + head * stride_oh
        tl.store(out_rows[:, None] + offs_v[None, :], round_to(out, OUT.dtype.element_ty, RNE_BF16),
                 mask=row_ok[:, None])
        if cols == 0:
            tl.store(LSE + b64 * stride_lb + head * stride_lh + q_pos, lse, mask=row_ok)


def bind_combine_sink(out_partial, lse_partial, num_splits, sink, out, lse, has_sink: bool) -> BoundKernel:
    """mla_combine_sink_kernel for one configuration: grid = (blocks of COMBINE_ROWS of the s_q * h_q rows x column
    blocks, requests). out_partial / lse_partial: contiguous [slot, 1, s_q * h_q, D_V] / [slot, 1, s_q * h_q];
    sink: [h_q] fp32 (any tensor when has_sink is False)."""
    batch, seq_q, heads_q, d_v = out.shape
    row_blocks = triton.cdiv(seq_q * heads_q, COMBINE_ROWS)
    cols, splits = combine_shape(row_blocks, batch, 1, d_v, out.device)
    fixed = (out_partial.stride(0), out_partial.stride(2),
             lse_partial.stride(0),
             out.stride(0), out.stride(1), out.stride(2),
             lse.stride(0), lse.stride(1),
             heads_q, seq_q * heads_q,
             d_v, COMBINE_ROWS, cols, splits, has_sink, interpreter_enabled() and out.dtype == torch.bfloat16)
    return BoundKernel(mla_combine_sink_kernel, (row_blocks * (d_v // cols), batch, 1),
                       (out_partial, lse_partial, num_splits, sink, out, lse), fixed, dict(num_warps=4))
