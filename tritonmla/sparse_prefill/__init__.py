"""Sparse attention prefill (DeepSeek Sparse Attention, FlashMLA's flash_mla_sparse_fwd): the portable Triton kernel
(kernel_portable) and per-configuration calls (call). The public entry is tritonmla.flash_mla_sparse_fwd."""
