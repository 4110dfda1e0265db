"""One decode step at h_q 128 (b=128, varlen mean sk 8192, bf16), run a few times, for ncu / SASS comparisons of
tritonmla's Hopper kernel and FlashMLA's (issue 9, NOTES run 12).
Usage (device): PYTHONPATH=.:/tmp/flashmla python3 experiments/profile_h128.py {tritonmla|flashmla} [s_q]"""
import random
import sys

import torch

import tritonmla
from tritonmla.bench.workload import make_decode_inputs, seqlens_like_flashmla

impl, seq_q = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2
seqlens = seqlens_like_flashmla(128, 8192, seq_q, True, random.Random(0))
x = make_decode_inputs(seqlens, seq_q, 128, 1, 64, torch.bfloat16, "cuda", generator=torch.Generator("cuda"))
if impl == "flashmla":
    import flash_mla
    meta, _ = flash_mla.get_mla_metadata()
    table = x.block_table.clamp(max=x.k_cache.shape[0] - 1)
    step = lambda: flash_mla.flash_mla_with_kvcache(x.q, x.k_cache, table, x.cache_seqlens, 512, meta, None,  # noqa
                                                    causal=True)
else:
    meta = tritonmla.get_mla_metadata(x.cache_seqlens, seq_q * 128, 1)
    step = lambda: tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, *meta,  # noqa
                                                    causal=True)
for _ in range(5):
    step()
torch.cuda.synchronize()
print(impl, "ok")
