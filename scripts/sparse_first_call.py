"""Timing tool (BENCHMARKS.md's first-call rows): wall time of the first sparse call of a configuration (Gluon
compile + bind + plan) and of the second, b 64, h_q 128, topk 2048, both layouts. Run on the device with an empty
Triton cache: PYTHONPATH=. python scripts/sparse_first_call.py"""
import time

import torch

import tritonmla
from tritonmla.bench.sparse import make_sparse_inputs

for d_qk in (576, 512):
    x = make_sparse_inputs(64, 2, 128, d_qk, 2048, 64, 32768, sink=True, nan_unused=False, garbage_past_length=False,
                           device="cuda", seed=1)
    meta, _ = tritonmla.get_mla_metadata()
    timings = []
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.time()
        tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, **x.kwargs())
        torch.cuda.synchronize()
        timings.append(time.time() - start)
    print(f"d_qk {d_qk}: first call (compile + plan) {timings[0]:.2f} s, second {1e3 * timings[1]:.2f} ms")
