"""What every operation's kernel choice shares: the `kernel` argument ("auto", "hopper", "cute", "portable", or
TRITONMLA_KERNEL; "cute" names the CuTe DSL Hopper kernels: dense decoding and sparse prefill), whether Gluon is
importable, and whether a device can run a Hopper (SM90) kernel at all. Each operation decides from these which of
its kernels runs (tritonmla.dense_decode.dispatch, tritonmla.sparse_decode.call, tritonmla.sparse_prefill.call)."""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from .runtime import interpreter_enabled

KERNELS = ("auto", "hopper", "cute", "portable")

try:  # Gluon ships with triton >= 3.5; the kernels are written against 3.6
    from triton.experimental.gluon.language.nvidia.hopper import (  # noqa: F401
        fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: F401
    from . import gluon_helpers  # noqa: F401
    GLUON_ERROR: Optional[str] = None
except Exception as e:  # noqa: BLE001  (any import failure just means: no Hopper path)
    GLUON_ERROR = f"{type(e).__name__}: {e}"


def requested_kernel(kernel: Optional[str]) -> str:
    choice = kernel if kernel is not None else os.environ.get("TRITONMLA_KERNEL", "auto")
    if choice not in KERNELS:
        source = "kernel" if kernel is not None else "TRITONMLA_KERNEL"
        raise ValueError(f"{source} must be one of {', '.join(KERNELS)}, got {choice!r}")
    return choice


@functools.lru_cache(maxsize=None)
def _is_sm90(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) == (9, 0)


def sm90_device(device: torch.device, kernel_name: str = "the Hopper kernel") -> Optional[str]:
    """None if `device` is an SM90 GPU the kernels can be launched on (not the interpreter), else why not."""
    if device.type != "cuda" or interpreter_enabled():
        return f"{kernel_name} needs a CUDA device (not the interpreter)"
    if not _is_sm90(device.index if device.index is not None else torch.cuda.current_device()):
        return f"{kernel_name} needs compute capability 9.0, {device} has {torch.cuda.get_device_capability(device)}"
    return None


def cute_device(device: torch.device) -> Optional[str]:
    """None if `device` can run the CuTe DSL Hopper kernels (SM90, CuTe DSL importable), else why not. The device
    first: importing CuTe DSL takes seconds, which "auto" should not spend on a CPU or another GPU."""
    from .cute_runtime import cute_error  # lazy: CuTe DSL is optional
    return sm90_device(device, "the CuTe kernel") or cute_error()


def hopper_device(device: torch.device) -> Optional[str]:
    """None if `device` can run the Gluon Hopper kernels at all, else why not."""
    if GLUON_ERROR is not None:
        return f"Gluon is not importable ({GLUON_ERROR})"
    return sm90_device(device)
