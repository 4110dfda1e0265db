"""A paged latent KV cache for MLA decoding, in the layout flash_mla_with_kvcache reads.

Per layer: k_cache [num_blocks, page_size, 1, head_dim] (one latent "KV head"; head_dim = kv_lora_rank + rope dim
= 576 for DeepSeek-V2/V3, the first 512 columns doubling as V). One block table [max_batch, max_blocks_per_seq]
int32 and one cache_seqlens [max_batch] int32 serve every layer: the layers of a model share the page layout.

Pages are allocated on the host (a free list) when a request grows; the block table and cache_seqlens are device
tensors updated in place, so a CUDA graph captured over them sees new pages and lengths on replay. Token writes
(`write`) scatter through slot indices computed on the device (`slots`): no host sync in a decode step.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class PagedLatentCache:
    """Paged latent cache of `num_layers` MLA layers for up to `max_batch` requests (rows)."""

    def __init__(self, num_layers: int, num_blocks: int, page_size: int, max_batch: int, max_blocks_per_seq: int,
                 dtype: torch.dtype = torch.bfloat16, device: Union[str, torch.device] = "cpu",
                 head_dim: int = 576) -> None:
        for name, value in (("num_layers", num_layers), ("num_blocks", num_blocks), ("page_size", page_size),
                            ("max_batch", max_batch), ("max_blocks_per_seq", max_blocks_per_seq),
                            ("head_dim", head_dim)):
            _positive_int(name, value)
        if page_size & (page_size - 1) or page_size > 256:
            raise ValueError(f"page_size must be a power of two in 1..256 (what the kernels support), got {page_size}")
        if dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"dtype must be torch.bfloat16 or torch.float16, got {dtype}")
        self.page_size = page_size
        self.head_dim = head_dim
        self.num_blocks = num_blocks
        # One allocation for all layers; layer i's cache is a contiguous view (what the kernels want).
        self.k_caches = torch.zeros(num_layers, num_blocks, page_size, 1, head_dim, dtype=dtype, device=device)
        self.block_table = torch.zeros(max_batch, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.cache_seqlens = torch.zeros(max_batch, dtype=torch.int32, device=device)
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low block ids first
        self._pages: list[list[int]] = [[] for _ in range(max_batch)]
        self._lengths = [0] * max_batch

    @property
    def max_batch(self) -> int:
        return self.block_table.shape[0]

    @property
    def max_len(self) -> int:
        """The most tokens one request can hold (its block-table row full)."""
        return self.block_table.shape[1] * self.page_size

    def layer(self, index: int) -> torch.Tensor:
        """k_cache of layer `index`: [num_blocks, page_size, 1, head_dim]."""
        return self.k_caches[index]

    def lengths(self) -> list[int]:
        """Tokens held per row (host copy; cache_seqlens is the device one)."""
        return list(self._lengths)

    def _row(self, row: int) -> int:
        if isinstance(row, bool) or not isinstance(row, int):
            raise TypeError(f"row must be an int, got {type(row).__name__}")
        if not 0 <= row < self.max_batch:
            raise ValueError(f"row must be in [0, {self.max_batch}), got {row}")
        return row

    def set_length(self, row: int, length: int) -> None:
        """Make `row` hold `length` tokens: pages are allocated as it grows and returned as it shrinks (a rejected
        speculative draft). The caller then writes the new tokens' latents (`write`)."""
        self._resize(self._row(row), length)
        self.cache_seqlens[row] = length

    def set_lengths(self, lengths: Sequence[int]) -> None:
        """set_length for rows 0..len(lengths)-1, with one copy of the lengths to the device."""
        if len(lengths) > self.max_batch:
            raise ValueError(f"lengths has {len(lengths)} rows, the cache holds at most max_batch={self.max_batch}")
        for row, length in enumerate(lengths):
            self._resize(row, length)
        self.cache_seqlens[: len(lengths)].copy_(torch.tensor(self._lengths[: len(lengths)], dtype=torch.int32))

    def _resize(self, row: int, length: int) -> None:
        if isinstance(length, bool) or not isinstance(length, int):
            raise TypeError(f"length must be an int, got {type(length).__name__}")
        if not 0 <= length <= self.max_len:
            raise ValueError(f"length must be in [0, {self.max_len}] (max_blocks_per_seq * page_size), got {length}")
        pages = self._pages[row]
        needed = -(-length // self.page_size)
        if needed - len(pages) > len(self._free):
            raise RuntimeError(f"out of cache pages: row {row} needs {needed - len(pages)} more, "
                               f"{len(self._free)} free of {self.num_blocks}")
        grown = len(pages)
        while len(pages) < needed:
            pages.append(self._free.pop())
        while len(pages) > needed:
            self._free.append(pages.pop())
        if len(pages) > grown:  # a host-to-device copy once per page_size tokens, not per token
            self.block_table[row, grown:len(pages)] = torch.tensor(pages[grown:], dtype=torch.int32)
        self._lengths[row] = length

    def release(self, row: int) -> None:
        """Free a finished request's pages."""
        self.set_length(row, 0)

    def slots(self, positions: torch.Tensor, first_row: int = 0) -> torch.Tensor:
        """Flat slot index (block * page_size + offset) of token positions [b, s] of rows first_row.. (device op)."""
        if positions.dim() != 2:
            raise ValueError(f"positions must be 2-D [batch, seq], got shape {tuple(positions.shape)}")
        if first_row + positions.shape[0] > self.max_batch:
            raise ValueError(f"rows {first_row}..{first_row + positions.shape[0] - 1} exceed "
                             f"max_batch={self.max_batch}")
        table = self.block_table[first_row: first_row + positions.shape[0]]
        positions = positions.long()
        blocks = torch.gather(table, 1, positions // self.page_size).long()
        return blocks * self.page_size + positions % self.page_size

    def write(self, layer: int, slots: torch.Tensor, latent: torch.Tensor) -> None:
        """Store latent [..., head_dim] (c_kv | k_rope of new tokens) at `slots` [...] of layer `layer`."""
        if latent.shape[-1] != self.head_dim or latent.shape[:-1] != slots.shape:
            raise ValueError(f"latent must be [*slots.shape, {self.head_dim}] = [{', '.join(map(str, slots.shape))}, "
                             f"{self.head_dim}], got {tuple(latent.shape)}")
        flat = self.k_caches[layer].view(-1, self.head_dim)
        flat.index_copy_(0, slots.reshape(-1), latent.reshape(-1, self.head_dim).to(flat.dtype))
