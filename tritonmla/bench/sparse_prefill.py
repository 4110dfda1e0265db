"""Sparse prefill benchmark (`python -m tritonmla.bench sparse-prefill`) and its workloads.

    python -m tritonmla.bench sparse-prefill [--quick] [--compare flashmla] [--only V32|MODEL1] [--csv F] [--json F]

Cases: FlashMLA's performance templates (its tests/test_flash_mla_sparse_prefill.py): s_q 4096, attention sink
on; V3.2 (d_qk 576, h_q 128, topk 2048, s_kv 8192-131072), MODEL1 config 1 (d_qk 512, h_q 64, topk 512, s_kv
8192-65536) and config 2 (d_qk 512, h_q 128, topk 1024). Inputs as FlashMLA's tests build them (distinct random
kv rows per query, randn / 10 values). Counting is FlashMLA's: FLOPs = 2 (s_q topk or sum topk_length) h_q
(d_qk + 512); bytes = the valid indices' kv rows + q and out in bf16. Time: the eager call and the replay of a CUDA
graph of it, triton.testing.do_bench medians. FlashMLA is timed beside us where `flash_mla` is importable and
--compare flashmla asks (ratio = its time / ours), else against its figures on the device's H100
(flashmla_sparse_h100_anchors.txt). Without a GPU: a small CPU demo under the interpreter, checked against the
reference.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

from ..core.constants import D_V
from .sparse import ANCHORS_FILE
from .timing import cuda_times, print_geomeans, write_rows

# FlashMLA's invalid index values (tests/lib.py): all must be skipped, never read.
INVALID_INDICES = (-2147483648, -123456, -1, None, 114514, 1919810, 2147480000, 2147483647)  # None: s_kv

CASES = [  # name, d_qk, h_q, topk, s_kv list (s_q 4096)
    ("V32", 576, 128, 2048, (8192, 32768, 65536, 98304, 131072)),
    ("MODEL1-1", 512, 64, 512, (8192, 32768, 49152, 65536)),
    ("MODEL1-2", 512, 128, 1024, (8192, 32768, 49152, 65536)),
]


@dataclass
class PrefillInputs:
    q: torch.Tensor
    kv: torch.Tensor
    indices: torch.Tensor
    sm_scale: float
    attn_sink: Optional[torch.Tensor] = None
    topk_length: Optional[torch.Tensor] = None

    def args(self) -> tuple:
        return self.q, self.kv, self.indices, self.sm_scale

    def kwargs(self) -> dict:
        return dict(attn_sink=self.attn_sink, topk_length=self.topk_length)


def _strided(t: torch.Tensor, pad: int) -> torch.Tensor:
    """t's values in a tensor whose rows are `pad` elements apart more than its last dim (row strides)."""
    if pad == 0:
        return t
    big = torch.full((*t.shape[:-1], t.shape[-1] + pad), float("nan") if t.is_floating_point() else -1,
                     dtype=t.dtype, device=t.device)
    big[..., :t.shape[-1]] = t
    return big[..., :t.shape[-1]]


