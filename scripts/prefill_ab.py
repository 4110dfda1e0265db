"""A/B of the CuTe sparse prefill kernel's gather on the device, one process, same inputs: cp.async with EVICT_LAST
and a 256-byte L2 prefetch (sparse_prefill.bind_cute.L2_HINTS, the default) against the DSL's plain cp.async.
CUDA-graph medians of FlashMLA's performance cases (s_q 4096), two alternating passes.
Run: PYTHONPATH=. python3 scripts/prefill_ab.py"""
import math

import torch

import tritonmla as tm
from tritonmla.bench.sparse_prefill import make_prefill_inputs
from tritonmla.bench.timing import cuda_times
from tritonmla.sparse_prefill import bind_cute, call

CASES = [(576, 128, 2048, 8192), (576, 128, 2048, 131072), (512, 64, 512, 65536), (512, 128, 1024, 65536)]
VARIANTS = {"hints": True, "plain": False}
times: dict = {}
for rep in range(2):
    for name, hints in VARIANTS.items():
        bind_cute.L2_HINTS = hints
        call.clear()
        for case in CASES:
            d_qk, h_q, topk, s_kv = case
            x = make_prefill_inputs(4096, s_kv, topk, h_q, d_qk, sink=True, nan_unused=False, seed=s_kv + topk)
            step = lambda: tm.flash_mla_sparse_fwd(*x.args(), **x.kwargs())  # noqa: E731
            step()
            times.setdefault((name, case), []).append(cuda_times(step, warmup=100, rep=500)[1])
            del x
print(f"{'d_qk h_q topk s_kv':>24} | " + " | ".join(f"{n:>17}" for n in VARIANTS))
for case in CASES:
    print(f"{' '.join(map(str, case)):>24} | " + " | ".join(" ".join(f"{t * 1e3:8.1f}" for t in times[(n, case)])
                                                             for n in VARIANTS))
g = math.exp(sum(math.log(min(times[("plain", c)]) / min(times[("hints", c)])) for c in CASES) / len(CASES))
print(f"plain / hints geomean (best of passes): {g:.4f}")
