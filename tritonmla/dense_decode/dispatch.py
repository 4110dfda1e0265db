"""Which dense decode kernel runs: the Gluon Hopper kernel (kernel_sm90), the CuTe DSL Hopper kernel
(kernel_sm90_cute) or the portable Triton one (kernel_portable).

kernel="auto" (the default) takes the CuTe DSL kernel where it can run (cute_unsupported returns None: an SM90 GPU,
nvidia-cutlass-dsl importable, the inputs TMA can read; faster than the Gluon kernel on every configuration timed,
BENCHMARKS.md), else the Gluon Hopper kernel where the inputs allow it (hopper_unsupported), else the portable
kernel; "hopper" and "cute" insist on theirs (a clear ValueError says why it cannot run); "portable" forces the
portable kernel. The default comes from TRITONMLA_KERNEL when no argument names one (tritonmla.core.hopper).
Which kernel a configuration runs is decided on its first call (tritonmla.dense_decode.call); under "auto" a build
failure there falls back (CuTe -> Gluon -> portable) with a warning.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from ..core.constants import D_QK
from ..core.hopper import GLUON_ERROR, cute_device, hopper_device, requested_kernel

HOPPER_BLOCK_M = 64  # query rows per program of the Hopper kernel (kernel_sm90.BLOCK_M)

if GLUON_ERROR is None:
    from . import kernel_sm90
else:
    kernel_sm90 = None

_hopper_failed: Optional[str] = None  # set when "auto" saw the Gluon Hopper kernel fail to compile
_cute_failed: Optional[str] = None  # set when "auto" saw the CuTe kernel fail to compile or load


def tma_cache_unsupported(k_cache: torch.Tensor, kernel_name: str) -> Optional[str]:
    """None if both Hopper kernels (Gluon, CuTe) can read this cache through TMA, else why not."""
    num_blocks, page_size, heads_kv, d = k_cache.shape
    if page_size % 64 != 0:
        return f"{kernel_name} needs page_size a multiple of 64 (TMA tiles of 64 tokens), got {page_size}"
    if k_cache.stride() != (page_size * heads_kv * d, heads_kv * d, d, 1):
        return f"{kernel_name} needs a contiguous k_cache (TMA reads it as [tokens, heads_kv * 576])"
    if k_cache.data_ptr() % 16 != 0:
        return f"{kernel_name} needs k_cache 16-byte aligned (TMA)"
    if num_blocks * page_size >= 2 ** 31:
        return f"{kernel_name} addresses cache rows with int32 TMA coordinates: num_blocks * page_size < 2**31"
    assert d == D_QK
    return None


def hopper_unsupported(q: torch.Tensor, k_cache: torch.Tensor) -> Optional[str]:
    """None if these inputs can take the Gluon Hopper kernel, else the reason (for errors and the support matrix)."""
    return hopper_device(q.device) or tma_cache_unsupported(k_cache, "the Hopper kernel")


def cute_unsupported(q: torch.Tensor, k_cache: torch.Tensor) -> Optional[str]:
    """None if these inputs can take the CuTe DSL kernel, else the reason."""
    return cute_device(q.device) or tma_cache_unsupported(k_cache, "the CuTe kernel")


def plans_for_hopper(device: torch.device, kernel: Optional[str] = None) -> bool:
    """Whether get_mla_metadata should size its plan for a Hopper kernel (64-row blocks, one part per SM)."""
    choice = requested_kernel(kernel)
    if choice == "cute":
        return cute_device(device) is None
    if choice == "auto" and _cute_failed is None and cute_device(device) is None:
        return True
    return choice != "portable" and hopper_device(device) is None and _hopper_failed is None


def choose(kernel: Optional[str], q: torch.Tensor, k_cache: torch.Tensor) -> str:
    """'hopper', 'cute' or 'portable' for this call."""
    choice = requested_kernel(kernel)
    if choice == "portable":
        return "portable"
    if choice == "cute":
        why = cute_unsupported(q, k_cache)
        if why is not None:
            raise ValueError(f"kernel='cute' cannot run here: {why}")
        return "cute"
    if choice == "hopper":
        why = hopper_unsupported(q, k_cache)
        if why is not None:
            raise ValueError(f"kernel='hopper' cannot run here: {why}")
        return "hopper"
    if _cute_failed is None and cute_unsupported(q, k_cache) is None:
        return "cute"
    return "hopper" if _hopper_failed is None and hopper_unsupported(q, k_cache) is None else "portable"


def note_cute_failure(error: Exception) -> None:
    """"auto" keeps working on the Gluon (or portable) kernel if the CuTe kernel fails to build; say so once."""
    global _cute_failed
    _cute_failed = f"{type(error).__name__}: {error}"
    warnings.warn(f"tritonmla: the CuTe DSL Hopper kernel failed to build ({_cute_failed}); using the Gluon kernel",
                  RuntimeWarning, stacklevel=3)


def note_hopper_failure(error: Exception) -> None:
    """"auto" keeps working on the portable kernel if the Hopper kernel fails to build; say so once."""
    global _hopper_failed
    _hopper_failed = f"{type(error).__name__}: {error}"
    warnings.warn(f"tritonmla: the Gluon Hopper kernel failed to build ({_hopper_failed}); using the portable "
                  "kernel", RuntimeWarning, stacklevel=3)
