"""One decode step for ncu: b 128, s_q 2, sk 8192 (fixed), h_q 128, causal, on the kernel named by argv[1]
(cute or hopper, or flashmla: FlashMLA's, where flash_mla is importable); warmed up first so ncu profiles a compiled
kernel (use --launch-skip / -k to pick it)."""
import sys

import torch

import tritonmla as tm
from tritonmla.bench.workload import make_decode_inputs
from tritonmla.dense_decode.plan import num_parts_for

kernel = sys.argv[1] if len(sys.argv) > 1 else "cute"
x = make_decode_inputs([8192] * 128, 2, 128, 1, 64, torch.bfloat16, "cuda", generator=torch.Generator("cuda"))
if kernel == "flashmla":
    import flash_mla
    meta, _ = flash_mla.get_mla_metadata()
    for _ in range(3):
        flash_mla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, meta, None, causal=True)
    torch.cuda.synchronize()
    sys.exit(0)
sched, splits = torch.ops.tritonmla.plan(x.cache_seqlens, num_parts_for(x.q.device, 256, 1, kernel))
for _ in range(3):
    tm.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, sched, splits, causal=True,
                              kernel=kernel)
torch.cuda.synchronize()
