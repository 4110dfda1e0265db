"""The CuTe DSL sparse decode kernel (kernel_sm90_cute) bound to one configuration: compiled once per variant
(topk_length given, sink given) and machine (core.cute_runtime.compile_cached, disk cache), launched through the
DSL's own call path (~40 us of CPU a call; the dense kernel's raw-argument launch is the next step if it ships)."""
from __future__ import annotations

import functools
from typing import Optional

import torch

from ..core import constants as _constants
from ..core import cute_index_mask as _mask
from ..core.cute_runtime import compile_cached
from ..core.fp8_cache_layouts import V32, layout_for
from ..dense_decode import kernel_sm90_cute as _dense
from . import kernel_sm90_cute


def cute_unsupported(q: torch.Tensor, k_cache: torch.Tensor, indices: torch.Tensor,
                     extra_k_cache: Optional[torch.Tensor]) -> Optional[str]:
    """None if this sparse call can take the CuTe kernel (the device is checked by the caller), else why not."""
    if layout_for(None, d_qk=q.shape[-1]) is not V32:
        return "the CuTe sparse kernel takes the V3.2 layout (d_qk 576)"
    if extra_k_cache is not None:
        return "the CuTe sparse kernel has no extra cache yet"
    if q.dtype != torch.bfloat16:
        return "the CuTe sparse kernel takes bf16 q"
    if q.shape[2] % 64:
        return "the CuTe sparse kernel takes h_q a multiple of 64"
    if q.stride(-1) != 1 or indices.stride(-1) != 1 or any(s % 8 for s in q.stride()[:3]) or q.data_ptr() % 16:
        return "the CuTe sparse kernel needs q's rows 16-byte aligned and indices contiguous in their last dimension"
    if k_cache.stride(1) * k_cache.element_size() != V32.row_bytes:
        return "the CuTe sparse kernel needs the cache's rows contiguous"
    if k_cache.data_ptr() % 16 or k_cache.stride(0) % 16:
        return "the CuTe sparse kernel needs the cache's blocks 16-byte aligned"
    return None


def _build(has_len: bool, has_sink: bool):
    return kernel_sm90_cute.MlaSparseDecodeSm90(has_len, has_sink), kernel_sm90_cute.placeholder_args(), {}


class BoundSparseCute:
    """launch(stream, q, k_cache, indices, topk_length, attn_sink, sched, splits, out, lse, out_partial,
    lse_partial): one sparse decode step's decode kernel (the combine is launched by the caller)."""

    def __init__(self, has_len: bool, has_sink: bool, softmax_scale: float):
        self.scale_log2 = softmax_scale * 1.4426950408889634
        key = ("tritonmla.sparse_decode.cute", 1, bool(has_len), bool(has_sink))
        self.compiled = compile_cached(key, functools.partial(_build, bool(has_len), bool(has_sink)),
                                       sources=(kernel_sm90_cute.__file__, _dense.__file__, _mask.__file__,
                                                _constants.__file__))

    def launch(self, stream: int, q, k_cache, indices, topk_length, attn_sink, sched, splits, out, lse,
               out_partial, lse_partial) -> None:
        import cuda.bindings.driver as cuda
        import cutlass
        import cutlass.cute as cute
        from cutlass.cute.runtime import make_ptr

        bf16, f32, i32, i64, u8 = cutlass.BFloat16, cutlass.Float32, cutlass.Int32, cutlass.Int64, cutlass.Uint8

        def ptr(t, tensor, align):
            return make_ptr(t, tensor.data_ptr(), cute.AddressSpace.gmem, assumed_align=align)

        batch, seq_q, heads_q, _ = q.shape
        num_blocks, page_size = k_cache.shape[:2]
        length = topk_length if topk_length is not None else indices  # absent: never read (compile-time flag)
        sink = attn_sink if attn_sink is not None else lse
        self.compiled(ptr(bf16, q, 16), ptr(u8, k_cache, 16), ptr(i32, indices, 4), ptr(i32, length, 4),
                      ptr(f32, sink, 4), ptr(i32, sched, 4), ptr(i32, splits, 4), ptr(bf16, out, 16),
                      ptr(f32, lse, 4), ptr(f32, out_partial, 16), ptr(f32, lse_partial, 4), f32(self.scale_log2),
                      i32(batch), i32(seq_q), i32(heads_q), i32(indices.shape[-1]), i32(page_size),
                      i32(num_blocks * page_size), i64(q.stride(0) // 8), i64(q.stride(1) // 8),
                      i64(q.stride(2) // 8), i64(k_cache.stride(0) * k_cache.element_size()),
                      i64(indices.stride(0)), i64(indices.stride(1)), i32(out_partial.shape[0]), i32(sched.shape[0]),
                      cuda.CUstream(stream))
