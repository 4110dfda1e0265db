"""Tuning sweep (developer tool, GPU only): time launch configs of the decode kernel on chosen workloads.

    python -m tritonmla.bench.tune [--variants "16,64,4,2,2;16,32,4,3,2"] [--workloads "16,1,8192;128,2,8192"]

A variant is block_m,block_n,warps,stages,programs_per_sm (see dense_decode/kernel_portable.py: launch_config); a
workload is h_q,s_q,mean_sk at b=128, h_kv=1, fixed lengths, causal. Prints GB/s, TFLOPS, registers and spills.
"""
from __future__ import annotations

import argparse
import os
import random

import torch

DEFAULT_WORKLOADS = "16,1,8192;32,1,8192;64,1,8192;128,1,8192;128,2,8192"


def register_report(jit_fn) -> str:
    """Registers/spills of the most recently compiled variant (best effort: Triton's cache layout is internal)."""
    try:
        kernels = list(jit_fn.device_caches[torch.cuda.current_device()][0].values())
        k = kernels[-1]
        k._init_handles()
        return f"{k.n_regs} regs, {k.n_spills} spills, {k.metadata.shared} B smem"
    except Exception as e:  # noqa: BLE001
        return f"regs ? ({type(e).__name__})"


def main() -> None:
    import triton
    import tritonmla as tm
    from tritonmla.bench.workload import make_decode_inputs, seqlens_like_flashmla, work
    from tritonmla.api.interface import clear
    from tritonmla.dense_decode import kernel_portable as decode

    p = argparse.ArgumentParser()
    p.add_argument("--variants", default="")
    p.add_argument("--workloads", default=DEFAULT_WORKLOADS)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    for wl in args.workloads.split(";"):
        h_q, s_q, sk = (int(v) for v in wl.split(","))
        seqlens = seqlens_like_flashmla(args.batch, sk, s_q, False, random.Random(0))
        gen = torch.Generator(device="cuda").manual_seed(0)
        x = make_decode_inputs(seqlens, s_q, h_q, 1, 64, torch.bfloat16, "cuda", generator=gen)
        ref, _ = tm.mla_decode_reference(x.q[:2], x.k_cache, x.block_table[:2], x.cache_seqlens[:2], 512, causal=True)
        flops, nbytes = work(seqlens, args.batch, s_q, h_q, 1)
        variants = [v for v in args.variants.split(";") if v] or [None]
        for v in variants:
            if v:
                os.environ["TRITONMLA_CONFIG"] = v
            else:
                os.environ.pop("TRITONMLA_CONFIG", None)
            clear()  # the config is read when a configuration is first bound
            cfg = decode.launch_config(s_q * h_q)
            try:
                sched, splits = tm.get_mla_metadata(x.cache_seqlens, s_q * h_q, 1)
                step = lambda: tm.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512,
                                                         sched, splits, causal=True)
                out, _ = step()
                err = (out[:2].float() - ref.float()).abs().max().item()
                ms = triton.testing.do_bench(step, warmup=30, rep=200, return_mode="median")
                regs = register_report(decode.mla_decode_kernel)
                print(f"h_q={h_q:3d} s_q={s_q} sk={sk:5d} cfg={cfg.block_m},{cfg.block_n},{cfg.num_warps},"
                      f"{cfg.num_stages},{cfg.programs_per_sm} parts={sched.shape[0]:4d} {ms:7.3f} ms "
                      f"{nbytes / ms / 1e6:6.0f} GB/s {flops / ms / 1e9:6.1f} TFLOPS err={err:.1e} {regs}",
                      flush=True)
            except Exception as e:  # a variant that does not compile (shared memory, registers) is reported
                print(f"h_q={h_q} s_q={s_q} cfg={v}: FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
        del x
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
