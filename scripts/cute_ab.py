"""A/B of CuTe kernel versions on the device, in one process and on the same inputs: the Gluon kernel, the shipped
CuTe kernel and, with --base MODULE, another version of kernel_sm90_cute (e.g. the previous commit's, put beside it as
tritonmla/dense_decode/_ab_base.py: `git show REV:tritonmla/dense_decode/kernel_sm90_cute.py > ...`). CUDA-graph
medians and TFLOPS, two alternating passes (drift shows as disagreement between them).
Usage: python3 scripts/cute_ab.py [--base tritonmla.dense_decode._ab_base ...] [sk ...]"""
import argparse
import importlib

import torch

import tritonmla as tm
from tritonmla.api import interface
from tritonmla.bench.__main__ import bench_config
from tritonmla.core import cute_runtime
from tritonmla.dense_decode import bind_cute

p = argparse.ArgumentParser()
p.add_argument("--base", action="append", default=[], help="module of another kernel_sm90_cute version (repeatable)")
p.add_argument("--no-hopper", action="store_true", help="leave the Gluon kernel out")
p.add_argument("sk", nargs="*", type=int, default=[4096, 16384])
args = p.parse_args()
configs = [(128, s_q, sk, 128, 1, True, True) for s_q in (1, 2) for sk in args.sk] + \
          [(128, 2, 8192, 16, 1, False, True), (128, 1, 8192, 64, 1, False, True), (4, 1, 4096, 128, 1, False, True)]
modules = {"cute": bind_cute.kernel_sm90_cute}
for name in args.base:
    modules[name.rsplit(".", 1)[-1].lstrip("_")] = importlib.import_module(name)
variants = ([] if args.no_hopper else ["hopper"]) + list(modules)
rows = {}
for rep in range(2):
    for variant in variants:
        if variant in modules:
            bind_cute.kernel_sm90_cute = modules[variant]
            cute_runtime._MEM.clear()  # (keyed without the module: one version in memory at a time)
            interface.clear()
        for c in configs:
            r = bench_config(tm, "hopper" if variant == "hopper" else "cute", *c, torch.bfloat16, {})
            rows.setdefault((variant, c), []).append(r)
print(f"{'b s_q sk h_q':>18} | " + " | ".join(f"{v:>29}" for v in variants), flush=True)
for c in configs:
    cells = [" ".join(f"{r.graph_ms * 1e3:7.1f}us {r.tflops:5.0f}" for r in rows[(v, c)]) for v in variants]
    print(f"{c[0]:4} {c[1]:2} {c[2]:6} {c[3]:4} | " + " | ".join(cells))
