"""A small decode step for compute-sanitizer (memcheck/racecheck): varlen with empty requests, garbage in unused
block-table entries, NaN in unused slots, page sizes 1 and 64, causal s_q=4, splits and combine."""
import torch

import tritonmla
from tritonmla.bench.workload import make_decode_inputs

for page_size, heads_q in ((1, 16), (64, 128)):
    x = make_decode_inputs([0, 700, 3, 129], 4, heads_q, 1, page_size, torch.bfloat16, "cuda")
    sched, splits = tritonmla.get_mla_metadata(x.cache_seqlens, 4 * heads_q, 1)
    out, lse = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, sched, splits,
                                                causal=True)
    torch.cuda.synchronize()
    assert not torch.isnan(out).any()
    print(f"page {page_size}, h_q {heads_q}: splits {(splits[1:] - splits[:-1]).tolist()} ok")
