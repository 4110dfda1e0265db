"""Hopper (SM90) sparse FP8 decode kernel in Gluon: the portable kernel's math, plan walk and outputs
(kernel_portable), warp-specialized as FlashMLA's sparse decode. It runs h_q > 32 on SM90; the portable
kernel keeps the rest (and the CPU).

Math, per query row q (64 heads of one query position per program) and the cache rows k_j its index lists name
(rows not named, or outside the cache, are masked):
    s_j = scale*log2e * q.k_j,  m' = max(m, rowmax s),  l' = l 2^(m-m') + sum_j 2^(s_j-m'),
    o' = o 2^(m-m') + sum_j 2^(s_j-m') v_j;   out = o / l (times the sink factor), lse = (m + log2 l) ln 2.

The dequantized NoPE values (e4m3 code x its group's scale) are made in fp16, not bf16, and S's NoPE part and
P V run as fp16 wgmmas (the RoPE part of V3.2 as a bf16 wgmma into the same accumulator). Why: on SM90 an e4m3
pair becomes an fp16 pair in one conversion (cvt.rn.f16x2.e4m3x2) and the scale is one fp16 multiply, where bf16
takes e4m3 -> f16 -> f32 -> bf16 (FlashMLA's docs/20250929-hopper-fp8-sparse-deep-dive.md counts ~50 cycles per
token for it: more than the tensor cores need at 64 heads). Exact where it matters: a code times a power-of-two
scale (the quantizer's) is the same number in fp16 as in bf16 while it stays below 2^16 in magnitude and the
scale is at least 2^-14 (the quantizer floors scales at 2^-13), and q (bf16) converts exactly to fp16 below 2^15.
Outside that range a power of two is moved out of the row: a query row with |q| >= 2^15 is stored / 2^e and its
scores multiplied back; a key row whose scales or RoPE values could pass 2^16 is stored / 2^e (e <= 15) and its
score and P column multiplied back (P 2^e <= 2^15 stays finite). fp16 P keeps more bits than bf16.

Four warpgroups (gl.warp_specialize), two K slots of 64 tokens x 512 fp16 (+ V3.2's RoPE box) in shared memory:
    softmax warpgroup: Q -> shared memory per request (boxes 0-3; warpgroup 1, idle at a request's start, stages
        boxes 4-7 and V32's RoPE box); per tile S = Q K^T (wgmma N = 64, so Q is read once),
        softmax, P (fp16) -> shared memory with the row rescale alpha, O[:, :256] = O alpha + P V[:, :256] with P
        from registers; the row sums and the epilogue factor.
    warpgroup 1 (default partition): its half of each request's query staging; per tile O[:, 256:] = O alpha +
        P V[:, 256:] (P from shared memory); MODEL1: while its P V runs, the L2 prefetch of tile t+3's rows.
    two producers, 32 rows of each tile apiece: gather the rows by index (no TMA on SM90; 32-bit words, the next
        tile's held in registers until its slot is free, indices three tiles ahead; L2 prefetch of a piece's tile
        1 and, V3.2, two tiles ahead), dequantize them into the slot. (One producer warpgroup for all 64 rows was
        the bottleneck: one warp per scheduler, latency-bound; two get twice the loads in flight for the same
        registers per row.)
Hand-offs, all through hardware named barriers (`barrier.arrive` by the side that is done, `barrier.sync` by the
side that waits), each executed by every thread of its warpgroup, so that every thread's own accesses are ordered
across it (an mbarrier arrive from one elected thread would release only that thread's writes):
    READY[slot]: both producers (arrive after writing their rows and fencing them for wgmma) -> softmax warpgroup;
    EMPTY[slot]: both consumer warpgroups (arrive once their wgmmas on the slot completed) -> both producers;
    P_READY / P_FREE: softmax warpgroup -> warpgroup 1 (P, alpha, the epilogue factor) and back;
    Q_MAX / Q_READY: the two halves of a request's query rows (row maxima exchanged, then warpgroup 1's half).
Every barrier but Q_MAX (synced on both sides) alternates arrive and sync (the opposite hand-off bounds the skew),
and every arrive is matched by a sync, including the last tiles' (no barrier left mid-generation at exit).
Warpgroup 1 reads a slot only after P_READY, which the softmax warpgroup arrives after its READY sync. Reuse across
request pieces: warpgroup 1 stages the next piece's query half (q16, q_rope, its row of the maxima) only after
the epilogue's P_READY, which the softmax warpgroup arrives after its last S completed and after it read those
maxima; the softmax warpgroup writes its next maxima only after Q_READY, which warpgroup 1 arrives after its read.
Unused slots load nothing (masked loads) and come out 0 with a -inf score, so an unused row's NaN never enters a dot.
"""
from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, warpgroup_mma, warpgroup_mma_wait)

from ..core.constants import D_V, LN2, LOG2E_JIT, PLAN_TILE, SCHED_ROW
from ..core.gluon_helpers import named_barrier, online_softmax, stall
from ..core.launch import BoundKernel
from ..scheduler.planner import plan_row  # (plain-Triton scalar helpers, shared with the other kernels)
from .kernel_portable import fixed_common, request_range

