"""Sparse decoding over FP8 KV caches (DeepSeek-V3.2 / MODEL1 layouts): layouts and quantization (quant),
the float32 reference (reference), the Triton kernel (kernel), the plan (plan) and per-configuration calls
(call). The public entry is tritonmla.flash_mla_with_kvcache with `indices`."""
