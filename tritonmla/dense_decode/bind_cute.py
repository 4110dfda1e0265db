"""The CuTe DSL dense decode kernel (kernel_sm90_cute) bound to one configuration: compiled once per variant
(dtype, page size, L2 policy) per process, launched with the per-call tensors' pointers and sizes through the
DSL's own call path (make_ptr per pointer: ~40 us of CPU per call; a raw-argument launch is NOTES.md run 20's
next step, waiting for a device check)."""
from __future__ import annotations

import cuda.bindings.driver as cuda
import cutlass
import cutlass.cute as cute
import torch
from cutlass.cute.runtime import make_ptr

from . import kernel_sm90_cute
from .kernel_sm90_cute import MlaDecodeSm90

_COMPILED: dict = {}


def _ptr(dtype, t):
    return make_ptr(dtype, t.data_ptr(), cute.AddressSpace.gmem, assumed_align=16)


class BoundCute:
    """The compiled CuTe kernel for one configuration; launch_generic() takes the per-call tensors."""
    direct = False
    interpreted = False

    def __init__(self, q, k_cache, softmax_scale: float, causal: bool):
        _, page_size, heads_kv, _ = k_cache.shape
        self.dtype = cutlass.BFloat16 if q.dtype == torch.bfloat16 else cutlass.Float16
        self.scale_log2 = softmax_scale * 1.4426950408889634
        self.heads_kv = heads_kv
        self.heads_per_kv = q.shape[2] // heads_kv
        self.causal = int(causal)
        policy = kernel_sm90_cute.TMA_CACHE_POLICY  # (read per binding: scripts/cute_ab.py flips it)
        self.key = (self.dtype, page_size, policy)
        self.kernel = MlaDecodeSm90(self.dtype, page_size, policy)

    def launch_generic(self, stream, args) -> None:
        q, k_cache, block_table, seqlens, sched, splits, out, lse, out_partial, lse_partial = args
        if q.data_ptr() % 16 or any(s % 8 for s in q.stride()[:3]) or q.stride(-1) != 1:
            q = q.clone(memory_format=torch.contiguous_format)  # the kernel loads q rows 16 bytes at a time
        assert out.is_contiguous() and lse.is_contiguous(), "out and lse are allocated contiguous"
        f32, i32, i64 = cutlass.Float32, cutlass.Int32, cutlass.Int64
        call_args = (_ptr(self.dtype, q), _ptr(self.dtype, k_cache), _ptr(i32, block_table), _ptr(i32, seqlens),
                     _ptr(i32, sched), _ptr(i32, splits), _ptr(self.dtype, out), _ptr(f32, lse),
                     _ptr(f32, out_partial), _ptr(f32, lse_partial),
                     f32(self.scale_log2), i32(q.shape[0]), i32(q.shape[1]), i32(self.heads_per_kv),
                     i32(self.heads_kv), i32(self.causal),
                     i64(q.stride(0) // 8), i64(q.stride(1) // 8), i64(q.stride(2) // 8),
                     i32(block_table.stride(0)), i32(block_table.shape[1]), i32(k_cache.shape[0]),
                     i32(out_partial.shape[0]), i32(sched.shape[0]), cuda.CUstream(stream))
        compiled = _COMPILED.get(self.key)
        if compiled is None:
            compiled = _COMPILED[self.key] = cute.compile(self.kernel, *call_args)
        compiled(*call_args)
