"""Gluon helpers the Hopper kernels share (dense kernel_sm90 / kernel_sm90_seesaw, sparse kernel_sm90): one tile
of the online softmax, named barriers between warpgroups, and the stress tests' stall sites."""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def online_softmax(s, m_i, l_i):
    """One tile of the online softmax (log2 domain): scores s [rows, n] (masked entries -inf), running max m_i and
    sum l_i -> (m', l', alpha = 2^(m - m'), p = 2^(s - m')). A row with nothing visible yet keeps max -inf and
    subtracts 0, so its p is 0. Shared by the Gluon kernels (dense and sparse)."""
    m_new = gl.maximum(m_i, gl.max(s, 1))
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_safe)
    p = gl.exp2(s - gl.expand_dims(m_safe, 1))
    return m_new, l_i * alpha + gl.sum(p, 1), alpha, p


@gluon.jit
def named_barrier(ASM: gl.constexpr):
    """Run `barrier.sync` / `barrier.arrive` (ASM) once in each of this warpgroup's 128 threads. (Gluon 3.6 has no named
    barrier: an elementwise inline asm over a 128-element tensor with one element per thread does it; it is not
    pure, so it is neither removed nor moved across the shared-memory accesses around it.)"""
    one_per_thread: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    gl.inline_asm_elementwise(ASM + " mov.b32 $0, $1;", "=r,r", [gl.arange(0, 128, one_per_thread)],
                              dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def stall(STRESS_DELAY_NS: gl.constexpr):
    """Tests only (compiled out at 0): each thread sleeps a different 0..STRESS_DELAY_NS ns before it writes what
    the other warpgroup reads, and before it reads what the other warpgroup writes next, so a hand-off that did not
    order every writer before the readers (or every reader before the next writer) would show (test_gpu.py)."""
    if STRESS_DELAY_NS > 0:
        one_per_thread: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
        ns = (gl.arange(0, 128, one_per_thread) * 40503 + gl.program_id(2) * 977) % STRESS_DELAY_NS
        gl.inline_asm_elementwise("nanosleep.u32 $1; mov.b32 $0, $1;", "=r,r", [ns], dtype=gl.int32, is_pure=False,
                                  pack=1)
