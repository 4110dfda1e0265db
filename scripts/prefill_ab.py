"""A/B of sparse prefill kernel variants in one process (device only): the shipped MlaSparsePrefillSm90 and variants
with class attributes flipped, compiled here (not through the disk cache), timed alternately on the same inputs
(FlashMLA's benchmark inputs, sink on, CUDA-graph medians), outputs compared bit for bit with the shipped one's.
Usage: python3 scripts/prefill_ab.py "L2_EVICT_FIRST=False" ["NAME=VALUE,NAME=VALUE" ...]
       CASES="s_kv topk h_q d_qk,..." (default MODEL1-1, MODEL1-2 at s_kv 32768, V3.2 at 65536); ROUNDS (2)."""
import os
import statistics
import sys

import cutlass.cute as cute
import torch

from tritonmla.bench.sparse_prefill import make_prefill_inputs
from tritonmla.bench.timing import cuda_times
from tritonmla.sparse_prefill import bind_cute as P
from tritonmla.sparse_prefill.kernel_sm90_cute import MlaSparsePrefillSm90

specs = ["shipped"] + sys.argv[1:]
cases = [tuple(int(v) for v in c.split()) for c in
         os.environ.get("CASES", "32768 512 64 512,32768 1024 128 512,65536 2048 128 576").split(",")]
rounds = int(os.environ.get("ROUNDS", "2"))
compiled_for = {}  # (spec, d_qk) -> compiled kernel (the arguments are runtime values)
print("graph us, median of rounds; ratio = shipped / variant (> 1: the variant is faster)")
for s_kv, topk, heads_q, d_qk in cases:
    x = make_prefill_inputs(4096, s_kv, topk, heads_q, d_qk, sink=True, nan_unused=False, seed=s_kv + topk)
    bound = P.BoundPrefillCute(False, True, d_qk, x.sm_scale)
    outs = []
    kernels = []
    for spec in specs:
        k = MlaSparsePrefillSm90(False, True, d_qk)
        for item in ([] if spec == "shipped" else spec.split(",")):
            name, value = item.split("=")
            assert hasattr(k, name), f"MlaSparsePrefillSm90 has no {name}"
            setattr(k, name, eval(value))
        out = torch.empty(4096, heads_q, 512, dtype=torch.bfloat16, device="cuda")
        mx = torch.empty(4096, heads_q, device="cuda")
        lse = torch.empty(4096, heads_q, device="cuda")
        args = lambda o=out, m=mx, l=lse: bound.dsl_args(torch.cuda.current_stream().cuda_stream, x.q, x.kv,  # noqa
                                                         x.indices, None, x.attn_sink, o, m, l)
        if (spec, d_qk) not in compiled_for:
            compiled_for[spec, d_qk] = cute.compile(k, *args())
        compiled = compiled_for[spec, d_qk]
        compiled(*args())
        kernels.append((compiled, args))
        outs.append((out, mx, lse))
    torch.cuda.synchronize()
    same = [all(torch.equal(a, b) for a, b in zip(outs[0], o)) for o in outs]
    times = [[] for _ in specs]
    for _ in range(rounds):
        for i, (compiled, args) in enumerate(kernels):
            times[i].append(1e3 * cuda_times(lambda: compiled(*args()), warmup=25, rep=200)[1])
    base = statistics.median(times[0])
    for spec, t, eq in zip(specs, times, same):
        m = statistics.median(t)
        print(f"s_kv {s_kv:6d} topk {topk:4d} h_q {heads_q:3d} d_qk {d_qk}  {spec:<40} {m:8.1f}  "
              f"{base / m:6.3f}  {'same output' if eq else 'OUTPUT DIFFERS'}")
