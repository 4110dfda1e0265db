"""Public API, a drop-in for deepseek-ai/FlashMLA's `flash_mla` module (dense decoding, and sparse decoding over
FP8 caches: tritonmla.sparse_decode).

    sched, splits = get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)   # FlashMLA's original form
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, sched, splits, causal=True)

    meta, _ = get_mla_metadata()                                               # FlashMLA's newer form
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, meta, None, causal=True)

Tensors on CUDA run the Triton kernels. CPU tensors run the same kernels under TRITON_INTERPRET=1 (set before
importing tritonmla), and otherwise the pure-PyTorch reference (tritonmla.reference).

Host cost: an eager call whose configuration (shapes, strides, dtypes, flags) was seen before is a dictionary
lookup, two allocations and the kernel launches, straight into Triton's C launcher (tritonmla.dense_decode.call); the
argument checks, the kernel choice and the kernel binding run on a configuration's first call. Under
torch.compile and other tracing the same work goes through torch.library custom ops (tritonmla.api.op).
Sparse calls (indices given) are cached the same way (tritonmla.sparse_decode.call), with their own custom op;
plans too (tritonmla.scheduler.call).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Union

import torch

from ..core import config_cache, runtime, workspace
from ..dense_decode import call as dense_call, dispatch
from ..dense_decode.plan import num_parts_for
from ..scheduler import call as plan_calls
from ..sparse_decode import call as sparse_call
from ..sparse_decode.plan import attended_lengths, sparse_num_parts
from ..sparse_prefill import call as prefill_call
from . import op  # noqa: F401  (registers torch.ops.tritonmla.*)
from .checks import check_decode_inputs, check_inputs, check_metadata_args, check_metadata_tensors, \
    check_sparse_inputs


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
    # The configuration (a dense DecodeCall, or a sparse SparseCall) last checked against `config`:
    # its calls skip the check.
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
    if not runtime.tracing():
        try:
            key = plan_calls.plan_key(cache_seqlens, num_heads_per_head_k, num_heads_k, None)
            call = plan_calls.cached_plan_call(key)
        except (AttributeError, TypeError):  # not a tensor, or unhashable: the checks say so
            call = None
        if call is not None:
            return call(cache_seqlens)
    if cache_seqlens is None or num_heads_per_head_k is None or num_heads_k is None:
        raise TypeError("get_mla_metadata takes either no arguments or all of "
                        "(cache_seqlens, num_heads_per_head_k, num_heads_k)")
    check_metadata_args(cache_seqlens, num_heads_per_head_k, num_heads_k)
    if runtime.tracing():
        num_parts = num_parts_for(cache_seqlens.device, num_heads_per_head_k, num_heads_k)
        return torch.ops.tritonmla.plan(cache_seqlens, num_parts)
    key = plan_calls.plan_key(cache_seqlens, num_heads_per_head_k, num_heads_k, None)
    plan = plan_calls.plan_call(key, cache_seqlens,
                                lambda: num_parts_for(cache_seqlens.device, num_heads_per_head_k, num_heads_k))
    return plan(cache_seqlens)


def _reject_dense_extras(is_fp8_kvcache, attn_sink, extra_k_cache, extra_indices_in_kvcache, topk_length,
                         extra_topk_length) -> None:
    """Dense decoding (no indices): FlashMLA's sparse-only arguments must be None."""
    sparse_only = {"attn_sink": attn_sink, "extra_k_cache": extra_k_cache,
                   "extra_indices_in_kvcache": extra_indices_in_kvcache, "topk_length": topk_length,
                   "extra_topk_length": extra_topk_length}
    names = [name for name, value in sparse_only.items() if value is not None]
    if names:
        raise ValueError(f"{', '.join(names)} apply to sparse decoding only: pass indices (and an FP8 k_cache "
                         "with is_fp8_kvcache=True), or leave them None")
    if is_fp8_kvcache:
        raise NotImplementedError("is_fp8_kvcache=True without indices (dense decoding over an FP8 cache) is not "
                                  "implemented; FP8 caches are supported for sparse decoding (indices given)")


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
        if runtime.tracing():
            num_parts = num_parts_for(cache_seqlens.device, rows, heads_kv, chosen)
            meta.tile_scheduler_metadata, meta.num_splits = torch.ops.tritonmla.plan(cache_seqlens, num_parts)
        else:
            key = plan_calls.plan_key(cache_seqlens, rows, heads_kv, chosen)
            plan = plan_calls.plan_call(key, cache_seqlens,
                                        lambda: num_parts_for(cache_seqlens.device, rows, heads_kv, chosen))
            meta.tile_scheduler_metadata, meta.num_splits = plan(cache_seqlens)
        meta.config = config
        meta.have_initialized = True
    elif meta.config != config:
        _config_mismatch(meta.config, config)
    return meta.tile_scheduler_metadata, meta.num_splits


