"""Launching a compiled kernel without the JIT's per-call work.

`kernel[grid](*args)` costs 20-40 us of host time per call in triton 3.6: it binds the arguments to the signature,
specializes every one of them (dtype, 16-byte alignment, ints equal to 1 or divisible by 16), looks the variant up,
then launches. tritonmla's callers know, per configuration, everything that specialization depends on (shapes,
strides, dtypes, the value of every integer argument, and that every pointer is 16-byte aligned), so a
`BoundKernel` does it once per configuration and afterwards calls Triton's C launcher directly with raw pointers:
a few microseconds, most of them in cuLaunchKernelEx.

Argument order of the kernels launched this way: the arguments that change from call to call (device pointers,
and at most one host TMA descriptor) come first; everything after them is fixed per configuration.

Under TRITON_INTERPRET=1 (CPU tests) nothing is compiled: the kernel runs in the interpreter with the same
argument lists (tensors instead of raw pointers), so the CPU tests exercise the same plumbing.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .runtime import interpreter_enabled


class BoundKernel:
    """One variant of a Triton/Gluon kernel for one configuration: compiled (or found in Triton's caches) once.

    varying: an example of the per-call leading arguments (tensors, a host TensorDescriptor); fixed: the
    arguments after them, the same for every call of this configuration; options: launch options (num_warps,
    num_stages), which may also name trailing constexpr parameters (Gluon's num_warps).
    """

    def __init__(self, fn, grid: tuple[int, int, int], varying: tuple, fixed: tuple, options: dict[str, Any]):
        self.fn = fn
        self.grid = tuple(int(g) for g in grid)
        self.fixed = tuple(fixed)
        self.options = dict(options)
        named = fn.arg_names[len(varying) + len(self.fixed):]  # trailing parameters passed by keyword
        self._tail = self.fixed + tuple(self.options[name] for name in named)
        self._raw: Optional[Callable] = None
        self._descriptor_meta: Optional[dict] = None
        self.interpreted = interpreter_enabled()
        if self.interpreted:
            return
        compiled = fn.warmup(*varying, *self.fixed, grid=self.grid, **self.options)
        if hasattr(compiled, "result"):  # async compilation mode hands back a future
            compiled = compiled.result()
        self.compiled = compiled
        launcher = compiled.run  # loads the module and builds the C launcher on first access
        md = compiled.metadata
        self._function = compiled.function
        self._packed_metadata = compiled.packed_metadata
        self._coop = bool(md.launch_cooperative_grid)
        self._pdl = bool(md.launch_pdl)
        self._generic = launcher
        if getattr(md, "global_scratch_size", 0) or getattr(md, "profile_scratch_size", 0):
            return  # per-launch scratch allocation: keep Triton's own launcher
        raw = launcher.launch
        descriptors = list(getattr(md, "tensordesc_meta", None) or [])
        if descriptors:
            # Triton wraps the C launcher to re-encode the TMA descriptor (cuTensorMapEncodeTiled) on every call;
            # take the C function it wraps, and let the caller pass the descriptor expanded once per cache tensor.
            inner = [c.cell_contents for c in (getattr(raw, "__closure__", None) or ())
                     if type(c.cell_contents).__name__ == "builtin_function_or_method"]
            if len(descriptors) != 1 or len(inner) != 1:
                return
            raw, self._descriptor_meta = inner[0], descriptors[0]
        self._raw = raw

    @property
    def direct(self) -> bool:
        """True when launches go straight to the C launcher (the fast path)."""
        return self._raw is not None

    def expand_descriptor(self, descriptor) -> list:
        """What a host TensorDescriptor becomes in the C launcher's arguments: [CUtensorMap, *shape, *strides]."""
        from triton.backends.nvidia.driver import make_tensordesc_arg
        return make_tensordesc_arg(descriptor, self._descriptor_meta)

    def launch(self, stream: int, varying: tuple, grid: Optional[tuple[int, int, int]] = None) -> None:
        """Pointers as ints; a TMA descriptor already expanded (expand_descriptor). Needs `direct`. grid: this
        launch's, where it varies per call (default: the configuration's)."""
        gx, gy, gz = grid or self.grid
        self._raw(gx, gy, gz, stream, self._function, self._coop, self._pdl, None, None, self._packed_metadata,
                  None, None, None, *varying, *self._tail)

    def launch_generic(self, stream: int, varying: tuple, grid: Optional[tuple[int, int, int]] = None) -> None:
        """Through Triton's own launcher (scratch allocation, descriptor encoding): tensors or ints, descriptors
        as TensorDescriptor objects."""
        gx, gy, gz = grid or self.grid
        self._generic(gx, gy, gz, stream, self._function, self._packed_metadata, None, None, None, *varying,
                      *self._tail)

    def interpret(self, varying: tuple, grid: Optional[tuple[int, int, int]] = None) -> None:
        """TRITON_INTERPRET=1: run in the interpreter, tensors as the pointer arguments."""
        self.fn[grid or self.grid](*varying, *self.fixed, **self.options)


def current_stream(device_index: int) -> int:
    """The raw handle of the current CUDA stream of a device (what Triton's own launch path uses)."""
    return torch._C._cuda_getCurrentRawStream(device_index)
