"""Maintained tool, a minimal reproducer (issue 9; NOTES.md relies on it): does compute-sanitizer racecheck model
named-barrier hand-offs between Gluon warp_specialize partitions? Three kernels, each a 128-float hand-off through shared memory, checked for the right
values; run under `compute-sanitizer --tool racecheck`:
  cta:      one partition (4 warps): all threads store, gl.thread_barrier() (bar.sync 0), each thread reads
            another thread's value. Expected: 0 hazards.
  named:    warp_specialize, warpgroup 0 stores, `bar.arrive 9, 256`; warpgroup 1 `bar.sync 9, 256`, then reads
            (dense_decode/kernel_sm90_seesaw.py's hand-off). Ordered by the PTX memory model: every writer arrives
            itself.
  both:     warp_specialize, both warpgroups store a half, meet at `bar.sync 8, 256`, read the other's half.
  empty_ws: warp_specialize whose partitions touch no shared memory of ours: what Triton's own prologue costs.
Usage (device), MODE one of cta, named, both, empty_ws:
  PYTHONPATH=. compute-sanitizer --tool racecheck python3 scripts/racecheck_named_barrier.py MODE
"""
import sys

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from tritonmla.core.gluon_helpers import named_barrier
from tritonmla.dense_decode.kernel_sm90_seesaw import ARRIVE_M_A, SYNC_BOTH, SYNC_M_A

ONE_PER_THREAD = gl.constexpr(gl.BlockedLayout([1], [32], [4], [0]))
ACROSS = gl.constexpr(gl.BlockedLayout([4], [32], [4], [0]))  # thread t reads what threads 4t..4t+3 wrote
ROW = gl.constexpr(gl.SwizzledSharedLayout(1, 1, 1, [0]))


@gluon.jit
def cta_kernel(OUT):
    buf = gl.allocate_shared_memory(gl.float32, [128], ROW)
    i = gl.arange(0, 128, ONE_PER_THREAD)
    buf.store((127 - i).to(gl.float32) * 2.0)
    gl.thread_barrier()
    j = gl.arange(0, 128, ACROSS)
    gl.store(OUT + 128 + j, buf.load(ACROSS))


@gluon.jit
def writer(buf, OUT):
    i = gl.arange(0, 128, ONE_PER_THREAD)
    buf.store((127 - i).to(gl.float32) * 2.0)
    named_barrier(ARRIVE_M_A)


@gluon.jit
def reader(buf, OUT):
    named_barrier(SYNC_M_A)
    j = gl.arange(0, 128, ACROSS)
    gl.store(OUT + 128 + j, buf.load(ACROSS))


@gluon.jit
def meet(buf, OUT, ROLE: gl.constexpr, n):
    """Both warpgroups store their half, meet at one named barrier (both bar.sync), read the other half; n times."""
    i = gl.arange(0, 64, gl.BlockedLayout([1], [32], [4], [0]))
    x = gl.zeros([64], gl.float32, gl.BlockedLayout([1], [32], [4], [0]))
    for it in range(n):
        buf.slice(64 * ROLE, 64).store((i + it * 1000 + ROLE * 64).to(gl.float32))
        named_barrier(SYNC_BOTH)
        x = buf.slice(64 * (1 - ROLE), 64).load(gl.BlockedLayout([1], [32], [4], [0]))
        named_barrier(SYNC_BOTH)
    gl.store(OUT + 128 * ROLE + i, x)


@gluon.jit
def both_kernel(OUT, n):
    buf = gl.allocate_shared_memory(gl.float32, [128], ROW)
    gl.warp_specialize([(meet, (buf, OUT, 0, n)), (meet, (buf, OUT, 1, n))], [4], [80])


@gluon.jit
def idle(buf, OUT):
    pass


@gluon.jit
def named_kernel(OUT, EMPTY: gl.constexpr):
    buf = gl.allocate_shared_memory(gl.float32, [128], ROW)
    if EMPTY:
        gl.warp_specialize([(idle, (buf, OUT)), (idle, (buf, OUT))], [4], [80])
    else:
        gl.warp_specialize([(writer, (buf, OUT)), (reader, (buf, OUT))], [4], [80])


if __name__ == "__main__":
    which = sys.argv[1]
    out = torch.full((256,), float("nan"), device="cuda")
    if which == "cta":
        cta_kernel[(1,)](out, num_warps=4)
    elif which == "both":
        both_kernel[(1,)](out, 5, num_warps=4)
        torch.cuda.synchronize()
        ok = torch.equal(out[:64], torch.arange(64, device="cuda").float() + 4064) and torch.equal(
            out[128:192], torch.arange(64, device="cuda").float() + 4000)
        print(f"both: hand-off values {'right' if ok else 'WRONG'}")
        raise SystemExit
    else:
        named_kernel[(1,)](out, which == "empty_ws", num_warps=4)
    torch.cuda.synchronize()
    want = (127 - torch.arange(128, device="cuda")).float() * 2
    ok = which == "empty_ws" or torch.equal(out[128:], want)
    print(f"{which}: hand-off values {'right' if ok else 'WRONG'}")
