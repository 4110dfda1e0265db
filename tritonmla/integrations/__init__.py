"""Using tritonmla inside a model.

- `PagedLatentCache` (paged_cache.py): a paged MLA latent cache ([c_kv | k_rope] per token, one KV head) with a
  block table, any page size; writes go through device-side slot indices, so a decode step can be CUDA-graph
  captured.
- `DeepseekV3Decoder` (deepseek.py): greedy decoding of a transformers DeepseekV3ForCausalLM with its attention
  replaced, for decode steps (s_q >= 1, causal), by MLA weight absorption and `flash_mla_with_kvcache`.

Neither imports transformers: the model is read through its modules' attributes.
"""
from .deepseek import DeepseekV3Decoder, DeepseekV3MLA
from .paged_cache import PagedLatentCache

__all__ = ["DeepseekV3Decoder", "DeepseekV3MLA", "PagedLatentCache"]
