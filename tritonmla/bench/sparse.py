"""Sparse decode benchmark (`python -m tritonmla.bench sparse-decode`) and its workloads.

    python -m tritonmla.bench sparse-decode [--quick] [--compare flashmla] [--only V32|MODEL1|peak] [--csv F] [--json F]

Cases: FlashMLA's own (tests/test_flash_mla_sparse_decoding.py): the V3.2 production case (h_q 128, s_q 2,
topk 2048, s_k 32768, d_qk 576) and the four MODEL1 configs (d_qk 512, topk 128 in a page-256 cache + 512 or
1024 extra in a page-64 or page-2 cache, with extra_topk_length on the page-2 ones) over FlashMLA's batch sizes,
and the peak cases (b 148, s_q 2, topk 16384, h_q 64/128, both layouts). Inputs as FlashMLA's tests build them:
varlen lengths max(normal(s_k, s_k/2), s_q), permuted page tables, distinct random positions per query, attention
sink on. Counting is FlashMLA's: FLOPs = 2 h_q (attended tokens, main + extra, x b x s_q) (d_qk + 512); bytes =
Q + O in bf16 + unique retrieved tokens x (656 or 576). Time: the eager call (host cost included) and the replay
of a CUDA graph of it, triton.testing.do_bench medians. The ratio to FlashMLA: timed beside us where `flash_mla`
is importable and --compare flashmla asks (ratio = its time / ours), else against its figures on the device's
H100 (flashmla_sparse_h100_anchors.txt; ratio = its us / ours). Without a GPU: a small CPU demo under the
interpreter, checked against the reference.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..core.constants import D_V
from .timing import cuda_times, print_geomeans, write_rows
from ..core.fp8_cache_layouts import block_bytes, cache_view, layout_for, quantize_blocks

ANCHORS_FILE = Path(__file__).with_name("flashmla_sparse_h100_anchors.txt")


@dataclass
class SparseInputs:
    q: torch.Tensor
    k_cache: torch.Tensor
    indices: torch.Tensor
    topk_length: Optional[torch.Tensor] = None
    attn_sink: Optional[torch.Tensor] = None
    extra_k_cache: Optional[torch.Tensor] = None
    extra_indices: Optional[torch.Tensor] = None
    extra_topk_length: Optional[torch.Tensor] = None
    softmax_scale: float = 0.0

    def kwargs(self) -> dict:
        """flash_mla_with_kvcache's sparse keyword arguments."""
        return dict(softmax_scale=self.softmax_scale, is_fp8_kvcache=True, indices=self.indices,
                    attn_sink=self.attn_sink, extra_k_cache=self.extra_k_cache,
                    extra_indices_in_kvcache=self.extra_indices, topk_length=self.topk_length,
                    extra_topk_length=self.extra_topk_length)

    def reference_args(self) -> tuple:
        return (self.q, self.k_cache, self.indices, self.topk_length, self.attn_sink, self.extra_k_cache,
                self.extra_indices, self.extra_topk_length, self.softmax_scale)


