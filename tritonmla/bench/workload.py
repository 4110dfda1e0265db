"""Decode workloads as the engines build them: a paged cache with permuted pages, NaN in every slot no request
uses, garbage in unused block-table entries. Shared by the benchmark, its CPU demo and the tests.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..core.constants import D_QK, D_V
UNUSED_BLOCK_ENTRY = 2147480000  # what FlashMLA's tests put in unused block_table entries


@dataclass
class DecodeInputs:
    q: torch.Tensor
    k_cache: torch.Tensor
    block_table: torch.Tensor
    cache_seqlens: torch.Tensor


def seqlens_like_flashmla(batch: int, mean_sk: int, seq_q: int, varlen: bool, rng: random.Random) -> list[int]:
    """FlashMLA's test lengths: all mean_sk, or max(normal(mean_sk, mean_sk / 2), s_q) per request."""
    if not varlen:
        return [mean_sk] * batch
    return [max(int(rng.normalvariate(mean_sk, mean_sk / 2)), seq_q) for _ in range(batch)]


def make_decode_inputs(seqlens: list[int], seq_q: int, heads_q: int, heads_kv: int, page_size: int,
                       dtype: torch.dtype, device: str | torch.device, spare_blocks: int = 2,
                       generator: torch.Generator | None = None, flashmla_values: bool = False) -> DecodeInputs:
    """flashmla_values: draw q = clamp(randn, -1, 1), k = clamp(randn / 10, -1, 1) as FlashMLA's tests do (a
    near-flat softmax, what its tolerances are made for); otherwise plain randn (peaked softmax, harder)."""
    batch = len(seqlens)
    blocks_per_seq = max(1, -(-max(seqlens) // page_size)) + 1  # one more than needed: an unused entry per row
    num_blocks = batch * blocks_per_seq + spare_blocks
    gen_device = generator.device if generator is not None else device
    perm = torch.randperm(num_blocks, generator=generator, device=gen_device).to(device)
    block_table = perm[: batch * blocks_per_seq].view(batch, blocks_per_seq).to(torch.int32)
    k_cache = torch.randn(num_blocks, page_size, heads_kv, D_QK, generator=generator, device=gen_device,
                          dtype=torch.float32).to(device=device, dtype=dtype)
    q = torch.randn(batch, seq_q, heads_q, D_QK, generator=generator, device=gen_device, dtype=torch.float32)
    if flashmla_values:
        q = q.clamp(-1.0, 1.0)
        k_cache = (k_cache.float() / 10).clamp(-1.0, 1.0).to(dtype)
    q = q.to(device=device, dtype=dtype)
    cache_seqlens = torch.tensor(seqlens, dtype=torch.int32, device=device)

    # Poison: NaN in every cache slot no request uses, garbage in every block-table entry past a request's pages.
    tok = torch.arange(blocks_per_seq * page_size, device=device)
    valid = tok[None, :] < cache_seqlens[:, None].long()
    used = torch.zeros(num_blocks, page_size, dtype=torch.bool, device=device)
    used[block_table[:, tok // page_size].long()[valid], (tok % page_size).expand(batch, -1)[valid]] = True
    k_cache[~used] = float("nan")
    pages_used = (cache_seqlens.long() + page_size - 1) // page_size
    unused_entry = torch.arange(blocks_per_seq, device=device)[None, :] >= pages_used[:, None]
    block_table[unused_entry] = UNUSED_BLOCK_ENTRY
    return DecodeInputs(q, k_cache, block_table, cache_seqlens)


def work(seqlens: list[int], batch: int, seq_q: int, heads_q: int, heads_kv: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one decode step, counted as FlashMLA's test counts them."""
    total = sum(seqlens)
    flops = 2 * seq_q * total * heads_q * (D_QK + D_V)
    nbytes = 2 * (total * heads_kv * D_QK + batch * seq_q * heads_q * (D_QK + D_V))
    return flops, nbytes
