"""Per-configuration sparse decode calls (the eager path), as tritonmla.dense_decode.call does for dense decoding: a
configuration (shapes, strides, dtypes, devices, which optional inputs are given, flags) is checked, planned for
and bound on its first call; later calls are a dictionary lookup, two allocations and the launches (the decode
kernel, and the combine where the plan can split a request), straight into Triton's C launcher.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from ..combine.combine import bind_combine_sink
from ..core.config_cache import props, remember
from ..core.constants import D_V
from ..core.fp8_cache_layouts import cache_alignment, layout_for
from ..core.hopper import hopper_device, requested_kernel
from ..core.launch import current_stream
from ..core.runtime import uses_triton
from ..core.workspace import stream_workspace
from ..reference.sparse_decode import sparse_decode_reference
from ..scheduler.call import parts_key, plan_call
from .kernel_portable import bind_sparse_decode
from .plan import attended_lengths, sparse_num_parts


def sparse_key(q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices, extra_topk_length,
               head_dim_v, softmax_scale, causal, is_fp8_kvcache, kernel) -> tuple:
    """Raises AttributeError if an argument that should be a tensor is not."""
    return (q.shape, q.stride(), q.dtype, q.device,
            k_cache.shape, k_cache.stride(), k_cache.dtype, k_cache.device,
            indices.shape, indices.stride(), indices.dtype, indices.device,
            props(topk_length), props(attn_sink), props(extra_k_cache), props(extra_indices),
            props(extra_topk_length),
            head_dim_v, type(head_dim_v), softmax_scale, type(softmax_scale), causal, type(causal),
            is_fp8_kvcache, type(is_fp8_kvcache), kernel)


def hopper_unsupported(q) -> Optional[str]:
    """None if the Gluon kernel (kernel_sm90) can take this sparse call, else why not."""
    return hopper_device(q.device) or ("h_q <= 32 runs on the portable kernel" if q.shape[2] <= 32 else None)


class SparseCall:
    """One checked configuration of the sparse decode step."""

    def __init__(self, q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices,
                 extra_topk_length, softmax_scale: float, kernel: Optional[str] = None):
        batch, seq_q, heads_q, _ = q.shape
        self.layout = layout_for(None, d_qk=q.shape[-1])
        self.device = q.device
        self.device_index = q.device.index if q.device.type == "cuda" else None
        self.reference = not uses_triton(q.device)
        # The Gluon kernel where it can run; "portable" forces the other, "hopper" insists (a build failure
        # raises instead of falling back).
        requested = requested_kernel(kernel)
        if requested == "cute":  # no CuTe sparse kernel yet (TRITONMLA_KERNEL=cute): the default choice
            requested = "auto"
        self.insist = requested == "hopper"
        self.hopper = requested != "portable" and hopper_unsupported(q) is None
        self.softmax_scale = softmax_scale
        self.topk = indices.shape[-1]
        self.extra_topk = extra_indices.shape[-1] if extra_indices is not None else None
        self.has = (topk_length is not None, extra_k_cache is not None, extra_topk_length is not None,
                    attn_sink is not None)
        self.num_parts = sparse_num_parts(q.device, seq_q, heads_q)
        self.batch = batch
        self.out_shape = (batch, seq_q, heads_q, D_V)
        self.lse_shape = (batch, heads_q, seq_q)
        slots = batch + self.num_parts  # a plan of P parts cuts at most P - 1 requests
        rows = seq_q * heads_q
        self.partial_shape = (slots, 1, rows)
        self.partial_numel = slots * rows * D_V
        self.workspace_numel = slots * rows * (D_V + 1)
        self.merges = self.num_parts > 1
        self.cache_alignment = cache_alignment(self.layout)
        self.bound: dict[bool, tuple] = {}  # 16-byte aligned pointers? -> (decode, combine or None)

    def plan(self, topk_length, extra_topk_length) -> tuple[torch.Tensor, torch.Tensor]:
        """(tile_scheduler_metadata, num_splits) for these lengths, on the device (no host sync)."""
        lengths = attended_lengths(self.batch, self.topk, topk_length, self.extra_topk, extra_topk_length,
                                   self.device)
        return plan_call(parts_key(lengths, self.num_parts), lengths, lambda: self.num_parts)(lengths)

    def __call__(self, q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices,
                 extra_topk_length, sched, splits, out=None, lse=None, workspace=None):
        if self.reference:
            return sparse_decode_reference(q, k_cache, indices, topk_length, attn_sink, extra_k_cache,
                                           extra_indices, extra_topk_length, self.softmax_scale)
        if self.device_index is not None and torch._C._cuda_getDevice() != self.device_index:
            with torch.cuda.device(self.device_index):  # Triton launches into the current device's context
                return self(q, k_cache, indices, topk_length, attn_sink, extra_k_cache, extra_indices,
                            extra_topk_length, sched, splits, out, lse, workspace)
        if out is None:
            out = q.new_empty(self.out_shape)
            lse = q.new_empty(self.lse_shape, dtype=torch.float32)
        # Absent optional inputs: any valid pointer (the kernel's HAS_* flags keep it unread).
        len1 = topk_length if topk_length is not None else indices
        k2 = extra_k_cache if extra_k_cache is not None else k_cache
        i2 = extra_indices if extra_indices is not None else indices
        len2 = extra_topk_length if extra_topk_length is not None else indices
        sink = attn_sink if attn_sink is not None else indices
        tensors = (q, k_cache, indices, len1, k2, i2, len2, sink, sched, splits)
        ptrs = [t.data_ptr() for t in tensors]
        aligned = 0
        for p in ptrs:
            aligned |= p
        aligned = aligned & 15 == 0
        if not aligned:  # (a configuration is checked once; its later calls may bring other cache addresses)
            for name, ptr in (("k_cache", ptrs[1]), ("extra_k_cache", ptrs[4])):
                if ptr % self.cache_alignment:
                    raise ValueError(f"{name} must start at a {self.cache_alignment}-byte aligned address")
        bound = self.bound.get(aligned)
        if bound is not None and bound[0].direct and (bound[1] is None or bound[1].direct):
            stream = current_stream(self.device_index)
            if workspace is None:
                workspace = stream_workspace(stream, self.workspace_numel, self.device)
            w_ptr, out_ptr, lse_ptr = workspace.data_ptr(), out.data_ptr(), lse.data_ptr()
            lse_partial_ptr = w_ptr + 4 * self.partial_numel
            bound[0].launch(stream, (*ptrs, out_ptr, lse_ptr, w_ptr, lse_partial_ptr))
            if bound[1] is not None:
                bound[1].launch(stream, (w_ptr, lse_partial_ptr, ptrs[9], ptrs[7], out_ptr, lse_ptr))
            return out, lse
        if workspace is None:
            workspace = torch.empty(self.workspace_numel, dtype=torch.float32, device=self.device)
        out_partial = workspace[:self.partial_numel].view(*self.partial_shape, D_V)
        lse_partial = workspace[self.partial_numel:self.workspace_numel].view(self.partial_shape)
        # Tensor arguments: the caches as bytes (the interpreter and Triton's launcher take any 1-byte dtype).
        args = (q, k_cache.view(torch.uint8), indices, len1, k2.view(torch.uint8), i2, len2, sink, sched, splits,
                out, lse, out_partial, lse_partial)
        combine_args = (out_partial, lse_partial, splits, sink, out, lse)
        if bound is None:
            decode = None
            bind = lambda bind_kernel: bind_kernel(  # noqa: E731
                args, q, k_cache, indices, extra_k_cache, extra_indices, out, lse, self.layout, self.num_parts,
                self.softmax_scale, self.has[0], self.has[2], self.has[3])
            if self.hopper:
                try:
                    from .kernel_sm90 import bind_sparse_hopper  # (Gluon: imported where it runs)
                    decode = bind(bind_sparse_hopper)
                except Exception as error:  # noqa: BLE001  (a Gluon build failure: keep serving on portable)
                    if self.insist:
                        raise
                    warnings.warn(f"tritonmla: the Gluon sparse kernel failed to build ({type(error).__name__}: "
                                  f"{error}); using the portable kernel", RuntimeWarning, stacklevel=2)
                    self.hopper = False
            if decode is None:
                decode = bind(bind_sparse_decode)
            combine = bind_combine_sink(*combine_args, self.has[3]) if self.merges else None
            bound = self.bound[aligned] = (decode, combine)
        if bound[0].interpreted:
            bound[0].interpret(args)
            if bound[1] is not None:
                bound[1].interpret(combine_args)
        else:
            stream = current_stream(self.device_index)
            bound[0].launch_generic(stream, args)
            if bound[1] is not None:
                bound[1].launch_generic(stream, combine_args)
        return out, lse


_SPARSE_CALLS: dict[tuple, SparseCall] = {}


def cached_sparse_call(key: tuple) -> Optional[SparseCall]:
    return _SPARSE_CALLS.get(key)


def sparse_call(key: tuple, *args) -> SparseCall:
    """The cached SparseCall of a checked configuration (args: SparseCall's)."""
    call = _SPARSE_CALLS.get(key)
    if call is None:
        call = remember(_SPARSE_CALLS, key, SparseCall(*args))
    return call


def clear() -> None:
    """Forget every sparse configuration."""
    _SPARSE_CALLS.clear()