BLOCK_M = gl.constexpr(64)  # query heads per program: the wgmma M of one warpgroup
BLOCK_N = gl.constexpr(64)  # tokens per tile (= PLAN_TILE)
BOX = gl.constexpr(64)  # columns per shared-memory box / loaded block
V_BOXES = gl.constexpr(D_V // 64)  # 8: K/V tile columns 0..511 (V32: NoPE; MODEL1: 448 NoPE + 64 RoPE)


@gluon.jit
def exponent_of(x):
    """floor(log2 |x|) of fp32 x (-127 for 0; for the shifts only, so NaN/inf need not be exact)."""
    return ((x.to(gl.int32, bitcast=True) >> 23) & 0xFF) - 127


@gluon.jit
def pow2(e):
    """2^e as fp32 (|e| <= 126), exact."""
    return ((e + 127) << 23).to(gl.float32, bitcast=True)


@gluon.jit
def index_rows(INDICES, INDICES2, b64, q_pos, stride_ib, stride_is, stride_i2b, stride_i2s, HAS_EXTRA: gl.constexpr):
    """Request b64's index lists at query position q_pos: (main cache's, extra cache's; without one the main's)."""
    idx_row = INDICES + b64 * stride_ib + q_pos * stride_is
    idx_row2 = idx_row
    if HAS_EXTRA:
        idx_row2 = INDICES2 + b64 * stride_i2b + q_pos * stride_i2s
    return idx_row, idx_row2


@gluon.jit
def tile_index(idx_row, idx_row2, start, main_end, len1, len2, live, tok_l: gl.constexpr, ROW0: gl.constexpr,
               ROWS: gl.constexpr):
    """Index slots ROW0 .. ROW0 + ROWS - 1 of the tile starting at slot `start` of this request's KV range (main
    slots [0, main_end), then extra slots): (idx [ROWS] as stored, ok [ROWS]: slot in range and live)."""
    in_main = start < main_end
    slot = gl.where(in_main, start, start - main_end) + ROW0 + gl.arange(0, ROWS, tok_l)
    ok = live & (slot < gl.where(in_main, len1, len2))
    idx = gl.load(gl.where(in_main, idx_row, idx_row2) + slot, mask=ok, other=-1)
    return idx, ok


@gluon.jit
def tile_rows(K, K2, idx, ok, start, main_end, num_tokens, num_tokens2, stride_kblock, stride_k2block,
              IS_V32: gl.constexpr, PAGE_SIZE: gl.constexpr, PAGE_SIZE2: gl.constexpr, ROW_BYTES: gl.constexpr,
              SCALE_OFFSET: gl.constexpr):
    """Where a tile's rows are (a producer's 32, or all 64 for warpgroup 1's prefetch): (row pointers (bytes),
    scale-word pointers, ok: an index in [0, num_tokens) of its cache; -1 and anything out of range are skipped,
    never read)."""
    in_main = start < main_end
    ok = ok & (idx >= 0) & (idx < gl.where(in_main, num_tokens, num_tokens2))
    idx = gl.where(ok, idx, 0).to(gl.int64)
    base = gl.where(in_main, K, K2)
    page = gl.where(in_main, idx // PAGE_SIZE, idx // PAGE_SIZE2)
    pos = gl.where(in_main, idx % PAGE_SIZE, idx % PAGE_SIZE2)
    block = base + page * gl.where(in_main, stride_kblock, stride_k2block)
    row = block + pos * ROW_BYTES
    if IS_V32:  # 4 fp32 scales right after the codes
        scales = (row + SCALE_OFFSET).to(gl.pointer_type(gl.int32))
    else:  # the block's rows, then 8 scale bytes per row
        scales = (block + gl.where(in_main, PAGE_SIZE, PAGE_SIZE2) * ROW_BYTES + pos * 8).to(
            gl.pointer_type(gl.int32))
    return row, scales, ok


@gluon.jit
def prefetch_rows(row, scales, ok, ROW_BYTES: gl.constexpr, IS_V32: gl.constexpr, line_l: gl.constexpr):
    """Ask L2 for a tile's rows (prefetch.global.L2: no registers held): the loads issued an iteration later
    then wait for L2, not HBM. Each row's 128-byte lines (and MODEL1's scale bytes), 8 addresses per row
    over the row's threads in line_l."""
    tok: gl.constexpr = gl.SliceLayout(1, line_l)
    line = gl.arange(0, 8, gl.SliceLayout(0, line_l))
    offset = gl.expand_dims(gl.minimum(line * 128, ROW_BYTES - 1), 0)  # lines 0..5 + the row's last byte
    addr = gl.expand_dims(gl.convert_layout(row, tok), 1) + offset
    if not IS_V32:  # MODEL1: 576-byte rows (lines 0..4 + last byte), then the scale bytes
        scale_addr = gl.expand_dims(gl.convert_layout(scales, tok), 1).to(gl.pointer_type(gl.uint8)) + offset * 0
        addr = gl.where(gl.expand_dims(line, 0) >= 6, scale_addr, addr)
    live = gl.expand_dims(gl.convert_layout(ok, tok), 1) & (gl.expand_dims(line, 0) >= 0)
    gl.inline_asm_elementwise("{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.b32 $0, 0; }",
                              "=r,l,r", [addr, live.to(gl.int32)], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def load_tile(row, scales, ok, IS_V32: gl.constexpr, NOPE_BOXES: gl.constexpr, ROPE_OFFSET: gl.constexpr,
              word_l: gl.constexpr, rope_l: gl.constexpr):
    """A producer's 32 rows of a tile, raw: (codes: 8 boxes [32, 16] int32 (4 e4m3 codes each), scale words:
    4 x int32 [32] (V32: the 4 fp32 scales; MODEL1: words 0-1 = the 8 ue8m0 bytes), rope [32, 32] int32 (2 bf16
    each), ok).
    Loaded as 32-bit words: carried across an iteration, bytes would take a register each."""
    rope_tok: gl.constexpr = gl.SliceLayout(1, rope_l)
    words_col = gl.expand_dims(gl.arange(0, BOX // 4, gl.SliceLayout(0, word_l)), 0)
    rope_col = gl.expand_dims(gl.arange(0, BOX // 2, gl.SliceLayout(0, rope_l)), 0)
    # The scales and RoPE values first: the dequantization uses them first (the row's shift).
    w0 = gl.load(scales, mask=ok, other=0)
    w1 = gl.load(scales + 1, mask=ok, other=0)
    if IS_V32:
        w2 = gl.load(scales + 2, mask=ok, other=0)
        w3 = gl.load(scales + 3, mask=ok, other=0)
    else:
        w2 = gl.zeros_like(w0)
        w3 = gl.zeros_like(w0)
    rope_rows = gl.convert_layout((row + ROPE_OFFSET).to(gl.pointer_type(gl.int32)), rope_tok)
    rope = gl.load(gl.expand_dims(rope_rows, 1) + rope_col, mask=gl.expand_dims(gl.convert_layout(ok, rope_tok), 1),
                   other=0)
    okc = gl.expand_dims(ok, 1)
    rows = gl.expand_dims(row, 1).to(gl.pointer_type(gl.int32)) + words_col
    c0 = gl.load(rows, mask=okc, other=0)
    c1 = gl.load(rows + 1 * BOX // 4, mask=okc, other=0)
    c2 = gl.load(rows + 2 * BOX // 4, mask=okc, other=0)
    c3 = gl.load(rows + 3 * BOX // 4, mask=okc, other=0)
    c4 = gl.load(rows + 4 * BOX // 4, mask=okc, other=0)
    c5 = gl.load(rows + 5 * BOX // 4, mask=okc, other=0)
    c6 = gl.load(rows + 6 * BOX // 4, mask=okc, other=0)
    if NOPE_BOXES > 7:
        c7 = gl.load(rows + 7 * BOX // 4, mask=okc, other=0)
    else:  # MODEL1: columns 448.. are the RoPE values, loaded below
        c7 = gl.zeros_like(c0)
    return (c0, c1, c2, c3, c4, c5, c6, c7), (w0, w1, w2, w3), rope, ok


@gluon.jit
def unpack_bf16(words, layout: gl.constexpr):
    """[rows, n] int32 -> [rows, 2n] bf16: the two halves of each word, in memory order (the RoPE values)."""
    x = gl.join((words & 0xFFFF).to(gl.uint16), ((words >> 16) & 0xFFFF).to(gl.uint16))
    x = gl.reshape(x, [words.shape[0], words.shape[1] * 2])
    return gl.convert_layout(x.to(gl.bfloat16, bitcast=True), layout)


@gluon.jit
def group_scale(words, c: gl.constexpr, IS_V32: gl.constexpr):
    """The fp32 scale of NoPE box c (64 columns) of each row: V32 one fp32 per 128 columns, MODEL1 one ue8m0
    byte per 64 columns (2^(e - 127), built from its bits)."""
    if IS_V32:
        return words[c // 2].to(gl.float32, bitcast=True)
    else:
        return (((words[c // 4] >> (8 * (c % 4))) & 0xFF) << 23).to(gl.float32, bitcast=True)


@gluon.jit
def decode_codes(words, scale16, pair_l: gl.constexpr):
    """[rows, n] int32 words of e4m3 codes -> [rows, 2n] int32 words of fp16 pairs, code x scale (scale16: fp16,
    one per row), in memory order: per word two cvt.rn.f16x2.e4m3x2 and two mul.rn.f16x2."""
    half = scale16.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    scale2 = gl.expand_dims(half | (half << 16), 1) + gl.zeros_like(words)
    lo, hi = gl.inline_asm_elementwise(
        "{ .reg .b16 l, h; .reg .b32 a, b; mov.b32 {l, h}, $2; cvt.rn.f16x2.e4m3x2 a, l; "
        "cvt.rn.f16x2.e4m3x2 b, h; mul.rn.f16x2 $0, a, $3; mul.rn.f16x2 $1, b, $3; }",
        "=r,=r,r,r", [words, scale2], dtype=(gl.int32, gl.int32), is_pure=True, pack=1)
    pairs = gl.reshape(gl.join(lo, hi), [words.shape[0], 2 * words.shape[1]])
    return gl.convert_layout(pairs, pair_l)


@gluon.jit
def dequantize_tile(codes, words, rope, ok, k_tile, rope_tile, factor_slot,
                    IS_V32: gl.constexpr, NOPE_BOXES: gl.constexpr, ROPE_DTYPE: gl.constexpr, box_l: gl.constexpr,
                    word_l: gl.constexpr, pair_l: gl.constexpr, ROW0: gl.constexpr, ROWS: gl.constexpr):
    """Gathered bytes of rows ROW0 .. ROW0 + ROWS - 1 -> shared memory: k_tile [64, 512] fp16 (row j divided by
    2^e_j), V32's RoPE box in ROPE_DTYPE, and each row's factor 2^e_j (-1 for a row not attended)."""
    tok: gl.constexpr = gl.SliceLayout(1, word_l)
    rope_f = unpack_bf16(rope, box_l).to(gl.float32)
    e = gl.convert_layout(exponent_of(gl.max(gl.abs(rope_f), 1)), tok) - 14  # RoPE values < 2^15 after the shift
    for c in gl.static_range(NOPE_BOXES):
        e = gl.maximum(e, exponent_of(group_scale(words, c, IS_V32)) - 6)  # scale < 2^7: code x scale < 2^16
    shift = gl.minimum(gl.maximum(e, 0), 15)
    inv = pow2(-shift)
    # The NoPE boxes written as 32-bit words (fp16 pairs): the same bytes through an int32 view of the tile.
    k_words = k_tile._reinterpret(gl.int32, [BLOCK_N, V_BOXES * BOX // 2], gl.NVMMASharedLayout(128, 32)).slice(
        ROW0, ROWS, 0)
    for c in gl.static_range(NOPE_BOXES):
        scale = (group_scale(words, c, IS_V32) * inv).to(gl.float16)
        k_words.slice(c * BOX // 2, BOX // 2, 1).store(decode_codes(codes[c], scale, pair_l))
    inv_b = gl.expand_dims(gl.convert_layout(inv, gl.SliceLayout(1, box_l)), 1)
    if NOPE_BOXES < V_BOXES:  # MODEL1: columns 448.. are the RoPE values (part of V)
        k_tile.slice(ROW0, ROWS, 0).slice(NOPE_BOXES * BOX, BOX, 1).store((rope_f * inv_b).to(gl.float16))
    if IS_V32:
        rope_tile.slice(ROW0, ROWS, 0).store((rope_f * inv_b).to(ROPE_DTYPE))
    factor_slot.slice(ROW0, ROWS, 0).store(gl.where(ok, pow2(shift), -1.0))


HALF = gl.constexpr(D_V // 2)  # output columns per consumer warpgroup
QUARTER = gl.constexpr(D_V // 4)  # columns per accumulator (two per warpgroup: a wgmma's N is at most 128 here)
NUM_WARPS = 4  # per warpgroup; the kernel runs 4 x 4 warps
MAXNREG = 128  # 16 warps x 128 = the register file, re-split below
# If any partition's share is below what its code needs, ptxas drops every setmaxnreg (C7507) and serializes the
# wgmmas (C7512): warpgroup 1 (the default partition: O[:, 256:] and its epilogue) needs ~160 and gets the rest,
# 512 - 208 - 2 x 72 = 160; each producer fits 72 (with some spills), the softmax warpgroup gets 208.
# Shares are multiples of 8 (setmaxnreg); with 128 registers at launch no wgmma may need more than 128 at once, so
# each consumer's O half is two accumulators of 128 columns (an N = 256 wgmma needed 158).
SOFTMAX_REGS = gl.constexpr(208)
PRODUCER_REGS = gl.constexpr(72)
PRODUCER_ROWS = gl.constexpr(BLOCK_N // 2)  # rows of each tile per producer warpgroup
# MODEL1: warpgroup 1 asks L2 for the rows 3 tiles ahead while its P V runs, the producers only for a piece's tile 1:
# 3-6% faster on every MODEL1 case. V3.2 keeps the producers' prefetch 2 tiles ahead: warpgroup 1's, at distance 2,
# 3, 4 or 6, with or without the producers', was 3-7% slower there (NOTES.md run 16; why the layouts differ was not
# found).
PV_PREFETCH_AHEAD = gl.constexpr(3)
# Named barriers (Triton's warp_specialize uses ids 0, 1 and 2.. per partition); P_READY / P_FREE over the two
# consumer warpgroups.
ARRIVE_P_READY = gl.constexpr("barrier.arrive 8, 256;")
SYNC_P_READY = gl.constexpr("barrier.sync 8, 256;")
ARRIVE_P_FREE = gl.constexpr("barrier.arrive 9, 256;")
SYNC_P_FREE = gl.constexpr("barrier.sync 9, 256;")
# Per K slot s: READY (id 10 + s) both producers (256) -> softmax warpgroup (128); EMPTY (id 12 + s) both
# consumers (256) -> both producers (256).
ARRIVE_READY = gl.constexpr("barrier.arrive $1, 384;")
SYNC_READY = gl.constexpr("barrier.sync $1, 384;")
ARRIVE_EMPTY = gl.constexpr("barrier.arrive $1, 512;")
SYNC_EMPTY = gl.constexpr("barrier.sync $1, 512;")
# Query staging, split between the consumer warpgroups: Q_MAX (id 14) both sync after writing their half's row
# maxima (bf16 queries); Q_READY (id 15) warpgroup 1 arrives after storing and fencing its half, the softmax
# warpgroup syncs before its first S.
SYNC_Q_MAX = gl.constexpr("barrier.sync 14, 256;")
ARRIVE_Q_READY = gl.constexpr("barrier.arrive 15, 256;")
SYNC_Q_READY = gl.constexpr("barrier.sync 15, 256;")
READY_ID = gl.constexpr(10)
EMPTY_ID = gl.constexpr(12)
STRESS_DELAY_NS = 0  # tests set it (then rebind) to delay the writers and readers of the hand-offs; 0 in use
STRESS_ONE_SITE = False  # tests: with it, one delay site per step (drawn by a hash) instead of all of them
STRESS_SITES = gl.constexpr(12)  # the `late` sites below, numbered 0-11


@gluon.jit
def late(STRESS_DELAY_NS: gl.constexpr, STRESS_ONE_SITE: gl.constexpr, SITE: gl.constexpr, step):
    """Tests only (compiled out at STRESS_DELAY_NS = 0): stall before a hand-off write or read at delay site SITE,
    at every step, or with STRESS_ONE_SITE only when the step (tile or request counter) picks this site, so that
    one warpgroup at a time runs late while the others go on (uniform delays keep the warpgroups in step: they did
    not catch a build without P_FREE, NOTES.md runs 14 and 16)."""
    if STRESS_DELAY_NS > 0:
        if STRESS_ONE_SITE:  # a site drawn per step and program (a hash: a rotation would fix which site
            # follows which, e.g. always the producer's after warpgroup 1's, holding back the one that could overtake)
            h = (step * 73 + gl.program_id(2) * 31 + gl.program_id(0) * 17) % 1009
            if (h * h) % 1009 % STRESS_SITES == SITE:
                stall(STRESS_DELAY_NS)
        else:
            stall(STRESS_DELAY_NS)


@gluon.jit
def slot_barrier(ASM: gl.constexpr, first_id: gl.constexpr, slot):
    """ASM (barrier.arrive / barrier.sync) on named barrier first_id + slot, once in each of this warpgroup's 128
    threads (as decode_hopper_seesaw.named_barrier, with the barrier id in a register)."""
    one_per_thread: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    ids = gl.full([128], first_id, gl.int32, one_per_thread) + slot
    gl.inline_asm_elementwise(ASM + " mov.b32 $0, $1;", "=r,r", [ids], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def producer(K, K2, INDICES, TOPK_LEN, INDICES2, TOPK_LEN2, SCHED, k_smem, rope_smem, factor_smem,
             stride_kblock, stride_k2block, stride_ib, stride_is, stride_i2b, stride_i2s,
             num_tokens, num_tokens2, topk, topk2,
             IS_V32: gl.constexpr, D_NOPE: gl.constexpr, ROW_BYTES: gl.constexpr, PAGE_SIZE: gl.constexpr,
             PAGE_SIZE2: gl.constexpr, HAS_LEN: gl.constexpr, HAS_EXTRA: gl.constexpr, HAS_LEN2: gl.constexpr,
             PLAN_TILE: gl.constexpr, SCHED_ROW: gl.constexpr, rope_dtype: gl.constexpr,
             STRESS_DELAY_NS: gl.constexpr, STRESS_ONE_SITE: gl.constexpr, ROW0: gl.constexpr):
    """Walk the plan as the consumers do; rows ROW0 .. ROW0 + 31 of tile g of this program go to slot g % 2 (the
    other producer warpgroup does the other 32)."""
    ROWS: gl.constexpr = PRODUCER_ROWS
    box_l: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [4, 1], [1, 0])
    word_l: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])
    rope_l: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])
    line_l: gl.constexpr = gl.BlockedLayout([1, 2], [8, 4], [4, 1], [1, 0])
    tok_w: gl.constexpr = gl.SliceLayout(1, word_l)
    NOPE_BOXES: gl.constexpr = D_NOPE // BOX
    ROPE_OFFSET: gl.constexpr = D_NOPE + (16 if IS_V32 else 0)
    q_pos = gl.program_id(1)
    PV_PREFETCHES: gl.constexpr = not IS_V32  # (MODEL1: warpgroup 1 asks L2 for the rows; see PV_PREFETCH_AHEAD)
    begin_req, begin_tile, end_req, end_tile, _ = plan_row(SCHED, gl.program_id(2), SCHED_ROW)
    g = 0
    for b in range(begin_req, end_req + 1):
        b64 = b.to(gl.int64)
        len1, main_end, len2, lo, _, n_tiles, has_work = request_range(b, begin_req, begin_tile, end_req, end_tile,
                                                                       TOPK_LEN, TOPK_LEN2, topk, topk2, HAS_LEN,
                                                                       HAS_EXTRA, HAS_LEN2, PLAN_TILE)
        idx_row, idx_row2 = index_rows(INDICES, INDICES2, b64, q_pos, stride_ib, stride_is, stride_i2b, stride_i2s,
                                       HAS_EXTRA)
        # Tile 0's bytes loaded, tile 1's rows asked of L2, tile 2's indices.
        idx, ok = tile_index(idx_row, idx_row2, lo, main_end, len1, len2, n_tiles > 0, tok_w, ROW0, ROWS)
        row, scales, ok = tile_rows(K, K2, idx, ok, lo, main_end, num_tokens, num_tokens2, stride_kblock,
                                    stride_k2block, IS_V32, PAGE_SIZE, PAGE_SIZE2, ROW_BYTES, D_NOPE)
        codes, words, rope, ok = load_tile(row, scales, ok, IS_V32, NOPE_BOXES, ROPE_OFFSET, word_l, rope_l)
        idx, near_ok = tile_index(idx_row, idx_row2, lo + BLOCK_N, main_end, len1, len2, n_tiles > 1, tok_w, ROW0,
                                  ROWS)
        near_row, near_scales, near_ok = tile_rows(K, K2, idx, near_ok, lo + BLOCK_N, main_end, num_tokens,
                                                   num_tokens2, stride_kblock, stride_k2block, IS_V32, PAGE_SIZE,
                                                   PAGE_SIZE2, ROW_BYTES, D_NOPE)
        prefetch_rows(near_row, near_scales, near_ok, ROW_BYTES, IS_V32, line_l)
        far_idx, far_ok = tile_index(idx_row, idx_row2, lo + 2 * BLOCK_N, main_end, len1, len2, n_tiles > 2, tok_w,
                                     ROW0, ROWS)
        for t in range(n_tiles):
            slot = g % 2
            # Tile t+2's row pointers (V3.2: its rows to L2), tile t+3's indices.
            far_row, far_scales, far_ok = tile_rows(K, K2, far_idx, far_ok, lo + (t + 2) * BLOCK_N, main_end,
                                                    num_tokens, num_tokens2, stride_kblock, stride_k2block, IS_V32,
                                                    PAGE_SIZE, PAGE_SIZE2, ROW_BYTES, D_NOPE)
            if not PV_PREFETCHES:
                prefetch_rows(far_row, far_scales, far_ok, ROW_BYTES, IS_V32, line_l)
            far_idx, far_next = tile_index(idx_row, idx_row2, lo + (t + 3) * BLOCK_N, main_end, len1, len2,
                                           t + 3 < n_tiles, tok_w, ROW0, ROWS)
            if g >= 2:  # tile g-2, the slot's previous tile, done by both consumers
                slot_barrier(SYNC_EMPTY, EMPTY_ID, slot)
            late(STRESS_DELAY_NS, STRESS_ONE_SITE, 0, g)  # the slot's writer
            dequantize_tile(codes, words, rope, ok, k_smem.index(slot), rope_smem.index(slot),
                            factor_smem.index(slot), IS_V32, NOPE_BOXES, rope_dtype, box_l, word_l, rope_l, ROW0,
                            ROWS)
            fence_async_shared()  # generic-proxy writes, read next by wgmma
            slot_barrier(ARRIVE_READY, READY_ID, slot)  # (every producer thread arrives after its own writes)
            # Tile t+1's bytes, held in registers until its slot is free (they were asked of L2 a tile ago).
            codes, words, rope, ok = load_tile(near_row, near_scales, near_ok, IS_V32, NOPE_BOXES, ROPE_OFFSET,
                                               word_l, rope_l)
            near_row, near_scales, near_ok = far_row, far_scales, far_ok
            far_ok = far_next
            g += 1
    # The last two tiles' EMPTY arrivals, matched so that no barrier is left mid-generation.
    if g >= 2:
        slot_barrier(SYNC_EMPTY, EMPTY_ID, g % 2)
    if g >= 1:
        slot_barrier(SYNC_EMPTY, EMPTY_ID, (g + 1) % 2)


@gluon.jit
def q_boxes_to_smem(Q, q16, q_rope, qmax_smem, b64, q_pos, heads_b, head_ok_b, cols_b, stride_qb, stride_qs,
                    stride_qh, FIRST: gl.constexpr, WHO: gl.constexpr, ROPE: gl.constexpr, IS_V32: gl.constexpr,
                    D_NOPE: gl.constexpr, rope_dtype: gl.constexpr, tok_l: gl.constexpr,
                    STRESS_DELAY_NS: gl.constexpr, STRESS_ONE_SITE: gl.constexpr):
    """Boxes FIRST .. FIRST + 3 of a request's query rows -> q16 in fp16 (with ROPE, V32's RoPE box too): one
    consumer warpgroup's half of the query staging (WHO: 0 softmax warpgroup, 1 warpgroup 1). Returns the rows'
    shift; for bf16 queries each half's row maxima go through qmax_smem[WHO] and Q_MAX, so both halves shift a row
    alike (a row with |q| >= 2^15 is divided by 2^shift, its scores multiplied back)."""
    dtype: gl.constexpr = Q.dtype.element_ty
    q_row = Q + b64 * stride_qb + q_pos * stride_qs + gl.expand_dims(heads_b * stride_qh, 1) + cols_b
    shift = gl.zeros([BLOCK_M], gl.int32, tok_l)
    if dtype != gl.float16:
        big = gl.zeros([BLOCK_M], gl.float32, tok_l)
        for c in gl.static_range(FIRST, FIRST + V_BOXES // 2):
            x = gl.load(q_row + c * BOX, mask=head_ok_b, other=0.0).to(gl.float32)
            big = gl.maximum(big, gl.max(gl.abs(x), 1))
        late(STRESS_DELAY_NS, STRESS_ONE_SITE, 8 + 2 * WHO, b64)  # (per warpgroup: one may run late alone)
        qmax_smem.index(WHO).store(big)
        named_barrier(SYNC_Q_MAX)
        late(STRESS_DELAY_NS, STRESS_ONE_SITE, 9 + 2 * WHO, b64)
        big = gl.maximum(big, qmax_smem.index(1 - WHO).load(tok_l))
        shift = gl.maximum(exponent_of(big) - 14, 0)
    inv = gl.expand_dims(pow2(-shift), 1)
    for c in gl.static_range(FIRST, FIRST + V_BOXES // 2):
        x = gl.load(q_row + c * BOX, mask=head_ok_b, other=0.0)
        q16.slice(c * BOX, BOX, 1).store((x.to(gl.float32) * inv).to(gl.float16))
    if ROPE and IS_V32:
        x = gl.load(q_row + D_NOPE, mask=head_ok_b, other=0.0)
        q_rope.store((x.to(gl.float32) * inv).to(rope_dtype))
    return shift


@gluon.jit
def out_rows(NUM_SPLITS, b, begin_req, begin_split, has_work, head_ok):
    """(direct: rows written to out/lse, partial: rows written to the partials, split row) of request b."""
    split_begin = gl.load(NUM_SPLITS + b)
    num_splits = gl.load(NUM_SPLITS + b + 1) - split_begin
    split_row = (split_begin + gl.where(b == begin_req, begin_split, 0)).to(gl.int64)
    return head_ok & has_work & (num_splits == 1), head_ok & has_work & (num_splits > 1), split_row


@gluon.jit
def softmax_warpgroup(Q, TOPK_LEN, TOPK_LEN2, SINK, SCHED, NUM_SPLITS, OUT, LSE, OUT_PARTIAL, LSE_PARTIAL,
                      q16, q_rope, k_smem, rope_smem, factor_smem, p_smem, row_smem, qmax_smem,
                      qk_scale_log2, stride_qb, stride_qs, stride_qh, stride_ob, stride_os, stride_oh, stride_lb,
                      stride_lh, stride_ps, stride_pr, stride_pls, heads_q, topk, topk2,
                      IS_V32: gl.constexpr, D_NOPE: gl.constexpr, HAS_LEN: gl.constexpr, HAS_EXTRA: gl.constexpr,
                      HAS_LEN2: gl.constexpr, HAS_SINK: gl.constexpr, PLAN_TILE: gl.constexpr,
                      SCHED_ROW: gl.constexpr, rope_dtype: gl.constexpr, STRESS_DELAY_NS: gl.constexpr,
                      STRESS_ONE_SITE: gl.constexpr):
    """Warpgroup 0: S, softmax, O[:, :256]; see the module docstring."""
    s_mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
    o_mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                    instr_shape=[16, QUARTER, 16])
    p_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_mma, k_width=2)
    s_row: gl.constexpr = gl.SliceLayout(1, s_mma)
    s_col: gl.constexpr = gl.SliceLayout(0, s_mma)
    o_row: gl.constexpr = gl.SliceLayout(1, o_mma)
    box_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    tok_l: gl.constexpr = gl.SliceLayout(1, box_l)
    m_block = gl.program_id(0)
    q_pos = gl.program_id(1)
    heads_b = m_block * BLOCK_M + gl.arange(0, BLOCK_M, tok_l)
    head_ok_b = gl.expand_dims(heads_b < heads_q, 1)
    cols_b = gl.expand_dims(gl.arange(0, BOX, gl.SliceLayout(0, box_l)), 0)
    heads = m_block * BLOCK_M + gl.arange(0, BLOCK_M, o_row)
    head_ok = heads < heads_q
    cols = gl.expand_dims(gl.arange(0, QUARTER, gl.SliceLayout(0, o_mma)), 0)
    if HAS_SINK:
        sink2 = gl.load(SINK + heads, mask=head_ok, other=0.0) * LOG2E_JIT

    begin_req, begin_tile, end_req, end_tile, begin_split = plan_row(SCHED, gl.program_id(2), SCHED_ROW)
    g = 0
    writes = 0  # hand-offs to warpgroup 1 so far (each but the first waits for the previous one's reader)
    for b in range(begin_req, end_req + 1):
        b64 = b.to(gl.int64)
        len1, main_end, len2, lo, _, n_tiles, has_work = request_range(b, begin_req, begin_tile, end_req, end_tile,
                                                                       TOPK_LEN, TOPK_LEN2, topk, topk2, HAS_LEN,
                                                                       HAS_EXTRA, HAS_LEN2, PLAN_TILE)
        # Q -> shared memory (only this warpgroup's S reads it, all waited): fp16 NoPE (+ MODEL1 RoPE) boxes 0-3
        # here, boxes 4-7 and V32's RoPE box (in rope_dtype) in warpgroup 1, which idles at a request's start.
        late(STRESS_DELAY_NS, STRESS_ONE_SITE, 6, b)
        shift = q_boxes_to_smem(Q, q16, q_rope, qmax_smem, b64, q_pos, heads_b, head_ok_b, cols_b, stride_qb,
                                stride_qs, stride_qh, 0, 0, False, IS_V32, D_NOPE, rope_dtype, tok_l,
                                STRESS_DELAY_NS, STRESS_ONE_SITE)
        row_scale = gl.convert_layout(qk_scale_log2 * pow2(shift), s_row)
        fence_async_shared()
        gl.thread_barrier()
        named_barrier(SYNC_Q_READY)  # warpgroup 1's half stored and fenced

        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, s_row)
        l_i = gl.zeros([BLOCK_M], gl.float32, s_row)
        o0 = gl.zeros([BLOCK_M, QUARTER], gl.float32, o_mma)
        o1 = gl.zeros([BLOCK_M, QUARTER], gl.float32, o_mma)
        for t in range(n_tiles):
            slot = g % 2
            slot_barrier(SYNC_READY, READY_ID, slot)
            k_tile = k_smem.index(slot)
            s = warpgroup_mma(q16, k_tile.permute((1, 0)), gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_mma),
                              is_async=True)
            if IS_V32:
                s = warpgroup_mma(q_rope, rope_smem.index(slot).permute((1, 0)), s, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            late(STRESS_DELAY_NS, STRESS_ONE_SITE, 1, g)  # a reader late to read: what a hand-off must also order
            key_factor = gl.expand_dims(factor_smem.index(slot).load(s_col), 0)
            s = gl.where(key_factor > 0.0, s * gl.expand_dims(row_scale, 1) * key_factor, float("-inf"))
            m_i, l_i, alpha, p = online_softmax(s, m_i, l_i)
            p16 = (p * key_factor).to(gl.float16)  # (an unattended row: p = 0)
            if writes > 0:
                named_barrier(SYNC_P_FREE)
            late(STRESS_DELAY_NS, STRESS_ONE_SITE, 2, g)
            p_smem.store(p16)
            row_smem.store(alpha)
            fence_async_shared()  # P is read by warpgroup 1's wgmma
            named_barrier(ARRIVE_P_READY)
            writes += 1
            alpha_o = gl.expand_dims(gl.convert_layout(alpha, o_row), 1)
            p_a = gl.convert_layout(p16, p_op)
            o0 = warpgroup_mma(p_a, k_tile.slice(0, QUARTER, 1), o0 * alpha_o, is_async=True)
            o1 = warpgroup_mma(p_a, k_tile.slice(QUARTER, QUARTER, 1), o1 * alpha_o, is_async=True)
            o0, o1 = warpgroup_mma_wait(num_outstanding=0, deps=(o0, o1))
            slot_barrier(ARRIVE_EMPTY, EMPTY_ID, slot)  # (wgmma reads of the slot complete at the wait)
            g += 1

        # Epilogue (as the portable kernel): the factor O is multiplied by goes to warpgroup 1 as the last hand-off.
        row_seen = l_i > 0.0
        l_safe = gl.where(row_seen, l_i, 1.0)
        lse2 = gl.where(row_seen, m_i + gl.log2(l_safe), float("-inf"))
        direct, partial, split_row = out_rows(NUM_SPLITS, b, begin_req, begin_split, has_work, head_ok)
        factor = 1.0 / l_safe
        if HAS_SINK:
            seen_lse2 = gl.where(row_seen, lse2, 0.0)  # (no -inf - -inf in lanes the select drops)
            sink_factor = gl.where(row_seen, factor / (1.0 + gl.exp2(gl.convert_layout(sink2, s_row) - seen_lse2)),
                                   0.0)
            factor = gl.where(gl.convert_layout(direct, s_row), sink_factor, factor)
        if writes > 0:
            named_barrier(SYNC_P_FREE)
        late(STRESS_DELAY_NS, STRESS_ONE_SITE, 4, b)
        row_smem.store(factor)
        named_barrier(ARRIVE_P_READY)
        writes += 1
        factor_o = gl.expand_dims(gl.convert_layout(factor, o_row), 1)
        o0 = o0 * factor_o
        o1 = o1 * factor_o
        lse2 = gl.convert_layout(lse2, o_row)
        o_ptrs = OUT + b64 * stride_ob + q_pos * stride_os + gl.expand_dims(heads * stride_oh, 1) + cols
        gl.store(o_ptrs, o0.to(OUT.dtype.element_ty), mask=gl.expand_dims(direct, 1))
        gl.store(o_ptrs + QUARTER, o1.to(OUT.dtype.element_ty), mask=gl.expand_dims(direct, 1))
        row_seen = gl.convert_layout(row_seen, o_row)
        gl.store(LSE + b64 * stride_lb + heads * stride_lh + q_pos, gl.where(row_seen, lse2 * LN2, float("inf")),
                 mask=direct)
        rows = q_pos * heads_q + heads
        po_ptrs = OUT_PARTIAL + split_row * stride_ps + gl.expand_dims(rows * stride_pr, 1) + cols
        gl.store(po_ptrs, o0, mask=gl.expand_dims(partial, 1))
        gl.store(po_ptrs + QUARTER, o1, mask=gl.expand_dims(partial, 1))
        gl.store(LSE_PARTIAL + split_row * stride_pls + rows, lse2, mask=partial)


@gluon.jit
def pv_warpgroup(Q, TOPK_LEN, TOPK_LEN2, SCHED, NUM_SPLITS, OUT, OUT_PARTIAL, q16, q_rope, k_smem, p_smem, row_smem,
                 qmax_smem, stride_qb, stride_qs, stride_qh, stride_ob, stride_os, stride_oh, stride_ps, stride_pr,
                 heads_q, topk, topk2, IS_V32: gl.constexpr, D_NOPE: gl.constexpr, HAS_LEN: gl.constexpr,
                 HAS_EXTRA: gl.constexpr, HAS_LEN2: gl.constexpr, PLAN_TILE: gl.constexpr, SCHED_ROW: gl.constexpr,
                 rope_dtype: gl.constexpr, STRESS_DELAY_NS: gl.constexpr, STRESS_ONE_SITE: gl.constexpr,
                 K, K2, INDICES, INDICES2, stride_kblock, stride_k2block, stride_ib, stride_is, stride_i2b, stride_i2s,
                 num_tokens, num_tokens2, ROW_BYTES: gl.constexpr, PAGE_SIZE: gl.constexpr, PAGE_SIZE2: gl.constexpr):
    """Warpgroup 1: half of each request's query staging; O[:, 256:] with warpgroup 0's P, alpha and final
    factor; for MODEL1 the L2 prefetch of the rows PV_PREFETCH_AHEAD tiles ahead, while its P V runs."""
    o_mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                    instr_shape=[16, QUARTER, 16])
    o_row: gl.constexpr = gl.SliceLayout(1, o_mma)
    m_block = gl.program_id(0)
    q_pos = gl.program_id(1)
    heads = m_block * BLOCK_M + gl.arange(0, BLOCK_M, o_row)
    head_ok = heads < heads_q
    cols = gl.expand_dims(HALF + gl.arange(0, QUARTER, gl.SliceLayout(0, o_mma)), 0)
    box_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])  # (the softmax warpgroup's)
    tok_b: gl.constexpr = gl.SliceLayout(1, box_l)
    heads_b = m_block * BLOCK_M + gl.arange(0, BLOCK_M, tok_b)
    head_ok_b = gl.expand_dims(heads_b < heads_q, 1)
    cols_b = gl.expand_dims(gl.arange(0, BOX, gl.SliceLayout(0, box_l)), 0)
    begin_req, begin_tile, end_req, end_tile, begin_split = plan_row(SCHED, gl.program_id(2), SCHED_ROW)
    PV_PREFETCHES: gl.constexpr = not IS_V32  # (the producers' test is the same: see PV_PREFETCH_AHEAD)
    AHEAD: gl.constexpr = PV_PREFETCH_AHEAD
    pf_l: gl.constexpr = gl.BlockedLayout([1, 4], [16, 2], [4, 1], [1, 0])  # [64 rows, 8 lines]
    pf_tok: gl.constexpr = gl.SliceLayout(1, pf_l)
    g = 0
    for b in range(begin_req, end_req + 1):
        b64 = b.to(gl.int64)
        len1, main_end, len2, lo, _, n_tiles, has_work = request_range(b, begin_req, begin_tile, end_req, end_tile,
                                                                       TOPK_LEN, TOPK_LEN2, topk, topk2, HAS_LEN,
                                                                       HAS_EXTRA, HAS_LEN2, PLAN_TILE)
        late(STRESS_DELAY_NS, STRESS_ONE_SITE, 7, b)
        q_boxes_to_smem(Q, q16, q_rope, qmax_smem, b64, q_pos, heads_b, head_ok_b, cols_b, stride_qb, stride_qs,
                        stride_qh, V_BOXES // 2, 1, True, IS_V32, D_NOPE, rope_dtype, tok_b, STRESS_DELAY_NS,
                        STRESS_ONE_SITE)
        fence_async_shared()  # read next by the softmax warpgroup's wgmma
        named_barrier(ARRIVE_Q_READY)
        o0 = gl.zeros([BLOCK_M, QUARTER], gl.float32, o_mma)
        o1 = gl.zeros([BLOCK_M, QUARTER], gl.float32, o_mma)
        if PV_PREFETCHES:  # the indices of tile AHEAD (tile 1's rows the producers' start asks L2 for, tile 2's none)
            idx_row, idx_row2 = index_rows(INDICES, INDICES2, b64, q_pos, stride_ib, stride_is, stride_i2b,
                                           stride_i2s, HAS_EXTRA)
            pf_idx, pf_ok = tile_index(idx_row, idx_row2, lo + AHEAD * BLOCK_N, main_end, len1, len2,
                                       n_tiles > AHEAD, pf_tok, 0, BLOCK_N)
        for t in range(n_tiles):
            slot = g % 2
            named_barrier(SYNC_P_READY)  # (and the slot, through the softmax warpgroup's READY sync)
            late(STRESS_DELAY_NS, STRESS_ONE_SITE, 3, g)
            alpha = row_smem.load(o_row)
            alpha_o = gl.expand_dims(alpha, 1)
            o0 = warpgroup_mma(p_smem, k_smem.index(slot).slice(HALF, QUARTER, 1), o0 * alpha_o, is_async=True)
            o1 = warpgroup_mma(p_smem, k_smem.index(slot).slice(HALF + QUARTER, QUARTER, 1), o1 * alpha_o,
                               is_async=True)
            if PV_PREFETCHES:  # tile t+AHEAD's rows to L2 (indices loaded a tile ago), tile t+AHEAD+1's indices
                pf_row, pf_scales, pf_ok = tile_rows(K, K2, pf_idx, pf_ok, lo + (t + AHEAD) * BLOCK_N, main_end,
                                                     num_tokens, num_tokens2, stride_kblock, stride_k2block, IS_V32,
                                                     PAGE_SIZE, PAGE_SIZE2, ROW_BYTES, D_NOPE)
                prefetch_rows(pf_row, pf_scales, pf_ok, ROW_BYTES, IS_V32, pf_l)
                pf_idx, pf_ok = tile_index(idx_row, idx_row2, lo + (t + AHEAD + 1) * BLOCK_N, main_end, len1, len2,
                                           t + AHEAD + 1 < n_tiles, pf_tok, 0, BLOCK_N)
            o0, o1 = warpgroup_mma_wait(num_outstanding=0, deps=(o0, o1))
            named_barrier(ARRIVE_P_FREE)
            slot_barrier(ARRIVE_EMPTY, EMPTY_ID, slot)
            g += 1
        named_barrier(SYNC_P_READY)
        late(STRESS_DELAY_NS, STRESS_ONE_SITE, 5, b)
        factor = row_smem.load(o_row)
        if b < end_req:  # the last hand-off of the program has no next writer to free it for
            named_barrier(ARRIVE_P_FREE)
        direct, partial, split_row = out_rows(NUM_SPLITS, b, begin_req, begin_split, has_work, head_ok)
        factor_o = gl.expand_dims(factor, 1)
        o0 = o0 * factor_o
        o1 = o1 * factor_o
        if gl.max(direct.to(gl.int32), 0) > 0:
            o_ptrs = OUT + b64 * stride_ob + q_pos * stride_os + gl.expand_dims(heads * stride_oh, 1) + cols
            gl.store(o_ptrs, o0.to(OUT.dtype.element_ty), mask=gl.expand_dims(direct, 1))
            gl.store(o_ptrs + QUARTER, o1.to(OUT.dtype.element_ty), mask=gl.expand_dims(direct, 1))
        else:
            rows = q_pos * heads_q + heads
            po_ptrs = OUT_PARTIAL + split_row * stride_ps + gl.expand_dims(rows * stride_pr, 1) + cols
            gl.store(po_ptrs, o0, mask=gl.expand_dims(partial, 1))
            gl.store(po_ptrs + QUARTER, o1, mask=gl.expand_dims(partial, 1))


@gluon.jit(do_not_specialize=["num_tokens", "num_tokens2", "topk", "topk2"])  # no variant per value
def sparse_decode_hopper_kernel(
    Q, K, INDICES, TOPK_LEN, K2, INDICES2, TOPK_LEN2, SINK, SCHED, NUM_SPLITS,
    OUT, LSE, OUT_PARTIAL, LSE_PARTIAL,
    qk_scale_log2,
    stride_qb, stride_qs, stride_qh,
    stride_kblock, stride_k2block,
    stride_ib, stride_is, stride_i2b, stride_i2s,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh,
    stride_ps, stride_pr, stride_pls,
    heads_q, num_tokens, num_tokens2, topk, topk2,
    IS_V32: gl.constexpr, D_NOPE: gl.constexpr, ROW_BYTES: gl.constexpr, PAGE_SIZE: gl.constexpr,
    PAGE_SIZE2: gl.constexpr, HAS_LEN: gl.constexpr, HAS_EXTRA: gl.constexpr, HAS_LEN2: gl.constexpr,
    HAS_SINK: gl.constexpr, PLAN_TILE: gl.constexpr, SCHED_ROW: gl.constexpr, STRESS_DELAY_NS: gl.constexpr,
    STRESS_ONE_SITE: gl.constexpr, num_warps: gl.constexpr,
):
    gl.static_assert(PLAN_TILE == BLOCK_N, "a tile is a plan tile (request_range counts them)")
    rope_dtype: gl.constexpr = Q.dtype.element_ty  # V32's RoPE box: bf16 stays bf16, fp16 queries fp16
    wide_smem: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, V_BOXES * BOX], gl.float16)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BOX], gl.float16)
    rope_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BOX], rope_dtype)
    flat: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    q16 = gl.allocate_shared_memory(gl.float16, [BLOCK_M, V_BOXES * BOX], wide_smem)
    q_rope = gl.allocate_shared_memory(rope_dtype, [BLOCK_M, BOX], rope_layout)
    k_smem = gl.allocate_shared_memory(gl.float16, [2, BLOCK_N, V_BOXES * BOX], wide_smem)
    rope_smem = gl.allocate_shared_memory(rope_dtype, [2, BLOCK_N, BOX], rope_layout)
    p_smem = gl.allocate_shared_memory(gl.float16, [BLOCK_M, BLOCK_N], p_layout)
    factor_smem = gl.allocate_shared_memory(gl.float32, [2, BLOCK_N], flat)
    row_smem = gl.allocate_shared_memory(gl.float32, [BLOCK_M], flat)  # alpha per tile, then the final factor
    qmax_smem = gl.allocate_shared_memory(gl.float32, [2, BLOCK_M], flat)  # each half's query row maxima

    gl.warp_specialize([
        (pv_warpgroup, (Q, TOPK_LEN, TOPK_LEN2, SCHED, NUM_SPLITS, OUT, OUT_PARTIAL, q16, q_rope, k_smem, p_smem,
                        row_smem, qmax_smem, stride_qb, stride_qs, stride_qh, stride_ob, stride_os, stride_oh,
                        stride_ps, stride_pr, heads_q, topk, topk2, IS_V32, D_NOPE, HAS_LEN, HAS_EXTRA, HAS_LEN2,
                        PLAN_TILE, SCHED_ROW, rope_dtype, STRESS_DELAY_NS, STRESS_ONE_SITE,
                        K, K2, INDICES, INDICES2, stride_kblock, stride_k2block, stride_ib, stride_is, stride_i2b,
                        stride_i2s, num_tokens, num_tokens2, ROW_BYTES, PAGE_SIZE, PAGE_SIZE2)),
        (softmax_warpgroup, (Q, TOPK_LEN, TOPK_LEN2, SINK, SCHED, NUM_SPLITS, OUT, LSE, OUT_PARTIAL, LSE_PARTIAL,
                             q16, q_rope, k_smem, rope_smem, factor_smem, p_smem, row_smem, qmax_smem,
                             qk_scale_log2, stride_qb, stride_qs, stride_qh, stride_ob, stride_os, stride_oh,
                             stride_lb, stride_lh, stride_ps, stride_pr, stride_pls, heads_q, topk, topk2,
                             IS_V32, D_NOPE, HAS_LEN, HAS_EXTRA, HAS_LEN2, HAS_SINK, PLAN_TILE, SCHED_ROW,
                             rope_dtype, STRESS_DELAY_NS, STRESS_ONE_SITE)),
        (producer, (K, K2, INDICES, TOPK_LEN, INDICES2, TOPK_LEN2, SCHED, k_smem, rope_smem, factor_smem,
                    stride_kblock, stride_k2block, stride_ib, stride_is, stride_i2b, stride_i2s, num_tokens,
                    num_tokens2, topk, topk2, IS_V32, D_NOPE, ROW_BYTES, PAGE_SIZE, PAGE_SIZE2, HAS_LEN, HAS_EXTRA,
                    HAS_LEN2, PLAN_TILE, SCHED_ROW, rope_dtype, STRESS_DELAY_NS, STRESS_ONE_SITE, 0)),
        (producer, (K, K2, INDICES, TOPK_LEN, INDICES2, TOPK_LEN2, SCHED, k_smem, rope_smem, factor_smem,
                    stride_kblock, stride_k2block, stride_ib, stride_is, stride_i2b, stride_i2s, num_tokens,
                    num_tokens2, topk, topk2, IS_V32, D_NOPE, ROW_BYTES, PAGE_SIZE, PAGE_SIZE2, HAS_LEN, HAS_EXTRA,
                    HAS_LEN2, PLAN_TILE, SCHED_ROW, rope_dtype, STRESS_DELAY_NS, STRESS_ONE_SITE,
                    PRODUCER_ROWS)),
    ], [4, 4, 4], [SOFTMAX_REGS, PRODUCER_REGS, PRODUCER_REGS])


def bind_sparse_hopper(varying: tuple, q, k_cache, indices, extra_k_cache, extra_indices, out, lse, layout,
                       num_parts: int, softmax_scale: float, has_len: bool, has_len2: bool,
                       has_sink: bool) -> BoundKernel:
    """sparse_decode_hopper_kernel for one configuration (kernel_portable.bind_sparse_decode's arguments): the
    portable kernel's pointer and stride arguments, grid = (64-head blocks, s_q, parts); TRITONMLA_SPARSE_CONFIG
    sizes the portable kernel's only."""
    has_extra = extra_k_cache is not None
    k2 = extra_k_cache if has_extra else k_cache
    grid = (triton.cdiv(q.shape[2], BLOCK_M.value), q.shape[1], num_parts)
    fixed = (*fixed_common(q, k_cache, indices, extra_k_cache, extra_indices, out, lse, softmax_scale),
             layout.name == "V32", layout.d_nope, layout.row_bytes, k_cache.shape[1], k2.shape[1],
             has_len, has_extra, has_len2, has_sink,
             PLAN_TILE, SCHED_ROW, STRESS_DELAY_NS, STRESS_ONE_SITE)
    return BoundKernel(sparse_decode_hopper_kernel, grid, varying, fixed, dict(num_warps=NUM_WARPS, maxnreg=MAXNREG))
