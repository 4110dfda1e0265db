"""One sparse prefill call for ncu (FlashMLA's benchmark inputs, s_q 4096, sink on), on ours (argv[1] = tritonmla)
or FlashMLA's (flashmla, where flash_mla is importable); warmed up first so ncu profiles a compiled kernel (use
--launch-skip / -k to pick it).
Usage: python3 scripts/cute_ncu_prefill.py tritonmla|flashmla [s_kv topk h_q d_qk]   (default 32768 512 64 512)"""
import sys

import torch

from tritonmla.bench.sparse_prefill import make_prefill_inputs

which = sys.argv[1] if len(sys.argv) > 1 else "tritonmla"
s_kv, topk, heads_q, d_qk = (int(a) for a in sys.argv[2:6]) if len(sys.argv) >= 6 else (32768, 512, 64, 512)
if which == "flashmla":
    import flash_mla as mod
else:
    import tritonmla as mod
x = make_prefill_inputs(4096, s_kv, topk, heads_q, d_qk, sink=True, nan_unused=False, seed=s_kv + topk)
for _ in range(3):
    mod.flash_mla_sparse_fwd(*x.args(), **x.kwargs())
torch.cuda.synchronize()
