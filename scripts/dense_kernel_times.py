"""Timing tool (small-batch latency, issue 22): where a dense decode call's GPU time goes, kernel by kernel, for us
and for FlashMLA (where `flash_mla` is importable): tritonmla.bench.timing.graph_kernel_times over replays of a
CUDA graph of the call. With --parts, our call's CUDA-graph time for each plan size (how many KV ranges the batch
is cut into; the default is one per SM); with --min-cols, for each narrowest column block of the split merge
(tritonmla.combine.combine.MIN_COLS).
Run: PYTHONPATH=. python scripts/dense_kernel_times.py [--parts 8,16,32] [--min-cols 128,32] [--kernel cute] B:SK:HQ"""
import argparse
import random

import torch
import tritonmla as tm
from tritonmla.bench.timing import cuda_times, graph_kernel_times
from tritonmla.bench.host import flashmla_module
from tritonmla.api import interface
from tritonmla.bench.workload import make_decode_inputs, seqlens_like_flashmla
from tritonmla.combine import combine
from tritonmla.dense_decode.plan import num_parts_for

p = argparse.ArgumentParser()
p.add_argument("--parts", default="", help="comma-separated plan sizes to time our call with")
p.add_argument("--min-cols", default="", help="comma-separated MIN_COLS values to time our call with")
p.add_argument("--kernel", default=None)
p.add_argument("cases", nargs="+", help="B:SK:HQ (s_q 1, causal, h_kv 1, equal lengths)")
args = p.parse_args()
fm = flashmla_module()
for case in args.cases:
    batch, sk, h_q = map(int, case.split(":"))
    seqlens = seqlens_like_flashmla(batch, sk, 1, False, random.Random(0))
    x = make_decode_inputs(seqlens, 1, h_q, 1, 64, torch.bfloat16, "cuda",
                           generator=torch.Generator(device="cuda").manual_seed(0))
    default = num_parts_for(x.cache_seqlens.device, h_q, 1, args.kernel)
    print(f"b {batch} sk {sk} h_q {h_q} (default plan: {default} parts)")

    def ours(parts):
        sched, splits = torch.ops.tritonmla.plan(x.cache_seqlens, parts)
        return lambda: tm.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, sched, splits,
                                                 causal=True, kernel=args.kernel)
    graph_kernel_times("  tritonmla", ours(default))
    if fm is not None:
        meta, _ = fm.get_mla_metadata()
        bt = x.block_table.clamp(max=x.k_cache.shape[0] - 1)
        graph_kernel_times("  FlashMLA ", lambda: fm.flash_mla_with_kvcache(x.q, x.k_cache, bt, x.cache_seqlens, 512,
                                                                           meta, None, causal=True))
    for parts in [int(v) for v in args.parts.split(",") if v]:
        print(f"  {parts:4} parts: graph {cuda_times(ours(parts))[1] * 1e3:7.1f} us")
    for min_cols in [int(v) for v in args.min_cols.split(",") if v]:
        keep, combine.MIN_COLS = combine.MIN_COLS, min_cols
        interface.clear()  # (bound combines keep their shape)
        print(f"  MIN_COLS {min_cols:3}: graph {cuda_times(ours(default))[1] * 1e3:7.1f} us")
        combine.MIN_COLS = keep
        interface.clear()
