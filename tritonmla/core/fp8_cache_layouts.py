"""FP8 KV-cache layouts of FlashMLA's sparse decoding, and helpers that write and read them.

Two layouts, picked by the query head dim (FlashMLA's `flash_mla_interface.py` and `tests/quant.py` define them):

  V32 (DeepSeek-V3.2, d_qk 576): k_cache [num_blocks, page_size, 1, 656] bytes; per token, contiguous:
      512 e4m3 NoPE values | 4 fp32 scales (one per 128 NoPE values) | 64 bf16 RoPE values.
      V = the 512 dequantized NoPE values.
  MODEL1 (d_qk 512): k_cache [num_blocks, page_size, 1, 584] bytes, a view over blocks of
      page_size * 576 bytes: per token 448 e4m3 NoPE values | 64 bf16 RoPE values,
      then page_size * 8 bytes: per token 7 ue8m0 scales (one per 64 NoPE values) | 1 pad byte;
      each block padded to a multiple of 576 bytes (k_cache.stride(0)). V = the whole 512-value row.

A value is e4m3 * scale. The quantizer picks scale = 2^ceil(log2(max|x| / 448)) per group (a power of two, so the
dequantized value is exact in bf16), with max|x| floored at 1e-4 * 448, as FlashMLA's test quantizer does.
Caches are uint8-compatible: FlashMLA accepts float8_e4m3fn, int8 or uint8 tensors; quantize_kv_cache returns
float8_e4m3fn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

FP8_MAX = 448.0
MIN_SCALE = 1e-4  # floor of max|x| / 448: all-zero groups still get a finite scale
CACHE_DTYPES = (torch.float8_e4m3fn, torch.uint8, torch.int8)


@dataclass(frozen=True)
class FP8Layout:
    name: str
    d_qk: int  # query / key head dim (NoPE + RoPE)
    d_nope: int  # e4m3 values per token
    d_rope: int  # bf16 values per token
    group: int  # NoPE values per scale
    num_scales: int
    token_bytes: int  # the cache tensor's last dim (FlashMLA's bytes_per_token)
    row_bytes: int  # bytes between consecutive tokens of a block
    scale_bytes: int  # bytes per scale


V32 = FP8Layout("V32", 576, 512, 64, 128, 4, 512 + 4 * 4 + 64 * 2, 656, 4)
MODEL1 = FP8Layout("MODEL1", 512, 448, 64, 64, 7, 448 + 64 * 2 + 8, 576, 1)
LAYOUTS = {"V32": V32, "MODEL1": MODEL1}
BLOCK_ALIGN = 576  # MODEL1 blocks are padded to a multiple of this many bytes (as FlashMLA's quantizer does)


def layout_for(layout: Union[str, FP8Layout, None], d_qk: Optional[int] = None,
               token_bytes: Optional[int] = None) -> FP8Layout:
    """The layout named ("V32" / "MODEL1", any case), or the one whose d_qk / token_bytes match."""
    if isinstance(layout, FP8Layout):
        return layout
    if layout is not None:
        if not isinstance(layout, str) or layout.upper().replace(".", "") not in LAYOUTS:
            raise ValueError(f"layout must be 'V32' or 'MODEL1', got {layout!r}")
        return LAYOUTS[layout.upper().replace(".", "")]
    for candidate in LAYOUTS.values():
        if d_qk == candidate.d_qk or token_bytes == candidate.token_bytes:
            return candidate
    what = f"head dim {d_qk}" if d_qk is not None else f"last dim {token_bytes}"
    raise ValueError(f"no FP8 layout has {what}: V32 is d_qk 576 (656 bytes a token), MODEL1 d_qk 512 (584)")


def cache_alignment(layout) -> int:
    """Bytes an FP8 cache's base address and block stride must be a multiple of: V3.2 rows hold fp32 scales,
    MODEL1 blocks a token's 8 scale bytes, read as one 8-byte word (as FlashMLA does)."""
    return 4 if layout.name == "V32" else 8


def _pow2_scales(x: torch.Tensor, group: int) -> torch.Tensor:
    """[..., n] float -> [..., n // group] power-of-two fp32 scales with |x| / scale <= 448."""
    amax = x.unflatten(-1, (-1, group)).abs().amax(-1)
    return torch.exp2(torch.ceil(torch.log2(torch.clamp(amax / FP8_MAX, min=MIN_SCALE))))


