"""Where the kernels run: a CUDA GPU, or the CPU through Triton's interpreter (TRITON_INTERPRET=1).

Without the interpreter, CPU tensors take the pure-PyTorch reference path (see tritonmla.api.interface).
Under torch.compile, tracing or a dispatch mode the API goes through the torch.library custom ops (tracing()).
TRITON_INTERPRET is read when Triton decorates the kernels, so it must be set before tritonmla is imported.
"""
from __future__ import annotations

import functools
import os

import torch

# SM count assumed under the interpreter: small, so CPU tests exercise split-KV and the combine kernel.
INTERPRETER_SM_COUNT = 4


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def uses_triton(device: torch.device) -> bool:
    """True when tensors on `device` go through the Triton kernels (GPU, or CPU under the interpreter)."""
    return device.type == "cuda" or (device.type == "cpu" and interpreter_enabled())


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SM_COUNT


def tracing() -> bool:
    """True where the custom ops must be used: torch.compile/dynamo, make_fx, fake tensors, any dispatch mode."""
    return torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0
