"""Timing tool (BENCHMARKS.md's kernel-by-kernel rows): where a sparse decode call's GPU time goes, kernel by
kernel, for us and for FlashMLA (where `flash_mla` is importable): tritonmla.bench.timing.graph_kernel_times over
replays of a CUDA graph of the call. Run: PYTHONPATH=. python scripts/sparse_kernel_times.py CASE [BATCH]
(CASE as in sparse_ab_graphs.py)."""
import sys

import torch
import tritonmla as tm
from tritonmla.bench.host import flashmla_module
from tritonmla.bench.sparse import CASES, make_sparse_inputs
from tritonmla.bench.timing import graph_kernel_times

case = sys.argv[1]
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 64
c = next(c for c in CASES if c[0] == case)
name, h_q, s_q, s_k, topk, d_qk, page, extra, extra_len = c[:9]
x = make_sparse_inputs(batch, s_q, h_q, d_qk, topk, page, s_k, extra=extra, have_extra_topk_length=extra_len, sink=True,
                       nan_unused=False, garbage_past_length=False, device="cuda", seed=batch)


def profile_graph(label, api):
    meta, _ = api.get_mla_metadata()
    graph_kernel_times(f"{label} {case} b={batch}",
                       lambda: api.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, **x.kwargs()))


profile_graph("tritonmla", tm)
fm = flashmla_module()
if fm is not None:
    profile_graph("FlashMLA ", fm)
