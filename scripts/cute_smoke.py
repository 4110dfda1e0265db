"""Quick device check of the CuTe DSL dense decode kernel: a few configurations against the float32 reference,
poisoned outputs and partials (decode_into), then the compile time. Prints one line per case."""
import sys
import time

import torch

sys.path.insert(0, "tests")
import tritonmla  # noqa: E402
from tritonmla.api.op import decode_into  # noqa: E402
from tritonmla.dense_decode.plan import num_parts_for  # noqa: E402
from helpers import make_decode_inputs  # noqa: E402

CASES = [  # seqlens, s_q, h_q, h_kv, page, causal, dtype
    ([300, 1000], 1, 128, 1, 64, False, torch.bfloat16),
    ([64, 65, 1, 0, 200], 2, 16, 1, 64, True, torch.bfloat16),
    ([4096] * 8, 2, 128, 1, 64, True, torch.bfloat16),
    ([5000, 17, 3000, 129], 1, 64, 2, 128, False, torch.float16),
    ([2000] * 132, 1, 128, 1, 64, True, torch.bfloat16),
]
worst = 0.0
for seqlens, seq_q, heads_q, heads_kv, page, causal, dtype in CASES:
    x = make_decode_inputs(seqlens, seq_q, heads_q, heads_kv, page, dtype, "cuda",
                           generator=torch.Generator("cuda").manual_seed(len(seqlens)))
    parts = num_parts_for(x.q.device, seq_q * heads_q // heads_kv, heads_kv, "cute")
    sched, splits = torch.ops.tritonmla.plan(x.cache_seqlens, parts)
    out = torch.full((len(seqlens), seq_q, heads_q, 512), float("nan"), dtype=dtype, device="cuda")
    lse = torch.full((len(seqlens), heads_q, seq_q), float("nan"), device="cuda")
    t = time.time()
    ran = decode_into(x.q, x.k_cache, x.block_table, x.cache_seqlens, sched, splits, 576 ** -0.5, causal, out, lse,
                      partial_fill=float("nan"), kernel="cute")
    torch.cuda.synchronize()
    first = time.time() - t
    ref_out, ref_lse = tritonmla.mla_decode_reference(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                      causal=causal)
    e_out = (out.float() - ref_out.float()).abs().nan_to_num(1e9).max().item()
    fin = torch.isfinite(ref_lse)
    e_lse = (lse - ref_lse).abs()[fin].nan_to_num(1e9).max().item() if fin.any() else 0.0
    lse_inf_ok = bool((lse[~fin] == ref_lse[~fin]).all())
    worst = max(worst, e_out)
    print(f"ran={ran} b={len(seqlens)} s_q={seq_q} h_q={heads_q} h_kv={heads_kv} page={page} causal={causal} "
          f"{dtype}: out err {e_out:.3g} lse err {e_lse:.3g} inf-lse ok {lse_inf_ok} parts {parts} "
          f"first call {first:.1f}s", flush=True)
print("SMOKE", "OK" if worst < 2e-2 else "FAIL", worst)
from tritonmla.core import cute_runtime  # noqa: E402
from tritonmla.dense_decode import bind_cute  # noqa: E402
print("compiled/loaded:", cute_runtime.STATS, "raw launch layout ok:", [ok for _, ok in bind_cute._RAW_OK.values()])
