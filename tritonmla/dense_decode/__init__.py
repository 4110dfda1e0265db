"""Dense decoding over a paged bf16/fp16 latent cache: the per-configuration calls (call), which kernel runs
(dispatch), the plan glue (plan), the portable Triton kernel (kernel_portable) and the Hopper Gluon kernels
(kernel_sm90; kernel_sm90_seesaw for more than 64 rows). The public entry is tritonmla.flash_mla_with_kvcache."""
