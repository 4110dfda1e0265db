"""Per-configuration sparse prefill calls (the eager path), as tritonmla.dense_decode.call does for decoding: a
configuration (everything but the token counts s_q and s_kv: head counts, head dim, topk, strides, dtypes, devices,
which optional inputs are given, the scale, TRITONMLA_KERNEL) is checked and bound on its first call; later calls are
a dictionary lookup, three allocations and one launch: the CuTe DSL kernel on SM90 (sparse_prefill.bind_cute), else
straight into Triton's C launcher, with the grid sized by s_q.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from ..core.config_cache import kernel_env, remember
from ..core.constants import D_V
from ..core.hopper import cute_device
from ..core.launch import current_stream
from ..core.runtime import uses_triton
from ..reference.sparse_prefill import sparse_prefill_reference
from .kernel_portable import bind_sparse_prefill, head_blocks


def _props(t: Optional[torch.Tensor]):
    return None if t is None else (t.dim(), t.stride(), t.dtype, t.device)


def prefill_key(q, kv, indices, topk_length, attn_sink, sm_scale, d_v) -> tuple:
    """The configuration of a call; s_q (q.shape[0], indices.shape[0], topk_length's length) and s_kv
    (kv.shape[0]) are left out. Raises AttributeError if an argument that should be a tensor is not."""
    return (q.shape[1:], q.stride(), q.dtype, q.device,
            kv.shape[1:], kv.stride(), kv.dtype, kv.device,
            indices.shape[1:], indices.stride(), indices.dtype, indices.device,
            _props(topk_length), _props(attn_sink), None if attn_sink is None else attn_sink.shape,
            sm_scale, type(sm_scale), d_v, type(d_v), kernel_env())


def same_tokens(q, indices, topk_length) -> bool:
    """What the key leaves out but a checked configuration needs: one s_q for q, indices and topk_length."""
    s_q = q.shape[0]
    return indices.shape[0] == s_q and (topk_length is None or topk_length.shape[0] == s_q)


class SparsePrefillCall:
    """One checked configuration of flash_mla_sparse_fwd."""

    def __init__(self, q, kv, indices, topk_length, attn_sink, softmax_scale: float):
        _, self.heads_q, _ = q.shape
        self.device = q.device
        self.device_index = q.device.index if q.device.type == "cuda" else None
        self.reference = not uses_triton(q.device)
        self.softmax_scale = softmax_scale
        self.has_len, self.has_sink = topk_length is not None, attn_sink is not None
        self.head_blocks = head_blocks(self.heads_q, kv.shape[1])
        self.bound: dict[bool, object] = {}  # 16-byte aligned pointers? -> the bound kernel
        # The CuTe DSL Hopper kernel (kernel_sm90_cute) wherever it can run (an SM90 GPU with CuTe DSL, bf16, 16-byte
        # rows), else the portable one; TRITONMLA_KERNEL=portable asks for the portable one. A build failure falls
        # back with a warning, unless TRITONMLA_KERNEL=cute named the CuTe kernel.
        self.cute = None
        self.cute_max_tokens = 0
        choice = kernel_env()
        if not self.reference and choice != "portable":
            if cute_device(q.device) is None:  # (checked before importing CuTe DSL: off SM90 it is never imported)
                from .bind_cute import BoundPrefillCute, cute_unsupported, max_tokens
                if cute_unsupported(q, kv, indices) is None:
                    try:
                        self.cute = BoundPrefillCute(self.has_len, self.has_sink, q.shape[-1], softmax_scale)
                        self.cute_max_tokens = max_tokens(self.heads_q, kv.shape[1])
                    except Exception as error:  # noqa: BLE001  (a DSL or toolchain failure: portable serves)
                        if choice == "cute":
                            raise
                        warnings.warn(f"tritonmla: the CuTe DSL sparse prefill kernel failed to build "
                                      f"({type(error).__name__}: {error}); using the portable kernel",
                                      RuntimeWarning, stacklevel=2)

    def __call__(self, q, kv, indices, topk_length, attn_sink, out=None, max_logits=None, lse=None):
        """out / max_logits / lse: contiguous tensors to write into (tests pass poisoned ones), else allocated."""
        if self.reference:
            return sparse_prefill_reference(q, kv, indices, self.softmax_scale, D_V, attn_sink, topk_length)
        if self.device_index is not None and torch._C._cuda_getDevice() != self.device_index:
            with torch.cuda.device(self.device_index):  # Triton launches into the current device's context
                return self(q, kv, indices, topk_length, attn_sink, out, max_logits, lse)
        s_q = q.shape[0]
        if out is None:
            out = q.new_empty((s_q, self.heads_q, D_V))
            max_logits = q.new_empty((s_q, self.heads_q), dtype=torch.float32)
            lse = q.new_empty((s_q, self.heads_q), dtype=torch.float32)
        if s_q == 0:
            return out, max_logits, lse
        if self.cute is not None and s_q <= self.cute_max_tokens and (q.data_ptr() | kv.data_ptr()) % 16 == 0:
            self.cute.launch(current_stream(self.device_index), q, kv, indices, topk_length, attn_sink, out,
                             max_logits, lse)
            return out, max_logits, lse
        # Absent optional inputs: any valid pointer (the kernel's HAS_* flags keep it unread).
        length = topk_length if topk_length is not None else indices
        sink = attn_sink if attn_sink is not None else indices
        grid = (s_q * self.head_blocks, 1, 1)
        ptrs = (q.data_ptr(), kv.data_ptr(), indices.data_ptr(), length.data_ptr(), sink.data_ptr())
        aligned = (ptrs[0] | ptrs[1] | ptrs[2] | ptrs[3] | ptrs[4]) & 15 == 0
        bound = self.bound.get(aligned)
        if bound is not None and bound.direct:
            bound.launch(current_stream(self.device_index),
                         (*ptrs, out.data_ptr(), max_logits.data_ptr(), lse.data_ptr(), kv.shape[0]), grid)
            return out, max_logits, lse
        args = (q, kv, indices, length, sink, out, max_logits, lse, kv.shape[0])
        if bound is None:
            bound = self.bound[aligned] = bind_sparse_prefill(args, q, kv, indices, out, max_logits, lse,
                                                              self.softmax_scale, self.has_len, self.has_sink)
        if bound.interpreted:
            bound.interpret(args, grid)
        else:
            bound.launch_generic(current_stream(self.device_index), args, grid)
        return out, max_logits, lse


_PREFILL_CALLS: dict[tuple, SparsePrefillCall] = {}


def cached_prefill_call(key: tuple) -> Optional[SparsePrefillCall]:
    return _PREFILL_CALLS.get(key)


def prefill_call(key: tuple, *args) -> SparsePrefillCall:
    """The cached SparsePrefillCall of a checked configuration (args: SparsePrefillCall's)."""
    call = _PREFILL_CALLS.get(key)
    if call is None:
        call = remember(_PREFILL_CALLS, key, SparsePrefillCall(*args))
    return call


def clear() -> None:
    _PREFILL_CALLS.clear()
