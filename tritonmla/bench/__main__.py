"""Benchmark: FlashMLA's published decode table, side by side with FlashMLA's figures on the same H100.

    python -m tritonmla.bench [--quick] [--suite seed|head|small] [--kernel both|auto,hopper,cute,portable]
                              [--compare flashmla] [--csv FILE] [--json FILE] [--plot FILE.png] [--overhead]
                              [--first-call]
    python -m tritonmla.bench sparse-decode [...]    (sparse decoding over FP8 caches: tritonmla.bench.sparse)
    python -m tritonmla.bench sparse-prefill [...]   (sparse attention prefill: tritonmla.bench.sparse_prefill)

--kernel both (the default) times the Gluon Hopper kernel and the portable kernel on every config, side by side
(the Hopper column is left out on GPUs that cannot run it). Each config is timed as users see it: eager calls
(host cost included) and the replay of a CUDA graph of the same call (GPU time alone). The ratio to FlashMLA is
measured where `flash_mla` is importable and --compare flashmla asks for it (FlashMLA timed the same two ways, in
the same process, on the same inputs: ratio = FlashMLA's time / ours); otherwise it is taken against FlashMLA's
published H100 figures (the anchors file: GB/s, meaningful on an H100 only).
--overhead prints the CPU time per call of every path instead (and FlashMLA's, where `flash_mla` is importable);
--first-call the latency of a fresh process's first call (tritonmla.bench.host).

Work is counted as FlashMLA's test counts it: FLOPs = 2 s_q sum(seqlens) h_q (d + dv), bytes = 2 (sum(seqlens) h_kv d
+ b s_q h_q (d + dv)); against the anchors, ratio = our GB/s over FlashMLA's for the same config (throughput,
since varlen lengths are random). Timing: triton.testing.do_bench, median. Without a GPU it says so and runs a
small CPU demo of the same kernels under Triton's interpreter, checked against the reference.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tritonmla.bench.timing import cuda_times, write_rows
from tritonmla.core.constants import D_V

ANCHORS_FILE = Path(__file__).with_name("flashmla_h100_anchors.txt")
WARMUP_S = 20.0
ROOF_GBPS, ROOF_TFLOPS = 2933.0, 676.0  # device H100 ceilings measured with the anchors (read-only sum, bf16 GEMM)


@dataclass
class Row:
    kernel: str
    batch: int
    seq_q: int
    mean_sk: int
    heads_q: int
    heads_kv: int
    varlen: bool
    causal: bool
    ms: float  # eager
    tflops: float
    gbps: float
    flashmla_gbps: float | None
    ratio: float | None
    max_abs_err: float
    graph_ms: float  # CUDA-graph replay of the same call
    graph_ratio: float | None
    flashmla_source: str  # "measured" (same process, same inputs) or "anchor" (published H100 figure)


def load_anchors() -> dict[tuple, float]:
    """(b, s_q, mean_sk, h_q, h_kv, varlen) -> FlashMLA's GB/s, from the copied anchor table."""
    anchors, key = {}, None
    for line in ANCHORS_FILE.read_text().splitlines():
        if line.startswith("b="):
            f = dict(kv.split("=") for kv in line.replace(" ", "").split(","))
            key = (int(f["b"]), int(f["s_q"]), int(f["mean_sk"]), int(f["h_q"]), int(f["h_kv"]), f["varlen"] == "True")
        elif key is not None and "GB/s" in line:
            anchors[key] = float(line.split(",")[2].split()[0])
            key = None
    return anchors


def progress(i: int, n: int, label: str) -> None:
    done = int(30 * i / n)
    sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {i}/{n} {label:<48}")
    sys.stderr.flush()


def flashmla_times(fm, x, causal) -> tuple[float, float]:
    """FlashMLA's (eager ms, graph ms) on the same inputs (its newer API: FlashMLASchedMeta, planned on first use)."""
    meta, _ = fm.get_mla_metadata()
    block_table = x.block_table.clamp(max=x.k_cache.shape[0] - 1)  # unused entries: valid indices, never read
    step = lambda: fm.flash_mla_with_kvcache(x.q, x.k_cache, block_table, x.cache_seqlens, D_V, meta, None,  # noqa
                                             causal=causal)
    step()
    return cuda_times(step)


