"""Timing and table output shared by the benchmarks (dense: tritonmla.bench.__main__, sparse decode: .sparse,
sparse prefill: .sparse_prefill)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch


def graph_kernel_times(label: str, step, replays: int = 50) -> None:
    """Print where one call's GPU time goes, kernel by kernel: `step` captured in a CUDA graph, replayed under
    torch.profiler (CUPTI); each kernel's median duration, and the call's span (first kernel start to last kernel
    end, so the gaps between kernels are in it). For the scripts/*_kernel_times.py tools."""
    import collections
    import statistics

    from torch.profiler import ProfilerActivity, profile

    step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(20):
        graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                      and e.device_resource_id is not None), key=lambda e: e.time_range.start)
    per_name = collections.defaultdict(list)
    for e in kernels:
        per_name[e.name].append(e.time_range.elapsed_us())
    n = len(kernels) // replays
    calls = range(0, n * replays, n)
    spans = [kernels[i + n - 1].time_range.end - kernels[i].time_range.start for i in calls]
    gaps = [kernels[i + 1].time_range.start - kernels[i].time_range.end for i in calls] if n > 1 else []
    print(f"{label}: span median {statistics.median(spans):.1f} us over {replays} replays, {n} kernels per call"
          + (f", gap before the 2nd kernel {statistics.median(gaps):.1f} us" if gaps else ""))
    for name, times in per_name.items():
        print(f"   {statistics.median(times):8.1f} us x{len(times) // replays}  {name[:110]}")


def cuda_times(step, warmup: int = 50, rep: int = 300) -> tuple[float, float]:
    """(eager ms, CUDA-graph replay ms) of one call, medians of triton.testing.do_bench (warmup / rep in ms)."""
    import triton
    ms = triton.testing.do_bench(step, warmup=warmup, rep=rep, return_mode="median")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph_ms = triton.testing.do_bench(graph.replay, warmup=warmup, rep=rep, return_mode="median")
    del graph
    return ms, graph_ms


def write_rows(rows: list, csv_path: Optional[str], json_path: Optional[str]) -> None:
    """The table's rows (dataclasses) as CSV and / or JSON, where a path is given."""
    if csv_path:
        import csv
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
            w.writeheader()
            w.writerows(asdict(r) for r in rows)
    if json_path:
        Path(json_path).write_text(json.dumps([asdict(r) for r in rows], indent=1))


def print_geomeans(rows: list) -> None:
    """The eager and CUDA-graph geomean ratios vs FlashMLA of rows with `ratio` / `graph_ratio` fields."""
    for label, attr in (("eager", "ratio"), ("CUDA graph", "graph_ratio")):
        ratios = [getattr(r, attr) for r in rows if getattr(r, attr)]
        if ratios:
            geo = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
            print(f"{label}: geomean ratio vs FlashMLA over {len(ratios)} cases: {geo:.3f} "
                  f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
