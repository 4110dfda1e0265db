"""Where a CuTe seesaw kernel's time goes, per pair of KV tiles (device only). A timeline variant of the kernel
(MlaDecodeSm90(timeline=address), MlaSparsePrefillSm90(..., timeline=address)) has one thread of each role (warpgroup 0,
warpgroup 1, the producer) store the SM clock at 8 events per pair into a buffer, in the CTAs of m-block 0, KV head 0,
parts (prefill: query tokens) 0-3; this script runs it once and prints the median (and mean) cycles of each segment
between consecutive events over the steady-state pairs (a request's first pair and the epilogue show in the means),
beside the kernel's CUDA-graph time, shipped and timeline variants, on the same inputs.
Decode (one decode step, no combine): the producer's releases. Prefill: the CTA's prologue (start to its first S
done), its pairs and its epilogue (the last pair's end to warpgroup 0's end), FlashMLA's benchmark inputs.
Usage: python3 scripts/cute_timeline.py [b s_q sk h_q]   (default 128 2 8192 128, causal)
       python3 scripts/cute_timeline.py prefill [s_kv topk h_q d_qk [first token]]   (default 32768 512 64 512 2048:
       MODEL1-1, s_q 4096, tokens 2048-2051)"""
import statistics
import sys

import cutlass
import cutlass.cute as cute
import torch

from tritonmla.bench.timing import cuda_times
from tritonmla.bench.workload import make_decode_inputs
from tritonmla.core.cute_seesaw import TIMELINE_CTAS, TIMELINE_SLOTS
from tritonmla.dense_decode import kernel_sm90_cute as K
from tritonmla.dense_decode.bind_cute import BoundCute, dsl_args
from tritonmla.dense_decode.plan import num_parts_for

SEGMENTS = {  # role -> what happens between event i and i + 1 (the last: until the next pair's event 0)
    "warpgroup 0": ["wait S_A (issued a pair ahead)", "mask, row max, m_A out", "exp, rescale O_L, issue P_A V_A,L",
                    "wait m_B (warpgroup 1)", "P_A out (stmatrix), wait P_A V_A,L, release A left",
                    "rescale O_L, wait B left, issue P_B V_B,L",
                    "next S_A's left half, wait P_B V_B,L, release B left, S_A's rest", "to next pair"],
    "warpgroup 1": ["S_B: wait K_B boxes + 36 wgmma", "mask, row max, wait m_A + A right half",
                    "exp, P_B out, m_B out", "rescale O_R, issue P_B V_B,R", "wait P_A (warpgroup 0)",
                    "issue P_A V_A,R", "both P V, release B right, A rest", "to next pair"],
}
PRODUCER = ["A left released", "B right released", "A rest released", "B rest released"]
# Prefill: (from, to) of each span printed; (2, i) is the producer row's event i (MlaSparsePrefillSm90's timeline).
PREFILL_SPANS = {
    "CTA, start to end": ("start", "end"),
    "prologue: start to the first S_A done": ("start", "S_A done"),
    "  start to Q stored, warpgroup 0": ("start", (2, 2)),
    "  start to Q stored, warpgroup 1": ("start", (2, 3)),
    "  start to the producer's first indices read": ("start", (2, 6)),
    "  start to its first group of boxes issued": ("start", (2, 7)),
    "epilogue: warpgroup 0's last event to its end": ("last", "end"),
    "  last event to the row sums shared": ("last", (2, 4)),
    "  row sums shared to the end (output stores)": ((2, 4), "end"),
}