def bench_config(tm, kernel, batch, seq_q, mean_sk, heads_q, heads_kv, varlen, causal, dtype, anchors,
                 fm=None, fm_memo=None, seed=0) -> Row:
    from tritonmla.bench.workload import make_decode_inputs, seqlens_like_flashmla, work

    rng = random.Random(seed)
    seqlens = seqlens_like_flashmla(batch, mean_sk, seq_q, varlen, rng)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = make_decode_inputs(seqlens, seq_q, heads_q, heads_kv, 64, dtype, "cuda", generator=gen)
    from tritonmla.dense_decode.plan import num_parts_for
    # The plan the kernel would get from get_mla_metadata if TRITONMLA_KERNEL named it.
    num_parts = num_parts_for(x.cache_seqlens.device, seq_q * heads_q // heads_kv, heads_kv, kernel)
    sched, splits = torch.ops.tritonmla.plan(x.cache_seqlens, num_parts)

    def step():
        return tm.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, D_V, sched, splits,
                                         causal=causal, kernel=kernel)

    out, lse = step()
    # Spot-check two requests against the float32 reference (the tests check everything; this guards the table).
    idx = [0, batch - 1]
    ref_out, _ = tm.mla_decode_reference(x.q[idx], x.k_cache, x.block_table[idx], x.cache_seqlens[idx], D_V,
                                         causal=causal)
    err = (out[idx].float() - ref_out.float()).abs().max().item()
    if not math.isfinite(err) or err > 2e-2:
        raise RuntimeError(f"benchmark output disagrees with the reference (max abs err {err})")
    ms, graph_ms = cuda_times(step)
    flops, nbytes = work(seqlens, batch, seq_q, heads_q, heads_kv)
    gbps = nbytes / ms / 1e6
    config = (batch, seq_q, mean_sk, heads_q, heads_kv, varlen)
    if fm is not None and config + (causal,) not in fm_memo:
        try:
            fm_memo[config + (causal,)] = flashmla_times(fm, x, causal)
        except Exception as error:  # noqa: BLE001  (FlashMLA refusing a config: fall back to its anchor)
            print(f"FlashMLA failed on {config}: {type(error).__name__}: {error}"[:300])
            fm_memo[config + (causal,)] = None
    if fm is not None and fm_memo[config + (causal,)] is not None:
        fm_ms, fm_graph_ms = fm_memo[config + (causal,)]
        ref_gbps, ratio, graph_ratio, source = nbytes / fm_ms / 1e6, fm_ms / ms, fm_graph_ms / graph_ms, "measured"
    else:
        ref_gbps = anchors.get(config) if causal else None  # the published table is causal
        ratio = gbps / ref_gbps if ref_gbps else None
        graph_ratio = nbytes / graph_ms / 1e6 / ref_gbps if ref_gbps else None
        source = "anchor"
    del x, out, lse
    return Row(kernel, batch, seq_q, mean_sk, heads_q, heads_kv, varlen, causal, ms, flops / ms / 1e9, gbps,
               ref_gbps, ratio, err, graph_ms, graph_ratio, source)


