"""Launch-config sweep of the portable sparse prefill kernel on a GPU: each TRITONMLA_PREFILL_CONFIG
("block_h,block_n,warps,stages") over a few of FlashMLA's performance cases (CUDA-graph time), best first.
Run: PYTHONPATH=. python3 scripts/prefill_sweep.py [CONFIG ...]"""
import math
import os
import sys

import torch

import tritonmla as tm
from tritonmla.bench.sparse_prefill import bench_case, load_anchors
from tritonmla.sparse_prefill import call as prefill_call

CONFIGS = sys.argv[1:] or ["64,64,8,2", "64,32,8,3", "64,64,16,2", "64,32,16,2", "64,64,16,3"]
CASES = [("V32", 576, 128, 2048, 32768), ("MODEL1-1", 512, 64, 512, 32768), ("MODEL1-2", 512, 128, 1024, 32768)]

anchors = load_anchors()
results = []
for cfg in CONFIGS:
    os.environ["TRITONMLA_PREFILL_CONFIG"] = cfg
    prefill_call.clear()
    try:
        rows = [bench_case(tm, None, *case, anchors) for case in CASES]
    except Exception as error:  # noqa: BLE001  (a config that does not compile: shared memory, registers)
        print(f"{cfg}: {type(error).__name__}: {str(error)[:200]}", flush=True)
        continue
    geo = math.exp(sum(math.log(r.tflops) for r in rows) / len(rows))
    results.append((geo, cfg, rows))
    print(f"{cfg}: " + "  ".join(f"{r.case} {r.graph_us:.0f} us {r.tflops:.0f} TF" for r in rows), flush=True)
    torch.cuda.empty_cache()
print("best first (geomean TFLOPS):")
for geo, cfg, rows in sorted(results, reverse=True):
    print(f"  {cfg:>12}  {geo:6.1f}")
if results:
    print(f"BEST {max(results)[1]}")
