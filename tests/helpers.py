"""Shared test helpers: random workloads and FlashMLA-style closeness checks."""
from __future__ import annotations

import torch

from tritonmla.bench.workload import make_decode_inputs  # noqa: F401  (re-exported for the tests)


def random_seqlens(gen: torch.Generator, batch: int, max_len: int, zeros: int = 0) -> list[int]:
    lens = torch.randint(1, max_len + 1, (batch,), generator=gen).tolist()
    for i in torch.randperm(batch, generator=gen)[:zeros].tolist():
        lens[i] = 0
    return lens


def assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, abs_tol: float, rel_tol: float,
                 cos_diff_tol: float | None = None) -> None:
    """FlashMLA's check: |got - ref| <= abs_tol + rel_tol |ref| elementwise (infinities must match exactly), and
    1 - cos(got, ref) below cos_diff_tol over the finite elements. NaN never passes."""
    got, ref = got.double(), ref.double()
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(got).any(), f"{name}: NaN in output ({int(torch.isnan(got).sum())} elements)"
    inf_got, inf_ref = torch.isinf(got), torch.isinf(ref)
    assert torch.equal(inf_got, inf_ref) and torch.equal(got[inf_got], ref[inf_ref]), f"{name}: infinities differ"
    g, r = got[~inf_got], ref[~inf_ref]
    bad = (g - r).abs() > abs_tol + rel_tol * r.abs()
    assert not bad.any(), (f"{name}: {int(bad.sum())}/{bad.numel()} elements out of tolerance, max abs diff "
                           f"{(g - r).abs().max().item():.3e}")
    if cos_diff_tol is not None and r.numel():
        denom = (g * g + r * r).sum().item()
        cos_diff = 1 - 2 * (g * r).sum().item() / denom if denom > 0 else 0.0  # both all-zero: equal
        assert cos_diff < cos_diff_tol, f"{name}: cosine difference {cos_diff:.3e} >= {cos_diff_tol}"


def sparse_step(x):
    """A decode step as an engine writes it (its own get_mla_metadata(), then the sparse call), and its tensor
    arguments, for torch.compile tests of sparse decoding (x: tritonmla.bench.sparse.SparseInputs)."""
    import tritonmla

    def step(q, k_cache, indices, topk_length, sink, extra_k_cache, extra_indices, extra_topk_length):
        meta, _ = tritonmla.get_mla_metadata()
        out, lse = tritonmla.flash_mla_with_kvcache(
            q, k_cache, None, None, 512, meta, None, softmax_scale=x.softmax_scale, is_fp8_kvcache=True,
            indices=indices, attn_sink=sink, topk_length=topk_length, extra_k_cache=extra_k_cache,
            extra_indices_in_kvcache=extra_indices, extra_topk_length=extra_topk_length)
        return out * 2, lse

    return step, (x.q, x.k_cache, x.indices, x.topk_length, x.attn_sink, x.extra_k_cache, x.extra_indices,
                  x.extra_topk_length)


def assert_graph_replays_bitwise(step, want_out: torch.Tensor, want_lse: torch.Tensor, replays: int) -> None:
    """Capture step() (returning out, lse) in a CUDA graph and replay it `replays` times over NaN-poisoned
    outputs: every replay must give want_out / want_lse bit for bit."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = step()
    for _ in range(replays):
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, want_out) and torch.equal(lse, want_lse)


def prefill_poisoned(x):
    """flash_mla_sparse_fwd's per-configuration call on x (tritonmla.bench.sparse_prefill.PrefillInputs) into
    NaN-poisoned outputs: (out, max_logits, lse)."""
    from tritonmla.sparse_prefill.call import SparsePrefillCall
    s_q, heads_q, _ = x.q.shape
    call = SparsePrefillCall(x.q, x.kv, x.indices, x.topk_length, x.attn_sink, x.sm_scale)
    out = torch.full((s_q, heads_q, 512), float("nan"), dtype=x.q.dtype, device=x.q.device)
    max_logits = torch.full((s_q, heads_q), float("nan"), device=x.q.device)
    lse = torch.full((s_q, heads_q), float("nan"), device=x.q.device)
    call(x.q, x.kv, x.indices, x.topk_length, x.attn_sink, out, max_logits, lse)
    return out, max_logits, lse
