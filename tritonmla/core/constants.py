"""Constants shared by the kernels, the scheduler, the references and the host code."""
import triton.language as tl

D_QK = 576  # 512 latent + 64 RoPE
D_V = 512
D_ROPE = D_QK - D_V
PLAN_TILE = 64  # tokens per scheduler cost unit; every kernel's KV tile divides it
FIXED_COST = 5  # per-request overhead in tiles, as FlashMLA's scheduler counts it
# tile_scheduler_metadata row (FlashMLA's [num_parts, 8] int32): begin_req, begin_tile, end_req, end_tile,
# begin_split, 3 unused.
SCHED_ROW = 8
LOG2E = 1.4426950408889634  # host side (the softmax scale is passed pre-multiplied)
LOG2E_JIT = tl.constexpr(LOG2E)  # inside kernels
LN2 = tl.constexpr(0.6931471805599453)