def block_bytes(layout: FP8Layout, page_size: int) -> int:
    """Bytes per page block as quantize_kv_cache lays blocks out (MODEL1: padded to a multiple of 576)."""
    if layout is V32:
        return page_size * layout.token_bytes
    return -(-page_size * layout.token_bytes // BLOCK_ALIGN) * BLOCK_ALIGN


def cache_view(blocks: torch.Tensor, layout: FP8Layout, page_size: int) -> torch.Tensor:
    """[num_blocks, block bytes] uint8 -> the k_cache tensor FlashMLA takes: float8_e4m3fn
    [num_blocks, page_size, 1, token_bytes] (MODEL1: a view whose rows are not the tokens' bytes; the kernel
    reads blocks by the layout)."""
    return blocks.view(torch.float8_e4m3fn).as_strided(
        (blocks.shape[0], page_size, 1, layout.token_bytes),
        (blocks.stride(0), layout.token_bytes, layout.token_bytes, 1), blocks.storage_offset())


def quantize_blocks(x: torch.Tensor, lay: FP8Layout, out: torch.Tensor) -> None:
    """x [n, page_size, d_qk] float32 -> out [n, block bytes] uint8."""
    num_blocks, page_size, _ = x.shape
    nope = x[..., :lay.d_nope]
    scales = _pow2_scales(nope, lay.group)  # [n, page_size, num_scales]; NaN for a NaN group
    codes = (nope.unflatten(-1, (-1, lay.group)) / scales[..., None]).flatten(-2).to(torch.float8_e4m3fn)
    codes = codes.view(torch.uint8)
    rope = x[..., lay.d_nope:].to(torch.bfloat16).view(torch.uint8)  # [n, page_size, 128]
    if lay is V32:
        out.copy_(torch.cat([codes, scales.contiguous().view(torch.uint8), rope], dim=-1).flatten(1))
        return
    out.zero_()
    out[:, :page_size * lay.row_bytes] = torch.cat([codes, rope], dim=-1).flatten(1)
    exponents = torch.zeros(num_blocks, page_size, 8, dtype=torch.uint8, device=x.device)
    exps = torch.log2(scales).nan_to_num(0.0).round().to(torch.int32) + 127
    exponents[..., :lay.num_scales] = torch.where(scales.isnan(), 255, exps).to(torch.uint8)  # 0xFF: ue8m0 NaN
    out[:, page_size * lay.row_bytes:page_size * (lay.row_bytes + 8)] = exponents.flatten(1)


def quantize_kv_cache(k: torch.Tensor, layout: Union[str, FP8Layout, None] = None) -> torch.Tensor:
    """k [num_blocks, page_size, 1, d_qk] (or [num_blocks, page_size, d_qk]), any float dtype ->
    the FP8 cache in `layout` ("V32" for d_qk 576, "MODEL1" for 512; None: by d_qk), float8_e4m3fn
    [num_blocks, page_size, 1, token_bytes] (MODEL1: a strided view over padded blocks). NaN values stay NaN."""
    if not isinstance(k, torch.Tensor) or not k.is_floating_point():
        raise TypeError("k must be a floating-point torch.Tensor")
    if k.dim() == 4:
        if k.shape[2] != 1:
            raise ValueError(f"k must have one KV head (dim 2), got shape {tuple(k.shape)}")
        k = k[:, :, 0]
    if k.dim() != 3:
        raise ValueError(f"k must be [num_blocks, page_size, 1, d_qk], got shape {tuple(k.shape)}")
    lay = layout_for(layout, d_qk=k.shape[-1])
    if k.shape[-1] != lay.d_qk:
        raise ValueError(f"k head dim must be {lay.d_qk} for the {lay.name} layout, got {k.shape[-1]}")
    num_blocks, page_size, _ = k.shape
    blocks = torch.empty(num_blocks, block_bytes(lay, page_size), dtype=torch.uint8, device=k.device)
    step = max(1, (1 << 20) // page_size)  # ~1M tokens at a time: bounded float32 temporaries
    for i in range(0, num_blocks, step):
        quantize_blocks(k[i:i + step].float(), lay, blocks[i:i + step])
    return cache_view(blocks, lay, page_size)


def cache_bytes(k_cache: torch.Tensor) -> torch.Tensor:
    """The cache's bytes as [num_blocks, block bytes] uint8 (block bytes = stride(0); the last block's tail past
    its tokens and scales may lie beyond the allocation, so it is cut to what the layout uses)."""
    num_blocks, page_size = k_cache.shape[:2]
    lay = layout_for(None, token_bytes=k_cache.shape[-1])
    raw = k_cache.view(torch.uint8)
    used = page_size * lay.token_bytes  # tokens (+ MODEL1's scales) of one block
    return raw.as_strided((num_blocks, used), (k_cache.stride(0), 1), raw.storage_offset())


def dequantize_kv_cache(k_cache: torch.Tensor, layout: Union[str, FP8Layout, None] = None,
                        dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """FP8 cache [num_blocks, page_size, 1, token_bytes] -> [num_blocks, page_size, 1, d_qk] in `dtype`
    (bf16 by default; values are e4m3 * scale, exact in bf16 for power-of-two scales)."""
    if not isinstance(k_cache, torch.Tensor) or k_cache.dtype not in CACHE_DTYPES:
        raise TypeError("k_cache must be a float8_e4m3fn / uint8 / int8 torch.Tensor")
    if k_cache.dim() != 4 or k_cache.shape[2] != 1:
        raise ValueError(f"k_cache must be [num_blocks, page_size, 1, token_bytes], got {tuple(k_cache.shape)}")
    lay = layout_for(layout) if layout is not None else layout_for(None, token_bytes=k_cache.shape[-1])
    if k_cache.shape[-1] != lay.token_bytes:
        raise ValueError(f"k_cache last dim must be {lay.token_bytes} for the {lay.name} layout, "
                         f"got {k_cache.shape[-1]}")
    num_blocks, page_size = k_cache.shape[:2]
    blocks = cache_bytes(k_cache)
    if lay is V32:
        rows = blocks.reshape(num_blocks, page_size, lay.row_bytes)
        codes = rows[..., :lay.d_nope]
        scales = rows[..., lay.d_nope:lay.d_nope + 16].contiguous().view(torch.float32)
        rope = rows[..., lay.d_nope + 16:].contiguous().view(torch.bfloat16)
    else:
        rows = blocks[:, :page_size * lay.row_bytes].reshape(num_blocks, page_size, lay.row_bytes)
        codes = rows[..., :lay.d_nope]
        rope = rows[..., lay.d_nope:].contiguous().view(torch.bfloat16)
        exps = blocks[:, page_size * lay.row_bytes:].reshape(num_blocks, page_size, 8)[..., :lay.num_scales]
        scales = torch.exp2(exps.float() - 127)
        scales = torch.where(exps == 255, float("nan"), scales)  # ue8m0's NaN
    values = codes.contiguous().view(torch.float8_e4m3fn).float().unflatten(-1, (-1, lay.group))
    nope = (values * scales[..., None]).flatten(-2)
    return torch.cat([nope, rope.float()], dim=-1).to(dtype).unsqueeze(2)


def gather_rows(k_cache: torch.Tensor, idx: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantized rows idx (any shape of int token indices page * page_size + offset, all in range) of an FP8
    cache -> [*idx.shape, d_qk] in `dtype`. Reads only those rows' bytes (large caches need not be dequantized)."""
    lay = layout_for(None, token_bytes=k_cache.shape[-1])
    page_size = k_cache.shape[1]
    blocks = cache_bytes(k_cache)
    flat = idx.reshape(-1).long()
    page, pos = (flat // page_size)[:, None], (flat % page_size)[:, None]
    row = blocks[page, pos * lay.row_bytes + torch.arange(lay.row_bytes, device=idx.device)]
    if lay is MODEL1:  # a one-token block: its row, then its 8 scale bytes
        scale_at = page_size * lay.row_bytes + pos * 8 + torch.arange(8, device=idx.device)
        row = torch.cat([row, blocks[page, scale_at]], dim=-1)
    mini = row.view(-1, 1, 1, lay.token_bytes)
    return dequantize_kv_cache(mini, lay, dtype=dtype).view(*idx.shape, lay.d_qk)
