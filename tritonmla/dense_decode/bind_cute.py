"""The CuTe DSL dense decode kernel (kernel_sm90_cute) bound to one configuration: compiled once per variant
(dtype, page size, L2 policy) and machine (tritonmla.core.cute_runtime.compile_cached: a later process loads the
disk cache in milliseconds), launched with the per-call pointers.

The launch. The compiled function's own __call__ wraps every argument (make_ptr, Int32(...), an adapter for the
stream) and marshals them through the DSL's ExecutionArgs: 45-70 us of CPU per call. What it hands the host function
in the end is one array of addresses, one per argument, each pointing at that argument's value (8 bytes for a
pointer, Int64 and the stream handle, 4 for Int32 / Float32), then the address of an int32 for the CUDA result.
A binding here owns such an array (per thread: the host function runs without the GIL) whose scalar values are
written once; a launch writes the ten pointers and the stream handle into it and calls the host function: ~1 us.
That layout is checked against the DSL's own marshalling once per compiled variant (`raw_layout_ok`); where it
differs (a DSL upgrade), the binding calls the compiled function the DSL's way (`direct` stays True either way).
"""
from __future__ import annotations

import ctypes
import functools
import struct
import threading
from typing import Any

import torch

from ..core.cute_runtime import compile_cached, kernel_sources
from . import kernel_sm90_cute

N_PTRS = 10  # q, k, block_table, seqlens, sched, splits, out, lse, out_partial, lse_partial
N_ARGS = 25  # the pointers, 14 scalars, the stream
STREAM = N_ARGS - 1
_INT32 = (11, 12, 13, 14, 15, 19, 20, 21, 22, 23)  # argument slots of Int32 scalars; 10 is Float32, 16-18 Int64
_SIGNATURE = ["Pointer"] * N_PTRS + ["Float32"] + ["Int32"] * 5 + ["Int64"] * 3 + ["Int32"] * 5 + [None]
_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def _cutlass_dtype(name: str):
    import cutlass
    return {"bf16": cutlass.BFloat16, "fp16": cutlass.Float16}[name]


def _build(dtype_name: str, page_size: int, cache_policy: int):
    """What cute.compile needs for one variant."""
    kernel = kernel_sm90_cute.MlaDecodeSm90(_cutlass_dtype(dtype_name), page_size, cache_policy)
    return kernel, kernel_sm90_cute.placeholder_args(dtype_name), {}


def compiled_variant(dtype_name: str, page_size: int, cache_policy: int) -> Any:
    """The compiled kernel for one variant: from memory, the disk cache, or a compile (~10 s). The disk key holds
    this file and the sources of the kernel and everything of tritonmla it imports (compile_cached adds the DSL
    version and settings)."""
    key = ("tritonmla.dense_decode.cute", 1, dtype_name, int(page_size), int(cache_policy))
    return compile_cached(key, functools.partial(_build, dtype_name, int(page_size), int(cache_policy)),
                          sources=kernel_sources(kernel_sm90_cute))


def _f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def dsl_args(values: tuple, dtype_name: str) -> tuple:
    """The 25 argument values (raw pointers, scalars, raw stream handle) as the DSL's own call takes them."""
    import cuda.bindings.driver as cuda
    import cutlass
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_ptr

    dtype = _cutlass_dtype(dtype_name)
    f32, i32, i64 = cutlass.Float32, cutlass.Int32, cutlass.Int64
    types = (dtype, dtype, i32, i32, i32, i32, dtype, f32, f32, f32)
    ptrs = tuple(make_ptr(t, p, cute.AddressSpace.gmem, assumed_align=16) for t, p in zip(types, values[:N_PTRS]))
    scalars = (f32(values[10]), *(i32(v) for v in values[11:16]), *(i64(v) for v in values[16:19]),
               *(i32(v) for v in values[19:24]))
    return (*ptrs, *scalars, _cu_stream(values[STREAM]))


_STREAMS: dict[int, Any] = {}


def _cu_stream(handle: int):
    s = _STREAMS.get(handle)
    if s is None:
        import cuda.bindings.driver as cuda
        if len(_STREAMS) >= 256:
            _STREAMS.clear()
        s = _STREAMS[handle] = cuda.CUstream(handle)
    return s


