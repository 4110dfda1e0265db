"""A/B of CuTe kernel variants on the device, in one process and on the same inputs: the Gluon kernel, then the CuTe
kernel with each L2 policy for its K loads (kernel_sm90_cute.TMA_CACHE_POLICY). CUDA-graph medians (ms) and
TFLOPS. Usage: python3 scripts/cute_ab.py [sk ...]"""
import sys

import torch

import tritonmla as tm
from tritonmla.api import interface
from tritonmla.bench.__main__ import bench_config
from tritonmla.dense_decode import kernel_sm90_cute as cute_kernel

sks = [int(a) for a in sys.argv[1:]] or [4096, 16384]
configs = [(128, s_q, sk, h_q, 1, True, True) for s_q in (1, 2) for sk in sks for h_q in (128,)] + \
          [(128, 2, 8192, 16, 1, False, True), (128, 1, 8192, 64, 1, False, True)]
variants = [("hopper", None), ("cute", cute_kernel.EVICT_FIRST), ("cute", cute_kernel.EVICT_NORMAL)]
rows = {}
for rep in range(2):  # alternate, twice: drift shows as disagreement between the two passes
    for kernel, policy in variants:
        if policy is not None:
            cute_kernel.TMA_CACHE_POLICY = policy
            interface.clear()
        for c in configs:
            r = bench_config(tm, kernel, *c, torch.bfloat16, {})
            rows.setdefault((kernel, policy, c), []).append(r)
print(f"{'b s_q sk h_q':>18} | " + " | ".join(f"{k}{'' if p is None else hex(p)[:6]:>8}" for k, p in variants))
for c in configs:
    cells = []
    for kernel, policy in variants:
        rs = rows[(kernel, policy, c)]
        cells.append(" ".join(f"{r.graph_ms * 1e3:7.1f}us {r.tflops:5.0f}" for r in rs))
    print(f"{c[0]:4} {c[1]:2} {c[2]:6} {c[3]:4} | " + " | ".join(cells))
