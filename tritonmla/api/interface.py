"""Public API, a drop-in for deepseek-ai/FlashMLA's `flash_mla` module (dense decoding).

    sched, splits = get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)   # FlashMLA's original form
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, sched, splits, causal=True)

    meta, _ = get_mla_metadata()                                               # FlashMLA's newer form
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, meta, None, causal=True)

Tensors on CUDA run the Triton kernels. CPU tensors run the same kernels under TRITON_INTERPRET=1 (set before
importing tritonmla), and otherwise the pure-PyTorch reference (tritonmla.reference).

Host cost: an eager call whose configuration (shapes, strides, dtypes, flags) was seen before is a dictionary
lookup, two allocations and the kernel launches, straight into Triton's C launcher (tritonmla.api.calls); the
argument checks, the kernel choice and the kernel binding run on a configuration's first call. Under
torch.compile and other tracing the same work goes through torch.library custom ops (tritonmla.api.op).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Union

import torch

from . import calls, op  # noqa: F401  (op registers torch.ops.tritonmla.*)
from .checks import check_decode_inputs, check_metadata_args, check_metadata_tensors
from ..kernels import dispatch
from ..scheduler.metadata import num_parts_for


@dataclasses.dataclass
class FlashMLASchedMeta:
    """Scheduler state of FlashMLA's newer API: planned on first use, then reused for calls of the same config.

    Reuse it only while the shapes and the values of cache_seqlens stay the same (as with FlashMLA).
    """

    @dataclasses.dataclass
    class Config:
        b: int
        s_q: int
        h_q: int
        page_block_size: int
        h_k: int
        causal: bool
        is_fp8_kvcache: bool
        topk: Optional[int]
        extra_page_block_size: Optional[int]
        extra_topk: Optional[int]

    have_initialized: bool = False
    config: Optional[Config] = None
    tile_scheduler_metadata: Optional[torch.Tensor] = None  # [num_parts, 8] int32
    num_splits: Optional[torch.Tensor] = None  # [batch + 1] int32
    # The configuration (tritonmla.api.calls.DecodeCall) last checked against `config`: its calls skip the check.
    checked_call: Optional[object] = dataclasses.field(default=None, repr=False, compare=False)


def get_mla_metadata(
    cache_seqlens: Optional[torch.Tensor] = None,
    num_heads_per_head_k: Optional[int] = None,
    num_heads_k: Optional[int] = None,
) -> Union[tuple[torch.Tensor, torch.Tensor], tuple[FlashMLASchedMeta, None]]:
    """Split-KV plan for one decode step.

    With (cache_seqlens [batch] int32, num_heads_per_head_k = s_q * h_q // h_kv, num_heads_k = h_kv): returns
    (tile_scheduler_metadata [num_parts, 8] int32, num_splits [batch + 1] int32), computed on cache_seqlens'
    device without a host sync. With no arguments: returns (FlashMLASchedMeta(), None), planned on first use.
    """
    if cache_seqlens is None and num_heads_per_head_k is None and num_heads_k is None:
        return FlashMLASchedMeta(), None
    if not calls.tracing():
        try:
            call = calls.cached_plan_call(calls.plan_key(cache_seqlens, num_heads_per_head_k, num_heads_k, None))
        except (AttributeError, TypeError):  # not a tensor, or unhashable: the checks say so
            call = None
        if call is not None:
            return call(cache_seqlens)
    if cache_seqlens is None or num_heads_per_head_k is None or num_heads_k is None:
        raise TypeError("get_mla_metadata takes either no arguments or all of "
                        "(cache_seqlens, num_heads_per_head_k, num_heads_k)")
    check_metadata_args(cache_seqlens, num_heads_per_head_k, num_heads_k)
    if calls.tracing():
        num_parts = num_parts_for(cache_seqlens.device, num_heads_per_head_k, num_heads_k)
        return torch.ops.tritonmla.plan(cache_seqlens, num_parts)
    key = calls.plan_key(cache_seqlens, num_heads_per_head_k, num_heads_k, None)
    plan = calls.plan_call(key, cache_seqlens,
                           lambda: num_parts_for(cache_seqlens.device, num_heads_per_head_k, num_heads_k))
    return plan(cache_seqlens)


def _reject_unimplemented(is_fp8_kvcache, indices, attn_sink, extra_k_cache, extra_indices_in_kvcache,
                          topk_length, extra_topk_length) -> None:
    requested = {
        "is_fp8_kvcache": bool(is_fp8_kvcache), "indices": indices is not None, "attn_sink": attn_sink is not None,
        "extra_k_cache": extra_k_cache is not None, "extra_indices_in_kvcache": extra_indices_in_kvcache is not None,
        "topk_length": topk_length is not None, "extra_topk_length": extra_topk_length is not None,
    }
    names = [name for name, on in requested.items() if on]
    if names:
        raise NotImplementedError(f"tritonmla does not implement {', '.join(names)} yet (FP8 KV caches, sparse "
                                  "attention and attention sinks); dense bf16/fp16 decoding is supported")


def _plan_from_sched_meta(meta: FlashMLASchedMeta, q: torch.Tensor, k_cache: torch.Tensor,
                          cache_seqlens: torch.Tensor, causal: bool,
                          kernel: Optional[str]) -> tuple[torch.Tensor, torch.Tensor]:
    batch, seq_q, heads_q, _ = q.shape
    config = FlashMLASchedMeta.Config(batch, seq_q, heads_q, k_cache.shape[1], k_cache.shape[2], causal,
                                      False, None, None, None)
    if not meta.have_initialized:
        heads_kv = k_cache.shape[2]
        chosen = dispatch.choose(kernel, q, k_cache)
        rows = seq_q * heads_q // heads_kv
        if calls.tracing():
            num_parts = num_parts_for(cache_seqlens.device, rows, heads_kv, chosen)
            meta.tile_scheduler_metadata, meta.num_splits = torch.ops.tritonmla.plan(cache_seqlens, num_parts)
        else:
            key = calls.plan_key(cache_seqlens, rows, heads_kv, chosen)
            plan = calls.plan_call(key, cache_seqlens, lambda: num_parts_for(cache_seqlens.device, rows, heads_kv,
                                                                             chosen))
            meta.tile_scheduler_metadata, meta.num_splits = plan(cache_seqlens)
        meta.config = config
        meta.have_initialized = True
    elif meta.config != config:
        diff = [f"{f.name}: {getattr(meta.config, f.name)} -> {getattr(config, f.name)}"
                for f in dataclasses.fields(config) if getattr(meta.config, f.name) != getattr(config, f.name)]
        raise ValueError("tile_scheduler_metadata (FlashMLASchedMeta) was planned for another configuration ("
                         + "; ".join(diff) + "); use a fresh get_mla_metadata() for each configuration")
    return meta.tile_scheduler_metadata, meta.num_splits


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    tile_scheduler_metadata: Union[torch.Tensor, FlashMLASchedMeta],
    num_splits: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    is_fp8_kvcache: bool = False,
    indices: Optional[torch.Tensor] = None,
    attn_sink: Optional[torch.Tensor] = None,
    extra_k_cache: Optional[torch.Tensor] = None,
    extra_indices_in_kvcache: Optional[torch.Tensor] = None,
    topk_length: Optional[torch.Tensor] = None,
    extra_topk_length: Optional[torch.Tensor] = None,
    kernel: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLA decode attention over a paged latent KV cache.

    q [b, s_q, h_q, 576] bf16/fp16; k_cache [num_blocks, page_size, h_kv, 576] (same dtype; V = its first
    head_dim_v=512 columns); block_table [b, max_blocks] int32; cache_seqlens [b] int32, each at most
    max_blocks * page_size. Returns out [b, s_q, h_q, 512] (q's dtype) and lse [b, h_q, s_q] float32.
    causal: query i of s_q sees keys < seqlen - s_q + 1 + i. Rows that see no key give out 0, lse +inf.
    tile_scheduler_metadata and num_splits must come from one get_mla_metadata call for these cache_seqlens.
    kernel (tritonmla's own): "auto" (Gluon Hopper kernel where the inputs allow it, else portable), "hopper"
    (raise ValueError where it cannot run) or "portable"; None reads TRITONMLA_KERNEL (default "auto").
    """
    if (is_fp8_kvcache is False and indices is None and attn_sink is None and extra_k_cache is None
            and extra_indices_in_kvcache is None and topk_length is None and extra_topk_length is None
            and type(q) is torch.Tensor and not calls.tracing()):
        # The cached path: a configuration seen (and checked) before.
        if type(tile_scheduler_metadata) is FlashMLASchedMeta:
            meta, sched, splits = tile_scheduler_metadata, tile_scheduler_metadata.tile_scheduler_metadata, \
                tile_scheduler_metadata.num_splits
        else:
            meta, sched, splits = None, tile_scheduler_metadata, num_splits
        try:
            call = calls.cached_decode_call(calls.decode_key(q, k_cache, block_table, cache_seqlens, sched, splits,
                                                             head_dim_v, softmax_scale, causal, kernel))
        except (AttributeError, TypeError):  # not a tensor, unhashable, or no plan yet: the checked path says
            call = None
        if call is not None and (meta is None or (num_splits is None and meta.checked_call is call)):
            return call(q, k_cache, block_table, cache_seqlens, sched, splits)
    return _checked_call(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits,
                         softmax_scale, causal, is_fp8_kvcache, indices, attn_sink, extra_k_cache,
                         extra_indices_in_kvcache, topk_length, extra_topk_length, kernel)


def _checked_call(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits,
                  softmax_scale, causal, is_fp8_kvcache, indices, attn_sink, extra_k_cache, extra_indices_in_kvcache,
                  topk_length, extra_topk_length, kernel):
    """A configuration's first call (checks, kernel choice, planning for FlashMLASchedMeta), and every call under
    torch.compile / tracing (through the custom op)."""
    _reject_unimplemented(is_fp8_kvcache, indices, attn_sink, extra_k_cache, extra_indices_in_kvcache,
                          topk_length, extra_topk_length)
    check_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal)
    if kernel is not None and not isinstance(kernel, str):
        raise TypeError(f"kernel must be a str or None, got {type(kernel).__name__}")
    tracing = calls.tracing()
    if not torch.compiler.is_compiling():  # (inside the op it raises too, where dynamo need not trace it)
        dispatch.choose(kernel, q, k_cache)  # ValueError now for a bad name or an impossible kernel='hopper'
    meta = None
    if isinstance(tile_scheduler_metadata, FlashMLASchedMeta):
        if num_splits is not None:
            raise ValueError("num_splits must be None when tile_scheduler_metadata is a FlashMLASchedMeta")
        meta = tile_scheduler_metadata
        sched, splits = _plan_from_sched_meta(meta, q, k_cache, cache_seqlens, causal, kernel)
    else:
        check_metadata_tensors(tile_scheduler_metadata, num_splits, q.shape[0], q.device)
        sched, splits = tile_scheduler_metadata, num_splits
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if tracing or type(q) is not torch.Tensor:
        if q.stride(-1) != 1:
            q = q.contiguous()
        return torch.ops.tritonmla.mla_decode(q, k_cache, block_table, cache_seqlens, sched, splits,
                                              head_dim_v, scale, causal, kernel)
    key = calls.decode_key(q, k_cache, block_table, cache_seqlens, sched, splits, head_dim_v, softmax_scale,
                           causal, kernel)
    call = calls.decode_call(key, q, k_cache, block_table, sched, head_dim_v, scale, causal, kernel)
    if meta is not None:
        meta.checked_call = call
    return call(q, k_cache, block_table, cache_seqlens, sched, splits)