def make_prefill_inputs(s_q: int, s_kv: int, topk: int, h_q: int, d_qk: int, h_kv: int = 1, sink: bool = False,
                        have_topk_length: bool = False, all_invalid: bool = False, nan_unused: bool = True,
                        strided: bool = False, sm_scale: Optional[float] = None,
                        dtype: torch.dtype = torch.bfloat16, device="cuda", seed: int = 0) -> PrefillInputs:
    """FlashMLA's test inputs (tests/lib.py generate_testcase): q, kv = randn / 10 + a per-case offset; each query's
    indices distinct random rows of [0, s_kv) (topk > s_kv: the rest FlashMLA's invalid values); sinks with +-inf
    entries; topk_length in [0, topk]. all_invalid: some queries get only invalid indices. nan_unused: NaN in the
    kv rows no valid index names (must never reach the result). strided: q, kv and indices with row strides.
    sm_scale: default 1 / sqrt(d_qk)."""
    rng = random.Random(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    q = (torch.randn(s_q, h_q, d_qk, generator=gen, device=device) / 10 + (rng.random() - 0.5) / 10).clamp(-10, 10)
    kv = (torch.randn(s_kv, h_kv, d_qk, generator=gen, device=device) / 10 + (rng.random() - 0.5) / 10).clamp(-10, 10)
    q, kv = q.to(dtype), kv.to(dtype)
    width = max(s_kv, topk)
    rand = torch.rand(s_q * h_kv, width, generator=gen, device=device)
    rand[:, s_kv:] = float("-inf")  # rows of [0, s_kv) first
    indices = rand.topk(topk, dim=-1).indices.to(torch.int32)
    invalid = torch.tensor([s_kv if v is None else v for v in INVALID_INDICES], dtype=torch.int32, device=device)
    fill = invalid[torch.randint(0, len(invalid), indices.shape, generator=gen, device=device)]
    indices = torch.where(indices >= s_kv, fill, indices).view(s_q, h_kv, topk)
    if all_invalid:
        rows = torch.rand(s_q, generator=gen, device=device) < 0.3
        indices[rows] = invalid[rng.randrange(len(invalid))]
    attn_sink = None
    if sink:
        attn_sink = torch.randn(h_q, generator=gen, device=device)
        mask = torch.randn(h_q, generator=gen, device=device)
        attn_sink[mask < -0.5] = float("-inf")
        attn_sink[mask > 0.5] = float("inf")
    topk_length = None
    if have_topk_length:
        topk_length = torch.randint(0, max(topk + 1, 64), (s_q,), generator=gen, device=device)
        topk_length = topk_length.clamp_max(topk).to(torch.int32)
    if strided:
        q, kv, indices = _strided(q, 8), _strided(kv, 8), _strided(indices, 4)
    x = PrefillInputs(q, kv, indices, sm_scale if sm_scale is not None else d_qk ** -0.5, attn_sink, topk_length)
    if nan_unused:
        poison_unused_rows(x)
    return x


def poison_unused_rows(x: PrefillInputs) -> None:
    """NaN in every kv row (of each KV head) that no valid, counted index names."""
    s_kv, h_kv, _ = x.kv.shape
    topk = x.indices.shape[-1]
    used = torch.zeros(s_kv, h_kv, dtype=torch.bool, device=x.kv.device)
    live = (x.indices >= 0) & (x.indices < s_kv)
    if x.topk_length is not None:
        live &= torch.arange(topk, device=live.device)[None, None, :] < x.topk_length[:, None, None]
    heads = torch.arange(h_kv, device=live.device)[None, :, None].expand_as(x.indices)
    used[x.indices[live].long(), heads[live]] = True
    x.kv[~used] = float("nan")


def work(x: PrefillInputs) -> tuple[float, float]:
    """FlashMLA's counting (tests/lib.py count_flop_and_mem_vol): (FLOPs, bytes)."""
    s_q, h_q, d_qk = x.q.shape
    s_kv, topk = x.kv.shape[0], x.indices.shape[-1]
    total = s_q * topk if x.topk_length is None else int(x.topk_length.sum().item())
    valid = (x.indices >= 0) & (x.indices < s_kv)
    if x.topk_length is not None:
        valid &= torch.arange(topk, device=valid.device)[None, None, :] < x.topk_length[:, None, None]
    return 2 * total * h_q * (d_qk + D_V), int(valid.sum().item()) * d_qk * 2 + s_q * h_q * (d_qk + D_V) * 2


def load_anchors() -> dict[tuple, float]:
    """(d_qk, h_q, topk, s_kv) -> FlashMLA's us on the device's H100 (its SPARSE PREFILL lines)."""
    anchors = {}
    for line in ANCHORS_FILE.read_text().splitlines():
        if line.startswith("d_qk=") and " us," in line:
            f = dict(kv.split("=", 1) for kv in line.split(" us,")[0].split()[:-1])
            us = float(line.split(" us,")[0].split()[-1])
            anchors[(int(f["d_qk"]), int(f["h_q"]), int(f["topk"]), int(f["s_kv"]))] = us
    return anchors


@dataclass
class Row:
    case: str
    d_qk: int
    heads_q: int
    topk: int
    s_kv: int
    us: float
    graph_us: float
    tflops: float
    tbps: float
    flashmla_us: Optional[float]
    ratio: Optional[float]
    graph_ratio: Optional[float]
    source: str
    max_err: float


def bench_case(tm, fm, name, d_qk, h_q, topk, s_kv, anchors, s_q: int = 4096) -> Row:
    x = make_prefill_inputs(s_q, s_kv, topk, h_q, d_qk, sink=True, nan_unused=False, seed=s_kv + topk)

    def step():
        return tm.flash_mla_sparse_fwd(*x.args(), **x.kwargs())

    out, _, _ = step()
    sub = slice(0, 64)  # spot-check the first tokens against the float32 reference (the tests check everything)
    ref = tm.sparse_prefill_reference(x.q[sub], x.kv, x.indices[sub], x.sm_scale, attn_sink=x.attn_sink)
    err = (out[sub].float() - ref[0].float()).abs().max().item()
    if not math.isfinite(err) or err > 2e-2:
        raise RuntimeError(f"benchmark output disagrees with the reference (max abs err {err})")
    us, graph_us = (1e3 * t for t in cuda_times(step, warmup=25, rep=200))
    flops, nbytes = work(x)
    fm_us = fm_graph_us = None
    source = "anchor"
    if fm is not None:
        try:
            def fm_step():
                return fm.flash_mla_sparse_fwd(*x.args(), **x.kwargs())
            fm_step()
            fm_us, fm_graph_us = (1e3 * t for t in cuda_times(fm_step, warmup=25, rep=200))
            source = "measured"
        except Exception as error:  # noqa: BLE001  (FlashMLA refusing a config: use its anchor)
            print(f"FlashMLA failed on {name} s_kv={s_kv}: {type(error).__name__}: {error}"[:300])
    if fm_us is None:
        fm_us = anchors.get((d_qk, h_q, topk, s_kv))
    ratio = fm_us / us if fm_us else None
    graph_ratio = (fm_graph_us or fm_us) / graph_us if fm_us else None
    return Row(name, d_qk, h_q, topk, s_kv, us, graph_us, flops / graph_us / 1e6, nbytes / graph_us / 1e6, fm_us,
               ratio, graph_ratio, source, err)


def print_table(rows: list[Row]) -> None:
    print(f"{'case':<9} {'d_qk':>4} {'h_q':>4} {'topk':>5} {'s_kv':>6} {'us':>8} {'graph us':>8} {'TFLOPS':>6} "
          f"{'TB/s':>5} {'FlashMLA us':>11} {'ratio':>5} {'g.ratio':>7}")
    fmt = lambda v: f"{v:5.2f}" if v else f"{'-':>5}"  # noqa: E731
    for r in rows:
        fm = f"{r.flashmla_us:11.1f}" if r.flashmla_us else f"{'-':>11}"
        print(f"{r.case:<9} {r.d_qk:>4} {r.heads_q:>4} {r.topk:>5} {r.s_kv:>6} {r.us:8.1f} {r.graph_us:8.1f} "
              f"{r.tflops:6.1f} {r.tbps:5.2f} {fm} {fmt(r.ratio)} {fmt(r.graph_ratio):>7}")
    sources = {r.source for r in rows}
    print("FlashMLA: " + ("timed here, same inputs" if sources == {"measured"} else
                          "its figures on the device H100 (flashmla_sparse_h100_anchors.txt)")
          + "; ratio = FlashMLA's time / ours (> 1: we are faster); TFLOPS from the graph time")
    print_geomeans(rows)


def gpu_main(args) -> None:
    import triton
    import tritonmla as tm
    from .host import flashmla_module

    fm = flashmla_module() if args.compare == "flashmla" else None
    if args.compare == "flashmla" and fm is None:
        print("--compare flashmla: flash_mla is not importable here; ratios use the anchors file")
    anchors = load_anchors()
    jobs = [(name, d_qk, h_q, topk, s_kv) for name, d_qk, h_q, topk, lens in CASES for s_kv in lens]
    if args.only:
        jobs = [j for j in jobs if j[0].startswith(args.only)]
    if args.quick:
        jobs = [j for j in jobs if j[4] in (8192, 65536)]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")
    rows = []
    for i, job in enumerate(jobs):
        sys.stderr.write(f"\r{i}/{len(jobs)} {job[0]} s_kv={job[4]}      ")
        sys.stderr.flush()
        rows.append(bench_case(tm, fm, *job, anchors))
        torch.cuda.empty_cache()
    sys.stderr.write("\n")
    print_table(rows)
    write_rows(rows, args.csv, args.json)


def cpu_demo() -> None:
    """No GPU: both head dims through the Triton kernel under the interpreter, checked against the reference."""
    import tritonmla as tm

    for d_qk in (576, 512):
        x = make_prefill_inputs(6, 150, 96, 16, d_qk, sink=True, have_topk_length=True, dtype=torch.float16,
                                device="cpu", seed=d_qk)
        t0 = time.time()
        out, max_logits, lse = tm.flash_mla_sparse_fwd(*x.args(), **x.kwargs())
        secs = time.time() - t0
        ref_out, ref_max, ref_lse = tm.sparse_prefill_reference(*x.args(), **x.kwargs(), compute_dtype=torch.float64)
        err = (out.double() - ref_out.double()).abs().max().item()
        stats_ok = all(torch.equal(torch.isinf(a), torch.isinf(b)) and torch.allclose(
            a.nan_to_num(posinf=0, neginf=0), b.float().nan_to_num(posinf=0, neginf=0), atol=1e-4)
            for a, b in ((max_logits, ref_max), (lse, ref_lse)))
        print(f"d_qk {d_qk}: s_q=6 h_q=16 topk 96 s_kv 150, sink, topk_length: max |out - ref| = {err:.2e}, "
              f"max_logits/lse {'ok' if stats_ok else 'WRONG'}, {secs:.1f} s in the interpreter")
        if not (err < 2e-3 and stats_ok):
            raise SystemExit("CPU demo FAILED: the sparse prefill kernel disagrees with the reference")
    print("CPU demo passed.")


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m tritonmla.bench sparse-prefill",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="only s_kv 8192 and 65536")
    p.add_argument("--compare", choices=("flashmla",), help="time FlashMLA beside us (needs flash_mla importable)")
    p.add_argument("--only", help="cases whose name starts with this: V32, MODEL1, MODEL1-2")
    p.add_argument("--csv", help="write the table as CSV")
    p.add_argument("--json", help="write the table as JSON")
    args = p.parse_args(argv)
    if torch.cuda.is_available():
        gpu_main(args)
    elif os.environ.get("TRITON_INTERPRET") != "1":
        print("No CUDA GPU found: running a small CPU demo of the sparse prefill Triton kernel under "
              "TRITON_INTERPRET=1 (no timings; run on an NVIDIA GPU for the benchmark table).", flush=True)
        os.execve(sys.executable, [sys.executable, "-m", "tritonmla.bench", "sparse-prefill", *argv],
                  {**os.environ, "TRITON_INTERPRET": "1"})
    else:
        cpu_demo()