def _random_cache(gen: torch.Generator, device, num_blocks: int, page_size: int, d_qk: int,
                  used: Optional[torch.Tensor]) -> torch.Tensor:
    """FP8 cache of clamp(randn / 10, -1, 1) rows (FlashMLA's test values), NaN where `used` is False; made a
    chunk of blocks at a time (the peak cases hold ~10M tokens)."""
    lay = layout_for(None, d_qk=d_qk)
    blocks = torch.empty(num_blocks, block_bytes(lay, page_size), dtype=torch.uint8, device=device)
    step = max(1, (1 << 20) // page_size)
    for i in range(0, num_blocks, step):
        n = min(step, num_blocks - i)
        k = (torch.randn(n, page_size, d_qk, generator=gen, device=gen.device) / 10).clamp(-1, 1)
        k = k.to(device=device, dtype=torch.bfloat16).float()
        if used is not None:
            k[~used[i * page_size:(i + n) * page_size].view(n, page_size)] = float("nan")
        quantize_blocks(k, lay, blocks[i:i + n])
    return cache_view(blocks, lay, page_size)


def _scope(gen: torch.Generator, device, batch: int, seq_q: int, d_qk: int, topk: int, page_size: int, s_k: int,
           varlen: bool, rng: random.Random, have_length: bool, zero_lengths: bool, all_invalid: bool,
           nan_unused: bool, garbage_past_length: bool):
    """One cache + its indices: (k_cache, indices, topk_length). Positions: distinct random tokens of the
    request's first seqlen (-1 past them), through a permuted page table; unused rows NaN (nan_unused)."""
    seqlens = [max(int(rng.normalvariate(s_k, s_k / 2)), seq_q) if varlen else s_k for _ in range(batch)]
    if zero_lengths:
        seqlens = [0 if rng.random() < 0.5 else n for n in seqlens]
    pages_per_seq = max(1, -(-max(seqlens) // page_size))
    num_blocks = batch * pages_per_seq
    table = torch.randperm(num_blocks, generator=gen, device=gen.device).to(device).view(batch, pages_per_seq)
    lens = torch.tensor(seqlens, device=device)
    rand = torch.rand(batch, seq_q, max(pages_per_seq * page_size, topk), generator=gen, device=gen.device).to(device)
    positions = torch.arange(rand.shape[-1], device=device)
    rand = rand.masked_fill(positions >= lens[:, None, None], -1.0)  # real positions first
    pos = rand.topk(topk, dim=-1).indices
    pos_ok = pos < lens[:, None, None]
    pos = torch.where(pos_ok, pos, 0)
    indices = torch.gather(table, 1, (pos // page_size).flatten(1)).view_as(pos) * page_size + pos % page_size
    indices = torch.where(pos_ok & (not all_invalid), indices, -1).to(torch.int32)
    topk_length = None
    if have_length:
        topk_length = torch.randint(0, topk + 1, (batch,), generator=gen, device=gen.device).to(device).int()
        if zero_lengths:
            topk_length[0] = 0
    live = indices if topk_length is None else torch.where(
        torch.arange(topk, device=device) < topk_length[:, None, None], indices, -1)
    used = None
    if nan_unused:
        used = torch.zeros(num_blocks * page_size, dtype=torch.bool, device=device)
        used[live[live >= 0].long()] = True
    k_cache = _random_cache(gen, device, num_blocks, page_size, d_qk, used)
    if garbage_past_length and topk_length is not None:  # anything at all past the length: never read
        past = torch.arange(topk, device=device) >= topk_length[:, None, None]
        junk = torch.randint(-2 ** 31, 2 ** 31 - 1, indices.shape, generator=gen, device=gen.device).to(device)
        indices = torch.where(past, junk.int(), indices)
    return k_cache, indices, topk_length


def make_sparse_inputs(batch: int, seq_q: int, heads_q: int, d_qk: int, topk: int, page_size: int, s_k: int,
                       extra: Optional[tuple[int, int, int]] = None, have_topk_length: bool = False,
                       have_extra_topk_length: bool = False, sink: bool = True, varlen: bool = True,
                       zero_lengths: bool = False, all_invalid: bool = False, nan_unused: bool = True,
                       garbage_past_length: bool = True, dtype: torch.dtype = torch.bfloat16,
                       device: str | torch.device = "cuda", seed: int = 0) -> SparseInputs:
    """FlashMLA-style sparse decode inputs. extra: (extra_topk, extra_page_size, extra_s_k). sink: FlashMLA's
    randn with about a third +inf and a third -inf."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = random.Random(seed)
    q = torch.randn(batch, seq_q, heads_q, d_qk, generator=gen, device=device).clamp(-1, 1).to(dtype)
    k_cache, indices, topk_length = _scope(gen, device, batch, seq_q, d_qk, topk, page_size, s_k, varlen, rng,
                                           have_topk_length, zero_lengths, all_invalid, nan_unused,
                                           garbage_past_length)
    x = SparseInputs(q, k_cache, indices, topk_length, softmax_scale=d_qk ** -0.55)
    if extra is not None:
        extra_topk, extra_page, extra_s_k = extra
        x.extra_k_cache, x.extra_indices, x.extra_topk_length = _scope(
            gen, device, batch, seq_q, d_qk, extra_topk, extra_page, extra_s_k, varlen, rng, have_extra_topk_length,
            zero_lengths, all_invalid, nan_unused, garbage_past_length)
    if sink:
        x.attn_sink = torch.randn(heads_q, generator=gen, device=device)
        pick = torch.randn(heads_q, generator=gen, device=device)
        x.attn_sink[pick > 0.5] = float("inf")
        x.attn_sink[pick < -0.5] = float("-inf")
    return x


def work(x: SparseInputs) -> tuple[float, float]:
    """(FLOPs, bytes) counted as FlashMLA's tests/lib.py count_flop_and_mem_vol_for_decode does."""
    batch, seq_q, heads_q, d_qk = x.q.shape
    lay = layout_for(None, d_qk=d_qk)

    def attended(indices, length):
        return batch * seq_q * indices.shape[-1] if length is None else int(length.sum()) * seq_q

    def retrieved(indices, length):
        if length is not None:
            live = torch.arange(indices.shape[-1], device=indices.device) < length[:, None, None]
            indices = torch.where(live, indices, -1)
        return indices.unique().numel()

    tokens = attended(x.indices, x.topk_length)
    unique = retrieved(x.indices, x.topk_length)
    if x.extra_k_cache is not None:
        tokens += attended(x.extra_indices, x.extra_topk_length)
        unique += retrieved(x.extra_indices, x.extra_topk_length)
    flops = 2 * heads_q * tokens * (d_qk + D_V)
    token_bytes = 656 if lay.name == "V32" else 576
    nbytes = 2 * batch * seq_q * heads_q * d_qk + unique * token_bytes + 2 * batch * seq_q * heads_q * D_V
    return flops, nbytes


# FlashMLA's performance cases: (name, h_q, s_q, s_k, topk, d_qk, page, extra (topk, page, s_k) or None,
# extra_topk_length, batch sizes)
CASES = [
    ("V32", 128, 2, 32768, 2048, 576, 64, None, False, [2, 64, 74, 128]),
    ("MODEL1-1", 64, 2, 16384, 128, 512, 256, (512, 64, 16384), False, [2, 64, 74, 128, 148, 256]),
    ("MODEL1-2", 128, 2, 16384, 128, 512, 256, (1024, 64, 16384), False, [2, 64, 74, 128, 148, 256]),
    ("MODEL1-3", 64, 2, 16384, 128, 512, 256, (1024, 2, 16384), True, [2, 64, 74, 128, 148, 256]),
    ("MODEL1-4", 128, 2, 16384, 128, 512, 256, (1024, 2, 16384), True, [2, 64, 74, 128, 148, 256]),
] + [("peak", h_q, 2, 32768, 16384, d_qk, 64, None, False, [148]) for h_q in (64, 128) for d_qk in (512, 576)]


@dataclass
class Row:
    case: str
    batch: int
    heads_q: int
    d_qk: int
    topk: str
    us: float  # eager
    graph_us: float
    tflops: float
    gbps: float
    flashmla_us: Optional[float]
    ratio: Optional[float]  # FlashMLA's time / ours (eager)
    graph_ratio: Optional[float]
    source: str
    max_abs_err: float


def load_anchors() -> dict[tuple, list[float]]:
    """(topk label, b, h_q, d_qk) -> FlashMLA's us, in file order (MODEL1 configs 2 and 4 share a label)."""
    anchors: dict[tuple, list[float]] = {}
    for line in ANCHORS_FILE.read_text().splitlines():
        if not line.startswith("topk="):
            continue
        f = dict(kv.split("=", 1) for kv in line.split())
        anchors.setdefault((f["topk"], int(f["b"]), int(f["h_q"]), int(f["d_qk"])), []).append(float(f["us"]))
    return anchors


def bench_case(tm, fm, name, h_q, s_q, s_k, topk, d_qk, page, extra, extra_len, batch, anchors) -> Row:
    x = make_sparse_inputs(batch, s_q, h_q, d_qk, topk, page, s_k, extra=extra, have_extra_topk_length=extra_len,
                           sink=True, nan_unused=False, garbage_past_length=False, device="cuda", seed=batch)
    meta, _ = tm.get_mla_metadata()  # planned on the first call and reused, as FlashMLA's test does

    def step():
        return tm.flash_mla_with_kvcache(x.q, x.k_cache, None, None, D_V, meta, None, **x.kwargs())

    out, lse = step()
    # Spot-check the first and last requests against the float32 reference (the tests check everything).
    sub = [0, batch - 1]
    pick = lambda t: t[sub] if t is not None else None  # noqa: E731
    ref_out, _ = tm.sparse_decode_reference(x.q[sub], x.k_cache, x.indices[sub], pick(x.topk_length), x.attn_sink,
                                            x.extra_k_cache, pick(x.extra_indices), pick(x.extra_topk_length),
                                            x.softmax_scale)
    err = (out[sub].float() - ref_out.float()).abs().max().item()
    if not math.isfinite(err) or err > 2e-2:
        raise RuntimeError(f"benchmark output disagrees with the reference (max abs err {err})")
    us, graph_us = (1e3 * t for t in cuda_times(step, warmup=25, rep=200))
    flops, nbytes = work(x)
    label = f"{topk}" if extra is None else f"{topk}+{extra[0]}"
    fm_us = fm_graph_us = None
    source = "anchor"
    if fm is not None:
        try:
            fm_meta, _ = fm.get_mla_metadata()

            def fm_step():
                return fm.flash_mla_with_kvcache(x.q, x.k_cache, None, None, D_V, fm_meta, None, **x.kwargs())
            fm_step()
            fm_us, fm_graph_us = (1e3 * t for t in cuda_times(fm_step, warmup=25, rep=200))
            source = "measured"
        except Exception as error:  # noqa: BLE001  (FlashMLA refusing a config: use its anchor)
            print(f"FlashMLA failed on {name} b={batch}: {type(error).__name__}: {error}"[:300])
    if fm_us is None:  # configs 2 and 4 of MODEL1 share a label: the anchors list them in CASES' order
        same = [c[0] for c in CASES if (c[4], c[1], c[5], c[7] and c[7][0]) == (topk, h_q, d_qk, extra and extra[0])]
        figures = anchors.get((label, batch, h_q, d_qk), [])
        nth = same.index(name) if name in same else 0
        fm_us = figures[nth] if nth < len(figures) else None
    ratio = fm_us / us if fm_us else None
    graph_ratio = (fm_graph_us if fm_graph_us else fm_us) / graph_us if fm_us else None
    return Row(name, batch, h_q, d_qk, label, us, graph_us, flops / us / 1e6, nbytes / us / 1e3, fm_us, ratio,
               graph_ratio, source, err)


def print_table(rows: list[Row]) -> None:
    print(f"{'case':<9} {'topk':>9} {'b':>4} {'h_q':>4} {'d_qk':>4} {'us':>8} {'graph us':>8} {'TFLOPS':>6} "
          f"{'GB/s':>6} {'FlashMLA us':>11} {'ratio':>5} {'g.ratio':>7}")
    fmt = lambda v: f"{v:5.2f}" if v else f"{'-':>5}"  # noqa: E731
    for r in rows:
        fm = f"{r.flashmla_us:11.1f}" if r.flashmla_us else f"{'-':>11}"
        print(f"{r.case:<9} {r.topk:>9} {r.batch:>4} {r.heads_q:>4} {r.d_qk:>4} {r.us:8.1f} {r.graph_us:8.1f} "
              f"{r.tflops:6.1f} {r.gbps:6.0f} {fm} {fmt(r.ratio)} {fmt(r.graph_ratio):>7}")
    sources = {r.source for r in rows}
    print("FlashMLA: " + ("timed here, same inputs" if sources == {"measured"} else
                          "its figures on the device H100 (flashmla_sparse_h100_anchors.txt)")
          + "; ratio = FlashMLA's time / ours (> 1: we are faster)")
    print_geomeans(rows)


def gpu_main(args) -> None:
    import triton
    import tritonmla as tm
    from .host import flashmla_module

    fm = flashmla_module() if args.compare == "flashmla" else None
    if args.compare == "flashmla" and fm is None:
        print("--compare flashmla: flash_mla is not importable here; ratios use the anchors file")
    anchors = load_anchors()
    jobs = [(c[:-1], b) for c in CASES for b in c[-1]]
    if args.only:
        jobs = [j for j in jobs if j[0][0].startswith(args.only)]
    if args.quick:
        jobs = [j for j in jobs if j[1] in (64, 148)]
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")
    rows = []
    for i, (case, batch) in enumerate(jobs):
        sys.stderr.write(f"\r{i}/{len(jobs)} {case[0]} b={batch}      ")
        sys.stderr.flush()
        rows.append(bench_case(tm, fm, *case, batch, anchors))
        torch.cuda.empty_cache()
    sys.stderr.write("\n")
    print_table(rows)
    write_rows(rows, args.csv, args.json)


def cpu_demo() -> None:
    """No GPU: both layouts through the Triton kernel under the interpreter on a small batch, checked against
    the float64 reference."""
    import tritonmla as tm

    for d_qk, extra in ((576, None), (512, (24, 2, 40))):
        x = make_sparse_inputs(3, 2, 16, d_qk, 48, 61 if extra is None else 69, 150, extra=extra,
                               have_topk_length=True, have_extra_topk_length=extra is not None, zero_lengths=False,
                               dtype=torch.float16, device="cpu", seed=d_qk)
        t0 = time.time()
        meta, _ = tm.get_mla_metadata()
        out, lse = tm.flash_mla_with_kvcache(x.q, x.k_cache, None, None, D_V, meta, None, **x.kwargs())
        secs = time.time() - t0
        ref_out, ref_lse = tm.sparse_decode_reference(*x.reference_args(), compute_dtype=torch.float64)
        err = (out.double() - ref_out.double()).abs().max().item()
        lse_ok = torch.equal(torch.isinf(lse), torch.isinf(ref_lse)) and torch.allclose(
            lse.nan_to_num(posinf=0), ref_lse.nan_to_num(posinf=0), atol=1e-4)
        splits = (meta.num_splits[1:] - meta.num_splits[:-1]).tolist()
        print(f"{layout_for(None, d_qk=d_qk).name}: b=3 s_q=2 h_q=16 topk 48{' + extra 24' if extra else ''}, "
              f"sink, topk_length: splits per request {splits}, max |out - ref| = {err:.2e}, "
              f"lse {'ok' if lse_ok else 'WRONG'}, {secs:.1f} s in the interpreter")
        if not (err < 2e-3 and lse_ok):
            raise SystemExit("CPU demo FAILED: the sparse kernel disagrees with the reference")
    print("CPU demo passed.")


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m tritonmla.bench sparse-decode", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="only batch sizes 64 and 148")
    p.add_argument("--compare", choices=("flashmla",), help="time FlashMLA beside us (needs flash_mla importable)")
    p.add_argument("--only", help="cases whose name starts with this: V32, MODEL1, MODEL1-3, peak")
    p.add_argument("--csv", help="write the table as CSV")
    p.add_argument("--json", help="write the table as JSON")
    args = p.parse_args(argv)
    if torch.cuda.is_available():
        gpu_main(args)
    elif os.environ.get("TRITON_INTERPRET") != "1":
        print("No CUDA GPU found: running a small CPU demo of the sparse Triton kernel under TRITON_INTERPRET=1 "
              "(no timings; run on an NVIDIA GPU for the benchmark table).", flush=True)
        os.execve(sys.executable, [sys.executable, "-m", "tritonmla.bench", "sparse-decode", *argv],
                  {**os.environ, "TRITON_INTERPRET": "1"})
    else:
        cpu_demo()