class ArgBlock:
    """The argument array the compiled host function reads: 25 8-byte value slots and their addresses."""
    __slots__ = ("values", "addresses")

    def __init__(self, scalars: tuple):
        self.values = (ctypes.c_uint64 * N_ARGS)()
        self.values[N_PTRS:STREAM] = scalars
        base = ctypes.addressof(self.values)
        self.addresses = [base + 8 * i for i in range(N_ARGS)]

    def fill(self, stream: int, ptrs) -> None:
        v = self.values
        v[0:N_PTRS] = ptrs
        v[STREAM] = stream


def raw_scalars(scale_log2: float, ints: tuple) -> tuple:
    """The 14 scalar slots: the Float32's bits, then the integers (all >= 0: the low 4 bytes of an Int32 slot)."""
    return (_f32_bits(scale_log2), *ints)


_RAW_OK: dict[int, tuple[Any, bool]] = {}


def raw_layout_ok(compiled) -> bool:
    """Does the DSL marshal the kernel's 25 arguments as ArgBlock lays them out (one address each, pointing at the
    same bytes)? Checked with distinct values, once per compiled function. CPU only: nothing is launched."""
    hit = _RAW_OK.get(id(compiled))
    if hit is not None and hit[0] is compiled:
        return hit[1]
    ok = False
    try:
        # Distinct values, 64-bit ones above 2**32 (a slot read as 4 bytes would show).
        scalars = raw_scalars(1.5, (11, 12, 13, 14, 15, 0x1_0000_0016, 0x2_0000_0017, 0x3_0000_0018, 19, 20, 21, 22,
                                    23))
        ptrs = tuple(0x7F12_3400_0000 + 0x10_0000 * i for i in range(N_PTRS))
        stream = 0x5_6789_ABC0
        block = ArgBlock(scalars)
        block.fill(stream, ptrs)
        types = [getattr(t, "__name__", None) for t in compiled.execution_args._meta.annotated_types]
        exe, keep = compiled.execution_args.generate_execution_args(
            dsl_args((*ptrs, 1.5, *scalars[1:], stream), "bf16"), {})
        if len(exe) == N_ARGS and types == _SIGNATURE:
            ok = True
            for i, address in enumerate(exe):
                address = _address(address)
                size = 4 if i == 10 or i in _INT32 else 8
                ok = ok and ctypes.string_at(address, size) == ctypes.string_at(block.addresses[i], size)
        del keep
    except Exception:  # noqa: BLE001  (an internal API that moved: the DSL's own call still works)
        ok = False
    _RAW_OK[id(compiled)] = (compiled, ok)
    return ok


def _address(exe_arg) -> int:
    """An entry of the DSL's execution arguments as an address (an int, or a ctypes pointer)."""
    if isinstance(exe_arg, int):
        return exe_arg
    return ctypes.cast(exe_arg, ctypes.c_void_p).value or 0


_EXECUTORS: dict[int, tuple[Any, Any]] = {}


def host_function(compiled):
    """The compiled function's host entry point (a ctypes function taking the packed argument array), its CUDA
    library loaded (on every device: CUDA libraries are context-free). Needs a GPU."""
    hit = _EXECUTORS.get(id(compiled))
    if hit is None or hit[0] is not compiled:
        executor = compiled.to()
        if not executor._has_cuda_result or executor._kernel_ptrs is not None:
            raise RuntimeError("unexpected JitExecutor layout")
        hit = _EXECUTORS[id(compiled)] = (compiled, executor)  # the executor keeps the library loaded
    return hit[1].capi_func


def packed_args(block: ArgBlock):
    """The array the host function takes: the 25 argument addresses, then that of the int32 CUDA result."""
    result = ctypes.c_int32(0)
    return (ctypes.c_void_p * (N_ARGS + 1))(*block.addresses, ctypes.addressof(result)), result


