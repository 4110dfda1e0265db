"""Where the CuTe dense decode kernel's time goes, per pair of KV tiles (device only). A timeline variant of
kernel_sm90_cute (MlaDecodeSm90(timeline=address)) has one thread of each role (warpgroup 0, warpgroup 1, the producer
warp) store the SM clock at 8 events per pair into a buffer, in the CTAs of m-block 0, KV head 0, parts 0-3; this
script runs it on one decode step and prints the median (and mean) cycles of each segment between consecutive
events over the steady-state pairs (a request's first pair and the epilogue show in the means), beside the decode
kernel's CUDA-graph time, shipped and timeline variants, on the same step (no combine launched).
Usage: python3 scripts/cute_timeline.py [b s_q sk h_q]   (default 128 2 8192 128, causal)"""
import statistics
import sys

import cutlass
import cutlass.cute as cute
import torch

from tritonmla.bench.timing import cuda_times
from tritonmla.bench.workload import make_decode_inputs
from tritonmla.dense_decode import kernel_sm90_cute as K
from tritonmla.dense_decode.bind_cute import BoundCute, dsl_args
from tritonmla.dense_decode.plan import num_parts_for

SEGMENTS = {  # role -> what happens between event i and i + 1 (the last: until the next pair's event 0)
    "warpgroup 0": ["S_A: wait K_A boxes + 36 wgmma", "mask, row max, m_A out", "rescale O_L, exp, issue P_A V_A,L",
                    "wait m_B (warpgroup 1)", "P_A out (stmatrix), wait P_A V_A,L, release A left",
                    "rescale O_L, wait B left, issue P_B V_B,L", "P_B V_B,L, release B left", "to next pair"],
    "warpgroup 1": ["S_B: wait K_B boxes + 36 wgmma", "mask, wait m_A + A right half", "row max, exp, P_B out, m_B out",
                    "issue P_B V_B,R", "wait P_A (warpgroup 0)", "issue P_A V_A,R", "both P V, release B right, A rest",
                    "to next pair"],
}
PRODUCER = ["A left released", "B right released", "A rest released", "B rest released"]

batch, seq_q, seqlen, heads_q = (int(a) for a in sys.argv[1:5]) if len(sys.argv) >= 5 else (128, 2, 8192, 128)
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


buf = torch.zeros(K.TIMELINE_CTAS, 3, K.TIMELINE_SLOTS, 2, dtype=torch.int64, device="cuda")
timeline = cute.compile(K.MlaDecodeSm90(cutlass.BFloat16, 64, timeline=buf.data_ptr()), *args())
_, shipped_ms = cuda_times(lambda: bound.launch(torch.cuda.current_stream().cuda_stream, ptrs))
_, timeline_ms = cuda_times(lambda: timeline(*args()))
buf.zero_()
timeline(*args())
torch.cuda.synchronize()
data = buf.cpu()

print(f"b {batch} s_q {seq_q} sk {seqlen} h_q {heads_q}, {parts} parts: decode kernel {shipped_ms * 1e3:.1f} us "
      f"(timeline variant {timeline_ms * 1e3:.1f} us); cycles per segment over the pairs of CTAs 0-3: median (mean)")
segments = {role: [[] for _ in names] for role, names in SEGMENTS.items()}
pair_cycles, producer = [], [[] for _ in PRODUCER]
for cta in range(K.TIMELINE_CTAS):
    clocks = {}
    for r in range(3):
        for i in range(K.TIMELINE_SLOTS):
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
print("  producer: next pair's releases, cycles after warpgroup 0's pair start:")
for name, values_ in zip(PRODUCER, producer):
    if values_:
        print(f"    {statistics.median(values_):7.0f} ({statistics.mean(values_):7.0f})  {name}")
