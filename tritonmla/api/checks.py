"""Argument checks for the public API: every misuse is a TypeError/ValueError that names the argument.

All checks read shapes, dtypes, devices and strides only, never tensor values (that would sync the host); the
exception is check_inputs at the end (tritonmla.check_inputs, TRITONMLA_CHECK=1), which validates values.
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


# Checked mode: the value checks above leave to the kernels (which clamp or skip bad values, so nothing is ever
# read out of bounds, but the request's result is then meaningless). These read tensor values: a host sync.

def _first_bad(bad: torch.Tensor) -> tuple[int, ...] | None:
    """Index of the first True entry of `bad` (row-major), or None; one host sync."""
    found = bad.flatten().nonzero()
    if found.numel() == 0:
        return None
    return tuple(int(i) for i in torch.unravel_index(found[0, 0].cpu(), bad.shape))


def _check_lengths(name: str, lengths: torch.Tensor, limit: int, limit_name: str, unit: str = "request") -> None:
    at = _first_bad((lengths < 0) | (lengths > limit))
    if at is not None:
        raise ValueError(f"{name}[{at[0]}] = {int(lengths[at])} ({unit} {at[0]}) is outside [0, {limit_name} = "
                         f"{limit}]")


def _check_sparse_index_values(name: str, indices: torch.Tensor, lengths: torch.Tensor | None,
                               cache_name: str, cache: torch.Tensor) -> None:
    """Live slots (before lengths[b], or all) must hold -1 or a token of the cache."""
    num_tokens = cache.shape[0] * cache.shape[1]
    bad = (indices != -1) & ((indices < 0) | (indices >= num_tokens))
    if lengths is not None:
        slot = torch.arange(indices.shape[-1], device=indices.device)
        bad &= slot[None, None, :] < lengths.to(torch.int64)[:, None, None]
    at = _first_bad(bad)
    if at is not None:
        b, i, k = at
        raise ValueError(f"{name}[{b}, {i}, {k}] = {int(indices[at])} (request {b}, query position {i}, slot {k}) "
                         f"is neither -1 nor a token of {cache_name} (indices in [0, num_blocks * page_size = "
                         f"{num_tokens})); such an index is skipped like -1, which is likely not what was meant")


def check_inputs(q, k_cache, block_table=None, cache_seqlens=None, *, indices=None, topk_length=None,
                 extra_k_cache=None, extra_indices_in_kvcache=None, extra_topk_length=None) -> None:
    """Validate the values of flash_mla_with_kvcache's inputs (a host-synced check, for debugging; also run on
    every call when TRITONMLA_CHECK=1). Raises ValueError naming the argument, the request and the entry:

    - dense (indices None): cache_seqlens[b] negative or beyond block_table's capacity (max_blocks * page_size);
      a block_table entry a request uses (the first ceil(cache_seqlens[b] / page_size) of its row) outside
      [0, num_blocks). Entries past a request's pages are never read and may hold anything.
    - sparse (indices given): a live slot of indices (before topk_length[b]; every slot without it) holding a
      value that is neither -1 nor a token of k_cache ([0, num_blocks * page_size)): the kernels skip it like -1,
      but it most likely is a bug. Slots past topk_length may hold anything. The same for
      extra_indices_in_kvcache against extra_k_cache. topk_length / extra_topk_length outside [0, topk].

    Without it the kernels never read out of bounds either (bad page ids are clamped into the cache, bad lengths
    into range, bad sparse indices skipped), but a request with a bad input gets a meaningless result. The
    shape/dtype checks of flash_mla_with_kvcache run first (same errors)."""
    if indices is None:
        check_decode_inputs(q, k_cache, block_table, cache_seqlens, D_V, None, False)
        num_blocks, page_size = k_cache.shape[0], k_cache.shape[1]
        max_blocks = block_table.shape[1]
        capacity = max_blocks * page_size
        _check_lengths("cache_seqlens", cache_seqlens, capacity,
                       f"block_table's capacity max_blocks * page_size = {max_blocks} * {page_size}")
        pages_used = (cache_seqlens.to(torch.int64) + page_size - 1) // page_size
        entry = torch.arange(max_blocks, device=block_table.device)
        bad = (entry[None, :] < pages_used[:, None]) & ((block_table < 0) | (block_table >= num_blocks))
        at = _first_bad(bad)
        if at is not None:
            b, j = at
            raise ValueError(f"block_table[{b}, {j}] = {int(block_table[at])} (request {b}, entry {j}) is not a "
                             f"page of k_cache ([0, num_blocks = {num_blocks})); request {b} uses entries "
                             f"0..{int(pages_used[b]) - 1} for its cache_seqlens[{b}] = {int(cache_seqlens[b])}")
        return
    check_sparse_inputs(q, k_cache, D_V, None, False, True, indices, None, extra_k_cache, extra_indices_in_kvcache,
                        topk_length, extra_topk_length)
    topk = indices.shape[-1]
    if topk_length is not None:
        _check_lengths("topk_length", topk_length, topk, "topk (indices.shape[-1])")
    _check_sparse_index_values("indices", indices, topk_length, "k_cache", k_cache)
    if extra_k_cache is not None:
        extra_topk = extra_indices_in_kvcache.shape[-1]
        if extra_topk_length is not None:
            _check_lengths("extra_topk_length", extra_topk_length, extra_topk,
                           "extra_topk (extra_indices_in_kvcache.shape[-1])")
        _check_sparse_index_values("extra_indices_in_kvcache", extra_indices_in_kvcache, extra_topk_length,
                                   "extra_k_cache", extra_k_cache)


def check_sparse_prefill_inputs(q, kv, indices, sm_scale, d_v, attn_sink, topk_length) -> None:
    """flash_mla_sparse_fwd: q [s_q, h_q, d_qk], kv [s_kv, h_kv, d_qk] (d_qk 576 or 512, q's dtype), indices
    [s_q, h_kv, topk] int32, attn_sink [h_q] fp32, topk_length [s_q] int32."""
    q = _tensor("q", q)
    kv = _tensor("kv", kv)
    indices = _tensor("indices", indices)
    _rank("q", q, 3, "[s_q, heads_q, head_dim]")
    _rank("kv", kv, 3, "[s_kv, heads_kv, head_dim]")
    _rank("indices", indices, 3, "[s_q, heads_kv, topk]")
    _dtype("q", q, SPARSE_Q_DTYPES)
    if kv.dtype != q.dtype:
        raise TypeError(f"kv dtype {str(kv.dtype).replace('torch.', '')} must match q dtype "
                        f"{str(q.dtype).replace('torch.', '')}")
    _dtype("indices", indices, (torch.int32,))
    if q.device.type not in ("cuda", "cpu"):
        raise ValueError(f"q must be on a CUDA device or the CPU, got {q.device}")
    _same_device("kv", kv, q.device)
    _same_device("indices", indices, q.device)
    s_q, heads_q, head_dim = q.shape
    s_kv, heads_kv, kv_head_dim = kv.shape
    if head_dim not in (576, 512):
        raise ValueError(f"q head_dim must be 576 (V3.2) or 512 (MODEL1), got {head_dim}")
    if kv_head_dim != head_dim:
        raise ValueError(f"kv head_dim ({kv_head_dim}) must equal q head_dim ({head_dim})")
    if heads_q < 1 or heads_kv < 1:
        raise ValueError(f"q and kv must have at least one head, got shapes {tuple(q.shape)} and {tuple(kv.shape)}")
    if heads_q % heads_kv:
        raise ValueError(f"q heads ({heads_q}) must be a multiple of kv heads ({heads_kv})")
    if s_kv >= 2 ** 31:
        raise ValueError(f"kv holds {s_kv} tokens; int32 indices address at most 2**31 - 1")
    if kv.stride(-1) != 1 and head_dim > 1:
        raise ValueError("kv must be contiguous in its last (head_dim) dimension")
    if indices.shape[0] != s_q or indices.shape[1] != heads_kv or indices.shape[2] < 1:
        raise ValueError(f"indices must be [s_q={s_q}, heads_kv={heads_kv}, topk >= 1], got {tuple(indices.shape)}")
    if isinstance(d_v, bool) or not isinstance(d_v, int):
        raise TypeError(f"d_v must be an int, got {type(d_v).__name__}")
    if d_v != D_V:
        raise ValueError(f"d_v must be {D_V}, got {d_v}")
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float)):
        raise TypeError(f"sm_scale must be a float, got {type(sm_scale).__name__}")
    _optional_vector("attn_sink", attn_sink, heads_q, torch.float32, q.device, "heads_q")
    _optional_vector("topk_length", topk_length, s_q, torch.int32, q.device, "s_q")


def check_sparse_prefill_values(indices, topk_length) -> None:
    """Checked mode of flash_mla_sparse_fwd (a host sync): topk_length outside [0, topk]. (Its indices may hold
    anything: FlashMLA's API makes -1 and every value outside [0, s_kv) mean "skip".)"""
    if topk_length is not None:
        _check_lengths("topk_length", topk_length, indices.shape[-1], "topk", "query token")