class BoundCute:
    """The compiled CuTe kernel for one configuration. launch(stream, ptrs): the fast path (raw stream handle and
    the 10 pointers in kernel order: q, k_cache, block_table, seqlens, sched, splits, out, lse, out_partial,
    lse_partial; all 16-byte aligned, out/lse/partials contiguous, q's strides those of the binding).
    launch_generic(stream, tensors): anything else (q copied when its pointer or strides do not suit the kernel)."""
    interpreted = False

    def __init__(self, q, k_cache, block_table, sched, softmax_scale: float, causal: bool):
        num_blocks, page_size, heads_kv, _ = k_cache.shape
        self.dtype_name = _DTYPES[q.dtype]
        self.scale_log2 = softmax_scale * 1.4426950408889634
        self.heads_kv = heads_kv
        self.heads_per_kv = q.shape[2] // heads_kv
        self.causal = int(causal)
        policy = kernel_sm90_cute.TMA_CACHE_POLICY  # (read per binding: scripts/cute_ab.py flips it)
        self.compiled = compiled_variant(self.dtype_name, page_size, policy)
        # The kernel loads q rows 16 bytes at a time: strides in units of 8 elements. q's strides are part of the
        # configuration; the fast path needs them so (launch_generic copies q otherwise).
        self.direct = all(s % 8 == 0 for s in q.stride()[:3]) and q.stride(-1) == 1
        self.scalars = self._scalars(q, block_table, num_blocks, q.shape[0] + sched.shape[0], sched.shape[0])
        self.raw = raw_layout_ok(self.compiled)
        self._capi = None  # the host function, once the first launch has loaded the library
        self._tls = threading.local()

    def _scalars(self, q, block_table, num_blocks: int, slots: int, num_parts: int) -> tuple:
        return raw_scalars(self.scale_log2, (
            q.shape[0], q.shape[1], self.heads_per_kv, self.heads_kv, self.causal,
            q.stride(0) // 8, q.stride(1) // 8, q.stride(2) // 8,
            block_table.stride(0), block_table.shape[1], num_blocks, slots, num_parts))

    def _state(self):
        """This thread's argument block (the host function runs without the GIL: one block per thread)."""
        block = ArgBlock(self.scalars)
        packed, result = packed_args(block)
        state = self._tls.state = (block.values, packed, result, block)
        return state

    def launch(self, stream: int, ptrs: tuple) -> None:
        capi = self._capi
        if capi is None:
            self._launch_slow(stream, ptrs, self.scalars)
            return
        try:
            values, packed, result, _ = self._tls.state
        except AttributeError:
            values, packed, result, _ = self._state()
        values[0:N_PTRS] = ptrs
        values[STREAM] = stream
        capi(packed)
        if result.value:
            _raise(result.value)

    def _launch_slow(self, stream: int, ptrs: tuple, scalars: tuple) -> None:
        if self.raw:
            capi = host_function(self.compiled)
            if scalars is self.scalars:
                self._capi = capi
                self.launch(stream, ptrs)
                return
            block = ArgBlock(scalars)
            block.fill(stream, ptrs)
            packed, result = packed_args(block)
            capi(packed)
            if result.value:
                _raise(result.value)
            return
        # The DSL's own marshalling (~60 us): only where raw_layout_ok found the layout changed.
        scale = struct.unpack("<f", struct.pack("<I", scalars[0]))[0]
        self.compiled(*dsl_args((*ptrs, scale, *scalars[1:], stream), self.dtype_name))

    def launch_generic(self, stream, args) -> None:
        q, k_cache, block_table, seqlens, sched, splits, out, lse, out_partial, lse_partial = args
        if q.data_ptr() % 16 or any(s % 8 for s in q.stride()[:3]) or q.stride(-1) != 1:
            q = q.clone(memory_format=torch.contiguous_format)  # the kernel loads q rows 16 bytes at a time
        assert out.is_contiguous() and lse.is_contiguous(), "out and lse are allocated contiguous"
        assert out_partial.is_contiguous() and lse_partial.is_contiguous()
        ptrs = (q.data_ptr(), k_cache.data_ptr(), block_table.data_ptr(), seqlens.data_ptr(), sched.data_ptr(),
                splits.data_ptr(), out.data_ptr(), lse.data_ptr(), out_partial.data_ptr(), lse_partial.data_ptr())
        scalars = self._scalars(q, block_table, k_cache.shape[0], out_partial.shape[0], sched.shape[0])
        self._launch_slow(int(stream), ptrs, self.scalars if scalars == self.scalars else scalars)


def _raise(code: int) -> None:
    import cuda.bindings.runtime as cudart
    raise RuntimeError(f"CuTe decode kernel launch failed: {cudart.cudaError_t(code)!r}")
