"""A small decode step for compute-sanitizer (memcheck/racecheck/synccheck): varlen with empty requests, garbage in
unused block-table entries, NaN in unused slots, page sizes 1, 64 and 128, causal s_q=4, splits and combine; each
case on every kernel the GPU can run (the seesaw kernel at h_q 128; `--cute-only`: the CuTe DSL kernel alone);
then two sparse FP8 decode steps (`--sparse-only`: just those)."""
import sys

import torch

import tritonmla
from tritonmla.bench.workload import make_decode_inputs
from tritonmla.dense_decode import dispatch

for page_size, heads_q in ((1, 16), (64, 128), (128, 16)) if "--sparse-only" not in sys.argv else ():
    x = make_decode_inputs([0, 700, 3, 129], 4, heads_q, 1, page_size, torch.bfloat16, "cuda")
    sched, splits = tritonmla.get_mla_metadata(x.cache_seqlens, 4 * heads_q, 1)
    for kernel in ("cute",) if "--cute-only" in sys.argv else ("portable", "hopper", "cute"):
        if kernel == "hopper" and dispatch.hopper_unsupported(x.q, x.k_cache):
            continue
        if kernel == "cute" and dispatch.cute_unsupported(x.q, x.k_cache):
            continue
        out, lse = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, sched,
                                                    splits, causal=True, kernel=kernel)
        torch.cuda.synchronize()
        ref, _ = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, causal=True)
        err = (out.float() - ref.float()).abs().max().item()
        assert err < 2e-2, err
        print(f"{kernel}: page {page_size}, h_q {heads_q}: splits {(splits[1:] - splits[:-1]).tolist()} "
              f"max err {err:.1e} ok")

if "--cute-only" in sys.argv:
    sys.exit(0)

# Sparse FP8 decode (tritonmla.sparse_decode): both layouts, odd page sizes, extra cache with lengths, sinks, NaN in
# unused rows, garbage past topk_length, requests cut over several parts (the sink-aware combine).
from tritonmla.bench.sparse import make_sparse_inputs  # noqa: E402

for d_qk, page, extra in ((576, 61, None), (512, 64, (40, 2, 90))):
    x = make_sparse_inputs(3, 2, 64, d_qk, 576, page, 900, extra=extra, have_topk_length=True,
                           have_extra_topk_length=extra is not None, device="cuda", seed=d_qk)
    meta, _ = tritonmla.get_mla_metadata()
    out, lse = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, **x.kwargs())
    torch.cuda.synchronize()
    ref, _ = tritonmla.sparse_decode_reference(*x.reference_args())
    err = (out.float() - ref.float()).abs().max().item()
    assert err < 2e-2, err
    splits = (meta.num_splits[1:] - meta.num_splits[:-1]).tolist()
    print(f"sparse d_qk {d_qk}, page {page}, extra {extra}: splits {splits} max err {err:.1e} ok")
