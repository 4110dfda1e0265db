"""Host side of a decode call (GPU only): CPU time per call for each path, and first-call latency.

CPU per call: after a warm-up, N calls are issued back to back with no sync and the host's wall time over them
is divided by N (N is small enough that the GPU's launch queue never fills, so the host never waits for the
GPU). The paths of one shape take turns, REPS runs each, so that a noisy host (seen: 2x swings of every cost for
seconds at a time on the device's VM) weighs on all of them alike; the table gives each path's median run, as
wall time (the issue's measure) and as the thread's CPU time (time.thread_time: excludes time the VM's vCPU was
not running us). FlashMLA is measured the same way when `flash_mla` is importable.

First call: fresh Python processes each make one decode call of a configuration and report its latency (the
call, synchronized); the first process compiles into an empty Triton cache directory, the next ones find it on
disk (a cold process with a warm on-disk cache, what a restarted server sees). Rows for the default kernel ("auto":
on SM90 the CuTe kernel where CuTe DSL is importable, its compiled variants kept under TRITONMLA_CACHE_DIR) and the
Gluon kernel (TRITONMLA_KERNEL=hopper).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from ..core.constants import D_V
from .workload import make_decode_inputs

CALLS_PER_RUN = 50
REPS = 20
# (batch, s_q, mean_sk, h_q): the seed table's shapes at sk 4096 (every h_q x s_q), and a one-request step.
OVERHEAD_SHAPES = [(128, s_q, 4096, h_q) for h_q in (16, 32, 64, 128) for s_q in (1, 2)] + [(1, 1, 64, 16)]


def cpu_us_per_call(steps: dict) -> dict:
    """{label: step} -> {label: (wall median, wall min, thread-CPU median) microseconds per call}, paths taking
    turns."""
    for step in steps.values():
        for _ in range(3):
            step()
    torch.cuda.synchronize()
    wall = {label: [] for label in steps}
    cpu = {label: [] for label in steps}
    for _ in range(REPS):
        for label, step in steps.items():
            torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(CALLS_PER_RUN):
                step()
            c1, t1 = time.thread_time(), time.perf_counter()
            wall[label].append((t1 - t0) / CALLS_PER_RUN * 1e6)
            cpu[label].append((c1 - c0) / CALLS_PER_RUN * 1e6)
    torch.cuda.synchronize()
    return {label: (statistics.median(wall[label]), min(wall[label]), statistics.median(cpu[label]))
            for label in steps}


def flashmla_module():
    try:
        import flash_mla  # noqa: F401
        return flash_mla
    except ImportError:
        return None


def overhead_table() -> list[dict]:
    """CPU microseconds per flash_mla_with_kvcache call: tritonmla's kernels x API forms, and FlashMLA."""
    import tritonmla as tm
    from ..dense_decode import dispatch

    fm = flashmla_module()
    rows = []
    for batch, seq_q, sk, heads_q in OVERHEAD_SHAPES:
        x = make_decode_inputs([sk] * batch, seq_q, heads_q, 1, 64, torch.bfloat16, "cuda",
                               generator=torch.Generator("cuda").manual_seed(0))
        kernels = ["auto", "portable"] + ([] if dispatch.hopper_unsupported(x.q, x.k_cache) else ["hopper"]) \
            + ([] if dispatch.cute_unsupported(x.q, x.k_cache) else ["cute"])
        row = dict(batch=batch, seq_q=seq_q, mean_sk=sk, heads_q=heads_q,
                   auto_runs=dispatch.choose("auto", x.q, x.k_cache))
        steps = {}
        for kernel in kernels:
            plan = tm.get_mla_metadata(x.cache_seqlens, seq_q * heads_q, 1)
            steps[f"{kernel}_tensor"] = (lambda kernel=kernel, plan=plan: tm.flash_mla_with_kvcache(
                x.q, x.k_cache, x.block_table, x.cache_seqlens, D_V, *plan, causal=True, kernel=kernel))
            meta, _ = tm.get_mla_metadata()
            steps[f"{kernel}_meta"] = (lambda kernel=kernel, meta=meta: tm.flash_mla_with_kvcache(
                x.q, x.k_cache, x.block_table, x.cache_seqlens, D_V, meta, None, causal=True, kernel=kernel))
        steps["plan"] = lambda: tm.get_mla_metadata(x.cache_seqlens, seq_q * heads_q, 1)
        if fm is not None:
            fm_meta, _ = fm.get_mla_metadata()
            step = lambda: fm.flash_mla_with_kvcache(  # noqa: E731
                x.q, x.k_cache, x.block_table, x.cache_seqlens, D_V, fm_meta, None, causal=True)
            try:
                step()
                steps["flashmla_meta"] = step
            except Exception as error:  # noqa: BLE001  (a shape FlashMLA does not take)
                print(f"FlashMLA b={batch} s_q={seq_q} h_q={heads_q}: {type(error).__name__}: {error}"[:200])
        for label, (median, least, thread_cpu) in cpu_us_per_call(steps).items():
            row[label], row[label + "_min"], row[label + "_cpu"] = median, least, thread_cpu
        rows.append(row)
        del x
        torch.cuda.empty_cache()
    return rows


