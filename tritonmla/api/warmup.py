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

from ..bench.workload import make_decode_inputs
from ..kernels.constants import D_V
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
    for s_q, is_causal in combos:
        x = make_decode_inputs([max(s_q, 3 * page_size + 1), 1], s_q, num_heads_q, num_heads_k, page_size, dtype,
                               device, generator=gen)
        sched, splits = get_mla_metadata(x.cache_seqlens, s_q * num_heads_q // num_heads_k, num_heads_k)
        flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, D_V, sched, splits,
                               causal=is_causal, kernel=kernel)
        meta, _ = get_mla_metadata()
        flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, D_V, meta, None, causal=is_causal,
                               kernel=kernel)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(combos)
