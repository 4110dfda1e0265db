"""EXPERIMENT (being worked on, issue 10): time sparse-decode kernel variants side by side on FlashMLA's cases.
Variants: a TRITONMLA_KERNEL value (auto = the Gluon kernel on SM90 for h_q > 32, portable), optionally with
environment settings: auto@TRITONMLA_SPARSE_SPLIT=4, portable@TRITONMLA_SPARSE_CONFIG=64,32,8,3,1.
Run: PYTHONPATH=. python experiments/sparse_ab.py auto portable ..."""
import math
import os
import sys

import torch

import tritonmla as tm
from tritonmla.bench import sparse as B
from tritonmla.sparse import call as C

JOBS = [("V32", 64), ("MODEL1-1", 64), ("MODEL1-2", 64), ("MODEL1-3", 148), ("MODEL1-4", 148)]
if os.environ.get("PEAK"):
    JOBS += [("peak", 148)]
cases = {c[0]: c[:-1] for c in B.CASES}
anchors = B.load_anchors()
table = {}
for spec in sys.argv[1:]:
    name, *env = spec.split("@")  # auto@TRITONMLA_SPARSE_SPLIT=4@...
    os.environ["TRITONMLA_KERNEL"] = name
    for var in ("TRITONMLA_SPARSE_CONFIG", "TRITONMLA_SPARSE_SPLIT"):
        os.environ.pop(var, None)
    for assignment in env:
        var, _, value = assignment.partition("=")
        os.environ[var] = value
    for case, batch in JOBS:
        todo = [c for c in B.CASES if c[0] == case] if case != "peak" else [c for c in B.CASES if c[0] == "peak"]
        for c in todo:
            C.clear()
            try:
                if "ABLATE" in spec:  # wrong results on purpose: time only
                    name_, h_q, s_q, s_k, topk, d_qk, page, extra, extra_len = c[:-1]
                    x = B.make_sparse_inputs(batch, s_q, h_q, d_qk, topk, page, s_k, extra=extra,
                                             have_extra_topk_length=extra_len, nan_unused=False,
                                             garbage_past_length=False, device="cuda", seed=batch)
                    meta, _ = tm.get_mla_metadata()
                    step = lambda: tm.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None,  # noqa
                                                             **x.kwargs())
                    step()
                    g = 1e3 * B.cuda_times(step, warmup=25, rep=200)[1]
                    table.setdefault((c[0], c[1], c[5], batch), {})[spec] = (g, None, 0.0)
                    continue
                r = B.bench_case(tm, None, *c[:-1], batch, anchors)
                table.setdefault((c[0], c[1], c[5], batch), {})[spec] = (r.graph_us, r.graph_ratio, r.max_abs_err)
            except Exception as e:  # noqa: BLE001
                print(spec, case, type(e).__name__, str(e)[:300])
            torch.cuda.empty_cache()
specs = sys.argv[1:]
print(f"{'case':<9} {'h_q':>4} {'d_qk':>4} {'b':>4} " + " ".join(f"{s[-22:]:>22}" for s in specs))
geo = {s: [] for s in specs}
for key, row in table.items():
    cells = []
    for s in specs:
        if s in row:
            us, ratio, err = row[s]
            cells.append(f"{us:8.1f}us {ratio or 0:4.2f}x e{err:.0e}")
            if ratio:
                geo[s].append(math.log(ratio))
        else:
            cells.append(f"{'-':>22}")
    print(f"{key[0]:<9} {key[1]:>4} {key[2]:>4} {key[3]:>4} " + " ".join(f"{c:>22}" for c in cells))
print("geomean vs anchors: " + "  ".join(f"{s}: {math.exp(sum(v) / len(v)):.3f}" for s, v in geo.items() if v))
