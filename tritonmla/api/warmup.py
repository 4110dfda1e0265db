"""Compile before serving: one call per kernel variant a deployment can hit.

A kernel variant depends on the dtype, the page size, h_q, h_kv, s_q, causal and the kernel choice (and on every
pointer being 16-byte aligned, as torch allocations are). It does not depend on the batch size, the sequence
lengths, the block table's width or the values in any tensor: those are plain kernel arguments. So a few tiny
calls per (s_q, causal) compile, or load from Triton's on-disk cache, everything a later batch of any size uses.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Optional, Union

import torch

from ..combine.combine import combine_batches
from ..core.constants import D_QK, D_V
from ..core.fp8_cache_layouts import quantize_kv_cache
from .interface import flash_mla_with_kvcache, get_mla_metadata


def warmup(num_heads_q: int, num_heads_k: int = 1, seq_q: Union[int, Iterable[int]] = (1,), page_size: int = 64,
           dtype: torch.dtype = torch.bfloat16, causal: Union[bool, Iterable[bool]] = (False, True),
           device: Optional[Union[str, torch.device]] = None, kernel: Optional[str] = None) -> int:
    """Run every kernel variant that decode calls of this configuration can use (both API forms), so that none
    compiles while serving. seq_q: the query lengths the engine uses (1, plus its speculative lengths). Returns
    the number of (s_q, causal) combinations run. Raises what flash_mla_with_kvcache raises for a bad config."""
    seq_qs = [seq_q] if isinstance(seq_q, int) else list(seq_q)
    causals = [causal] if isinstance(causal, bool) else list(causal)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    gen = torch.Generator(device=device).manual_seed(0)
    combos = list(itertools.product(seq_qs, causals))
    pages = 4  # two requests, the first over 3 pages and a bit: full tiles, a tail tile, an almost empty one
    k_cache = torch.randn(2 * pages, page_size, num_heads_k, D_QK, generator=gen, device=device).to(dtype)
    block_table = torch.arange(2 * pages, dtype=torch.int32, device=device).view(2, pages)
    for s_q, is_causal in combos:
        q = torch.randn(2, s_q, num_heads_q, D_QK, generator=gen, device=device).to(dtype)
        seqlens = torch.tensor([max(s_q, 3 * page_size + 1), 1], dtype=torch.int32, device=device)
        args = (q, k_cache, block_table, seqlens, D_V)
        plan = get_mla_metadata(seqlens, s_q * num_heads_q // num_heads_k, num_heads_k)
        flash_mla_with_kvcache(*args, *plan, causal=is_causal, kernel=kernel)
        flash_mla_with_kvcache(*args, *get_mla_metadata(), causal=is_causal, kernel=kernel)
    # The split merge's variants depend on the batch size (its column blocks: combine_shape): one call per variant,
    # every request on the same pages.
    for s_q in seq_qs:
        for batch in combine_batches(s_q * num_heads_q // num_heads_k, num_heads_k, D_V, device):
            q = torch.zeros(batch, s_q, num_heads_q, D_QK, device=device, dtype=dtype)
            seqlens = torch.tensor([max(s_q, 3 * page_size + 1), 1] * batch, dtype=torch.int32, device=device)[:batch]
            flash_mla_with_kvcache(q, k_cache, block_table[:1].expand(batch, pages), seqlens, D_V,
                                   *get_mla_metadata(), causal=causals[0], kernel=kernel)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(combos)


def warmup_sparse(num_heads_q: int, d_qk: int = 576, topk: int = 2048, seq_q: Union[int, Iterable[int]] = (1,),
                  page_size: int = 64, dtype: torch.dtype = torch.bfloat16, topk_length: bool = False,
                  attn_sink: bool = False, extra_topk: Optional[int] = None, extra_page_size: int = 64,
                  extra_topk_length: bool = False, device: Optional[Union[str, torch.device]] = None,
                  kernel: Optional[str] = None) -> int:
    """warmup() for sparse FP8 decoding: run the kernel variants that calls of this configuration use (the
    layout by d_qk: 576 V3.2, 512 MODEL1; the optional arguments the engine passes: topk_length, attn_sink, an
    extra cache of extra_topk slots and its extra_topk_length), so that none compiles while serving. Variants do
    not depend on the batch size, the cache size, the lengths or the indices' values. Returns the number of s_q
    values run. Raises what flash_mla_with_kvcache raises for a bad config."""
    seq_qs = [seq_q] if isinstance(seq_q, int) else list(seq_q)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    gen = torch.Generator(device=device).manual_seed(0)

    def cache_and_indices(batch: int, slots: int, page: int, s_q: int):
        blocks = 2
        k = quantize_kv_cache(torch.randn(blocks, page, 1, d_qk, generator=gen, device=device) / 10)
        idx = torch.randint(-1, blocks * page, (batch, s_q, slots), generator=gen, device=device, dtype=torch.int32)
        return k, idx

    def lengths(batch: int, first: int, second: int):
        return torch.tensor([first, second] * batch, dtype=torch.int32, device=device)[:batch]

    for s_q in seq_qs:
        # Batch 2, then one batch size per variant of the split merge (its column blocks depend on the batch size).
        for batch in sorted({2, *combine_batches(s_q * num_heads_q, 1, D_V, device)}):
            q = (torch.randn(batch, s_q, num_heads_q, d_qk, generator=gen, device=device) / 10).to(dtype)
            k_cache, indices = cache_and_indices(batch, topk, page_size, s_q)
            kwargs = dict(is_fp8_kvcache=True, indices=indices)
            if topk_length:
                kwargs["topk_length"] = lengths(batch, topk, topk // 2)
            if attn_sink:
                kwargs["attn_sink"] = torch.zeros(num_heads_q, dtype=torch.float32, device=device)
            if extra_topk is not None:
                kwargs["extra_k_cache"], kwargs["extra_indices_in_kvcache"] = cache_and_indices(
                    batch, extra_topk, extra_page_size, s_q)
                if extra_topk_length:
                    kwargs["extra_topk_length"] = lengths(batch, extra_topk, 1)
            flash_mla_with_kvcache(q, k_cache, None, None, D_V, get_mla_metadata()[0], None, kernel=kernel,
                                   **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(seq_qs)
