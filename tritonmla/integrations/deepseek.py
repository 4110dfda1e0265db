"""DeepSeek-V3 (transformers' DeepseekV3ForCausalLM) decoding through tritonmla.

Prefill runs transformers' own forward; forward pre-hooks on its attention modules take each layer's input hidden
states and write the prompt's latents into a PagedLatentCache. Decode steps (s_q >= 1 tokens per request, causal:
one token, or MTP-style drafts to verify) run the model's own embedding, norms, MLP/MoE and lm_head, with each
DeepseekV3Attention replaced by MLA weight absorption around flash_mla_with_kvcache:

    c_kv, k_rope = split(kv_a_proj_with_mqa(x));  cache <- [kv_a_layernorm(c_kv) | rope(k_rope)]     (576)
    q_nope, q_rope = split(q_b_proj(q_a_layernorm(q_a_proj(x))));  kv_b_proj.weight = [W_UK; W_UV] per head
    q = [q_nope . W_UK (512) | rope(q_rope) (64)]  ->  o = flash_mla_with_kvcache(q, cache, ...)  (512 per head)
    out = o_proj(o . W_UV^T)

q . [c | r] = q_nope . (W_UK c) + q_rope . r is transformers' q . k, so the scores, the softmax scale (the
module's `scaling`: 1/sqrt(qk_nope + qk_rope) times YaRN's mscale^2, not 1/sqrt(576)) and the result are the same
up to rounding. transformers 5.x caches the same latent (kv_a_layernorm(c_kv) and k_rope after RoPE).

The decode step reads only device tensors (tokens, block table, cache_seqlens), so it can be captured in a CUDA
graph (`DeepseekV3Decoder.decode(..., cuda_graph=True)`); with MoE layers that needs a graph-safe experts
implementation (transformers' "grouped_mm" or "batched_mm", not "eager", which syncs on expert ids).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..api.interface import flash_mla_with_kvcache, get_mla_metadata
from .paged_cache import PagedLatentCache

KV_LORA_RANK = 512  # the kernel's V width
ROPE_DIM = 64  # 576 - 512


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """transformers' DeepSeek-V3 RoPE, op for op (so the cache matches its bit for bit). x [b, s, (h,) 64];
    cos/sin [b, s, 64] are cat(freqs, freqs) (times YaRN's attention factor), broadcast over heads."""
    if x.dim() == 4:
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    if interleave:  # pairs (x0, x1), (x2, x3), ... each rotated by one frequency; output de-interleaved
        cos, sin = cos[..., : cos.shape[-1] // 2], sin[..., : sin.shape[-1] // 2]
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class DeepseekV3MLA(nn.Module):
    """The absorbed decode path of one DeepseekV3Attention (shares its weights, copies nothing but W_UK/W_UV views)."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        needed = ("kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj", "num_heads", "qk_nope_head_dim",
                  "qk_rope_head_dim", "v_head_dim", "kv_lora_rank", "scaling", "config")
        missing = [name for name in needed if not hasattr(attn, name)]
        if missing:
            raise TypeError(f"attn must be a DeepseekV3Attention-like module; missing {', '.join(missing)}")
        if attn.kv_lora_rank != KV_LORA_RANK or attn.qk_rope_head_dim != ROPE_DIM:
            raise ValueError(f"tritonmla's kernel needs kv_lora_rank {KV_LORA_RANK} and qk_rope_head_dim {ROPE_DIM}, "
                             f"the module has {attn.kv_lora_rank} and {attn.qk_rope_head_dim}")
        self.attn = attn
        self.heads = attn.num_heads
        self.nope, self.v_dim = attn.qk_nope_head_dim, attn.v_head_dim
        self.scale = float(attn.scaling)
        self.interleave = bool(getattr(attn.config, "rope_interleave", False))

    def _absorbed(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Read each call, so that .to(dtype/device) of the model and weight updates are seen; views, no copies.
        w = self.attn.kv_b_proj.weight.view(self.heads, self.nope + self.v_dim, KV_LORA_RANK)
        return w[:, : self.nope], w[:, self.nope:]  # W_UK [h, nope, 512], W_UV [h, v, 512]

    def latent(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """[c_kv | k_rope] [b, s, 576] of hidden [b, s, hidden], as transformers caches them."""
        c_kv, k_rope = torch.split(self.attn.kv_a_proj_with_mqa(hidden), [KV_LORA_RANK, ROPE_DIM], dim=-1)
        return torch.cat([self.attn.kv_a_layernorm(c_kv), _rotate(k_rope, cos, sin, self.interleave)], dim=-1)

    def query(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The absorbed query [b, s, h, 576]: [q_nope . W_UK | rope(q_rope)]."""
        attn = self.attn
        if getattr(attn, "q_lora_rank", None) is None:
            q = attn.q_proj(hidden)
        else:
            q = attn.q_b_proj(attn.q_a_layernorm(attn.q_a_proj(hidden)))
        q_nope, q_rope = torch.split(q.unflatten(-1, (self.heads, -1)), [self.nope, ROPE_DIM], dim=-1)
        w_uk, _ = self._absorbed()
        q_latent = torch.einsum("bshd,hdc->bshc", q_nope, w_uk)
        return torch.cat([q_latent, _rotate(q_rope, cos, sin, self.interleave)], dim=-1)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                block_table: torch.Tensor, cache_seqlens: torch.Tensor, sched: torch.Tensor,
                splits: torch.Tensor) -> torch.Tensor:
        """Attention of hidden [b, s, hidden] (its latents already in k_cache) -> [b, s, hidden] (after o_proj)."""
        q = self.query(hidden, cos, sin)
        out, _ = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, KV_LORA_RANK, sched, splits,
                                        softmax_scale=self.scale, causal=True)
        _, w_uv = self._absorbed()
        values = torch.einsum("bshc,hvc->bshv", out, w_uv)  # [b, s, h, v_head_dim]
        return self.attn.o_proj(values.flatten(-2))


