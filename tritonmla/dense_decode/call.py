"""Per-configuration dense decode calls: what a decode call needs that does not change from one call to the next
is worked out once (checks, kernel choice, grid, compiled variant, output and workspace sizes); what remains per
call is a dictionary lookup, the output allocations and one kernel launch (two where the plan can split a request).

The cache key holds every input property the checks, the kernel choice and the compiled variant depend on: the
shapes, strides, dtypes and devices of all tensors, head_dim_v, softmax_scale and causal (with their types, so a
`causal=1` is still rejected), the kernel argument and TRITONMLA_KERNEL. A configuration is cached only after it
passed the checks. The compiled variants assume 16-byte aligned pointers (what Triton specializes on, and what
every torch allocation is), so a call with an unaligned pointer is run uncached through a fresh binding.

Eager calls come here directly. Under torch.compile, tracing or a dispatch mode the API goes through the
torch.library custom ops instead (tritonmla.api.op), whose implementations come here too.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..combine.combine import bind_combine
from ..core.config_cache import kernel_env, remember
from ..core.constants import D_V
from ..core.launch import current_stream
from ..core.runtime import uses_triton
from ..core.workspace import stream_workspace
from ..reference.dense_decode import mla_decode_reference
from . import dispatch
from .kernel_portable import bind_decode


def decode_key(q, k_cache, block_table, cache_seqlens, sched, splits, head_dim_v, softmax_scale, causal,
               kernel) -> tuple:
    """Raises AttributeError if an argument that should be a tensor is not."""
    return (q.shape, q.stride(), q.dtype, q.device,
            k_cache.shape, k_cache.stride(), k_cache.dtype, k_cache.device,
            block_table.shape, block_table.stride(), block_table.dtype, block_table.device,
            cache_seqlens.shape, cache_seqlens.stride(), cache_seqlens.dtype, cache_seqlens.device,
            sched.shape, sched.stride(), sched.dtype, sched.device,
            splits.shape, splits.stride(), splits.dtype, splits.device,
            head_dim_v, type(head_dim_v), softmax_scale, type(softmax_scale), causal, type(causal), kernel,
            kernel_env())


def _aligned(*ptrs: int) -> bool:
    acc = 0
    for p in ptrs:
        acc |= p
    return acc & 15 == 0


class DecodeCall:
    """One configuration of the decode step (inputs already checked): which kernel, its bound variant and the
    combine's, the output and workspace sizes. Calling it allocates out and lse and launches the decode kernel and
    (if the plan can split a request) the combine kernel."""

    def __init__(self, q, k_cache, block_table, sched, head_dim_v: int, softmax_scale: float, causal: bool,
                 kernel: Optional[str], aligned: bool = True):
        batch, seq_q, heads_q, _ = q.shape
        self.args = (head_dim_v, softmax_scale, causal, kernel)
        self.aligned = aligned  # False: a one-off call with an unaligned pointer (bound for it, not cached)
        heads_kv = k_cache.shape[2]
        rows = seq_q * heads_q // heads_kv
        self.device = q.device
        self.device_index = q.device.index if q.device.type == "cuda" else None
        self.reference = not uses_triton(q.device)
        self.requested = dispatch.requested_kernel(kernel)
        self.kernel = "reference" if self.reference else dispatch.choose(kernel, q, k_cache)
        self.dtype = q.dtype
        self.head_dim_v, self.softmax_scale, self.causal = head_dim_v, softmax_scale, causal
        self.out_shape = (batch, seq_q, heads_q, head_dim_v)
        self.lse_shape = (batch, heads_q, seq_q)
        # Partials [slot, h_kv, rows, D_V] then [slot, h_kv, rows]: a plan of P parts cuts at most P - 1
        # requests, so batch + P split slots always suffice.
        slots = batch + sched.shape[0]
        self.partial_numel = slots * heads_kv * rows * D_V
        self.workspace_numel = slots * heads_kv * rows * (D_V + 1)
        self.contiguous_q = q.stride(-1) == 1
        self.heads_per_kv = heads_q // heads_kv
        self.partial_shape = (slots, heads_kv, rows)
        # A plan of one part splits no request: nothing to merge, one launch.
        self.merges = sched.shape[0] > 1
        self.bound = None
        self.combine = None
        self.descriptors: dict[int, list] = {}  # k_cache address -> its expanded TMA descriptor (Hopper)

    def __call__(self, q, k_cache, block_table, cache_seqlens, sched, splits, out=None, lse=None, workspace=None):
        if self.reference:
            return mla_decode_reference(q, k_cache, block_table, cache_seqlens, self.head_dim_v, self.softmax_scale,
                                        self.causal)
        if self.device_index is not None and torch._C._cuda_getDevice() != self.device_index:
            with torch.cuda.device(self.device_index):  # Triton launches into the current device's context
                return self(q, k_cache, block_table, cache_seqlens, sched, splits, out, lse, workspace)
        if not self.contiguous_q:
            q = q.contiguous()
        if out is None:
            out = q.new_empty(self.out_shape)  # (new_empty: less argument parsing than torch.empty)
            lse = q.new_empty(self.lse_shape, dtype=torch.float32)
        bound = self.bound
        if bound is not None and bound.direct and (not self.merges or self.combine.direct):
            stream = current_stream(self.device_index)
            if workspace is None:
                workspace = stream_workspace(stream, self.workspace_numel, self.device)
            q_ptr, k_ptr, bt_ptr, seqlens_ptr = q.data_ptr(), k_cache.data_ptr(), block_table.data_ptr(), \
                cache_seqlens.data_ptr()
            sched_ptr, splits_ptr, w_ptr = sched.data_ptr(), splits.data_ptr(), workspace.data_ptr()
            if (q_ptr | k_ptr | bt_ptr | seqlens_ptr | sched_ptr | splits_ptr) & 15 == 0:
                out_ptr, lse_ptr, lse_partial_ptr = out.data_ptr(), lse.data_ptr(), w_ptr + 4 * self.partial_numel
                tail = (bt_ptr, seqlens_ptr, sched_ptr, splits_ptr, out_ptr, lse_ptr, w_ptr, lse_partial_ptr)
                if self.kernel == "hopper":
                    desc = self.descriptors.get(k_ptr)
                    if desc is None:
                        desc = self._descriptor(k_cache, k_ptr)
                    bound.launch(stream, (q_ptr, *desc, *tail))
                else:
                    bound.launch(stream, (q_ptr, k_ptr, *tail))
                if self.merges:
                    self.combine.launch(stream, (w_ptr, lse_partial_ptr, splits_ptr, out_ptr, lse_ptr))
                return out, lse
        if workspace is None:
            workspace = torch.empty(self.workspace_numel, dtype=torch.float32, device=self.device)
        self._run_bound(q, k_cache, block_table, cache_seqlens, sched, splits, out, lse, workspace)
        return out, lse

    def _tensor_args(self, q, k_cache, block_table, cache_seqlens, sched, splits, out, lse, workspace) -> tuple:
        k_arg = dispatch.kernel_sm90.kv_descriptor(k_cache) if self.kernel == "hopper" else k_cache
        return (q, k_arg, block_table, cache_seqlens, sched, splits, out, lse,
                workspace[:self.partial_numel].view(*self.partial_shape, D_V),
                workspace[self.partial_numel:self.workspace_numel].view(self.partial_shape))

    def _run_bound(self, q, k_cache, block_table, cache_seqlens, sched, splits, out, lse, workspace) -> None:
        """First call (binds), the interpreter, Triton's own launcher, or an unaligned pointer."""
        if self.aligned and not _aligned(q.data_ptr(), k_cache.data_ptr(), block_table.data_ptr(),
                                         cache_seqlens.data_ptr(), sched.data_ptr(), splits.data_ptr()):
            # The bound variant assumes 16-byte alignment (and TMA needs it): bind a one-off call for these.
            one_off = DecodeCall(q, k_cache, block_table, sched, *self.args, aligned=False)
            one_off._run_bound(q, k_cache, block_table, cache_seqlens, sched, splits, out, lse, workspace)
            return
        bound, combine = self.bound, self.combine
        if bound is None:
            bound = self._bind(q, k_cache, block_table, cache_seqlens, sched, splits, out, lse, workspace)
            partials = self._tensor_args(q, k_cache, block_table, cache_seqlens, sched, splits, out, lse,
                                         workspace)[8:]
            combine = bind_combine(*partials, splits, out, lse, self.heads_per_kv) if self.merges else None
            if self.aligned:
                self.bound, self.combine = bound, combine
                if bound.direct and (combine is None or combine.direct):
                    self(q, k_cache, block_table, cache_seqlens, sched, splits, out, lse, workspace)
                    return
        args = self._tensor_args(q, k_cache, block_table, cache_seqlens, sched, splits, out, lse, workspace)
        combine_args = (args[8], args[9], splits, out, lse)
        if bound.interpreted:
            bound.interpret(args)
            if combine is not None:
                combine.interpret(combine_args)
        else:
            stream = current_stream(self.device_index)
            bound.launch_generic(stream, args)
            if combine is not None:
                combine.launch_generic(stream, combine_args)

    def _bind(self, q, k_cache, block_table, cache_seqlens, sched, splits, out, lse, workspace):
        args = self._tensor_args(q, k_cache, block_table, cache_seqlens, sched, splits, out, lse, workspace)
        if self.kernel == "cute":
            try:
                from .bind_cute import BoundCute
                return BoundCute(q, k_cache, block_table, sched, self.softmax_scale, self.causal)
            except Exception as error:  # noqa: BLE001  (a CuTe DSL compile or load failure)
                if self.requested == "cute":
                    raise
                dispatch.note_cute_failure(error)  # "auto": stay correct on the Gluon or portable kernel
                self.kernel = dispatch.choose("auto", q, k_cache)
                args = self._tensor_args(q, k_cache, block_table, cache_seqlens, sched, splits, out, lse, workspace)
        if self.kernel == "hopper":
            try:
                return dispatch.kernel_sm90.bind_decode_hopper(args, q, k_cache, block_table, sched, out, lse,
                                                                 self.softmax_scale, self.causal)
            except Exception as error:  # noqa: BLE001  (a Gluon build failure)
                if self.requested == "hopper":
                    raise
                dispatch.note_hopper_failure(error)  # "auto": stay correct on the portable kernel
                self.kernel = "portable"
                args = self._tensor_args(q, k_cache, block_table, cache_seqlens, sched, splits, out, lse, workspace)
        return bind_decode(args, q, k_cache, block_table, sched, out, lse, self.softmax_scale, self.causal)

    def _descriptor(self, k_cache, k_ptr: int) -> list:
        if len(self.descriptors) >= 64:  # engines hold one cache per layer; more means caches come and go
            self.descriptors.clear()
        desc = self.bound.expand_descriptor(dispatch.kernel_sm90.kv_descriptor(k_cache))
        self.descriptors[k_ptr] = desc
        return desc


_DECODE_CALLS: dict[tuple, DecodeCall] = {}


def decode_call(key: tuple, q, k_cache, block_table, sched, head_dim_v, softmax_scale, causal,
                kernel) -> DecodeCall:
    """The cached DecodeCall of a checked configuration."""
    call = _DECODE_CALLS.get(key)
    if call is None:
        call = remember(_DECODE_CALLS, key,
                        DecodeCall(q, k_cache, block_table, sched, head_dim_v, softmax_scale, causal, kernel))
    return call


def cached_decode_call(key: tuple) -> Optional[DecodeCall]:
    return _DECODE_CALLS.get(key)


def clear() -> None:
    """Forget every dense configuration."""
    _DECODE_CALLS.clear()
