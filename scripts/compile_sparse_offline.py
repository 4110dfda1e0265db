"""Maintained tool: compile the sparse decode kernels (portable: tritonmla.sparse_decode.kernel_portable; Gluon:
tritonmla.sparse_decode.kernel_sm90) and the sink-aware combine for sm_90 on a machine without a GPU (frontend +
ptxas, no launch): catches compile errors and shows shared memory and spills before spending device time;
PTX_DIR=dir writes each variant's PTX there (for scripts/ptx_snapshot.sh). TRITONMLA_SPARSE_CONFIG="block_m,block_n,warps,stages,programs_per_sm" picks the
portable kernel's tiles.
Run: PYTHONPATH=. python scripts/compile_sparse_offline.py"""
import collections
import os
import pathlib
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.experimental.gluon._runtime import GluonASTSource

from tritonmla.combine import combine as C
from tritonmla.core.fp8_cache_layouts import MODEL1, V32
from tritonmla.sparse_decode import kernel_portable as K
from tritonmla.sparse_decode import kernel_sm90 as H

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resources(k) -> str:
    """Registers and spill bytes of the cubin (cuobjdump -res-usage), what ptxas allocated."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage)
    return f"{found.group(1)} regs, stack {found.group(2)} B, local {found.group(4)} B" if found else usage.strip()


def compile_decode(layout, heads_q, dtype="bf16", page=64, page2=64, has=(True, True, True, True)):
    fn = K.sparse_decode_kernel
    names = fn.arg_names
    cfg = K.sparse_launch_config(heads_q)
    ptr = {"Q": f"*{dtype}", "OUT": f"*{dtype}", "K": "*u8", "K2": "*u8", "INDICES": "*i32", "TOPK_LEN": "*i32",
           "INDICES2": "*i32", "TOPK_LEN2": "*i32", "SINK": "*fp32", "SCHED": "*i32", "NUM_SPLITS": "*i32",
           "LSE": "*fp32", "OUT_PARTIAL": "*fp32", "LSE_PARTIAL": "*fp32"}
    const = dict(IS_V32=layout is V32, D_NOPE=layout.d_nope, D_ROPE=layout.d_rope, GROUP=layout.group,
                 NUM_SCALES=layout.num_scales, ROW_BYTES=layout.row_bytes, PAGE_SIZE=page, PAGE_SIZE2=page2,
                 HAS_LEN=has[0], HAS_EXTRA=has[1], HAS_LEN2=has[2], HAS_SINK=has[3], D_V=512,
                 BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PLAN_TILE=64, SCHED_ROW=8, DOT_F32=False)
    sig = {n: ptr.get(n) or ("constexpr" if n in const else "fp32" if n == "qk_scale_log2" else "i32")
           for n in names}
    # What a real launch specializes on: 16-byte aligned pointers, strides divisible by 16 (s_q = 1 or 2 aside).
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if n in ptr or (n.startswith("stride_") and n != "stride_lh")}
    k = triton.compile(ASTSource(fn, sig, {(names.index(n),): v for n, v in const.items()}, attrs), target=TARGET,
                       options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    loads = collections.Counter(re.findall(r"ld\.global[.\w]*", k.asm["ptx"]))
    if os.environ.get("PTX_DIR"):  # to compare two versions' code (debug lines dropped)
        ptx = "\n".join(line for line in k.asm["ptx"].splitlines() if not re.match(r"\s*(\.loc|//|\.file)", line))
        name = f"sparse_{layout.name}_{heads_q}_{dtype}_{page}_{page2}.ptx"
        pathlib.Path(os.environ["PTX_DIR"], name).write_text(ptx)
    print(f"{layout.name} h_q {heads_q} {dtype} page {page}/{page2} has {has} {cfg}: shared {k.metadata.shared} B, "
          f"{resources(k)}, wgmma {len(re.findall(r'wgmma.mma_async', k.asm['ptx']))}, loads {dict(loads)}")


def compile_hopper(layout, dtype="bf16", page=64, page2=64, has=(True, True, True, True)):
    fn = H.sparse_decode_hopper_kernel
    names = fn.arg_names
    ptr = {"Q": f"*{dtype}", "OUT": f"*{dtype}", "K": "*u8", "K2": "*u8", "INDICES": "*i32", "TOPK_LEN": "*i32",
           "INDICES2": "*i32", "TOPK_LEN2": "*i32", "SINK": "*fp32", "SCHED": "*i32", "NUM_SPLITS": "*i32",
           "LSE": "*fp32", "OUT_PARTIAL": "*fp32", "LSE_PARTIAL": "*fp32"}
    const = dict(IS_V32=layout is V32, D_NOPE=layout.d_nope, ROW_BYTES=layout.row_bytes, PAGE_SIZE=page,
                 PAGE_SIZE2=page2, HAS_LEN=has[0], HAS_EXTRA=has[1], HAS_LEN2=has[2], HAS_SINK=has[3], PLAN_TILE=64,
                 SCHED_ROW=8, STRESS_DELAY_NS=int(os.environ.get("STRESS_DELAY_NS", "0")),
                 STRESS_ONE_SITE=os.environ.get("STRESS_ONE_SITE", "0") == "1", num_warps=H.NUM_WARPS)
    sig = {n: ptr.get(n) or ("constexpr" if n in const else "fp32" if n == "qk_scale_log2" else "i32")
           for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if n in ptr or (n.startswith("stride_") and n != "stride_lh")}
    k = triton.compile(GluonASTSource(fn, sig, {(names.index(n),): v for n, v in const.items()}, attrs),
                       target=TARGET, options={"num_warps": H.NUM_WARPS, "maxnreg": H.MAXNREG})
    if os.environ.get("PTX_DIR"):
        ptx = "\n".join(line for line in k.asm["ptx"].splitlines() if not re.match(r"\s*(\.loc|//|\.file)", line))
        name = f"sparse_hopper_{layout.name}_{dtype}_{page}_{page2}_{sum(has)}.ptx"
        pathlib.Path(os.environ["PTX_DIR"], name).write_text(ptx)
    print(f"Gluon {layout.name} {dtype} page {page}/{page2} has {has}: shared {k.metadata.shared} B, {resources(k)}, "
          f"wgmma {len(re.findall(r'wgmma.mma_async', k.asm['ptx']))}")


def compile_combine():
    fn = C.mla_combine_sink_kernel
    names = fn.arg_names
    const = dict(D_V=512, ROWS=C.COMBINE_ROWS, COLS=512, SPLITS=2, HAS_SINK=True, RNE_BF16=False)
    ptr = {"OUT_PARTIAL": "*fp32", "LSE_PARTIAL": "*fp32", "NUM_SPLITS": "*i32", "SINK": "*fp32", "OUT": "*bf16",
           "LSE": "*fp32"}
    sig = {n: ptr.get(n) or ("constexpr" if n in const else "i32") for n in names}
    k = triton.compile(ASTSource(fn, sig, {(names.index(n),): v for n, v in const.items()}), target=TARGET,
                       options={"num_warps": 4})
    if os.environ.get("PTX_DIR"):
        ptx = "\n".join(line for line in k.asm["ptx"].splitlines() if not re.match(r"\s*(\.loc|//|\.file)", line))
        pathlib.Path(os.environ["PTX_DIR"], "combine_sink.ptx").write_text(ptx)
    print("combine (sink): ok")


if __name__ == "__main__":
    compile_combine()
    for lay in (V32, MODEL1):
        for h in (16, 64, 128):
            compile_decode(lay, h)
    compile_decode(V32, 64, page=61, page2=2, has=(False, False, False, False))
    compile_decode(MODEL1, 20, dtype="fp16", page=576, page2=2)
    for lay in (V32, MODEL1):
        compile_hopper(lay)
    compile_hopper(V32, "fp16", 61, 2, (False, False, False, False))
    compile_hopper(MODEL1, "fp16", 576, 2, (True, False, False, True))
    compile_hopper(V32, "bf16", 64, 64, (False, True, True, False))
