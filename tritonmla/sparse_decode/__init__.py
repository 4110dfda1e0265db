"""Sparse decoding over FP8 KV caches (DeepSeek-V3.2 / MODEL1 layouts: tritonmla.core.fp8_cache_layouts): the
per-configuration calls (call), the plan glue (plan), the portable Triton kernel (kernel_portable) and the Hopper
Gluon kernel (kernel_sm90). The public entry is tritonmla.flash_mla_with_kvcache with `indices`."""
