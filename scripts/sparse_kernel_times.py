"""Timing tool (BENCHMARKS.md's kernel-by-kernel rows): where a sparse decode call's GPU time goes, kernel by
kernel, for us and for FlashMLA (where `flash_mla` is importable), from torch.profiler (CUPTI) over replays of a
CUDA graph of the call: each kernel's mean duration, and the call's span (first kernel start to last kernel end,
so the gaps between kernels are in it). Run: PYTHONPATH=. python scripts/sparse_kernel_times.py CASE [BATCH]
(CASE as in sparse_ab_graphs.py)."""
import collections
import statistics
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import tritonmla as tm
from tritonmla.bench.host import flashmla_module
from tritonmla.bench.sparse import CASES, make_sparse_inputs

case = sys.argv[1]
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 64
c = next(c for c in CASES if c[0] == case)
name, h_q, s_q, s_k, topk, d_qk, page, extra, extra_len = c[:9]
x = make_sparse_inputs(batch, s_q, h_q, d_qk, topk, page, s_k, extra=extra, have_extra_topk_length=extra_len, sink=True,
                       nan_unused=False, garbage_past_length=False, device="cuda", seed=batch)
REPLAYS = 50


def profile_graph(label, api):
    meta, _ = api.get_mla_metadata()
    step = lambda: api.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, **x.kwargs())  # noqa
    step()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    for _ in range(20):
        g.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPLAYS):
            g.replay()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                      and e.device_resource_id is not None), key=lambda e: e.time_range.start)
    per_name = collections.defaultdict(list)
    for e in kernels:
        per_name[e.name].append(e.time_range.elapsed_us())
    n_per_call = len(kernels) // REPLAYS
    spans = [kernels[i + n_per_call - 1].time_range.end - kernels[i].time_range.start
             for i in range(0, n_per_call * REPLAYS, n_per_call)]
    gaps = [kernels[i + 1].time_range.start - kernels[i].time_range.end
            for i in range(0, n_per_call * REPLAYS, n_per_call)] if n_per_call > 1 else []
    print(f"{label} {case} b={batch}: span median {statistics.median(spans):.1f} us over {REPLAYS} replays, "
          f"{n_per_call} kernels per call" + (f", gap before the 2nd kernel {statistics.median(gaps):.1f} us"
                                              if gaps else ""))
    for k, v in per_name.items():
        print(f"   {statistics.median(v):8.1f} us x{len(v) // REPLAYS}  {k[:110]}")


profile_graph("tritonmla", tm)
fm = flashmla_module()
if fm is not None:
    profile_graph("FlashMLA ", fm)