def print_overhead(rows: list[dict]) -> None:
    cols = list(dict.fromkeys(c for r in rows for c in r if c.endswith("_tensor") or c.endswith("_meta")
                              or c == "plan"))
    for suffix, what in (("", "wall time"), ("_cpu", "thread CPU time")):
        print(f"us per call, {what} ({CALLS_PER_RUN} calls back to back, median of {REPS} runs, paths taking "
              "turns); _tensor = (sched, splits) form, _meta = FlashMLASchedMeta form, plan = get_mla_metadata")
        print(f"{'b':>4} {'s_q':>3} {'sk':>5} {'h_q':>4} {'auto runs':>9} " + " ".join(f"{c:>15}" for c in cols))
        for r in rows:
            print(f"{r['batch']:>4} {r['seq_q']:>3} {r['mean_sk']:>5} {r['heads_q']:>4} {r['auto_runs']:>9} "
                  + " ".join(f"{r[c + suffix]:15.1f}" if c + suffix in r else f"{'-':>15}" for c in cols))
        seed = [r for r in rows if r["batch"] == 128]
        for c in ("auto_tensor", "auto_meta", "flashmla_meta"):
            values = sorted(r[c + suffix] for r in seed if c + suffix in r)
            if values:
                print(f"{c} ({what}) on the seed shapes: median {values[len(values) // 2]:.1f} us, "
                      f"max {values[-1]:.1f} us")
        print()


FIRST_CALL_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import torch, tritonmla as tm
from tritonmla.bench.workload import make_decode_inputs
torch.cuda.init(); torch.empty(1, device="cuda")
t_import = time.perf_counter() - t0
cfg = json.loads(sys.argv[1])
def call():
    x = make_decode_inputs([cfg["sk"]] * cfg["batch"], cfg["seq_q"], cfg["heads_q"], 1, 64, torch.bfloat16, "cuda")
    torch.cuda.synchronize()
    t = time.perf_counter()
    sched, splits = tm.get_mla_metadata(x.cache_seqlens, cfg["seq_q"] * cfg["heads_q"], 1)
    tm.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, sched, splits, causal=True)
    torch.cuda.synchronize()
    return time.perf_counter() - t
t = time.perf_counter()
if cfg["warmup"]:
    tm.warmup(cfg["heads_q"], seq_q=cfg["seq_q"], causal=True)
t_warmup = time.perf_counter() - t
first = call()
second = call()
print(json.dumps(dict(import_s=t_import, warmup_s=t_warmup, first_call_s=first, second_call_s=second)))
"""


def first_call_table() -> list[dict]:
    """Latency of a process's first decode call: compile (empty cache), then warm on-disk cache, each with and
    without tritonmla.warmup() before it; for the default kernel (on SM90 the CuTe kernel where CuTe DSL is importable)
    and, where it can run, the Gluon kernel (kernel="hopper")."""
    from ..dense_decode import dispatch
    kernels = ["auto"] + ([] if dispatch.hopper_device(torch.device("cuda")) else ["hopper"])
    rows = []
    for kernel in kernels:
        for heads_q, seq_q in ((16, 1), (128, 2)):
            cache_dir = tempfile.mkdtemp(prefix="tritonmla-first-call-")
            for label, use_warmup in (("empty cache", False), ("warm disk cache", False),
                                      ("warm disk cache + warmup()", True)):
                cfg = dict(batch=64, seq_q=seq_q, sk=4096, heads_q=heads_q, warmup=use_warmup)
                env = {**os.environ, "TRITON_CACHE_DIR": cache_dir, "TRITONMLA_CACHE_DIR": cache_dir,
                       "TRITONMLA_KERNEL": kernel}
                out = subprocess.run([sys.executable, "-c", FIRST_CALL_SCRIPT, json.dumps(cfg)], env=env,
                                     capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(dict(kernel=kernel, heads_q=heads_q, seq_q=seq_q, case=label, **result))
    return rows


def print_first_call(rows: list[dict]) -> None:
    print("first decode call of a fresh process (b=64, sk 4096, causal; get_mla_metadata + flash_mla_with_kvcache, "
          "synchronized)")
    print(f"{'kernel':>6} {'h_q':>4} {'s_q':>3} {'case':<28} {'import s':>8} {'warmup s':>8} {'first call ms':>13} "
          f"{'second call ms':>14}")
    for r in rows:
        print(f"{r['kernel']:>6} {r['heads_q']:>4} {r['seq_q']:>3} {r['case']:<28} {r['import_s']:8.2f} "
              f"{r['warmup_s']:8.2f} "
              f"{r['first_call_s'] * 1e3:13.1f} {r['second_call_s'] * 1e3:14.2f}")