def run_dense(argv):
    batch, seq_q, seqlen, heads_q = (int(a) for a in argv[:4]) if len(argv) >= 4 else (128, 2, 8192, 128)
    x = make_decode_inputs([seqlen] * batch, seq_q, heads_q, 1, 64, torch.bfloat16, "cuda",
                           generator=torch.Generator("cuda").manual_seed(0))
    parts = num_parts_for(x.q.device, seq_q * heads_q, 1, "cute")
    sched, splits = torch.ops.tritonmla.plan(x.cache_seqlens, parts)
    rows = seq_q * heads_q
    out = torch.empty(batch, seq_q, heads_q, 512, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(batch, heads_q, seq_q, device="cuda")
    out_partial = torch.empty(batch + parts, 1, rows, 512, device="cuda")
    lse_partial = torch.empty(batch + parts, 1, rows, device="cuda")
    bound = BoundCute(x.q, x.k_cache, x.block_table, sched, 576 ** -0.5, True)
    ptrs = tuple(t.data_ptr() for t in (x.q, x.k_cache, x.block_table, x.cache_seqlens, sched, splits, out, lse,
                                        out_partial, lse_partial))

    def args():  # the current stream at each call (CUDA-graph capture runs on its own)
        return dsl_args((*ptrs, bound.scale_log2, *bound.scalars[1:], torch.cuda.current_stream().cuda_stream), "bf16")

    buf = new_buffer()
    timeline = cute.compile(K.MlaDecodeSm90(cutlass.BFloat16, 64, timeline=buf.data_ptr()), *args())
    _, shipped_ms = cuda_times(lambda: bound.launch(torch.cuda.current_stream().cuda_stream, ptrs))
    _, timeline_ms = cuda_times(lambda: timeline(*args()))
    buf.zero_()
    timeline(*args())
    torch.cuda.synchronize()
    print(f"b {batch} s_q {seq_q} sk {seqlen} h_q {heads_q}, {parts} parts: decode kernel {shipped_ms * 1e3:.1f} us "
          f"(timeline variant {timeline_ms * 1e3:.1f} us); cycles per segment over the pairs of CTAs 0-3: median (mean)")
    summarize(buf.cpu(), producer_releases=True)


def run_prefill(argv):
    from tritonmla.bench.sparse_prefill import make_prefill_inputs
    from tritonmla.sparse_prefill import bind_cute as P
    from tritonmla.sparse_prefill.kernel_sm90_cute import MlaSparsePrefillSm90
    s_kv, topk, heads_q, d_qk = (int(a) for a in argv[:4]) if len(argv) >= 4 else (32768, 512, 64, 512)
    s_q = 4096
    first = int(argv[4]) if len(argv) >= 5 else s_q // 2  # a mid-kernel wave: its CTAs start staggered, warm
    x = make_prefill_inputs(s_q, s_kv, topk, heads_q, d_qk, nan_unused=False, seed=1)
    out = torch.empty(s_q, heads_q, 512, dtype=torch.bfloat16, device="cuda")
    max_logits = torch.empty(s_q, heads_q, device="cuda")
    lse = torch.empty(s_q, heads_q, device="cuda")
    bound = P.BoundPrefillCute(False, False, d_qk, x.sm_scale)

    def args():
        return bound.dsl_args(torch.cuda.current_stream().cuda_stream, x.q, x.kv, x.indices, None, None, out,
                              max_logits, lse)

    from tritonmla.sparse_prefill.kernel_sm90_cute import CTA_LOG
    grid = s_q * -(-heads_q // 64)
    whole = torch.zeros(new_buffer().numel() + grid * CTA_LOG, dtype=torch.int64, device="cuda")
    buf = whole[:new_buffer().numel()].view(new_buffer().shape)
    kernel = MlaSparsePrefillSm90(False, False, d_qk, timeline=whole.data_ptr())
    kernel.timeline_first = first
    timeline = cute.compile(kernel, *args())
    _, shipped_ms = cuda_times(lambda: bound.compiled(*args()))
    _, timeline_ms = cuda_times(lambda: timeline(*args()))
    whole.zero_()
    timeline(*args())
    torch.cuda.synchronize()
    data = buf.cpu()
    cta_log_summary(whole[buf.numel():].view(grid, CTA_LOG).cpu())
    print(f"prefill s_q {s_q} s_kv {s_kv} topk {topk} h_q {heads_q} d_qk {d_qk}: kernel {shipped_ms * 1e3:.1f} us "
          f"(timeline variant {timeline_ms * 1e3:.1f} us); cycles, median (mean) over tokens {first}-{first + 3}")
    rows = {name: [] for name in PREFILL_SPANS}
    for cta in range(TIMELINE_CTAS):
        ev = {(r, i): int(data[cta, r, i, 1]) for r in range(3) for i in range(TIMELINE_SLOTS) if data[cta, r, i, 1]}
        last = max((i for (r, i) in ev if r == 0), default=None)
        if (2, 0) not in ev or (2, 1) not in ev or (0, 1) not in ev:
            continue
        at = {"start": ev[(2, 0)], "end": ev[(2, 1)], "S_A done": ev[(0, 1)], "last": ev[(0, last)]}
        for name, (a, b) in PREFILL_SPANS.items():
            ta = at[a] if isinstance(a, str) else ev.get(a)
            tb = at[b] if isinstance(b, str) else ev.get(b)
            if ta is not None and tb is not None:
                rows[name].append(tb - ta)
    for name, v in rows.items():
        if v:
            print(f"    {statistics.median(v):7.0f} ({statistics.mean(v):7.0f})  {name}")
    summarize(data, producer_releases=False)


def cta_log_summary(log):
    """Every CTA's (entry, SM, consumers' start, warpgroup 0 / 1 / producer end) clocks: where a CTA's time goes
    outside the marks, and the gap between one CTA's end and the next CTA's entry on the same SM."""
    rows = [tuple(int(v) for v in r) for r in log.tolist()]
    setup, busy, wg1_after, gaps, sms = [], [], [], [], {}
    for entry, sm, start, end0, end1, end2 in rows:
        if not (entry and start and end0 and end1 and end2):
            continue
        end = max(end0, end1, end2)
        setup.append(start - entry)
        busy.append(end - entry)
        wg1_after.append(end1 - end0)
        sms.setdefault(sm, []).append((entry, end))
    for ctas in sms.values():
        ctas.sort()
        gaps += [b[0] - a[1] for a, b in zip(ctas, ctas[1:])]
    med = lambda v: statistics.median(v) if v else float("nan")  # noqa: E731
    print(f"CTA log, {len(busy)} CTAs on {len(sms)} SMs, median cycles: entry to the consumers' start {med(setup):.0f}, "
          f"entry to the last role's end {med(busy):.0f}, warpgroup 1's end after warpgroup 0's {med(wg1_after):.0f}, "
          f"one CTA's end to the next CTA's entry on the same SM {med(gaps):.0f} (mean {statistics.mean(gaps) if gaps else 0:.0f})")


def new_buffer():
    return torch.zeros(TIMELINE_CTAS, 3, TIMELINE_SLOTS, 2, dtype=torch.int64, device="cuda")


def summarize(data, producer_releases: bool):
    segments = {role: [[] for _ in names] for role, names in SEGMENTS.items()}
    pair_cycles, producer = [], [[] for _ in PRODUCER]
    for cta in range(TIMELINE_CTAS):
        clocks = {}
        for r in range(3):
            for i in range(TIMELINE_SLOTS):
                event, clock = int(data[cta, r, i, 0]), int(data[cta, r, i, 1])
                if clock:
                    clocks[(r, i // 8, event)] = clock
        pairs = sorted({p for (r, p, e) in clocks if r == 0})
        for p in pairs[:-1]:
            start = clocks.get((0, p, 0))
            following = clocks.get((0, p + 1, 0))
            if start is None or following is None:
                continue
            pair_cycles.append(following - start)
            for r, role in enumerate(SEGMENTS):
                marks = [clocks.get((r, p, e)) for e in range(8)] + [clocks.get((r, p + 1, 0))]
                for e in range(8):
                    if marks[e] is not None and marks[e + 1] is not None:
                        segments[role][e].append(marks[e + 1] - marks[e])
            for e in range(4):
                if (2, p + 1, e) in clocks:
                    producer[e].append(clocks[(2, p + 1, e)] - start)
    if not pair_cycles:
        sys.exit("no steady-state pairs recorded (too few tiles per part?)")
    print(f"pair of tiles: {statistics.median(pair_cycles):7.0f} ({statistics.mean(pair_cycles):.0f}), "
          f"{len(pair_cycles)} pairs")
    for role, names in SEGMENTS.items():
        print(f"  {role}:")
        for name, values_ in zip(names, segments[role]):
            if values_:
                print(f"    {statistics.median(values_):7.0f} ({statistics.mean(values_):7.0f})  {name}")
    if not producer_releases:
        return
    print("  producer: next pair's releases, cycles after warpgroup 0's pair start:")
    for name, values_ in zip(PRODUCER, producer):
        if values_:
            print(f"    {statistics.median(values_):7.0f} ({statistics.mean(values_):7.0f})  {name}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["prefill"]:
        run_prefill(sys.argv[2:])
    else:
        run_dense(sys.argv[1:])
