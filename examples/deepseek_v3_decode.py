"""DeepSeek-V3 greedy decoding with tritonmla inside transformers' model, beside transformers' own generate.

A random-weight DeepSeek-V3 (MLA with kv_lora_rank 512, rope dims 64, YaRN, MoE after the first layer) from
transformers; prompts of different lengths; prefill in transformers, then greedy decode steps whose attention is
tritonmla's flash_mla_with_kvcache over a paged latent cache (tritonmla.integrations.DeepseekV3Decoder). Prints
both token streams, the largest logit difference, and on a GPU the time per decode step, eager and CUDA graph.

    python examples/deepseek_v3_decode.py                        # GPU: bf16, 4 layers, 128 heads
    TRITON_INTERPRET=1 python examples/deepseek_v3_decode.py     # CPU: the Triton kernels interpreted (fp16)
    python examples/deepseek_v3_decode.py --device cpu           # CPU: tritonmla's PyTorch reference (bf16)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a clone, uninstalled

from transformers import DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402

from tritonmla.integrations import DeepseekV3Decoder  # noqa: E402

YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096, mscale=1.0,
            mscale_all_dim=1.0, beta_fast=32, beta_slow=1)  # DeepSeek-V3's own rope_scaling


def make_model(layers: int, heads: int, hidden: int, vocab: int, dtype: torch.dtype, device: str,
               init: float, seed: int = 0) -> DeepseekV3ForCausalLM:
    """A random DeepSeek-V3: the real attention geometry (kv_lora_rank 512, rope 64, nope 128, v 128 at full
    size; smaller nope/v for small hidden sizes), YaRN, a dense first layer and MoE after it."""
    small = hidden < 512
    config = DeepseekV3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, moe_intermediate_size=max(hidden // 4, 32),
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, n_shared_experts=1,
        n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2, first_k_dense_replace=1,
        kv_lora_rank=512, q_lora_rank=hidden // 2, qk_rope_head_dim=64, qk_nope_head_dim=32 if small else 128,
        v_head_dim=32 if small else 128, max_position_embeddings=163840, rope_parameters=dict(YARN),
        rope_interleave=True, initializer_range=init, eos_token_id=None, attn_implementation="eager",
        experts_implementation="grouped_mm")  # graph-safe MoE (transformers' eager experts loop syncs the host)
    torch.manual_seed(seed)
    with torch.device(device):
        return DeepseekV3ForCausalLM(config).to(dtype).eval()


def transformers_greedy(model, prompt: list[int], new_tokens: int) -> tuple[list[int], torch.Tensor]:
    ids = torch.tensor([prompt], device=model.device)
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    return out.sequences[0, len(prompt):].tolist(), torch.stack(out.logits, dim=1)[0]


def time_steps(decoder: DeepseekV3Decoder, prompts: list[list[int]], steps: int, cuda_graph: bool) -> float:
    """Seconds per decode step (batch of len(prompts), s_q = 1) after a warm-up, tokens fed back on the device."""
    tokens = decoder.prefill(prompts).argmax(-1, keepdim=True)
    for _ in range(3):  # compile / capture
        tokens = decoder.decode(tokens, cuda_graph=cuda_graph)[:, -1].argmax(-1, keepdim=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        tokens = decoder.decode(tokens, cuda_graph=cuda_graph)[:, -1].argmax(-1, keepdim=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if gpu else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default=None,
                        help="default bfloat16; float16 under TRITON_INTERPRET=1 (the interpreter's bf16 dot is wrong)")
    parser.add_argument("--layers", type=int, default=4 if gpu else 2)
    parser.add_argument("--heads", type=int, default=128 if gpu else 16)
    parser.add_argument("--hidden", type=int, default=1024 if gpu else 256)
    parser.add_argument("--vocab", type=int, default=4096 if gpu else 512)
    parser.add_argument("--prompt-lens", type=int, nargs="+", default=[7, 300, 1000] if gpu else [5, 13])
    parser.add_argument("--new-tokens", type=int, default=16 if gpu else 8)
    parser.add_argument("--page-size", type=int, default=64)
    parser.add_argument("--init", type=float, default=None,
                        help="weight std; default 0.1 below hidden 512 (0.02 repeats one token there), else 0.02")
    parser.add_argument("--time-steps", type=int, default=50, help="decode steps timed per mode (GPU only)")
    args = parser.parse_args()
    interpreted = os.environ.get("TRITON_INTERPRET") == "1" and args.device == "cpu"
    dtype = getattr(torch, args.dtype or ("float16" if interpreted else "bfloat16"))
    if interpreted and dtype == torch.bfloat16:
        parser.error("bfloat16 under TRITON_INTERPRET=1 is wrong (triton-lang/triton#11584); use --dtype float16")

    init = args.init if args.init is not None else (0.1 if args.hidden < 512 else 0.02)
    model = make_model(args.layers, args.heads, args.hidden, args.vocab, dtype, args.device, init)
    path = ("Triton kernels" if args.device != "cpu" else
            "Triton kernels, interpreted" if interpreted else "tritonmla's PyTorch reference")
    print(f"DeepSeek-V3 (random weights): {args.layers} layers, {args.heads} heads, hidden {args.hidden}, "
          f"vocab {args.vocab}, {str(dtype).replace('torch.', '')} on {args.device} ({path}); softmax scale "
          f"{model.model.layers[0].self_attn.scaling:.5f} (1/sqrt(576) = {576 ** -0.5:.5f})")
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, args.vocab, (n,), generator=gen).tolist() for n in args.prompt_lens]
    decoder = DeepseekV3Decoder(model, max_batch=len(prompts), page_size=args.page_size,
                                max_seq_len=max(args.prompt_lens) + args.new_tokens + args.time_steps + 8)

    start = time.perf_counter()
    ours, our_logits = decoder.generate(prompts, args.new_tokens)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = [transformers_greedy(model, prompt, args.new_tokens) for prompt in prompts]
    theirs_s = time.perf_counter() - start
    worst = 0.0
    for row, (prompt, (tokens, logits)) in enumerate(zip(prompts, theirs)):
        same = next((i for i, (a, b) in enumerate(zip(ours[row], tokens)) if a != b), len(tokens))
        seen = min(same + 1, len(tokens))  # the steps that had the same context
        diff = our_logits[row, :seen].float() - logits[:seen].float()
        worst = max(worst, diff.abs().max().item())
        print(f"request {row} (prompt {len(prompt)} tokens)")
        print(f"  transformers: {tokens}")
        note = "  (same)"
        if same < len(tokens):  # from here on the contexts differ; say how close transformers' choice was
            gap = (logits[same, tokens[same]] - logits[same, ours[row][same]]).item()
            note = f"  (differs at step {same}: transformers' logits of the two tokens differ by {gap:.3g})"
        print(f"  tritonmla:    {ours[row]}{note}")
    print(f"max |logit difference| {worst:.4g} (logits std {our_logits.float().std().item():.3g}); "
          f"tritonmla generate {ours_s:.2f} s, transformers generate {theirs_s:.2f} s (batch {len(prompts)})")

    if args.device != "cpu":
        eager = time_steps(decoder, prompts, args.time_steps, cuda_graph=False)
        graph = time_steps(decoder, prompts, args.time_steps, cuda_graph=True)
        print(f"decode step (batch {len(prompts)}, s_q 1, whole model): eager {eager * 1e3:.3f} ms, "
              f"CUDA graph {graph * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
