"""Timing tool (BENCHMARKS.md's planner rows): GPU time of the planner (tritonmla.scheduler.planner.plan_kernel,
one program) per call, for batch sizes and part counts of the benchmarks, equal and random lengths; do_bench
medians of CUDA-graph replays (a plan is one launch; the graph leaves the launch's host cost out).
Run: PYTHONPATH=. python scripts/plan_times.py"""
import torch
import triton

from tritonmla.scheduler.planner import bind_plan
from tritonmla.core.constants import SCHED_ROW

print(f"{torch.cuda.get_device_name()}")
gen = torch.Generator().manual_seed(0)
for batch, parts in ((64, 33), (128, 33), (148, 33), (256, 66), (1024, 132), (4096, 132)):
    for kind in ("equal", "random"):
        if kind == "equal":
            lengths = torch.full((batch,), 2048, dtype=torch.int32)
        else:
            lengths = torch.randint(0, 16384, (batch,), generator=gen, dtype=torch.int32)
        lengths = lengths.cuda()
        sched = torch.empty((parts, SCHED_ROW), dtype=torch.int32, device="cuda")
        splits = torch.empty((batch + 1,), dtype=torch.int32, device="cuda")
        bound = bind_plan(lengths, sched, splits)
        step = lambda: bound.launch(torch.cuda.current_stream().cuda_stream,  # noqa: E731
                                    (lengths.data_ptr(), sched.data_ptr(), splits.data_ptr()))
        step()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        us = 1e3 * triton.testing.do_bench(g.replay, warmup=20, rep=200, return_mode="median")
        n = splits[1:] - splits[:-1]
        print(f"plan b={batch:5d} parts={parts:4d} {kind:6s}: {us:6.1f} us, split requests {int((n > 1).sum())}")