def _config_mismatch(planned: FlashMLASchedMeta.Config, config: FlashMLASchedMeta.Config) -> None:
    diff = [f"{f.name}: {getattr(planned, f.name)} -> {getattr(config, f.name)}"
            for f in dataclasses.fields(config) if getattr(planned, f.name) != getattr(config, f.name)]
    raise ValueError("tile_scheduler_metadata (FlashMLASchedMeta) was planned for another configuration ("
                     + ("; ".join(diff) or "another plan size") + "); use a fresh get_mla_metadata() for each "
                     "configuration")


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: Optional[torch.Tensor],
    cache_seqlens: Optional[torch.Tensor],
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
    kernel (tritonmla's own): "auto" (on SM90 where the inputs allow a Hopper kernel: the CuTe DSL kernel if
    nvidia-cutlass-dsl is installed, else the Gluon one; elsewhere portable), "hopper" (Gluon) or "cute" (CuTe DSL,
    dense decoding only): ValueError where it cannot run; or "portable"; None reads TRITONMLA_KERNEL (default
    "auto").

    Sparse decoding (indices given; FlashMLA's DeepSeek-V3.2 / MODEL1 mode): q [b, s_q, h_q, 576 or 512] bf16
    (fp16 accepted); k_cache an FP8 cache [num_blocks, page_size, 1, 656 (V3.2) or 584 (MODEL1)]
    (tritonmla.quantize_kv_cache); indices [b, s_q, topk] int32 = page_block * page_size + offset, -1 (or any
    value outside the cache) unused; block_table / cache_seqlens ignored (None); is_fp8_kvcache=True,
    causal=False; tile_scheduler_metadata a FlashMLASchedMeta (get_mla_metadata()), num_splits None. Optional:
    topk_length [b] int32 (only the first n slots count), attn_sink [h_q] fp32 (out scaled by
    exp(lse) / (exp(lse) + exp(sink)); lse unchanged), extra_k_cache + extra_indices_in_kvcache (+
    extra_topk_length): more keys in the same softmax. Same outputs; queries with nothing to attend: out 0,
    lse +inf.

    Bad values (block-table page ids outside the cache, cache_seqlens outside [0, max_blocks * page_size],
    sparse indices outside the cache, lengths outside [0, topk]) never make a kernel read out of bounds, but give
    that request a meaningless result; tritonmla.check_inputs finds them (a host sync), and with TRITONMLA_CHECK=1
    every eager call runs it first.
    """
    if config_cache.checked_mode() and not runtime.tracing():
        check_inputs(q, k_cache, block_table, cache_seqlens, indices=indices, topk_length=topk_length,
                     extra_k_cache=extra_k_cache, extra_indices_in_kvcache=extra_indices_in_kvcache,
                     extra_topk_length=extra_topk_length)
    if (is_fp8_kvcache is False and indices is None and attn_sink is None and extra_k_cache is None
            and extra_indices_in_kvcache is None and topk_length is None and extra_topk_length is None
            and type(q) is torch.Tensor and not runtime.tracing()):
        # The cached path: a configuration seen (and checked) before.
        if type(tile_scheduler_metadata) is FlashMLASchedMeta:
            meta, sched, splits = tile_scheduler_metadata, tile_scheduler_metadata.tile_scheduler_metadata, \
                tile_scheduler_metadata.num_splits
        else:
            meta, sched, splits = None, tile_scheduler_metadata, num_splits
        try:
            call = dense_call.cached_decode_call(dense_call.decode_key(q, k_cache, block_table, cache_seqlens, sched,
                                                                       splits, head_dim_v, softmax_scale, causal,
                                                                       kernel))
        except (AttributeError, TypeError):  # not a tensor, unhashable, or no plan yet: the checked path says
            call = None
        if call is not None and (meta is None or (num_splits is None and meta.checked_call is call)):
            return call(q, k_cache, block_table, cache_seqlens, sched, splits)
    if indices is not None:
        return _sparse_call(q, k_cache, head_dim_v, tile_scheduler_metadata, num_splits, softmax_scale, causal,
                            is_fp8_kvcache, indices, attn_sink, extra_k_cache, extra_indices_in_kvcache,
                            topk_length, extra_topk_length, kernel)
    return _checked_call(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits,
                         softmax_scale, causal, is_fp8_kvcache, indices, attn_sink, extra_k_cache,
                         extra_indices_in_kvcache, topk_length, extra_topk_length, kernel)


def _checked_call(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits,
                  softmax_scale, causal, is_fp8_kvcache, indices, attn_sink, extra_k_cache, extra_indices_in_kvcache,
                  topk_length, extra_topk_length, kernel):
    """A configuration's first call (checks, kernel choice, planning for FlashMLASchedMeta), and every call under
    torch.compile / tracing (through the custom op)."""
    _reject_dense_extras(is_fp8_kvcache, attn_sink, extra_k_cache, extra_indices_in_kvcache, topk_length,
                         extra_topk_length)
    check_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal)
    if kernel is not None and not isinstance(kernel, str):
        raise TypeError(f"kernel must be a str or None, got {type(kernel).__name__}")
    tracing = runtime.tracing()
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
    key = dense_call.decode_key(q, k_cache, block_table, cache_seqlens, sched, splits, head_dim_v, softmax_scale,
                           causal, kernel)
    call = dense_call.decode_call(key, q, k_cache, block_table, sched, head_dim_v, scale, causal, kernel)
    if meta is not None:
        meta.checked_call = call
    return call(q, k_cache, block_table, cache_seqlens, sched, splits)


def _sparse_call(q, k_cache, head_dim_v, meta, num_splits, softmax_scale, causal, is_fp8_kvcache, indices,
                 attn_sink, extra_k_cache, extra_indices_in_kvcache, topk_length, extra_topk_length, kernel):
    """Sparse decoding (tritonmla.sparse_decode): the configuration's call is looked up (checked and bound on its first
    call); the FlashMLASchedMeta is planned on first use and its config checked once per configuration. Under
    torch.compile / tracing: checked every trace, planned and run through the custom ops (tritonmla.api.op)."""
    tracing = runtime.tracing()
    key, call = None, None
    if not tracing:
        try:
            key = sparse_call.sparse_key(q, k_cache, indices, topk_length, attn_sink, extra_k_cache,
                                         extra_indices_in_kvcache, extra_topk_length, head_dim_v, softmax_scale,
                                         causal, is_fp8_kvcache, kernel)
            call = sparse_call.cached_sparse_call(key)
        except (AttributeError, TypeError):  # not a tensor, or unhashable: the checks say so
            key, call = None, None
    scale = None
    if call is None:
        check_sparse_inputs(q, k_cache, head_dim_v, softmax_scale, causal, is_fp8_kvcache, indices, attn_sink,
                            extra_k_cache, extra_indices_in_kvcache, topk_length, extra_topk_length)
        if kernel is not None and not isinstance(kernel, str):
            raise TypeError(f"kernel must be a str or None, got {type(kernel).__name__}")
        dispatch.requested_kernel(kernel)  # ValueError for a bad name (TRITONMLA_KERNEL=hopper: dense only)
        if kernel == "cute":
            raise ValueError("kernel='cute' is dense decoding only so far; sparse decoding takes 'auto', 'hopper' "
                             "or 'portable'")
        why = sparse_call.hopper_unsupported(q) if kernel == "hopper" else None
        if why is not None:
            raise ValueError(f"kernel='hopper' cannot run this sparse decoding: {why}")
        scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
        if not tracing:
            call = sparse_call.sparse_call(key, q, k_cache, indices, topk_length, attn_sink, extra_k_cache,
                                           extra_indices_in_kvcache, extra_topk_length, scale, kernel)
    if type(meta) is not FlashMLASchedMeta:
        raise TypeError("sparse decoding (indices given) takes tile_scheduler_metadata from get_mla_metadata() "
                        f"called with no arguments (a FlashMLASchedMeta), got {type(meta).__name__}")
    if num_splits is not None:
        raise ValueError("num_splits must be None when tile_scheduler_metadata is a FlashMLASchedMeta")
    if tracing or meta.checked_call is not call:
        config = FlashMLASchedMeta.Config(q.shape[0], q.shape[1], q.shape[2], k_cache.shape[1], k_cache.shape[2],
                                          causal, is_fp8_kvcache, indices.shape[-1],
                                          extra_k_cache.shape[1] if extra_k_cache is not None else None,
                                          extra_indices_in_kvcache.shape[-1] if extra_k_cache is not None else None)
        num_parts = sparse_num_parts(q.device, q.shape[1], q.shape[2])
        if not meta.have_initialized:
            if tracing:
                lengths = attended_lengths(q.shape[0], indices.shape[-1], topk_length,
                                           extra_indices_in_kvcache.shape[-1] if extra_k_cache is not None else None,
                                           extra_topk_length, q.device)
                meta.tile_scheduler_metadata, meta.num_splits = torch.ops.tritonmla.plan(lengths, num_parts)
            else:
                meta.tile_scheduler_metadata, meta.num_splits = call.plan(topk_length, extra_topk_length)
            meta.config = config
            meta.have_initialized = True
        elif meta.config != config or meta.tile_scheduler_metadata.shape[0] != num_parts:
            _config_mismatch(meta.config, config)
        if tracing:
            return torch.ops.tritonmla.sparse_decode(q, k_cache, indices, topk_length, attn_sink, extra_k_cache,
                                                     extra_indices_in_kvcache, extra_topk_length,
                                                     meta.tile_scheduler_metadata, meta.num_splits, scale, kernel)
        meta.checked_call = call
    return call(q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices_in_kvcache,
                extra_topk_length, meta.tile_scheduler_metadata, meta.num_splits)


def clear() -> None:
    """Forget every configuration (dense and sparse decode, sparse prefill) and every plan, and free the stream workspaces (tuning sweeps
    change TRITONMLA_CONFIG / TRITONMLA_SPARSE_CONFIG, which are read when binding)."""
    dense_call.clear()
    sparse_call.clear()
    prefill_call.clear()
    plan_calls.clear()
    workspace.clear()
