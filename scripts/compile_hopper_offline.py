"""Maintained tool: compile a dense Gluon Hopper kernel for sm_90 on a machine without a GPU (frontend + ptxas, no
launch), to catch compile errors and read register/spill/shared-memory use before spending device time; writes
its PTX to /tmp/hopper.ptx (scripts/ptx_snapshot.sh keeps it).
Run: PYTHONPATH=. python scripts/compile_hopper_offline.py [bf16|fp16] [causal 0|1] [page_size] [module] [delay]
  module: tritonmla.dense_decode.kernel_sm90 (default, <= 64 rows) or tritonmla.dense_decode.kernel_sm90_seesaw;
  stress delay: the seesaw kernel's STRESS_DELAY_NS (tests only)."""
import importlib
import re
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon import language as gl


dtype = sys.argv[1] if len(sys.argv) > 1 else "bf16"
causal = bool(int(sys.argv[2])) if len(sys.argv) > 2 else True
page = int(sys.argv[3]) if len(sys.argv) > 3 else 64
H = importlib.import_module(sys.argv[4] if len(sys.argv) > 4 else "tritonmla.dense_decode.kernel_sm90")
ty = {"bf16": "bf16", "fp16": "fp16"}[dtype]
gty = gl.bfloat16 if dtype == "bf16" else gl.float16
layout = gl.NVMMASharedLayout.get_default_for([64, 64], gty)
desc_ty = f"tensordesc<{ty}[64, 64],{layout!r}>" if False else None
fn = next(v for k, v in vars(H).items() if k.startswith("mla_decode") and k.endswith("_kernel"))
names = fn.arg_names
sig = {}
for n in names:
    if n in ("Q", "OUT"):
        sig[n] = f"*{ty}"
    elif n in ("OUT_PARTIAL", "LSE_PARTIAL", "LSE"):
        sig[n] = "*fp32"
    elif n in ("BLOCK_TABLE", "SEQLENS", "SCHED", "NUM_SPLITS"):
        sig[n] = "*i32"
    elif n == "k_desc":
        sig[n] = f"tensordesc<{ty}[64, 64],{layout}>"
    elif n == "qk_scale_log2":
        sig[n] = "fp32"
    elif n in ("PAGE_SIZE", "CAUSAL", "PLAN_TILE", "SCHED_ROW", "NUM_STAGES", "STRESS_DELAY_NS",
               "num_warps"):
        sig[n] = "constexpr"
    else:
        sig[n] = "i32"
constexprs = {(names.index("PAGE_SIZE"),): page, (names.index("CAUSAL"),): causal,
              (names.index("PLAN_TILE"),): 64, (names.index("SCHED_ROW"),): 8,
              (names.index("num_warps"),): H.NUM_WARPS}
if "NUM_STAGES" in names:
    constexprs[(names.index("NUM_STAGES"),)] = H.NUM_STAGES.value
if "STRESS_DELAY_NS" in names:
    constexprs[(names.index("STRESS_DELAY_NS"),)] = int(sys.argv[5]) if len(sys.argv) > 5 else 0
src = GluonASTSource(fn, sig, constexprs)
k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": H.NUM_WARPS,
                                                                **({"maxnreg": H.MAXNREG} if hasattr(H, "MAXNREG") else {})})
ptx = k.asm["ptx"]
print("shared bytes:", k.metadata.shared, "| wgmma:", len(re.findall(r"wgmma.mma_async", ptx)),
      "| local (spill) ld/st:", len(re.findall(r"\bld\.local|\bst\.local", ptx)))
open("/tmp/hopper.ptx", "w").write(ptx)
open("/tmp/hopper.ttgir", "w").write(k.asm["ttgir"])
try:
    import subprocess
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(90).path
    out = subprocess.run([ptxas, "-arch=sm_90a", "-v", "/tmp/hopper.ptx", "-o", "/tmp/hopper.cubin"],
                         capture_output=True, text=True)
    print("\n".join(line for line in (out.stdout + out.stderr).splitlines()
                    if "Used" in line or "spill" in line or "Function properties" in line))
except Exception as e:  # noqa: BLE001
    print("ptxas:", type(e).__name__, e)
