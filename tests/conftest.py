"""Test setup. Without a GPU the Triton kernels run under the interpreter: TRITON_INTERPRET must be set before
tritonmla is imported (Triton reads it when the kernels are defined); CuTe DSL kernels are compiled for sm_90a
(CUTE_DSL_ARCH, read when cutlass is first imported; without a GPU the DSL would target sm_100a)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
