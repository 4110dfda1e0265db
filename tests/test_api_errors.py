"""Misuse raises TypeError/ValueError naming the argument (dense and sparse decoding); unimplemented FlashMLA
features (a dense FP8 cache) raise NotImplementedError. These run anywhere: checks happen before any kernel."""
from __future__ import annotations

import pytest
import torch

import tritonmla

from helpers import make_decode_inputs


@pytest.fixture(scope="module")
def good():
    gen = torch.Generator().manual_seed(0)
    x = make_decode_inputs([40, 7], 2, 4, 1, 16, torch.float16, "cpu", generator=gen)
    sched, splits = tritonmla.get_mla_metadata(x.cache_seqlens, 8, 1)
    return dict(q=x.q, k_cache=x.k_cache, block_table=x.block_table, cache_seqlens=x.cache_seqlens,
                head_dim_v=512, tile_scheduler_metadata=sched, num_splits=splits)


def call(args, **change):
    return tritonmla.flash_mla_with_kvcache(**{**args, **change})


@pytest.mark.parametrize("change,error,match", [
    (lambda a: dict(q=a["q"].float()), TypeError, "q must have dtype"),
    (lambda a: dict(q=a["q"].to(torch.bfloat16)), TypeError, "k_cache dtype"),
    (lambda a: dict(q=a["q"][0]), ValueError, "q must be 4-D"),
    (lambda a: dict(q=a["q"].tolist()), TypeError, "q must be a torch.Tensor"),
    (lambda a: dict(q=a["q"][..., :512]), ValueError, "head_dim must be 576"),
    (lambda a: dict(k_cache=a["k_cache"][0]), ValueError, "k_cache must be 4-D"),
    (lambda a: dict(k_cache=a["k_cache"][:, :12]), ValueError, "page_size"),
    (lambda a: dict(k_cache=a["k_cache"].expand(-1, -1, 3, -1)), ValueError, "multiple of k_cache heads"),
    (lambda a: dict(block_table=a["block_table"].long()), TypeError, "block_table must have dtype int32"),
    (lambda a: dict(block_table=a["block_table"][:1]), ValueError, "block_table must be"),
    (lambda a: dict(block_table=a["block_table"][0]), ValueError, "block_table must be 2-D"),
    (lambda a: dict(block_table=a["block_table"].t().contiguous().t()), ValueError, "block_table must be contig"),
    (lambda a: dict(cache_seqlens=a["cache_seqlens"].long()), TypeError, "cache_seqlens must have dtype int32"),
    (lambda a: dict(cache_seqlens=a["cache_seqlens"][:1]), ValueError, "cache_seqlens must have batch"),
    (lambda a: dict(cache_seqlens=a["cache_seqlens"].repeat_interleave(2)[::2]), ValueError,
     "cache_seqlens must be contiguous"),
    (lambda a: dict(head_dim_v=[512]), TypeError, "head_dim_v must be an int"),
    (lambda a: dict(head_dim_v=600), ValueError, "head_dim_v .* must not exceed"),
    (lambda a: dict(head_dim_v=256), ValueError, "head_dim_v must be 512"),
    (lambda a: dict(head_dim_v=512.0), TypeError, "head_dim_v must be an int"),
    (lambda a: dict(softmax_scale="0.1"), TypeError, "softmax_scale"),
    (lambda a: dict(causal=1), TypeError, "causal must be a bool"),
    (lambda a: dict(kernel=1), TypeError, "kernel must be a str"),
    (lambda a: dict(kernel="fast"), ValueError, "kernel must be one of auto, hopper, cute, portable"),
    (lambda a: dict(kernel="hopper"), ValueError, "kernel='hopper' cannot run here"),  # CPU, page 16
    (lambda a: dict(kernel="cute"), ValueError, "kernel='cute' cannot run here"),
    (lambda a: dict(num_splits=a["num_splits"][:-1]), ValueError, "num_splits must be"),
    (lambda a: dict(num_splits=a["num_splits"].long()), TypeError, "num_splits must have dtype int32"),
    (lambda a: dict(num_splits=None), TypeError, "num_splits must be a torch.Tensor"),
    (lambda a: dict(tile_scheduler_metadata=a["tile_scheduler_metadata"][:, :4]), ValueError,
     "tile_scheduler_metadata must be"),
    (lambda a: dict(tile_scheduler_metadata=a["tile_scheduler_metadata"].float()), TypeError,
     "tile_scheduler_metadata must have dtype int32"),
    (lambda a: dict(block_table=None), TypeError, "block_table must be a torch.Tensor"),
])
def test_bad_input_is_named(good, change, error, match):
    with pytest.raises(error, match=match):
        call(good, **change(good))


