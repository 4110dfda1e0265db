"""Maintained tool: compile the portable dense decode kernel (tritonmla.dense_decode.kernel_portable) for sm_90 on a
machine without a GPU, a few configurations; PTX_DIR=dir writes their PTX there (for scripts/ptx_snapshot.sh).
Run: PYTHONPATH=. python scripts/compile_dense_offline.py"""
import os

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from tritonmla.dense_decode import kernel_portable as D

fn = D.mla_decode_kernel
names = fn.arg_names
for rows, page, causal, dt in ((16, 64, True, "bf16"), (64, 1, False, "fp16"), (128, 16, True, "bf16")):
    cfg = D.launch_config(rows)
    const = dict(D_V=512, D_ROPE=64, PAGE_SIZE=page, BLOCK_M=cfg.block_m, BLOCK_N=min(cfg.block_n, 64),
                 PLAN_TILE=64, SCHED_ROW=8, CAUSAL=causal)
    ptr = {"Q": f"*{dt}", "K_CACHE": f"*{dt}", "OUT": f"*{dt}", "BLOCK_TABLE": "*i32", "SEQLENS": "*i32",
           "SCHED": "*i32", "NUM_SPLITS": "*i32", "LSE": "*fp32", "OUT_PARTIAL": "*fp32", "LSE_PARTIAL": "*fp32"}
    sig = {n: ptr.get(n) or ("constexpr" if n in const else "fp32" if n == "qk_scale_log2" else "i32") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n in ptr}
    k = triton.compile(ASTSource(fn, sig, {(names.index(n),): v for n, v in const.items()}, attrs),
                       target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    if os.environ.get("PTX_DIR"):
        path = os.path.join(os.environ["PTX_DIR"], f"dense_{rows}_{page}_{int(causal)}_{dt}.ptx")
        open(path, "w").write(k.asm["ptx"])
    print(f"portable dense: {rows} rows, page {page}, causal {causal}, {dt}: shared {k.metadata.shared} B")
