"""Argument checks for the public API: every misuse is a TypeError/ValueError that names the argument.

All checks read shapes, dtypes, devices and strides only, never tensor values (that would sync the host).
"""
from __future__ import annotations

import torch

from ..core.constants import D_QK, D_V, SCHED_ROW
from ..core.fp8_cache_layouts import CACHE_DTYPES, cache_alignment, layout_for
from ..core.runtime import tracing

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
MAX_PAGE_SIZE = 256
MAX_BATCH = 65535  # the combine grid's second dimension


def _tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must have dtype {names}, got {str(t.dtype).replace('torch.', '')}")


def _rank(name: str, t: torch.Tensor, rank: int, layout: str) -> None:
    if t.dim() != rank:
        raise ValueError(f"{name} must be {rank}-D {layout}, got shape {tuple(t.shape)}")


def _same_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but q is on {device}; all tensors must be on one device")


def check_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal) -> None:
    q = _tensor("q", q)
    k_cache = _tensor("k_cache", k_cache)
    block_table = _tensor("block_table", block_table)
    cache_seqlens = _tensor("cache_seqlens", cache_seqlens)
    _rank("q", q, 4, "[batch, seq_q, heads_q, head_dim]")
    _rank("k_cache", k_cache, 4, "[num_blocks, page_size, heads_kv, head_dim]")
    _rank("block_table", block_table, 2, "[batch, max_blocks_per_seq]")
    _rank("cache_seqlens", cache_seqlens, 1, "[batch]")
    _dtype("q", q, SUPPORTED_DTYPES)
    if k_cache.dtype != q.dtype:
        raise TypeError(f"k_cache dtype {k_cache.dtype} must match q dtype {q.dtype} (FP8 caches: is_fp8_kvcache)")
    _dtype("block_table", block_table, (torch.int32,))
    _dtype("cache_seqlens", cache_seqlens, (torch.int32,))
    for name, t in (("k_cache", k_cache), ("block_table", block_table), ("cache_seqlens", cache_seqlens)):
        _same_device(name, t, q.device)
    if q.device.type not in ("cuda", "cpu"):
        raise ValueError(f"q must be on a CUDA device or the CPU, got {q.device}")

    batch, seq_q, heads_q, head_dim = q.shape
    num_blocks, page_size, heads_kv, k_head_dim = k_cache.shape
    if isinstance(head_dim_v, bool) or not isinstance(head_dim_v, int):
        raise TypeError(f"head_dim_v must be an int, got {type(head_dim_v).__name__}")
    if head_dim != D_QK or k_head_dim != D_QK:
        raise ValueError(f"q and k_cache head_dim must be {D_QK} (512 latent + 64 RoPE), got {head_dim} and {k_head_dim}")
    if head_dim_v > head_dim:
        raise ValueError(f"head_dim_v ({head_dim_v}) must not exceed head_dim ({head_dim})")
    if head_dim_v != D_V:
        raise ValueError(f"head_dim_v must be {D_V}, got {head_dim_v}")
    if batch < 1 or seq_q < 1 or heads_q < 1:
        raise ValueError(f"q must have batch, seq_q and heads_q >= 1, got shape {tuple(q.shape)}")
    if batch > MAX_BATCH:
        raise ValueError(f"q batch size {batch} exceeds the supported maximum {MAX_BATCH}")
    if heads_kv < 1 or num_blocks < 1:
        raise ValueError(f"k_cache must have num_blocks and heads_kv >= 1, got shape {tuple(k_cache.shape)}")
    if heads_q % heads_kv != 0:
        raise ValueError(f"q heads ({heads_q}) must be a multiple of k_cache heads ({heads_kv})")
    if page_size < 1 or page_size > MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise ValueError(f"k_cache page_size (dim 1) must be a power of two in 1..{MAX_PAGE_SIZE}, got {page_size}")
    if k_cache.stride(-1) != 1:
        raise ValueError("k_cache must be contiguous in its last (head_dim) dimension")
    if block_table.shape[0] != batch or block_table.shape[1] < 1:
        raise ValueError(f"block_table must be [batch={batch}, max_blocks >= 1], got {tuple(block_table.shape)}")
    if block_table.stride(1) != 1:
        raise ValueError("block_table must be contiguous in its last dimension")
    if cache_seqlens.shape[0] != batch:
        raise ValueError(f"cache_seqlens must have batch={batch} entries, got {cache_seqlens.shape[0]}")
    if cache_seqlens.stride(0) != 1 and batch > 1:
        raise ValueError("cache_seqlens must be contiguous")
    if softmax_scale is not None and (isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float))):
        raise TypeError(f"softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")


