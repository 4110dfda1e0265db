"""The per-configuration caches' shared parts: their bound, how an entry is remembered, and key helpers.

Every call path (dense decode, sparse decode, the plan) works out what does not change from one call to the next
once per configuration and keeps it in a dict keyed by every input property it depends on (shapes, strides,
dtypes, devices, flags, TRITONMLA_KERNEL); later calls are a dictionary lookup.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

MAX_CACHED = 4096  # configurations kept per cache; past that the cache starts over (it only costs rebinding)

# TRITONMLA_KERNEL is part of every key: read it without os.environ's per-call key encoding (0.6 us).
_ENV_DATA = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("TRITONMLA_KERNEL") if hasattr(os.environ, "encodekey") else None


def kernel_env() -> Optional[str]:
    if _ENV_DATA is None or _ENV_KEY is None:
        return os.environ.get("TRITONMLA_KERNEL")
    value = _ENV_DATA.get(_ENV_KEY)
    return os.environ.decodevalue(value) if value is not None else None


_CHECK_KEY = os.environ.encodekey("TRITONMLA_CHECK") if hasattr(os.environ, "encodekey") else None


def checked_mode() -> bool:
    """TRITONMLA_CHECK set to anything but "" or "0": eager flash_mla_with_kvcache calls run
    tritonmla.check_inputs first (a host sync). Read per call, as cheaply as TRITONMLA_KERNEL."""
    if _ENV_DATA is None or _CHECK_KEY is None:
        value = os.environ.get("TRITONMLA_CHECK")
    else:
        value = _ENV_DATA.get(_CHECK_KEY)
        if value is None:
            return False
        value = os.environ.decodevalue(value)
    return value not in (None, "", "0")


def props(t: Optional[torch.Tensor]):
    """An optional tensor's part of a key."""
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


def remember(cache: dict, key: tuple, call):
    if len(cache) >= MAX_CACHED:
        cache.clear()
    cache[key] = call
    return call
