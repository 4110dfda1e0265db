"""tritonmla: DeepSeek FlashMLA's MLA decoding API (dense, and sparse over FP8 caches) on Triton kernels."""
from .api.checks import check_inputs
from .api.interface import FlashMLASchedMeta, flash_mla_with_kvcache, get_mla_metadata
from .api.sparse_prefill import flash_mla_sparse_fwd
from .api.warmup import warmup, warmup_sparse
from .core.fp8_cache_layouts import dequantize_kv_cache, quantize_kv_cache
from .reference.dense_decode import mla_decode_reference
from .reference.sparse_decode import sparse_decode_reference
from .reference.sparse_prefill import sparse_prefill_reference

__all__ = ["FlashMLASchedMeta", "check_inputs", "dequantize_kv_cache", "flash_mla_sparse_fwd",
           "flash_mla_with_kvcache", "get_mla_metadata", "mla_decode_reference", "quantize_kv_cache",
           "sparse_decode_reference", "sparse_prefill_reference", "warmup",
           "warmup_sparse"]
__version__ = "0.1.0"
