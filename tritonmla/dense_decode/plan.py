"""The split-KV plan of a dense decode step: how many parts the scheduler (tritonmla.scheduler) cuts the batch
into, sized for the kernel that will run (tritonmla.dense_decode.dispatch). As tritonmla.sparse_decode.plan does
for sparse decoding."""
from __future__ import annotations

import torch
import triton

from ..core.runtime import sm_count
from . import dispatch
from .kernel_portable import launch_config


def num_parts_for(device: torch.device, rows_per_kv_head: int, num_heads_k: int, kernel: str | None = None) -> int:
    """How many KV ranges to cut the batch into: enough programs to fill the GPU once (for the kernel that
    will run there; any plan is correct for either kernel)."""
    if dispatch.plans_for_hopper(device, kernel):  # 64-row blocks, one program per SM (224 KB of smem)
        block_m, programs_per_sm = dispatch.HOPPER_BLOCK_M, 1
    else:
        cfg = launch_config(rows_per_kv_head)
        block_m, programs_per_sm = cfg.block_m, cfg.programs_per_sm
    m_blocks = triton.cdiv(rows_per_kv_head, block_m)
    return max(1, sm_count(device) * programs_per_sm // (num_heads_k * m_blocks))
