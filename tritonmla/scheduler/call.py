"""Per-configuration plan calls (get_mla_metadata, and the plans of sparse calls): the part count and the bound
plan kernel are worked out on a configuration's first call; later calls are a dictionary lookup, two allocations
and one launch. As tritonmla.dense_decode.call does for the decode step."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..core.config_cache import kernel_env, remember
from ..core.constants import SCHED_ROW
from ..core.launch import current_stream
from ..core.runtime import uses_triton
from ..reference.plan import plan_reference
from .planner import bind_plan


class PlanCall:
    """One configuration of get_mla_metadata: the part count and the bound plan kernel."""

    def __init__(self, cache_seqlens: torch.Tensor, num_parts: int):
        self.device = cache_seqlens.device
        self.device_index = self.device.index if self.device.type == "cuda" else None
        self.reference = not uses_triton(self.device)
        self.num_parts = num_parts
        self.batch = cache_seqlens.shape[0]
        self.bound = None

    def __call__(self, cache_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference:
            return plan_reference(cache_seqlens, self.num_parts)
        if self.device_index is not None and torch._C._cuda_getDevice() != self.device_index:
            with torch.cuda.device(self.device_index):
                return self(cache_seqlens)
        sched = torch.empty((self.num_parts, SCHED_ROW), dtype=torch.int32, device=self.device)
        splits = torch.empty((self.batch + 1,), dtype=torch.int32, device=self.device)
        bound = self.bound
        if bound is not None and bound.direct and cache_seqlens.data_ptr() & 15 == 0:
            bound.launch(current_stream(self.device_index),
                         (cache_seqlens.data_ptr(), sched.data_ptr(), splits.data_ptr()))
            return sched, splits
        aligned = cache_seqlens.data_ptr() & 15 == 0
        bound = bind_plan(cache_seqlens, sched, splits) if (bound is None or not aligned) else bound
        if aligned:
            self.bound = bound
        if bound.interpreted:
            bound.interpret((cache_seqlens, sched, splits))
        else:
            bound.launch_generic(current_stream(self.device_index), (cache_seqlens, sched, splits))
        return sched, splits


_PLAN_CALLS: dict[tuple, PlanCall] = {}


def plan_key(cache_seqlens, num_heads_per_head_k, num_heads_k, kernel) -> tuple:
    return (cache_seqlens.shape, cache_seqlens.stride(), cache_seqlens.dtype, cache_seqlens.device,
            num_heads_per_head_k, type(num_heads_per_head_k), num_heads_k, type(num_heads_k), kernel, kernel_env())


def parts_key(cache_seqlens, num_parts: int) -> tuple:
    """Key of a plan with a given part count (the custom op, tests)."""
    return (cache_seqlens.shape, cache_seqlens.stride(), cache_seqlens.dtype, cache_seqlens.device, "parts",
            num_parts)


def plan_call(key: tuple, cache_seqlens, num_parts: Callable[[], int]) -> PlanCall:
    """The cached PlanCall of a checked configuration; num_parts() sizes it on a first call."""
    call = _PLAN_CALLS.get(key)
    if call is None:
        call = remember(_PLAN_CALLS, key, PlanCall(cache_seqlens, num_parts()))
    return call


def cached_plan_call(key: tuple) -> Optional[PlanCall]:
    return _PLAN_CALLS.get(key)


def clear() -> None:
    """Forget every plan configuration."""
    _PLAN_CALLS.clear()