def _token_rows(name: str, rows: Sequence[Sequence[int]]) -> list[list[int]]:
    if isinstance(rows, torch.Tensor):
        rows = rows.tolist()
    if not isinstance(rows, (list, tuple)) or not rows:
        raise TypeError(f"{name} must be a non-empty list of token-id lists")
    out = []
    for i, row in enumerate(rows):
        row = row.tolist() if isinstance(row, torch.Tensor) else row
        if not isinstance(row, (list, tuple)) or not row or not all(isinstance(t, int) for t in row):
            raise TypeError(f"{name}[{i}] must be a non-empty list of ints")
        out.append(list(row))
    return out


class DeepseekV3Decoder:
    """Greedy / speculative decoding of a transformers DeepseekV3ForCausalLM, decode attention on tritonmla.

    Rows 0..b-1 of the cache are the requests of the current batch. `prefill` fills them from prompts (and
    returns the logits of each prompt's last token); `decode` appends s_q tokens to every row and returns
    logits [b, s_q, vocab]; `verify` checks MTP drafts greedily and keeps the accepted prefix.
    """

    def __init__(self, model: nn.Module, max_batch: int, max_seq_len: int, page_size: int = 64,
                 num_blocks: Optional[int] = None) -> None:
        body = getattr(model, "model", None)
        if body is None or not hasattr(body, "layers") or not hasattr(model, "lm_head"):
            raise TypeError("model must be a DeepseekV3ForCausalLM (with .model.layers and .lm_head)")
        dtype = model.lm_head.weight.dtype
        if dtype not in (torch.bfloat16, torch.float16):
            raise TypeError(f"model must be in bfloat16 or float16 (tritonmla's dtypes), got {dtype}")
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1:
            raise ValueError(f"max_seq_len must be a positive int, got {max_seq_len!r}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive int, got {page_size!r}")
        self.model, self.body = model, body
        self.mla = [DeepseekV3MLA(layer.self_attn) for layer in body.layers]
        self.heads = self.mla[0].heads
        blocks_per_seq = -(-max_seq_len // page_size)
        self.cache = PagedLatentCache(len(self.mla), num_blocks or max_batch * blocks_per_seq, page_size, max_batch,
                                      blocks_per_seq, dtype, model.lm_head.weight.device)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return self.cache.k_caches.device

    @torch.no_grad()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run each prompt through transformers' forward (its own attention) into rows 0..len(prompts)-1, the
        latents computed from each layer's input hidden states into the cache. Returns last-token logits [b, vocab]."""
        prompts = _token_rows("prompts", prompts)
        if len(prompts) > self.cache.max_batch:
            raise ValueError(f"prompts has {len(prompts)} requests, more than max_batch={self.cache.max_batch}")
        logits = []
        for row, prompt in enumerate(prompts):
            self.cache.set_length(row, len(prompt))
            positions = torch.arange(len(prompt), device=self.device)[None]
            slots = self.cache.slots(positions, first_row=row)
            hooks = [mla.attn.register_forward_pre_hook(self._prefill_hook(i, slots), with_kwargs=True)
                     for i, mla in enumerate(self.mla)]
            try:
                ids = torch.tensor([prompt], device=self.device)
                out = self.model(input_ids=ids, use_cache=False, logits_to_keep=1)
            finally:
                for hook in hooks:
                    hook.remove()
            logits.append(out.logits[0, -1])
        for row in range(len(prompts), self.cache.max_batch):
            self.cache.release(row)
        return torch.stack(logits)

    def _prefill_hook(self, layer: int, slots: torch.Tensor):
        def hook(module, args, kwargs):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            cos, sin = kwargs["position_embeddings"]
            self.cache.write(layer, slots, self.mla[layer].latent(hidden, cos, sin))
        return hook

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One decode step over device tensors only (CUDA-graph capturable): tokens [b, s_q] whose positions are
        cache_seqlens - s_q .. cache_seqlens - 1 -> logits [b, s_q, vocab]. DeepseekV3DecoderLayer.forward with
        the attention swapped."""
        batch, seq_q = tokens.shape
        cache = self.cache
        seqlens, table = cache.cache_seqlens[:batch], cache.block_table[:batch]
        positions = seqlens[:, None].long() - seq_q + torch.arange(seq_q, device=tokens.device)
        slots = cache.slots(positions)
        hidden = self.body.embed_tokens(tokens)
        cos, sin = self.body.rotary_emb(hidden, positions)
        sched, splits = get_mla_metadata(seqlens, seq_q * self.heads, 1)  # once per step, shared by the layers
        for i, (layer, mla) in enumerate(zip(self.body.layers, self.mla)):
            residual = hidden
            hidden = layer.input_layernorm(hidden)
            cache.write(i, slots, mla.latent(hidden, cos, sin))  # before attention: the new tokens see themselves
            hidden = residual + mla(hidden, cos, sin, cache.layer(i), table, seqlens, sched, splits)
            residual = hidden
            hidden = residual + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.model.lm_head(self.body.norm(hidden))

    @torch.no_grad()
    def decode(self, tokens: Union[torch.Tensor, Sequence[Sequence[int]]], cuda_graph: bool = False) -> torch.Tensor:
        """Append tokens [b, s_q] to rows 0..b-1 and return their logits [b, s_q, vocab] (causal among the s_q).
        cuda_graph: replay a graph captured on the first call for this (b, s_q) (CUDA only)."""
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.tensor(_token_rows("tokens", tokens), device=self.device)
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32) or tokens.numel() == 0:
            raise ValueError(f"tokens must be a non-empty 2-D [batch, s_q] integer tensor, got {tuple(tokens.shape)} "
                             f"{tokens.dtype}")
        batch, seq_q = tokens.shape
        lengths = self.cache.lengths()
        if batch > self.cache.max_batch or any(length == 0 for length in lengths[:batch]):
            raise ValueError(f"tokens has {batch} rows; rows 0..{batch - 1} must be prefilled requests")
        self.cache.set_lengths([length + seq_q for length in lengths[:batch]])
        if not cuda_graph:
            return self._step(tokens.to(self.device))
        if self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        key = (batch, seq_q)
        if key not in self._graphs:
            self._graphs[key] = self._capture(tokens.to(self.device))
        graph, static_tokens, static_logits = self._graphs[key]
        static_tokens.copy_(tokens)
        graph.replay()
        return static_logits.clone()

    def _capture(self, tokens: torch.Tensor):
        impl = getattr(self.model.config, "_experts_implementation", None)
        if impl in (None, "eager") and any(hasattr(layer.mlp, "experts") for layer in self.body.layers):
            raise ValueError("cuda_graph=True with MoE layers needs a graph-safe experts implementation: load the "
                             "model with experts_implementation='grouped_mm' or 'batched_mm' (transformers' eager "
                             "experts loop syncs the host on the expert ids)")
        static_tokens = tokens.clone()
        # Warm-up on a side stream (compiles, first-call checks), then capture. The warm-up writes this step's
        # latents, which the replay rewrites with the same values.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._step(static_tokens)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_logits = self._step(static_tokens)
        return graph, static_tokens, static_logits

    def rewind(self, lengths: Sequence[int]) -> None:
        """Set rows 0..len(lengths)-1 back to `lengths` tokens (drop rejected drafts); later writes overwrite."""
        current = self.cache.lengths()
        for row, length in enumerate(lengths):
            if length > current[row]:
                raise ValueError(f"lengths[{row}] = {length} exceeds the {current[row]} tokens row {row} holds")
        self.cache.set_lengths(lengths)

    @torch.no_grad()
    def verify(self, last: Sequence[int], drafts: Sequence[Sequence[int]],
               cuda_graph: bool = False) -> list[list[int]]:
        """MTP-style greedy verification: decode [last_i, *drafts_i] per row (s_q = 1 + k, causal), accept the
        longest draft prefix the model itself would have generated plus its next token, and rewind the cache to
        the accepted tokens. Returns the accepted new tokens per row (1..k+1 each)."""
        drafts = _token_rows("drafts", drafts)
        last = _token_rows("last", [last])[0]
        if len(last) != len(drafts) or len({len(d) for d in drafts}) != 1:
            raise ValueError("last and drafts must have one entry per row, all drafts of the same length")
        before = self.cache.lengths()[: len(drafts)]
        greedy = self.decode([[t, *d] for t, d in zip(last, drafts)], cuda_graph=cuda_graph).argmax(-1).tolist()
        accepted, lengths = [], []
        for row, draft in enumerate(drafts):
            n = 0
            while n < len(draft) and draft[n] == greedy[row][n]:
                n += 1
            accepted.append(draft[:n] + [greedy[row][n]])
            lengths.append(before[row] + 1 + n)  # `last` and the accepted drafts are in the cache now
        self.rewind(lengths)
        return accepted

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 cuda_graph: bool = False) -> tuple[list[list[int]], torch.Tensor]:
        """Greedy decoding: prefill, then max_new_tokens - 1 decode steps. Returns the new tokens per request and
        the logits that chose them [b, max_new_tokens, vocab]."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
        logits = [self.prefill(prompts)]
        tokens = logits[0].argmax(-1, keepdim=True)  # [b, 1]
        new = [tokens]
        for _ in range(max_new_tokens - 1):
            logits.append(self.decode(tokens, cuda_graph=cuda_graph)[:, -1])
            tokens = logits[-1].argmax(-1, keepdim=True)
            new.append(tokens)
        return torch.cat(new, dim=1).tolist(), torch.stack(logits, dim=1)
