"""Triton helpers shared by the portable kernels: round_to (fp32 -> the output dtype, with the interpreter's bf16
rounding fixed), and attend, one KV tile of attention for the sparse kernels (decode over FP8 rows, prefill over
bf16 rows): S = Q K^T (+ the RoPE part), the online softmax in the log2 domain, O += P V with V = the tile's first
512 columns."""
import triton
import triton.language as tl


@triton.jit
def round_to(x, DTYPE: tl.constexpr, RNE_BF16: tl.constexpr):
    """x (fp32) -> DTYPE. RNE_BF16: round to nearest even by hand first, for the interpreter, whose fp32 -> bf16
    conversion truncates (the GPU rounds to nearest even, and both give the same then)."""
    if RNE_BF16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & -65536  # -65536 = 0xFFFF0000
        x = tl.where(x == x, bits.to(tl.float32, bitcast=True), x)  # (NaN kept as is)
    return x.to(DTYPE)


@triton.jit
def attend(q_main, q_rope, k, k_rope, ok, m_i, l_i, acc, qk_scale_log2, IS_V32: tl.constexpr,
           DOT_F32: tl.constexpr):
    """One tile of the online softmax: S = Q K^T (+ RoPE part), O += P V with V = k (P rounded to k's dtype).
    DOT_F32 (the interpreter with bf16 inputs, whose bf16 tl.dot is wrong: triton-lang/triton#11584): the same
    bf16 operands, multiplied in fp32, which is what the GPU's bf16 dot with fp32 accumulation computes (and P
    rounded to nearest by hand: the interpreter's fp32 -> bf16 conversion truncates)."""
    if DOT_F32:
        s = tl.dot(q_main.to(tl.float32), tl.trans(k.to(tl.float32)))
        if IS_V32:
            s = tl.dot(q_rope.to(tl.float32), tl.trans(k_rope.to(tl.float32)), s)
    else:
        s = tl.dot(q_main, tl.trans(k))
        if IS_V32:
            s = tl.dot(q_rope, tl.trans(k_rope), s)
    s = tl.where(ok[None, :], s * qk_scale_log2, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing valid yet stays at 0
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if DOT_F32:
        acc = acc * alpha[:, None] + tl.dot(round_to(p, k.dtype, True).to(tl.float32), k.to(tl.float32))
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(k.dtype), k)
    return m_new, l_i, acc
