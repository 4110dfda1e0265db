"""EXPERIMENT (being worked on, issue 10): one V3.2 production sparse decode step (b 64, h_q 128, s_q 2,
topk 2048) for ncu. Run:
ncu --kernel-name regex:sparse_decode --launch-skip 2 --launch-count 1 python experiments/profile_sparse.py"""
import torch

import tritonmla as tm
from tritonmla.bench.sparse import make_sparse_inputs

x = make_sparse_inputs(64, 2, 128, 576, 2048, 64, 32768, sink=True, nan_unused=False, garbage_past_length=False,
                       device="cuda", seed=64)
meta, _ = tm.get_mla_metadata()
for _ in range(4):
    tm.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, **x.kwargs())
torch.cuda.synchronize()