def check_metadata_tensors(tile_scheduler_metadata, num_splits, batch: int, device: torch.device) -> None:
    sched = _tensor("tile_scheduler_metadata", tile_scheduler_metadata)
    splits = _tensor("num_splits", num_splits)
    _dtype("tile_scheduler_metadata", sched, (torch.int32,))
    _dtype("num_splits", splits, (torch.int32,))
    if sched.dim() != 2 or sched.shape[1] != SCHED_ROW or sched.shape[0] < 1 or not sched.is_contiguous():
        raise ValueError(f"tile_scheduler_metadata must be a contiguous [num_parts, {SCHED_ROW}] tensor from "
                         f"get_mla_metadata, got shape {tuple(sched.shape)}")
    if splits.dim() != 1 or splits.shape[0] != batch + 1 or not splits.is_contiguous():
        raise ValueError(f"num_splits must be a contiguous [batch + 1 = {batch + 1}] tensor from get_mla_metadata "
                         f"for this batch, got shape {tuple(splits.shape)}")
    _same_device("tile_scheduler_metadata", sched, device)
    _same_device("num_splits", splits, device)


def check_metadata_args(cache_seqlens, num_heads_per_head_k, num_heads_k) -> None:
    cache_seqlens = _tensor("cache_seqlens", cache_seqlens)
    _rank("cache_seqlens", cache_seqlens, 1, "[batch]")
    _dtype("cache_seqlens", cache_seqlens, (torch.int32,))
    if cache_seqlens.shape[0] < 1 or cache_seqlens.shape[0] > MAX_BATCH:
        raise ValueError(f"cache_seqlens must have 1..{MAX_BATCH} entries, got {cache_seqlens.shape[0]}")
    if cache_seqlens.stride(0) != 1 and cache_seqlens.shape[0] > 1:
        raise ValueError("cache_seqlens must be contiguous")
    for name, value in (("num_heads_per_head_k", num_heads_per_head_k), ("num_heads_k", num_heads_k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


SPARSE_Q_DTYPES = (torch.bfloat16, torch.float16)  # FlashMLA: bf16; fp16 is tritonmla's (and the CPU tests')


def _optional_vector(name: str, t, length: int, dtype: torch.dtype, device: torch.device, what: str) -> None:
    if t is None:
        return
    t = _tensor(name, t)
    _dtype(name, t, (dtype,))
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"{name} must be [{what}={length}], got shape {tuple(t.shape)}")
    if t.stride(0) != 1 and length > 1:
        raise ValueError(f"{name} must be contiguous")
    _same_device(name, t, device)


def _check_fp8_cache(name: str, cache, layout, device: torch.device) -> None:
    cache = _tensor(name, cache)
    _rank(name, cache, 4, "[num_blocks, page_size, 1, bytes_per_token]")
    if cache.dtype not in CACHE_DTYPES:
        raise TypeError(f"{name} must have dtype float8_e4m3fn, uint8 or int8 (an FP8 cache, see "
                        f"tritonmla.quantize_kv_cache), got {str(cache.dtype).replace('torch.', '')}")
    _same_device(name, cache, device)
    num_blocks, page_size, heads_kv, token_bytes = cache.shape
    if heads_kv != 1:
        raise ValueError(f"{name} must have 1 KV head (dim 2) for sparse decoding, got {heads_kv}")
    if token_bytes != layout.token_bytes:
        raise ValueError(f"{name} last dim must be {layout.token_bytes} bytes per token for the {layout.name} "
                         f"layout (q head dim {layout.d_qk}), got {token_bytes}")
    if num_blocks < 1 or page_size < 1:
        raise ValueError(f"{name} must have num_blocks and page_size >= 1, got shape {tuple(cache.shape)}")
    if num_blocks * page_size >= 2 ** 31:
        raise ValueError(f"{name} holds {num_blocks * page_size} tokens; int32 indices address at most 2**31 - 1")
    if cache.stride(-1) != 1 or (cache.stride(1) != token_bytes and page_size > 1):
        raise ValueError(f"{name} rows must be contiguous: stride(1) == {token_bytes} and stride(3) == 1, got "
                         f"strides {tuple(cache.stride())}")
    align = cache_alignment(layout)
    if (cache.stride(0) < page_size * token_bytes and num_blocks > 1) or cache.stride(0) % align:
        raise ValueError(f"{name} block stride (stride(0)) must be a multiple of {align} bytes and at least "
                         f"page_size * {token_bytes} = {page_size * token_bytes}, got {cache.stride(0)}")
    if not tracing() and cache.data_ptr() % align:  # (traced: no address yet; the op checks it when it runs)
        raise ValueError(f"{name} must start at a {align}-byte aligned address (its scales are read in "
                         f"{align}-byte words)")


def _check_indices(name: str, t, batch: int, seq_q: int, device: torch.device) -> int:
    t = _tensor(name, t)
    _rank(name, t, 3, "[batch, seq_q, topk]")
    _dtype(name, t, (torch.int32,))
    if t.shape[0] != batch or t.shape[1] != seq_q or t.shape[2] < 1:
        raise ValueError(f"{name} must be [batch={batch}, seq_q={seq_q}, topk >= 1], got {tuple(t.shape)}")
    if t.stride(-1) != 1 and t.shape[2] > 1:
        raise ValueError(f"{name} must be contiguous in its last (topk) dimension")
    _same_device(name, t, device)
    return t.shape[2]


def check_sparse_inputs(q, k_cache, head_dim_v, softmax_scale, causal, is_fp8_kvcache, indices, attn_sink,
                        extra_k_cache, extra_indices_in_kvcache, topk_length, extra_topk_length):
    """Sparse decoding (indices given). Returns the FP8 layout."""
    q = _tensor("q", q)
    _rank("q", q, 4, "[batch, seq_q, heads_q, head_dim]")
    _dtype("q", q, SPARSE_Q_DTYPES)
    if q.device.type not in ("cuda", "cpu"):
        raise ValueError(f"q must be on a CUDA device or the CPU, got {q.device}")
    if q.stride(-1) != 1:
        raise ValueError("q must be contiguous in its last (head_dim) dimension")
    batch, seq_q, heads_q, head_dim = q.shape
    if head_dim not in (576, 512):
        raise ValueError(f"q head_dim must be 576 (V3.2 layout) or 512 (MODEL1 layout) for sparse decoding, "
                         f"got {head_dim}")
    if batch < 1 or seq_q < 1 or heads_q < 1:
        raise ValueError(f"q must have batch, seq_q and heads_q >= 1, got shape {tuple(q.shape)}")
    if batch > MAX_BATCH:
        raise ValueError(f"q batch size {batch} exceeds the supported maximum {MAX_BATCH}")
    layout = layout_for(None, d_qk=head_dim)
    if isinstance(head_dim_v, bool) or not isinstance(head_dim_v, int):
        raise TypeError(f"head_dim_v must be an int, got {type(head_dim_v).__name__}")
    if head_dim_v != D_V:
        raise ValueError(f"head_dim_v must be {D_V}, got {head_dim_v}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if causal:
        raise ValueError("causal must be False for sparse decoding (indices given): the indices choose the keys")
    if not isinstance(is_fp8_kvcache, bool):
        raise TypeError(f"is_fp8_kvcache must be a bool, got {type(is_fp8_kvcache).__name__}")
    if not is_fp8_kvcache:
        raise ValueError("sparse decoding (indices given) needs is_fp8_kvcache=True and an FP8 k_cache "
                         "(tritonmla.quantize_kv_cache writes one)")
    if softmax_scale is not None and (isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float))):
        raise TypeError(f"softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
    _check_fp8_cache("k_cache", k_cache, layout, q.device)
    _check_indices("indices", indices, batch, seq_q, q.device)
    _optional_vector("topk_length", topk_length, batch, torch.int32, q.device, "batch")
    _optional_vector("attn_sink", attn_sink, heads_q, torch.float32, q.device, "heads_q")
    if extra_k_cache is None:
        for name, value in (("extra_indices_in_kvcache", extra_indices_in_kvcache),
                            ("extra_topk_length", extra_topk_length)):
            if value is not None:
                raise ValueError(f"{name} needs extra_k_cache")
    else:
        if extra_indices_in_kvcache is None:
            raise ValueError("extra_k_cache needs extra_indices_in_kvcache")
        _check_fp8_cache("extra_k_cache", extra_k_cache, layout, q.device)
        _check_indices("extra_indices_in_kvcache", extra_indices_in_kvcache, batch, seq_q, q.device)
        _optional_vector("extra_topk_length", extra_topk_length, batch, torch.int32, q.device, "batch")
    return layout
