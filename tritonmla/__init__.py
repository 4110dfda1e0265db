"""tritonmla: DeepSeek FlashMLA's dense MLA decoding API, on Triton kernels."""
from .api.interface import FlashMLASchedMeta, flash_mla_with_kvcache, get_mla_metadata
from .api.warmup import warmup
from .reference.reference import mla_decode_reference

__all__ = ["FlashMLASchedMeta", "flash_mla_with_kvcache", "get_mla_metadata", "mla_decode_reference", "warmup"]
__version__ = "0.1.0"
