"""Timing tool (BENCHMARKS.md's interleaved A/B rows): sparse kernel variants timed interleaved on the same
inputs: one CUDA graph per variant, rounds of do_bench medians over all graphs (so clock drift and a freshly
started machine's first readings hit every variant alike), outputs compared with the first variant's (max abs
difference). A variant is a label and the environment settings it is bound under: `base`,
`two@TRITONMLA_X=2@TRITONMLA_Y=8` (settings persist to the next).
Run: PYTHONPATH=. python scripts/sparse_ab_graphs.py CASE ROUNDS VARIANT ...   (CASE: a bench case name such
as V32 or MODEL1-2, or peak-H-D for the peak case of h_q H and d_qk D, run at b 64; it replaced sparse_ab.py, which
timed variants one after another). Only for variants that keep the plan: variants that change the part count
read inconsistent times in one process (NOTES.md run 18); compare those in separate processes."""
import os
import statistics
import sys

import torch
import triton

import tritonmla as tm
from tritonmla.bench.sparse import CASES, make_sparse_inputs
from tritonmla.sparse_decode import call as C

case, rounds, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
if case.startswith("peak-"):  # peak-H-D: the peak case of h_q H, d_qk D
    c = next(c for c in CASES if c[0] == "peak" and f"peak-{c[1]}-{c[5]}" == case)
else:
    c = next(c for c in CASES if c[0] == case)
name, h_q, s_q, s_k, topk, d_qk, page, extra, extra_len = c[:9]
x = make_sparse_inputs(64, s_q, h_q, d_qk, topk, page, s_k, extra=extra, have_extra_topk_length=extra_len, sink=True,
                       nan_unused=False, garbage_past_length=False, device="cuda", seed=64)
graphs, ref = {}, None
for v in variants:
    for kv in v.split("@")[1:]:
        k_, _, val = kv.partition("=")
        os.environ[k_] = val
    C.clear()
    meta, _ = tm.get_mla_metadata()
    step = lambda: tm.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, **x.kwargs())  # noqa
    out, lse = step()
    if ref is None:
        ref = out.float().clone()
    diff = (out.float() - ref).abs().max().item()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    graphs[v] = (g, diff)
times = {v: [] for v in variants}
for r in range(rounds):
    for v in variants:
        times[v].append(1e3 * triton.testing.do_bench(graphs[v][0].replay, warmup=10, rep=100, return_mode="median"))
print(f"{case}: " + "  ".join(f"{v} {statistics.median(t):6.1f}us (diff {graphs[v][1]:.0e}; "
                               f"{min(t):.1f}-{max(t):.1f})" for v, t in times.items()), flush=True)
