"""Decode steps with poisoned inputs, for compute-sanitizer memcheck (issue 24: no bad page id can crash a serving
process). Dense: in every batch, some requests' used block-table entries hold page ids past the cache (num_blocks,
99 x num_blocks, 2**31 - 1) or negative (-1, -2**31), and one request's cache_seqlens is beyond the block table's
capacity; run on every dense kernel the GPU can run (portable, the Hopper 8-warp kernel at <= 64 rows, the seesaw
kernel at more, and the default choice), page sizes 1, 16, 64 and 128. Sparse: every live index slot of one
request, main and extra cache, out of range (huge, negative, == num_tokens), on the default kernel (Gluon on SM90
for h_q > 32) and the portable one. Each step checks that the requests without a bad input are bitwise what a
clean run gives, and that tritonmla.check_inputs names the bad entry.

Run (on a GPU; expect "ERROR SUMMARY: 0 errors"):
    compute-sanitizer --tool memcheck python scripts/sanitize_poison.py
    python scripts/sanitize_poison.py            # the same checks without the sanitizer
Without a GPU it runs on the CPU under TRITON_INTERPRET=1 (slow; the Hopper kernels are skipped there).
"""
import os

import torch

if not torch.cuda.is_available():  # a dry run on the CPU: the kernels under Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import tritonmla  # noqa: E402  (after TRITON_INTERPRET)
from tritonmla.bench.sparse import make_sparse_inputs  # noqa: E402
from tritonmla.bench.workload import make_decode_inputs  # noqa: E402

SEQLENS = [0, 700, 3, 129, 260, 64]
CLEAN = (0, 2, 5)  # requests left intact


def poisoned_dense(x, page_size: int):
    bt = x.block_table.clone()
    seqlens = x.cache_seqlens.clone()
    num_blocks = x.k_cache.shape[0]
    pages = [-(-n // page_size) for n in SEQLENS]
    bt[1, pages[1] - 1] = 99 * num_blocks  # the last page
    bt[1, 0] = -1
    bt[3, pages[3] // 2] = num_blocks  # one past the cache
    bt[4, 0] = -2 ** 31
    bt[4, pages[4] - 1] = 2 ** 31 - 1
    seqlens[3] = bt.shape[1] * page_size + 1000  # beyond the capacity: clamped, with its bad page
    return bt, seqlens


def dense(page_size: int, heads_q: int, seq_q: int) -> None:
    x = make_decode_inputs(SEQLENS, seq_q, heads_q, 1, page_size, torch.bfloat16, DEVICE)
    bt, seqlens = poisoned_dense(x, page_size)
    try:
        tritonmla.check_inputs(x.q, x.k_cache, bt, x.cache_seqlens)
        raise AssertionError("check_inputs missed a bad page id")
    except ValueError as error:
        assert "block_table[1, " in str(error), error
    # One plan for both runs (the poisoned lengths would plan differently; the plan itself is not under test).
    sched, splits = tritonmla.get_mla_metadata(x.cache_seqlens, seq_q * heads_q, 1)
    for kernel in ("portable", "hopper", "cute", None):
        try:
            clean = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, sched,
                                                     splits, causal=True, kernel=kernel)
        except ValueError as error:  # kernel="hopper" or "cute" where it cannot run
            print(f"  {kernel}: skipped ({error})")
            continue
        bad = tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, bt, seqlens, 512, sched, splits, causal=True,
                                               kernel=kernel)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        for got, want in zip(bad, clean):
            assert torch.equal(got[list(CLEAN)], want[list(CLEAN)]), (page_size, heads_q, kernel)
        print(f"dense page {page_size}, h_q {heads_q}, s_q {seq_q}, kernel {kernel}: others unharmed, ok")


def sparse(heads_q: int, d_qk: int) -> None:
    x = make_sparse_inputs(3, 2, heads_q, d_qk, 128, 64, 300, extra=(64, 16, 100), have_topk_length=True,
                           have_extra_topk_length=True, device=DEVICE, seed=heads_q + d_qk)
    x.topk_length[1] = 128
    x.extra_topk_length[1] = 64
    indices, extra = x.indices.clone(), x.extra_indices.clone()
    for t, cache in ((indices, x.k_cache), (extra, x.extra_k_cache)):
        values = torch.tensor([-2 ** 31, -2, 10 ** 7, 2 ** 31 - 1, cache.shape[0] * cache.shape[1]],
                              dtype=torch.int32, device=DEVICE)
        t[1] = values[torch.arange(t[1].numel(), device=DEVICE) % values.numel()].view_as(t[1])
    try:
        tritonmla.check_inputs(x.q, x.k_cache, indices=indices, topk_length=x.topk_length,
                               extra_k_cache=x.extra_k_cache, extra_indices_in_kvcache=extra,
                               extra_topk_length=x.extra_topk_length)
        raise AssertionError("check_inputs missed a bad index")
    except ValueError as error:
        assert "indices[1, 0, 0]" in str(error), error
    for kernel in (None, "portable"):
        runs = []
        for ind, ext in ((x.indices, x.extra_indices), (indices, extra)):
            meta, _ = tritonmla.get_mla_metadata()
            kwargs = dict(x.kwargs(), indices=ind, extra_indices_in_kvcache=ext)
            runs.append(tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, None, None, 512, meta, None, kernel=kernel,
                                                         **kwargs))
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        for got, want in zip(runs[1], runs[0]):
            assert torch.equal(got[[0, 2]], want[[0, 2]]), (heads_q, d_qk, kernel)
        print(f"sparse d_qk {d_qk}, h_q {heads_q}, kernel {kernel}: others unharmed, ok")


if __name__ == "__main__":
    for page_size, heads_q, seq_q in ((1, 16, 1), (16, 16, 2), (64, 16, 1), (64, 128, 2), (128, 64, 1)):
        dense(page_size, heads_q, seq_q)
    for heads_q, d_qk in ((16, 576), (64, 576), (128, 512)):
        sparse(heads_q, d_qk)
    print("all ok")