def test_metadata_for_another_batch_is_rejected(good):
    sched, splits = tritonmla.get_mla_metadata(good["cache_seqlens"].repeat(2), 8, 1)
    with pytest.raises(ValueError, match="num_splits must be a contiguous \\[batch \\+ 1 = 3\\]"):
        call(good, tile_scheduler_metadata=sched, num_splits=splits)


def test_sched_meta_with_num_splits_is_rejected(good):
    meta, _ = tritonmla.get_mla_metadata()
    with pytest.raises(ValueError, match="num_splits must be None"):
        call(good, tile_scheduler_metadata=meta)


@pytest.mark.parametrize("feature", [
    dict(attn_sink=torch.zeros(4)), dict(topk_length=torch.zeros(2, dtype=torch.int32)),
    dict(extra_k_cache=torch.zeros(1)), dict(extra_indices_in_kvcache=torch.zeros(1)),
    dict(extra_topk_length=torch.zeros(1)),
])
def test_sparse_only_arguments_without_indices_are_named(good, feature):
    with pytest.raises(ValueError, match=next(iter(feature))):
        call(good, **feature)


def test_dense_fp8_cache_says_not_implemented(good):
    with pytest.raises(NotImplementedError, match="is_fp8_kvcache"):
        call(good, is_fp8_kvcache=True)


# --- sparse decoding (indices given) -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sparse():
    from tritonmla.bench.sparse import make_sparse_inputs
    x = make_sparse_inputs(2, 1, 4, 576, 16, 8, 32, extra=(8, 4, 16), have_topk_length=True,
                           have_extra_topk_length=True, dtype=torch.bfloat16, device="cpu", seed=0)
    return dict(q=x.q, k_cache=x.k_cache, block_table=None, cache_seqlens=None, head_dim_v=512,
                tile_scheduler_metadata=None, **x.kwargs())


def sparse_call(args, **change):
    args = {**args, **change}
    if args["tile_scheduler_metadata"] is None:
        args["tile_scheduler_metadata"] = tritonmla.get_mla_metadata()[0]
    return tritonmla.flash_mla_with_kvcache(**args)


@pytest.mark.parametrize("change,error,match", [
    (lambda a: dict(causal=True), ValueError, "causal must be False for sparse"),
    (lambda a: dict(is_fp8_kvcache=False), ValueError, "is_fp8_kvcache=True"),
    (lambda a: dict(q=a["q"].float()), TypeError, "q must have dtype"),
    (lambda a: dict(q=a["q"][..., :500]), ValueError, "head_dim must be 576 .* or 512"),
    (lambda a: dict(q=torch.zeros(2, 1, 4, 512, dtype=torch.bfloat16)), ValueError, "last dim must be 584"),
    (lambda a: dict(k_cache=a["k_cache"].view(torch.uint8).to(torch.bfloat16)), TypeError, "k_cache must have dtype"),
    (lambda a: dict(k_cache=a["k_cache"][..., :600]), ValueError, "k_cache last dim must be 656"),
    (lambda a: dict(k_cache=a["k_cache"].expand(-1, -1, 2, -1)), ValueError, "1 KV head"),
    (lambda a: dict(k_cache=a["k_cache"][0]), ValueError, "k_cache must be 4-D"),
    (lambda a: dict(k_cache=a["k_cache"][:, ::2]), ValueError, "rows must be contiguous"),
    (lambda a: dict(indices=a["indices"].long()), TypeError, "indices must have dtype int32"),
    (lambda a: dict(indices=a["indices"][0]), ValueError, "indices must be 3-D"),
    (lambda a: dict(indices=a["indices"][:1]), ValueError, "indices must be \\[batch=2"),
    (lambda a: dict(indices=a["indices"][..., ::2]), ValueError, "indices must be contiguous in its last"),
    (lambda a: dict(indices=a["indices"].tolist()), TypeError, "indices must be a torch.Tensor"),
    (lambda a: dict(topk_length=a["topk_length"][:1]), ValueError, "topk_length must be \\[batch=2\\]"),
    (lambda a: dict(topk_length=a["topk_length"].long()), TypeError, "topk_length must have dtype int32"),
    (lambda a: dict(attn_sink=torch.zeros(3)), ValueError, "attn_sink must be \\[heads_q=4\\]"),
    (lambda a: dict(attn_sink=torch.zeros(4, dtype=torch.float64)), TypeError, "attn_sink must have dtype float32"),
    (lambda a: dict(extra_k_cache=None), ValueError, "needs extra_k_cache"),
    (lambda a: dict(extra_indices_in_kvcache=None), ValueError, "extra_k_cache needs extra_indices_in_kvcache"),
    (lambda a: dict(extra_k_cache=a["extra_k_cache"][..., :584]), ValueError, "extra_k_cache last dim must be 656"),
    (lambda a: dict(extra_indices_in_kvcache=a["extra_indices_in_kvcache"][:, :, None]), ValueError,
     "extra_indices_in_kvcache must be 3-D"),
    (lambda a: dict(extra_topk_length=a["extra_topk_length"].float()), TypeError, "extra_topk_length must have"),
    (lambda a: dict(head_dim_v=576), ValueError, "head_dim_v must be 512"),
    (lambda a: dict(softmax_scale="x"), TypeError, "softmax_scale"),
    (lambda a: dict(kernel="hopper"), ValueError, "kernel='hopper' cannot run this sparse decoding"),
    (lambda a: dict(tile_scheduler_metadata=torch.zeros(4, 8, dtype=torch.int32)), TypeError,
     "FlashMLASchedMeta"),
])
def test_sparse_bad_input_is_named(sparse, change, error, match):
    with pytest.raises(error, match=match):
        sparse_call(sparse, **change(sparse))


