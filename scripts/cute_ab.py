"""A/B of CuTe kernel versions on the device, in one process and on the same inputs: the Gluon kernel, the shipped
CuTe kernel and, with --base MODULE, another version of the dense kernel module: the tree's kernel with the change
switched off, e.g. tritonmla/dense_decode/_ab_x.py holding `class MlaDecodeSm90(kernel_sm90_cute.MlaDecodeSm90)` with
a class attribute flipped, and the module's TMA_CACHE_POLICY and placeholder_args (a copy of an older commit's file
lacks what other kernels need of the tree: NOTES run 23). CUDA-graph medians and TFLOPS, two alternating passes
(drift shows as disagreement between them).
--rows seedmem: the seed table's memory-bound rows (h_q * s_q < 128, non-varlen) instead, for small before/after
checks (issue 24's page-id clamp). --reps: passes (default 2).
Usage: python3 scripts/cute_ab.py [--base tritonmla.dense_decode._ab_x ...] [--rows ab|seedmem] [sk ...]"""
import argparse
import importlib
import math
import statistics

import torch

import tritonmla as tm
from tritonmla.api import interface
from tritonmla.bench.__main__ import bench_config
from tritonmla.core import cute_runtime
from tritonmla.dense_decode import bind_cute

p = argparse.ArgumentParser()
p.add_argument("--base", action="append", default=[], help="module of another kernel_sm90_cute version (repeatable)")
p.add_argument("--no-hopper", action="store_true", help="leave the Gluon kernel out")
p.add_argument("--rows", choices=("ab", "seedmem"), default="ab")
p.add_argument("--reps", type=int, default=2)
p.add_argument("sk", nargs="*", type=int, default=[4096, 16384])
args = p.parse_args()
if args.rows == "seedmem":
    configs = [(128, s_q, sk, h_q, 1, False, True) for sk in args.sk for h_q, s_q in ((16, 1), (16, 2), (32, 1),
                                                                                       (32, 2), (64, 1))]
else:
    configs = [(128, s_q, sk, 128, 1, True, True) for s_q in (1, 2) for sk in args.sk] + \
              [(128, 2, 8192, 16, 1, False, True), (128, 1, 8192, 64, 1, False, True), (4, 1, 4096, 128, 1, False, True)]
modules = {"cute": bind_cute.kernel_sm90_cute}
for name in args.base:
    module = importlib.import_module(name)
    # What the binding reads of a kernel module (bind_cute: the class, its L2 policy, the compile arguments): checked
    # here, before any GPU time, since a base lacking one fails only at its first compile (run 24 lost a call so).
    missing = [a for a in ("MlaDecodeSm90", "TMA_CACHE_POLICY", "placeholder_args") if not hasattr(module, a)]
    if missing:
        raise SystemExit(f"{name} lacks {', '.join(missing)} (a base is the tree's kernel module with a switch "
                         f"flipped: subclass kernel_sm90_cute.MlaDecodeSm90 and re-export the rest)")
    modules[name.rsplit(".", 1)[-1].lstrip("_")] = module
variants = ([] if args.no_hopper else ["hopper"]) + list(modules)
rows = {}
for rep in range(args.reps):
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
if "cute" in variants:  # geomean of each version's median CUDA-graph time over the shipped kernel's
    def med(v, c):
        return statistics.median(r.graph_ms for r in rows[(v, c)])
    for v in variants:
        if v != "cute":
            g = math.exp(sum(math.log(med(v, c) / med("cute", c)) for c in configs) / len(configs))
            print(f"{v}: time / cute geomean {g:.4f}")
