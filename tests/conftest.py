"""Test setup. Without a GPU the Triton kernels run under the interpreter: TRITON_INTERPRET must be set before
tritonmla is imported (Triton reads it when the kernels are defined)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
