"""Compile the portable sparse prefill kernel (tritonmla.sparse_prefill.kernel_portable) for sm_90 on a machine
without a GPU (frontend + ptxas, no launch): shared memory, registers, spills and wgmma count per launch config,
before spending device time. Run: PYTHONPATH=. python scripts/compile_prefill_offline.py [block_h,block_n,warps,stages ...]
"""
import re
import sys

import triton
from triton.compiler import ASTSource

from compile_sparse_offline import TARGET, resources  # (scripts/ is sys.path[0] when run as a script)
from tritonmla.sparse_prefill import kernel_portable as P


def compile_prefill(d_qk: int, cfg: P.PrefillLaunchConfig, dtype: str = "bf16", has=(True, True)) -> None:
    fn = P.sparse_attn_fwd_kernel
    names = fn.arg_names
    ptr = {"Q": f"*{dtype}", "KV": f"*{dtype}", "OUT": f"*{dtype}", "INDICES": "*i32", "TOPK_LEN": "*i32",
           "SINK": "*fp32", "MAX_LOGITS": "*fp32", "LSE": "*fp32"}
    const = dict(D_QK=d_qk, D_V=512, BLOCK_H=cfg.block_h, BLOCK_N=cfg.block_n, HAS_LEN=has[0], HAS_SINK=has[1],
                 DOT_F32=False)
    sig = {n: ptr.get(n) or ("constexpr" if n in const else "fp32" if n == "qk_scale_log2" else "i32")
           for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n in ptr or n.startswith("stride_")
             and n not in ("stride_mh", "stride_lh", "stride_ih")}
    k = triton.compile(ASTSource(fn, sig, {(names.index(n),): v for n, v in const.items()}, attrs), target=TARGET,
                       options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    ptx = k.asm["ptx"]
    print(f"d_qk {d_qk} {dtype} {cfg}: shared {k.metadata.shared} B, {resources(k)}, "
          f"wgmma {len(re.findall(r'wgmma.mma_async', ptx))}, mma.sync {len(re.findall(r'mma.sync', ptx))}, "
          f"cp.async {len(re.findall(r'cp.async.ca|cp.async.cg', ptx))}", flush=True)


if __name__ == "__main__":
    configs = [P.PrefillLaunchConfig(*(int(v) for v in c.split(","))) for c in sys.argv[1:]] or \
        [P.prefill_launch_config(h) for h in (16, 32, 64)]
    for d_qk in (576, 512):
        for cfg in configs:
            try:
                compile_prefill(d_qk, cfg)
            except Exception as error:  # noqa: BLE001
                print(f"d_qk {d_qk} {cfg}: {type(error).__name__}: {str(error)[:300]}", flush=True)