def test_sparse_meta_with_num_splits_is_rejected(sparse):
    with pytest.raises(ValueError, match="num_splits must be None"):
        sparse_call(sparse, num_splits=torch.zeros(3, dtype=torch.int32))


@pytest.mark.parametrize("args,error,match", [
    ((torch.zeros(3, dtype=torch.int64), 16, 1), TypeError, "cache_seqlens must have dtype int32"),
    ((torch.zeros(3, 2, dtype=torch.int32), 16, 1), ValueError, "cache_seqlens must be 1-D"),
    ((torch.zeros(3, dtype=torch.int32), 0, 1), ValueError, "num_heads_per_head_k must be >= 1"),
    ((torch.zeros(3, dtype=torch.int32), 16, 1.0), TypeError, "num_heads_k must be an int"),
    ((torch.zeros(3, dtype=torch.int32), 16, None), TypeError, "either no arguments or all"),
    ((torch.zeros(6, dtype=torch.int32)[::2], 16, 1), ValueError, "cache_seqlens must be contiguous"),
    ((torch.zeros(3, dtype=torch.int32), [16], 1), TypeError, "num_heads_per_head_k must be an int"),
])
def test_get_mla_metadata_bad_args(args, error, match):
    with pytest.raises(error, match=match):
        tritonmla.get_mla_metadata(*args)


def test_metadata_shapes_match_flashmla():
    seqlens = torch.tensor([5, 0, 900], dtype=torch.int32)
    sched, splits = tritonmla.get_mla_metadata(seqlens, 128, 1)
    assert sched.dtype == splits.dtype == torch.int32
    assert sched.dim() == 2 and sched.shape[1] == 8 and splits.shape == (4,)
    assert splits[0] == 0 and bool((splits[1:] >= splits[:-1] + 1).all())


def test_reference_matches_a_hand_computed_row():
    """The oracle itself, on one row computed the long way (softmax of dot products, bottom-right causal)."""
    gen = torch.Generator().manual_seed(1)
    x = make_decode_inputs([5], 2, 2, 1, 2, torch.float16, "cpu", generator=gen)
    out, lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, causal=True,
                                              compute_dtype=torch.float64)
    keys = torch.stack([x.k_cache[int(x.block_table[0, t // 2]), t % 2, 0].double() for t in range(5)])
    q0 = x.q[0, 0, 1].double()  # first query: sees keys 0..3 (5 - 2 + 1 + 0 = 4)
    scores = torch.stack([q0 @ keys[t] for t in range(4)]) / 24.0
    weights = torch.softmax(scores, 0)
    assert torch.allclose(out[0, 0, 1].double(), (weights[:, None] * keys[:4, :512]).sum(0), atol=1e-3)
    assert abs(lse[0, 1, 0].item() - torch.logsumexp(scores, 0).item()) < 1e-5


def test_kernel_env_var_is_checked(good, monkeypatch):
    monkeypatch.setenv("TRITONMLA_KERNEL", "gluon")
    with pytest.raises(ValueError, match="TRITONMLA_KERNEL must be one of"):
        call(good)


def test_sparse_cache_at_an_unaligned_address_is_refused(sparse):
    raw = torch.zeros(sparse["k_cache"].numel() + 1, dtype=torch.uint8)
    shifted = raw[1:].view(sparse["k_cache"].shape)  # contiguous, one byte off
    shifted.copy_(sparse["k_cache"].view(torch.uint8))
    with pytest.raises(ValueError, match="k_cache must start at a 4-byte aligned address"):
        sparse_call(sparse, k_cache=shifted)
