"""The CuTe DSL sparse prefill kernel (kernel_sm90_cute) bound to one configuration: compiled once per variant
(topk_length given, sink given, d_qk) and machine (core.cute_runtime.compile_cached, disk cache), launched through the
DSL's own call path (a prefill call runs for milliseconds: its ~40 us of CPU do not matter)."""
from __future__ import annotations

import functools
from typing import Optional

import torch

from ..core.constants import D_QK, D_V
from ..core.cute_runtime import compile_cached, kernel_sources
from . import kernel_sm90_cute

MAX_GRID_X = 2**31 - 1  # the launch puts (query token, row block) on the grid's x


def max_tokens(heads_q: int, heads_kv: int) -> int:
    """The most query tokens one launch takes: ceil(h_q / h_kv / 64) row blocks per token on the grid's x."""
    return MAX_GRID_X // -(-(heads_q // heads_kv) // 64)


def cute_unsupported(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor) -> Optional[str]:
    """None if these inputs can take the CuTe prefill kernel, else why not (the device is checked by the caller)."""
    if q.dtype != torch.bfloat16 or kv.dtype != torch.bfloat16:
        return "the CuTe prefill kernel takes bf16 q and kv"
    if q.shape[-1] not in (D_QK, D_V):
        return f"the CuTe prefill kernel takes d_qk {D_QK} (V3.2) or {D_V} (MODEL1), got {q.shape[-1]}"
    if q.stride(-1) != 1 or kv.stride(-1) != 1 or indices.stride(-1) != 1:
        return "the CuTe prefill kernel needs q, kv and indices contiguous in their last dimension"
    if any(s % 8 for s in (*q.stride()[:2], *kv.stride()[:2])):
        return "the CuTe prefill kernel needs q and kv rows 16-byte aligned (strides multiples of 8)"
    if (q.data_ptr() | kv.data_ptr()) % 16:
        return "the CuTe prefill kernel needs q and kv 16-byte aligned"
    return None


def _build(has_len: bool, has_sink: bool, d_qk: int):
    return kernel_sm90_cute.MlaSparsePrefillSm90(has_len, has_sink, d_qk), kernel_sm90_cute.placeholder_args(), {}


class BoundPrefillCute:
    """launch(stream, q, kv, indices, topk_length, attn_sink, out, max_logits, lse): one flash_mla_sparse_fwd."""

    def __init__(self, has_len: bool, has_sink: bool, d_qk: int, softmax_scale: float):
        self.scale_log2 = softmax_scale * 1.4426950408889634
        key = ("tritonmla.sparse_prefill.cute", 1, bool(has_len), bool(has_sink), int(d_qk))
        self.compiled = compile_cached(key, functools.partial(_build, bool(has_len), bool(has_sink), int(d_qk)),
                                       sources=kernel_sources(kernel_sm90_cute))

    def launch(self, stream: int, q, kv, indices, topk_length, attn_sink, out, max_logits, lse) -> None:
        self.compiled(*self.dsl_args(stream, q, kv, indices, topk_length, attn_sink, out, max_logits, lse))

    def dsl_args(self, stream: int, q, kv, indices, topk_length, attn_sink, out, max_logits, lse) -> tuple:
        """The compiled kernel's arguments for one call (also what scripts/cute_timeline.py compiles with)."""
        import cuda.bindings.driver as cuda
        import cutlass
        import cutlass.cute as cute
        from cutlass.cute.runtime import make_ptr

        bf16, f32, i32, i64 = cutlass.BFloat16, cutlass.Float32, cutlass.Int32, cutlass.Int64

        def ptr(t, tensor):
            return make_ptr(t, tensor.data_ptr(), cute.AddressSpace.gmem, assumed_align=16 if t is bf16 else 4)

        length = topk_length if topk_length is not None else indices  # absent: never read (compile-time flag)
        sink = attn_sink if attn_sink is not None else lse
        s_q, heads_q, _ = q.shape
        s_kv, heads_kv, _ = kv.shape
        return (ptr(bf16, q), ptr(bf16, kv), ptr(i32, indices), ptr(i32, length), ptr(f32, sink),
                ptr(bf16, out), ptr(f32, max_logits), ptr(f32, lse),
                f32(self.scale_log2), i32(s_q), i32(heads_q), i32(heads_kv), i32(s_kv), i32(indices.shape[-1]),
                i64(q.stride(0) // 8), i64(q.stride(1) // 8), i64(kv.stride(0) // 8), i64(kv.stride(1) // 8),
                i64(indices.stride(0)), i64(indices.stride(1)), cuda.CUstream(stream))
