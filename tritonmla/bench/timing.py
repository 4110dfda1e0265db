"""Timing and table output shared by the benchmarks (dense: tritonmla.bench.__main__, sparse decode: .sparse,
sparse prefill: .sparse_prefill)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch


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