def print_table(rows: list[Row]) -> None:
    """One line per config; per kernel: ms, TFLOPS, GB/s and the ratio to FlashMLA's GB/s."""
    kernels = list(dict.fromkeys(r.kernel for r in rows))
    by_config: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        by_config.setdefault((r.batch, r.seq_q, r.mean_sk, r.heads_q, r.varlen, r.causal), {})[r.kernel] = r
    head = f"{'b':>4} {'s_q':>3} {'mean_sk':>7} {'h_q':>4} {'varlen':>6} {'causal':>6} {'FlashMLA GB/s':>13}"
    for k in kernels:
        head += f" | {k:>8} {'ms':>6} {'TFLOPS':>6} {'GB/s':>6} {'ratio':>5} {'graph ms':>8} {'ratio':>5}"
    print(head)
    fmt = lambda v: f"{v:5.2f}" if v else f"{'-':>5}"  # noqa: E731
    sources = {r.flashmla_source for r in rows}
    print("FlashMLA: " + ("timed here, same inputs (ratio = its time / ours)" if sources == {"measured"} else
                          "published H100 figures (ratio = our GB/s / its GB/s)"))
    for (b, s_q, sk, h_q, varlen, causal), per in by_config.items():
        ref = next(iter(per.values())).flashmla_gbps
        line = (f"{b:>4} {s_q:>3} {sk:>7} {h_q:>4} {str(varlen):>6} {str(causal):>6} "
                + (f"{ref:13.0f}" if ref else f"{'-':>13}"))
        for k in kernels:
            r = per.get(k)
            line += (f" | {'':>8} {r.ms:6.3f} {r.tflops:6.1f} {r.gbps:6.0f} {fmt(r.ratio)} {r.graph_ms:8.3f} "
                     f"{fmt(r.graph_ratio)}")
        print(line)
    for k in kernels:
        for label, attr in (("eager", "ratio"), ("CUDA graph", "graph_ratio")):
            ratios = [getattr(r, attr) for r in rows if getattr(r, attr) and r.kernel == k]
            if ratios:
                geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
                print(f"{k} ({label}): geomean ratio vs FlashMLA over {len(ratios)} configs: {geo:.3f} "
                      f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
        eager_over_graph = [r.ms / r.graph_ms for r in rows if r.kernel == k]
        print(f"{k}: eager time / CUDA-graph time: max {max(eager_over_graph):.3f}, "
              f"median {sorted(eager_over_graph)[len(eager_over_graph) // 2]:.3f}")


def plot(rows: list[Row], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    intensity = [r.tflops * 1e3 / r.gbps for r in rows]  # FLOP per byte
    xs = [10 ** (i / 50) for i in range(0, 200)]
    ax.plot(xs, [min(ROOF_TFLOPS, x * ROOF_GBPS / 1e3) for x in xs], "k-", lw=1, label="H100 roofline (measured)")
    for k in dict.fromkeys(r.kernel for r in rows):
        ax.scatter([i for i, r in zip(intensity, rows) if r.kernel == k], [r.tflops for r in rows if r.kernel == k],
                   label=f"tritonmla ({k})", marker="o")
    ref = [(i, r.flashmla_gbps * i / 1e3) for i, r in zip(intensity, rows) if r.flashmla_gbps and r.kernel ==
           rows[0].kernel]
    if ref:
        ax.scatter(*zip(*ref), label=f"FlashMLA ({rows[0].flashmla_source})", marker="x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("TFLOPS")
    ax.set_title("MLA decode, b=128, h_kv=1, causal: achieved vs roofline")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"plot written to {path}")


def gpu_main(args) -> None:
    import triton
    import tritonmla as tm

    anchors = load_anchors()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    if args.suite == "head":  # FlashMLA HEAD's dense performance cases: b=128, h_q 128, varlen, causal or not
        configs = [(128, s_q, sk, 128, 1, True, causal)
                   for causal in (False, True) for s_q in (1, 2) for sk in (4096, 8192, 16384, 32768)]
    elif args.suite == "small":  # latency: an interactive engine's few requests, short to mid contexts
        configs = [(b, 1, sk, h_q, 1, False, True) for h_q in (16, 128) for b in (1, 4) for sk in (64, 1024, 4096)]
    else:  # the seed table (FlashMLA's published H100 figures), causal
        configs = [(128, s_q, sk, h_q, 1, varlen, True) for sk in (4096, 8192, 16384) for h_q in (16, 32, 64, 128)
                   for s_q in (1, 2) for varlen in (False, True)]
    if args.quick:
        configs = [c for c in configs if c[2] == 8192 and (args.suite == "head" or not c[5])]
    if args.only:
        want = dict(kv.split("=") for kv in args.only.split(","))
        index = {"s_q": 1, "sk": 2, "h_q": 3, "varlen": 5, "causal": 6}
        configs = [c for c in configs if all(str(c[index[k]]) == v for k, v in want.items())]
    from tritonmla.bench.host import flashmla_module
    from tritonmla.core import hopper
    fm = flashmla_module() if args.compare == "flashmla" else None
    if args.compare == "flashmla" and fm is None:
        print("--compare flashmla: flash_mla is not importable here; ratios use the anchors file")
    fm_memo: dict = {}
    no_hopper = hopper.hopper_device(torch.device("cuda"))
    if args.kernel == "both":
        kernels = ["portable"] if no_hopper else ["hopper", "portable"]
        if no_hopper:
            print(f"Hopper kernel not timed: {no_hopper}")
    else:
        kernels = args.kernel.split(",")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"dtype {args.dtype}, kernels {', '.join(kernels)}, {time.strftime('%Y-%m-%d')}")
    rows = []
    jobs = [(k, c) for c in configs for k in kernels]
    # Warm-up (not recorded): compile every kernel variant, then keep the GPU busy for WARMUP_S, so the first
    # configs are not timed on a cold machine. (The Hopper kernel's sk 4096 rows still swing run to run with it:
    # NOTES.md run 9.)
    t0 = time.time()
    while True:
        for kernel in kernels:
            progress(0, len(jobs), f"warm-up {kernel}")
            bench_config(tm, kernel, *jobs[0][1], dtype, anchors)
            bench_config(tm, kernel, *jobs[-1][1], dtype, anchors, fm, {})
        if time.time() - t0 > WARMUP_S:
            break
    for i, (kernel, (b, s_q, sk, h_q, h_kv, varlen, causal)) in enumerate(jobs):
        progress(i, len(jobs), f"{kernel} b={b} s_q={s_q} sk={sk} h_q={h_q} varlen={varlen} causal={causal}")
        rows.append(bench_config(tm, kernel, b, s_q, sk, h_q, h_kv, varlen, causal, dtype, anchors, fm, fm_memo))
        torch.cuda.empty_cache()
    progress(len(jobs), len(jobs), "done")
    sys.stderr.write("\n")
    print_table(rows)
    write_rows(rows, args.csv, args.json)
    if args.plot:
        plot(rows, args.plot)


def cpu_demo() -> None:
    """No GPU: run the Triton kernels under the interpreter on a small varlen batch and check them."""
    import tritonmla as tm
    from tritonmla.bench.workload import make_decode_inputs

    gen = torch.Generator().manual_seed(0)
    seqlens, seq_q, heads_q, heads_kv = [300, 0, 77, 513], 2, 16, 1
    # fp16: the interpreter's bf16 dot is wrong (triton-lang/triton#11584); the GPU runs both dtypes.
    x = make_decode_inputs(seqlens, seq_q, heads_q, heads_kv, 16, torch.float16, "cpu", generator=gen)
    t0 = time.time()
    sched, splits = tm.get_mla_metadata(x.cache_seqlens, seq_q * heads_q // heads_kv, heads_kv)
    out, lse = tm.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, D_V, sched, splits,
                                         causal=True)
    secs = time.time() - t0
    ref_out, ref_lse = tm.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, D_V, causal=True,
                                               compute_dtype=torch.float64)
    err = (out.double() - ref_out.double()).abs().max().item()
    lse_ok = torch.equal(torch.isinf(lse), torch.isinf(ref_lse)) and torch.allclose(
        lse.nan_to_num(posinf=0), ref_lse.nan_to_num(posinf=0), atol=1e-4)
    print(f"batch seqlens {seqlens}, s_q={seq_q}, h_q={heads_q}, page 16, causal: splits per request "
          f"{(splits[1:] - splits[:-1]).tolist()}, max |out - ref| = {err:.2e}, lse {'ok' if lse_ok else 'WRONG'}, "
          f"{secs:.1f} s in the interpreter")
    if not (err < 2e-3 and lse_ok):
        raise SystemExit("CPU demo FAILED: kernels disagree with the reference")
    print("CPU demo passed.")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sparse-decode"]:  # FlashMLA's sparse decode cases (tritonmla.bench.sparse)
        from tritonmla.bench import sparse
        sparse.main(argv[1:])
        return
    if argv[:1] == ["sparse-prefill"]:  # FlashMLA's sparse prefill cases (tritonmla.bench.sparse_prefill)
        from tritonmla.bench import sparse_prefill
        sparse_prefill.main(argv[1:])
        return
    p = argparse.ArgumentParser(prog="python -m tritonmla.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="only mean_sk=8192, fixed lengths")
    p.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    p.add_argument("--kernel", default="both",
                   help="which decode kernel(s) to time: both (Gluon Hopper and portable, side by side; the "
                        "default) or a comma list of auto, hopper, cute, portable")
    p.add_argument("--compare", choices=("flashmla",), help="time FlashMLA beside us (needs flash_mla importable)")
    p.add_argument("--suite", choices=("seed", "head", "small"), default="seed",
                   help="seed: FlashMLA's published H100 table (causal); head: FlashMLA HEAD's dense performance "
                        "cases (b=128, h_q=128, varlen, causal and not, sk 4096-32768); small: latency of b 1 and "
                        "4, sk 64-4096, h_q 16 and 128, s_q 1")
    p.add_argument("--only", help="configs to run, e.g. 'sk=8192,h_q=128' (any of s_q, sk, h_q, varlen)")
    p.add_argument("--csv", help="write the table as CSV")
    p.add_argument("--json", help="write the table as JSON")
    p.add_argument("--plot", help="write a roofline PNG", default=None)
    p.add_argument("--overhead", action="store_true", help="CPU time per call of every path (and FlashMLA's)")
    p.add_argument("--first-call", action="store_true", help="first-call latency of fresh processes")
    args = p.parse_args(argv)
    if args.kernel != "both" and not set(args.kernel.split(",")) <= {"auto", "hopper", "cute", "portable"}:
        p.error(f"--kernel: both, or a comma list of auto, hopper, cute, portable; got {args.kernel!r}")
    if torch.cuda.is_available() and (args.overhead or args.first_call):
        from tritonmla.bench import host
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
        for wanted, table, show in ((args.overhead, host.overhead_table, host.print_overhead),
                                    (args.first_call, host.first_call_table, host.print_first_call)):
            if wanted:
                rows = table()
                show(rows)
                if args.json:
                    Path(args.json).write_text(json.dumps(rows, indent=1))
    elif torch.cuda.is_available():
        gpu_main(args)
    elif os.environ.get("TRITON_INTERPRET") != "1":
        # Triton reads TRITON_INTERPRET when the kernels are defined, i.e. on importing tritonmla: start afresh.
        print("No CUDA GPU found: running a small CPU demo of the Triton kernels under TRITON_INTERPRET=1 "
              "(no timings; run on an NVIDIA GPU for the benchmark table).", flush=True)
        os.execve(sys.executable, [sys.executable, "-m", "tritonmla.bench", *(argv or sys.argv[1:])],
                  {**os.environ, "TRITON_INTERPRET": "1"})
    else:
        cpu_demo()


if __name__ == "__main__":
    main()
