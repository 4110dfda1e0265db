"""Time breakdown of the Gluon Hopper kernel: variants that drop one stage, built by editing a copy of
tritonmla/kernels/decode_hopper.py (never product code). Timings only; the variants compute wrong answers.
Run on the device: PYTHONPATH=. python3 experiments/hopper_breakdown.py

  full      the shipped kernel
  l2_only   every TMA re-reads the request's first page: K comes from L2, not HBM (memory cost removed)
  no_exp    softmax replaced by p = s (no max/exp2/sum, no cross-warpgroup reductions)
  both      l2_only + no_exp: what the wgmmas, barriers and TMA issue cost on their own
"""
import importlib.util
import pathlib
import re
import sys
import tempfile

import torch
import triton

import tritonmla
from tritonmla.api import calls
from tritonmla.bench.workload import make_decode_inputs, work
from tritonmla.kernels import dispatch
from tritonmla.scheduler.metadata import num_parts_for

SRC = pathlib.Path(__file__).resolve().parents[1] / "tritonmla/kernels/decode_hopper.py"
EDITS = {
    "l2_only": [("page = gl.load(bt_row + start // PAGE_SIZE)\n    row = page * PAGE_SIZE + start % PAGE_SIZE",
                 "page = gl.load(bt_row)\n    row = page * PAGE_SIZE")],
    "no_exp": [("""            m_new = gl.maximum(m_i, gl.max(s, 1))
            m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet stays at 0
            alpha = gl.exp2(m_i - m_safe)
            p = gl.exp2(s - gl.expand_dims(m_safe, 1))
            l_i = l_i * alpha + gl.sum(p, 1)
            m_i = m_new""", """            alpha = l_i + 1.0
            p = s""")],
}
EDITS["both"] = EDITS["l2_only"] + EDITS["no_exp"]


def load_variant(name):
    text = re.sub(r"from \.(\w)", r"from tritonmla.kernels.\1",
                  re.sub(r"from \.\.(\w)", r"from tritonmla.\1", SRC.read_text()))
    for old, new in EDITS.get(name, []):
        assert old in text, (name, old[:60])
        text = text.replace(old, new)
    path = pathlib.Path(tempfile.mkdtemp()) / f"hopper_{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"hopper_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def time_variant(mod, seq_q, heads_q, seqlen=8192, batch=128):
    dispatch.decode_hopper = mod  # the API binds the Hopper kernel through this module
    calls.clear()
    x = make_decode_inputs([seqlen] * batch, seq_q, heads_q, 1, 64, torch.bfloat16, "cuda",
                           generator=torch.Generator("cuda").manual_seed(0))
    sched, splits = torch.ops.tritonmla.plan(x.cache_seqlens, num_parts_for(x.q.device, seq_q * heads_q, 1,
                                                                             "hopper"))
    run = lambda: tritonmla.flash_mla_with_kvcache(x.q, x.k_cache, x.block_table, x.cache_seqlens, 512, sched,  # noqa
                                                   splits, causal=True, kernel="hopper")
    ms = triton.testing.do_bench(run, warmup=50, rep=300, return_mode="median")
    flops, _ = work([seqlen] * batch, batch, seq_q, heads_q, 1)
    return ms, flops / ms / 1e9


if __name__ == "__main__":
    configs = [(1, 64), (2, 64), (2, 128)]
    print(f"{'variant':>8} " + " ".join(f"{f'h{h} s{s} ms':>10} {'TFLOPS':>6}" for s, h in configs))
    for name in ("full", "l2_only", "no_exp", "both"):
        mod = load_variant(name)
        time_variant(mod, *configs[0])  # warm-up + compile
        cells = [time_variant(mod, s, h) for s, h in configs]
        print(f"{name:>8} " + " ".join(f"{ms:10.3f} {tf:6.0f}" for ms, tf in cells), flush=True)
