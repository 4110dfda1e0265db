"""Small sparse prefill calls (both d_qk, sinks, topk_length, out-of-range indices) for compute-sanitizer:
    compute-sanitizer --tool memcheck|racecheck|synccheck python scripts/sanitize_prefill.py"""
import torch

import tritonmla
from tritonmla.bench.sparse_prefill import make_prefill_inputs

for d_qk in (576, 512):
    # 300 tokens: more than SMs (a persistent kernel's CTAs would each walk several)
    x = make_prefill_inputs(300, 300, 192, 64, d_qk, sink=True, have_topk_length=True, seed=d_qk)
    tritonmla.flash_mla_sparse_fwd(*x.args(), **x.kwargs())
torch.cuda.synchronize()
print("sanitize case done")
