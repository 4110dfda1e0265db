"""The seesaw consumers shared by the CuTe DSL Hopper (SM90) kernels: FlashMLA's "seesaw" schedule, warp-specialized.
A kernel is a subclass (dense_decode/kernel_sm90_cute.py: K tiles TMA-loaded from a paged cache; sparse_prefill:
rows gathered by index) that supplies the launch, the producer warpgroup and request_tiles (a request's keys in this
CTA); everything here is the consumers' side and the shared memory both sides use.

Math (online softmax, log2 domain), per query row and the keys k_j of its request, V = k_j[:512]:
    s_j = scale*log2e * q.k_j,  m' = max(m, rowmax s),  l' = l 2^(m-m') + sum_j 2^(s_j-m'),
    o' = o 2^(m-m') + sum_j 2^(s_j-m') v_j;   out = o / l,  lse = (m + log2 l) ln 2.

Seesaw (FlashMLA, docs/20250422-new-kernel-deep-dive.md): the 64 x 512 fp32 output is split into O_L (columns
0..255, warpgroup 0) and O_R (256..511, warpgroup 1). KV tiles come in pairs (A, B); each warpgroup computes the
full 64 x 64 scores of its own tile, so the two S products run at the same time. Per pair, m the shared running max:
    [0] S_A = Q K_A^T;  m_A = max(m, rowmax S_A);  P_A = 2^(S_A - m_A);  O_L = O_L 2^(m - m_A) + P_A V_A,L
    [1] S_B = Q K_B^T;  m_B = max(m_A, rowmax S_B);  P_B = 2^(S_B - m_B);
        O_R = O_R 2^(m - m_B) + P_B V_B,R + (P_A 2^(m_A - m_B)) V_A,R
    [0] O_L = O_L 2^(m_A - m_B) + P_B V_B,L;   m = m_B
Each warpgroup keeps the row sum l of the P it made; the two are added at the end. A warpgroup's own P is the
register A operand of its wgmma; the other's comes through shared memory, written with stmatrix over the RoPE box
of its K tile (no longer needed once S is done).
What the other warpgroup waits for comes first: warpgroup 1 takes its tile's row max before m_A arrives and hands
P_B and m_B over before rescaling O_R; row maxes and sums are trees (4 dependent steps, not 16); a rescale whose
factor is exactly 1 on all of a warp's rows (the running max unchanged: the common case once it has settled) is
skipped, and P_A then goes out as already converted.

Threads: warpgroups 0 and 1 consume, warpgroup 2 produces (register budgets by setmaxnreg, per kernel). Shared
memory: Q [64, 576], two K slots [64, 576] (V is the first 512 columns of the same tile, read through a transposed
view: one copy of each cache row), each slot 9 boxes of 64 x 64 with one mbarrier per box so S starts as the first
box lands. A slot is released in two groups of 4 boxes (+ the RoPE box) by per-thread mbarrier arrivals (count 128:
every consumer thread arrives after its own wgmma wait, so no warpgroup barrier precedes a release), each group as
soon as its last wgmma is done: a pair's four releases come as A's left half, B's right half, then the rest of A and
of B, and a producer refills in that order. Hand-offs between the warpgroups (m_A, m_B, P_A, P_B, the row sums, Q)
go through mbarriers the same way: every writing thread arrives after its own writes (and, for what a wgmma reads, a
proxy fence), the readers wait on the phase, so each write is ordered before the reads by the PTX memory model
(compute-sanitizer racecheck: 0 hazards; the named-barrier version drew 15 reports). Re-writes are ordered by the
opposite hand-off of the same pair.
Tail tiles (unused cache slots may hold NaN, and 0 * NaN would poison P V) are zeroed in shared memory by the
warpgroup that owns the tile before any wgmma reads them. The unsplit output leaves through shared memory
(store_out); a request cut into splits writes fp32 partials for the combine.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32, Int64, const_expr
from cutlass.cute.nvgpu import warpgroup
import cutlass.utils.hopper_helpers as sm90_utils

from .constants import D_QK, D_V
from .cute_index_mask import acc_rows

BLOCK_M = 64  # query rows per CTA: the wgmma M of one warpgroup
BLOCK_N = 64  # tokens per KV tile = one TMA box height = PLAN_TILE
BOX = 64  # columns per TMA box (128 bytes: the swizzle width)
QK_BOXES = D_QK // BOX  # 9
V_BOXES = D_V // BOX  # 8
HALF = D_V // 2  # output columns per consumer warpgroup
HALF_BOXES = V_BOXES // 2
SLOT_ELEMS = BLOCK_N * D_QK  # one K slot
THREADS = 384
# Hand-off mbarriers between the consumer warpgroups (every thread of the writing warpgroup arrives after its
# own writes; the readers wait on the phase): m_A and P_A (0 -> 1), m_B and P_B (1 -> 0), count 128 each;
# Q stored and row sums stored, count 256 (both warpgroups write and read).
H_M_A, H_M_B, H_P_A, H_Q, H_L = 0, 1, 2, 3, 4
BAR_WG = 1  # + role: named barrier over one consumer warpgroup (128 threads), for tail zeroing
# Timeline variants (scripts/cute_timeline.py; never the shipped one): one thread per role records the SM clock at 8
# events per pair of tiles, in the CTAs of m-block 0, KV head 0 and parts timeline_first .. + TIMELINE_CTAS - 1 (a
# later wave than the first: its CTAs start together, cold, and all load Q at once).
TIMELINE_CTAS = 4
TIMELINE_SLOTS = 2048  # events per role and CTA (256 pairs)


def _sync(bar: int, n: int) -> None:
    cute.arch.inline_ptx(f"bar.sync {bar}, {n};")


def qk_tiled_mma(dtype) -> cute.TiledMma:
    """S = Q K^T: both operands K-major in shared memory, N = 64 tokens."""
    return sm90_utils.make_trivial_tiled_mma(dtype, dtype, cute.nvgpu.OperandMajorMode.K, cute.nvgpu.OperandMajorMode.K,
                                             Float32, (1, 1, 1), (BLOCK_M, BLOCK_N))


def pv_tiled_mma(dtype, p_in_registers: bool) -> cute.TiledMma:
    """O += P V: P from registers (this warpgroup's) or shared memory (the other's), V MN-major, N = 256."""
    source = warpgroup.OperandSource.RMEM if p_in_registers else warpgroup.OperandSource.SMEM
    return sm90_utils.make_trivial_tiled_mma(dtype, dtype, cute.nvgpu.OperandMajorMode.K,
                                             cute.nvgpu.OperandMajorMode.MN, Float32, (1, 1, 1), (BLOCK_M, HALF),
                                             source)


def _row_values(s_mn, h: int) -> list:
    """This thread's 16 values of accumulator row h (s_mn: acc_rows view of a 64 x 64 tile), as a trace-time list."""
    return [s_mn[h, (v, g)] for g in range(BLOCK_N // 8) for v in range(2)]


def _tree(values: list, op):
    """op-reduce a trace-time list pairwise: log2(n) dependent steps instead of n - 1."""
    while len(values) > 1:
        values = [op(values[i], values[i + 1]) for i in range(0, len(values) - 1, 2)] + values[len(values) & ~1:]
    return values[0]


def _add(a, b):
    return a + b


@cute.jit
def _vector(dtype, addr, n: cutlass.Constexpr):
    """n elements at a global address known to be aligned to their size (one vector access)."""
    ptr = cute.make_ptr(dtype, addr, cute.AddressSpace.gmem, assumed_align=n * dtype.width // 8)
    return cute.make_tensor(ptr, cute.make_layout(n))


@cute.jit
def store_half_row(o_mn, h: cutlass.Constexpr, factor, addr, dtype):
    """This thread's columns of accumulator row h (o_mn: acc rows view) of a warpgroup's half of the output, times
    factor, as dtype at addr (the address of the thread's first column, c0), two adjacent columns per store."""
    pair = cute.make_rmem_tensor((2,), dtype)
    for g in cutlass.range_constexpr(HALF // 8):
        for v in cutlass.range_constexpr(2):
            pair[v] = (o_mn[h, (v, g)] * factor).to(dtype)
        cute.autovec_copy(pair, _vector(dtype, addr + 8 * g * (dtype.width // 8), 2))


def swizzled(row, chunk):
    """Byte offset of 16-byte chunk `chunk` of row `row` in a 64 x 64 box of 16-bit elements (128-byte rows, the
    128-byte swizzle). Add it to a box's shared address taken from the unswizzled base (sK.iterator.toint() plus whole
    slots and boxes): toint() of a slice *inside* a swizzled tensor gives the logical address (NOTES run 22)."""
    return row * (BOX * 2) + ((chunk ^ (row % 8)) * 16)


@cute.jit
def copy16_async(dst, src, valid, policy):
    """cp.async of 16 bytes from global src to shared address dst, bypassing L1, under L2 cache policy `policy`
    (l2_evict_last) with the hint that L2 fetch the whole 256-byte segment of src (FlashMLA's gathers); zeros and no
    read where valid is 0 (src-size 0: src must still be a mapped address). Lands for cp.async.mbarrier.arrive."""
    cute.arch.inline_ptx(
        "{ .reg .pred p; .reg .b32 n; setp.ne.b32 p, {$r2}, 0; selp.b32 n, 16, 0, p; "
        "cp.async.cg.shared.global.L2::cache_hint.L2::256B [{$r0}], [{$r1}], 16, n, {$r3}; }",
        read_only_args=[dst, src, valid, policy])


@cute.jit
def l2_evict_last():
    """An L2 cache policy that keeps what it loads (createpolicy: evict_last for all of it)."""
    return cute.arch.inline_ptx("createpolicy.fractional.L2::evict_last.b64 {$w0}, 1.0;", write_only_types=[Int64])


@cute.jit
def l2_evict_first():
    """An L2 cache policy for data used once (createpolicy: evict_first for all of it)."""
    return cute.arch.inline_ptx("createpolicy.fractional.L2::evict_first.b64 {$w0}, 1.0;", write_only_types=[Int64])


@cute.jit
def load16_hinted(addr, policy):
    """16 bytes at global addr as 4 words, not kept in L1, under L2 cache policy `policy`."""
    return cute.arch.inline_ptx("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {{$w0}, {$w1}, {$w2}, {$w3}}, "
                                "[{$r0}], {$r1};", write_only_types=[Int32] * 4, read_only_args=[addr, policy])


@cute.jit
def store16_hinted(addr, words, policy):
    """4 words to global addr (16-byte aligned) under L2 cache policy `policy`."""
    cute.arch.inline_ptx("st.global.L1::no_allocate.L2::cache_hint.v4.u32 [{$r0}], {{$r1}, {$r2}, {$r3}, {$r4}}, "
                         "{$r5};", read_only_args=[addr, words[0], words[1], words[2], words[3], policy])


def smem_layouts(dtype):
    """(swizzle, K slots, Q, V view) for a kernel's trace: the boxes' 128-byte swizzle lives in the pointer."""
    swz = warpgroup.make_smem_layout_atom(warpgroup.SmemLayoutAtomKind.K_SW128, dtype).inner
    # K slots [64 tokens, 576 columns, 2]: box c of slot s is 4096 contiguous elements at s*SLOT + c*4096.
    k_outer = cute.make_layout(((8, 8), (BOX, QK_BOXES), 2), stride=((BOX, 8 * BOX), (1, BLOCK_N * BOX), SLOT_ELEMS))
    # Q [64 rows, 576] in the same arrangement.
    q_outer = cute.make_layout(((8, 8), (BOX, QK_BOXES)), stride=((BOX, 8 * BOX), (1, BLOCK_M * BOX)))
    # V view of the same slots: [512 columns, 64 tokens, 2], columns contiguous (MN-major B operand).
    v_outer = cute.make_layout(((BOX, V_BOXES), (8, 8), 2), stride=((1, BLOCK_N * BOX), (BOX, 8 * BOX), SLOT_ELEMS))
    return swz, k_outer, q_outer, v_outer


def shared_storage(dtype):
    """The shared memory struct: barriers, row buffers, Q and two K slots (~217 KB). (Fields as objects: this
    module's annotations are strings.)"""
    fields = {
        "ready": cute.struct.MemRange[Int64, 2 * QK_BOXES],
        "empty": cute.struct.MemRange[Int64, 4],  # [slot * 2 + group]
        "hand": cute.struct.MemRange[Int64, 5],
        "rows": cute.struct.MemRange[Float32, 4 * BLOCK_M],  # m_A, m_B, l of warpgroup 0, l of warpgroup 1
        "sQ": cute.struct.Align[cute.struct.MemRange[dtype, BLOCK_M * D_QK], 1024],
        "sK": cute.struct.Align[cute.struct.MemRange[dtype, 2 * SLOT_ELEMS], 1024],
    }
    return cute.struct(type("Storage", (), {"__annotations__": fields}))

class SeesawSm90:
    """The consumers' side of a CuTe seesaw kernel. A subclass sets READY_ARRIVALS (arrivals that make a K box
    ready) and supplies request_tiles; timeline: 0, or the device address of an int64 [TIMELINE_CTAS, 3 roles,
    TIMELINE_SLOTS, 2] buffer that a timeline variant fills with (event, SM clock) rows (mark)."""
    READY_ARRIVALS: int
    QK_USED = QK_BOXES  # boxes of Q and K that S reads (a subclass with d_qk 512 leaves the RoPE box out)
    timeline_first = 0  # the first part a timeline variant records (a script may set it on the instance)
    L2_EVICT_FIRST = False  # Q loads and output stores under an L2 evict_first policy (read / written once)

    def __init__(self, dtype, timeline: int = 0):
        self.dtype = dtype
        self.timeline = timeline

    def cta_coords(self):
        """(row block, KV head, plan part) of this CTA: the grid's (x, y, z) (a subclass may fold more into x)."""
        return cute.arch.block_idx()

    @cute.jit
    def shared(self, Storage: cutlass.Constexpr, swz, k_outer, q_outer, v_outer):
        """The shared memory of a CTA: its barriers initialized (a K box's `ready` takes READY_ARRIVALS arrivals),
        Q, the two K slots and their V view, the row buffers."""
        warp = cute.arch.make_warp_uniform(cute.arch.warp_idx())
        smem = cutlass.memory.SmemAllocator()
        st = smem.allocate(Storage)
        ready = st.ready.data_ptr()
        empty = st.empty.data_ptr()
        hand = st.hand.data_ptr()
        if warp == 0:
            with cute.arch.elect_one():
                for i in cutlass.range_constexpr(2 * QK_BOXES):
                    cute.arch.mbarrier_init(ready + i, self.READY_ARRIVALS)
                for i in cutlass.range_constexpr(4):
                    cute.arch.mbarrier_init(empty + i, 128)
                for i in cutlass.range_constexpr(3):
                    cute.arch.mbarrier_init(hand + i, 128)
                for i in cutlass.range_constexpr(3, 5):
                    cute.arch.mbarrier_init(hand + i, 256)
        cute.arch.mbarrier_init_fence()
        cute.arch.sync_threads()
        # The swizzle lives in the pointer (wgmma descriptors want an affine layout on a swizzled pointer).
        sQ = cute.make_tensor(cute.recast_ptr(st.sQ.data_ptr(), swz), q_outer)
        sK = cute.make_tensor(cute.recast_ptr(st.sK.data_ptr(), swz), k_outer)
        sV = cute.make_tensor(cute.recast_ptr(st.sK.data_ptr(), swz), v_outer)
        sRows = st.rows.get_tensor(cute.make_layout((BLOCK_M, 4), stride=(1, BLOCK_M)))
        return ready, empty, hand, sQ, sK, sV, sRows

    # ---------------------------------------------------------------- consumers
    @cute.jit
    def consumer(self, role: cutlass.Constexpr, mQ, mSeq, mNumSplits, mO, mLse, mOp, mLp, sQ, sK, sV, sRows,
                 ready, empty, hand, qk_mma, pv_mma_rs, pv_mma_ss, scale_log2, seq_q, heads_per_kv, causal, seqlen_cap,
                 begin_req, begin_tile, end_req, end_tile, begin_split):
        """Warpgroup `role`: owns output columns [role*256, role*256 + 256) and tile A (0) / B (1) of each pair."""
        tidx, _, _ = cute.arch.thread_idx()
        t = tidx % 128
        lane = t % 32
        m_block, kv_head, _ = self.cta_coords()
        n_rows = seq_q * heads_per_kv
        # This thread's accumulator rows: r0 and r0 + 8 (shared with the other 3 threads of its quad); its
        # columns: 8 g + 2 (lane % 4) + v.
        r0 = (t // 32) * 16 + lane // 4
        c0 = 2 * (lane % 4)

        qk = qk_mma.get_slice(t)
        tSrQ = qk.make_fragment_A(qk.partition_A(sQ))  # (MMA, 1, 36): one k-step of 16 columns each
        pv_rs = pv_mma_rs.get_slice(t)
        pv_ss = pv_mma_ss.get_slice(t)
        uses_a = Int32(0)  # uses of slot 0 / 1 so far: the phase of their `ready` barriers
        uses_b = Int32(0)
        n_req = Int32(0)  # requests so far: the phase of the Q / row-sum barriers
        for b in cutlass.range(begin_req, end_req + 1, unroll=1):
            seqlen, lo, hi, n_tiles, has_work = self.request_tiles(mSeq, b, begin_req, begin_tile, end_req,
                                                                   end_tile, seqlen_cap)
            # Q of this request: each warpgroup stores alternate boxes. Both finished every wgmma on the previous
            # request's Q before they met at its row sums (H_L in the epilogue), so Q is free.
            self.load_q(role, t, mQ, sQ, b, m_block, kv_head, n_rows, heads_per_kv)
            cute.arch.fence_proxy("async.shared", space="cta")
            cute.arch.mbarrier_arrive(hand + H_Q)
            cute.arch.mbarrier_wait(hand + H_Q, n_req & 1)

            key_end = cute.make_rmem_tensor((2,), Int32)
            for h in cutlass.range_constexpr(2):
                key_end[h] = seqlen
                if causal != 0:  # bottom-right: query q_pos sees keys < seqlen - (seq_q - 1 - q_pos)
                    key_end[h] = seqlen - (seq_q - 1 - (m_block * BLOCK_M + r0 + 8 * h) // heads_per_kv)
            m_i = cute.make_rmem_tensor((2,), Float32)
            l_i = cute.make_rmem_tensor((2,), Float32)
            m_i.fill(-Float32.inf)
            l_i.fill(0.0)
            acc_o = pv_rs.make_fragment_C(pv_rs.partition_shape_C((BLOCK_M, HALF)))
            acc_o.fill(0.0)
            for j in cutlass.range((n_tiles + 1) // 2, unroll=1):
                start_a = lo + 2 * j * BLOCK_N
                start_b = start_a + BLOCK_N
                has_b = start_b < hi
                phase_a = uses_a & 1
                phase_b = uses_b & 1
                if const_expr(role == 0):
                    self.pair_role0(t, lane, r0, c0, sK, sV, sRows, tSrQ, qk, qk_mma, pv_rs, pv_ss,
                                    ready, empty, hand, acc_o, m_i, l_i, start_a, has_b, hi, key_end,
                                    scale_log2, phase_a, phase_b, uses_a * 8)
                else:
                    self.pair_role1(t, lane, r0, c0, sK, sV, sRows, tSrQ, qk, qk_mma, pv_rs, pv_ss,
                                    ready, empty, hand, acc_o, m_i, l_i, start_b, has_b, hi, key_end,
                                    scale_log2, phase_a, phase_b, uses_a * 8)
                uses_a += 1
                if has_b:
                    uses_b += 1
            self.epilogue(role, lane, r0, c0, b, m_block, kv_head, n_rows, heads_per_kv, has_work, mNumSplits,
                          mO, mLse, mOp, mLp, acc_o, m_i, l_i, sRows, hand, n_req & 1, begin_req, begin_split, t,
                          sQ)
            n_req += 1

    @cute.jit
    def load_q(self, role: cutlass.Constexpr, t, mQ, sQ, b, m_block, kv_head, n_rows, heads_per_kv):
        """Rows m_block*64 .. +64 of request b's queries (row r = q_pos * heads_per_kv + head in group) into sQ,
        16 bytes per thread and step; rows past the request are zeros. This warpgroup takes boxes c % 2 == role."""
        col8 = (t % 8) * 8
        policy = l2_evict_first() if const_expr(self.L2_EVICT_FIRST) else None
        for k in cutlass.range_constexpr(BLOCK_M // 16):
            row = t // 8 + 16 * k
            row_g = m_block * BLOCK_M + row
            q_pos = row_g // heads_per_kv
            head = kv_head * heads_per_kv + row_g % heads_per_kv
            row_addr = mQ[b, q_pos, head, None].iterator.toint()  # q's rows are 16-byte aligned (BoundCute)
            for c in cutlass.range_constexpr(role, self.QK_USED, 2):
                frag = cute.make_rmem_tensor((8,), self.dtype)
                frag.fill(0.0)
                if row_g < n_rows:
                    addr = row_addr + (c * BOX + col8) * (self.dtype.width // 8)
                    if const_expr(self.L2_EVICT_FIRST):
                        words = load16_hinted(addr, policy)
                        as_words = cute.recast_tensor(frag, Int32)
                        for w in cutlass.range_constexpr(4):
                            as_words[w] = words[w]
                    else:
                        cute.autovec_copy(_vector(self.dtype, addr, 8), frag)
                cute.autovec_copy(frag, cute.local_tile(sQ[row, None], (8,), (c * 8 + t % 8,)))

    @cute.jit
    def scores(self, role: cutlass.Constexpr, slot: cutlass.Constexpr, t, sK, tSrQ, qk, ready, phase,
               valid):
        """S = Q K^T of the tile in `slot`, one group of 4 wgmmas per box as it lands (the producer's order);
        rows >= valid of a tail tile are zeroed first."""
        qk_mma = qk_tiled_mma(self.dtype)  # a local copy: its ACCUMULATE field changes below
        acc_s = qk.make_fragment_C(qk.partition_shape_C((BLOCK_M, BLOCK_N)))
        tSrK = qk.make_fragment_B(qk.partition_B(sK[None, None, slot]))  # (MMA, 1, 36)
        for i in cutlass.range_constexpr(self.QK_USED):
            c = V_BOXES
            if const_expr(i < V_BOXES):
                c = (i + slot * HALF_BOXES) % V_BOXES
            cute.arch.mbarrier_wait(ready + slot * QK_BOXES + c, phase)
            if valid < BLOCK_N:
                box = sK[None, (None, c), slot]
                for k in cutlass.range_constexpr(BLOCK_N * BOX // 8 // 128):
                    chunk = t + k * 128
                    row = chunk // 8
                    if row >= valid:
                        zeros = cute.make_rmem_tensor((8,), self.dtype)
                        zeros.fill(0.0)
                        cute.autovec_copy(zeros, cute.local_tile(box[row, None], (8,), (chunk % 8,)))
                cute.arch.fence_proxy("async.shared", space="cta")  # generic writes, read next by wgmma
                _sync(BAR_WG + role, 128)
            warpgroup.fence()
            for kk in cutlass.range_constexpr(BOX // 16):
                qk_mma.set(warpgroup.Field.ACCUMULATE, i + kk > 0)
                cute.gemm(qk_mma, acc_s, tSrQ[None, None, c * 4 + kk], tSrK[None, None, c * 4 + kk], acc_s)
            warpgroup.commit_group()
        warpgroup.wait_group(0)
        return acc_s

    def score_inputs(self, c0, start, hi):
        """What masked_scores will need from global memory, loaded before S is issued so that its latency hides
        under the wgmmas (a subclass hook: decoding masks by position only, so nothing)."""
        return None

    @cute.jit
    def masked_scores(self, acc_s, c0, start, hi, key_end, scale_log2, pre):
        """Scale to the log2 domain; keys past the part's end or the causal edge get -inf. (pre: score_inputs')"""
        s_mn = acc_rows(acc_s)
        for h in cutlass.range_constexpr(2):
            end = cutlass.min(hi, key_end[h])
            if start + BLOCK_N <= end:  # all visible: every tile but the last one or two
                for j in cutlass.range_constexpr(BLOCK_N // 4):
                    s_mn[h, j] = s_mn[h, j] * scale_log2
            else:
                for g in cutlass.range_constexpr(BLOCK_N // 8):
                    for v in cutlass.range_constexpr(2):
                        x = s_mn[h, (v, g)] * scale_log2
                        if start + 8 * g + c0 + v >= end:
                            x = -Float32.inf
                        s_mn[h, (v, g)] = x
        return s_mn

    @cute.jit
    def row_max(self, s_mn, h: cutlass.Constexpr, m_prev=None):
        """The max of this quad's row h (and m_prev[h] if given): a tree over the thread's 16 columns (a 4-deep
        dependency chain, not 16), then the quad."""
        m = _tree(_row_values(s_mn, h), cute.arch.fmax)
        m = cute.arch.fmax(m, cute.arch.shuffle_sync_bfly(m, offset=1))
        m = cute.arch.fmax(m, cute.arch.shuffle_sync_bfly(m, offset=2))
        if const_expr(m_prev is not None):
            m = cute.arch.fmax(m, m_prev[h])
        return m

    @cute.jit
    def exp_rows(self, s_mn, m_new):
        """P = 2^(S - m) in place; returns this thread's share of each row's sum (a tree, as row_max)."""
        sums = cute.make_rmem_tensor((2,), Float32)
        for h in cutlass.range_constexpr(2):
            m = self.safe_max(m_new[h])
            for g in cutlass.range_constexpr(BLOCK_N // 8):
                for v in cutlass.range_constexpr(2):
                    s_mn[h, (v, g)] = cute.math.exp2(s_mn[h, (v, g)] - m, fastmath=True)
            sums[h] = _tree(_row_values(s_mn, h), _add)
        return sums

    @cute.jit
    def unchanged(self, factor):
        """Whether every row of this warp keeps its max (factor exactly 1 on all of them): warp-uniform."""
        return cute.arch.vote_all_sync(factor[0] == 1.0 and factor[1] == 1.0)

    @cute.jit
    def rescale(self, acc_o, l_i, factor, sums=None):
        """O *= factor and l = l factor (+ sums) per row. The 128 multiplies of O are skipped where every row of
        the warp keeps its max (factor exactly 1: the common case once the running max has settled)."""
        for h in cutlass.range_constexpr(2):
            l_i[h] *= factor[h]
            if const_expr(sums is not None):
                l_i[h] += sums[h]
        if not self.unchanged(factor):
            o_mn = acc_rows(acc_o)
            for h in cutlass.range_constexpr(2):
                for g in cutlass.range_constexpr(HALF // 8):
                    for v in cutlass.range_constexpr(2):
                        o_mn[h, (v, g)] *= factor[h]

    @cute.jit
    def to_operand(self, acc_s):
        """P (the S accumulator, f32) as the A operand of P V in registers (same element order, 16-bit), and the same
        registers seen in the accumulator's layout (for store_p)."""
        frag = cute.make_rmem_tensor(cute.make_layout(((2, 2, 2), 1, BLOCK_N // 16), stride=((1, 2, 4), 0, 8)),
                                     self.dtype)
        p = cute.make_tensor(frag.iterator, acc_s.layout)
        p.store(acc_s.load().to(self.dtype))
        return frag, p

    @cute.jit
    def scaled_p(self, acc_s, factor):
        """P times factor per row, 16-bit, in the accumulator's layout."""
        p = cute.make_rmem_tensor(acc_s.layout, self.dtype)
        p_mn = acc_rows(p)
        s_mn = acc_rows(acc_s)
        for h in cutlass.range_constexpr(2):
            for j in cutlass.range_constexpr(BLOCK_N // 4):
                p_mn[h, j] = (s_mn[h, j] * factor[h]).to(self.dtype)
        return p

    @cute.jit
    def store_p(self, p, qk_mma, t, sK, slot: cutlass.Constexpr):
        """P (16-bit, accumulator layout) into slot's RoPE box, [64 rows, 64 tokens] K-major: the other warpgroup's
        A operand. stmatrix: each warp writes its 16 rows as 8x8 matrices, 16 bytes per thread and instruction."""
        atom = cute.make_copy_atom(cute.nvgpu.warp.StMatrix8x8x16bOp(False, 4), self.dtype)
        copy = cute.make_tiled_copy_C(atom, qk_mma)
        thr = copy.get_slice(t)
        cute.copy(copy, thr.retile(p), thr.partition_D(sK[None, (None, V_BOXES), slot]))

    @cute.jit
    def pv(self, p_in_registers: cutlass.Constexpr, thr, acc_o, a_frag, sV, slot: cutlass.Constexpr,
           role: cutlass.Constexpr):
        """acc_o += P V[:, role half] of slot (4 wgmmas of k 16); the caller commits and waits."""
        mma = pv_tiled_mma(self.dtype, p_in_registers)
        mma.set(warpgroup.Field.ACCUMULATE, True)
        sVh = cute.local_tile(sV[None, None, slot], (HALF, BLOCK_N), (role, 0))
        tOrV = thr.make_fragment_B(thr.partition_B(sVh))
        for kk in cutlass.range_constexpr(BLOCK_N // 16):
            cute.gemm(mma, acc_o, a_frag[None, None, kk], tOrV[None, None, kk], acc_o)

    @cute.jit
    def pv_shared_p(self, pv_ss, acc_o, sK, sV, slot: cutlass.Constexpr, role: cutlass.Constexpr):
        """Issue acc_o += P V[:, role half] with the other warpgroup's P from slot's RoPE box; one commit group."""
        tOrP = pv_ss.make_fragment_A(pv_ss.partition_A(sK[None, (None, V_BOXES), slot]))
        warpgroup.fence()
        self.pv(False, pv_ss, acc_o, tOrP, sV, slot, role)
        warpgroup.commit_group()

    @cute.jit
    def pair_role0(self, t, lane, r0, c0, sK, sV, sRows, tSrQ, qk, qk_mma, pv_rs, pv_ss,
                   ready, empty, hand, acc_o, m_i, l_i, start_a, has_b, hi, key_end, scale_log2, phase_a, phase_b,
                   mark_at):
        self.mark(0, mark_at, 0)
        pre = self.score_inputs(c0, start_a, hi)
        acc_s = self.scores(0, 0, t, sK, tSrQ, qk, ready, phase_a, hi - start_a)
        self.mark(0, mark_at + 1, 1)
        s_mn = self.masked_scores(acc_s, c0, start_a, hi, key_end, scale_log2, pre)
        m_a = cute.make_rmem_tensor((2,), Float32)
        for h in cutlass.range_constexpr(2):
            m_a[h] = self.row_max(s_mn, h, m_i)
        self.put_rows(sRows, 0, m_a, lane, r0)
        cute.arch.mbarrier_arrive(hand + H_M_A)
        self.mark(0, mark_at + 2, 2)
        factor = self.rescale_factors(m_i, m_a)
        sums = self.exp_rows(s_mn, m_a)
        self.rescale(acc_o, l_i, factor, sums)
        p_frag, p = self.to_operand(acc_s)
        warpgroup.fence()
        self.pv(True, pv_rs, acc_o, p_frag, sV, 0, 0)  # O_L += P_A V_A,L
        warpgroup.commit_group()
        self.mark(0, mark_at + 3, 3)
        # m_B from warpgroup 1; P_A, rescaled to it, goes over tile A's RoPE box for O_R.
        cute.arch.mbarrier_wait(hand + H_M_B, phase_a)  # one hand-off per pair: the pair count's parity
        self.mark(0, mark_at + 4, 4)
        m_b = cute.make_rmem_tensor((2,), Float32)
        for h in cutlass.range_constexpr(2):
            m_b[h] = sRows[r0 + 8 * h, 1]
        factor = self.rescale_factors(m_a, m_b)
        if self.unchanged(factor):  # m_B = m_A on all the warp's rows: P_A as converted for P_A V_A,L
            self.store_p(p, qk_mma, t, sK, 0)
        else:
            self.store_p(self.scaled_p(acc_s, factor), qk_mma, t, sK, 0)
        cute.arch.fence_proxy("async.shared", space="cta")
        cute.arch.mbarrier_arrive(hand + H_P_A)
        warpgroup.wait_group(0)
        cute.arch.mbarrier_arrive(empty + 0)  # tile A's left half: only this warpgroup reads it
        self.mark(0, mark_at + 5, 5)
        self.rescale(acc_o, l_i, factor)
        if has_b:  # O_L += P_B V_B,L (P_B is in tile B's RoPE box since H_M_B)
            for c in cutlass.range_constexpr(HALF_BOXES):
                cute.arch.mbarrier_wait(ready + QK_BOXES + c, phase_b)
            self.pv_shared_p(pv_ss, acc_o, sK, sV, 1, 0)
            self.mark(0, mark_at + 6, 6)
            warpgroup.wait_group(0)
            cute.arch.mbarrier_arrive(empty + 3)  # tile B's left half and P_B
            self.mark(0, mark_at + 7, 7)
        for h in cutlass.range_constexpr(2):
            m_i[h] = m_b[h]

    @cute.jit
    def pair_role1(self, t, lane, r0, c0, sK, sV, sRows, tSrQ, qk, qk_mma, pv_rs, pv_ss,
                   ready, empty, hand, acc_o, m_i, l_i, start_b, has_b, hi, key_end, scale_log2, phase_a, phase_b,
                   mark_at):
        self.mark(1, mark_at, 0)
        acc_s = qk.make_fragment_C(qk.partition_shape_C((BLOCK_M, BLOCK_N)))
        acc_s.fill(-Float32.inf)
        s_mn = acc_rows(acc_s)
        if has_b:
            pre = self.score_inputs(c0, start_b, hi)
            acc_b = self.scores(1, 1, t, sK, tSrQ, qk, ready, phase_b, hi - start_b)
            acc_s.store(acc_b.load())
            self.mark(1, mark_at + 1, 1)
            self.masked_scores(acc_s, c0, start_b, hi, key_end, scale_log2, pre)
        # This tile's own row max before m_A arrives; then only max(m_A, it) waits for warpgroup 0.
        m_b = cute.make_rmem_tensor((2,), Float32)
        for h in cutlass.range_constexpr(2):
            m_b[h] = self.row_max(s_mn, h)  # -inf without tile B
        cute.arch.mbarrier_wait(hand + H_M_A, phase_a)
        for c in cutlass.range_constexpr(HALF_BOXES, V_BOXES):  # tile A's right half landed (and zeroed) by now
            cute.arch.mbarrier_wait(ready + c, phase_a)
        self.mark(1, mark_at + 2, 2)
        for h in cutlass.range_constexpr(2):
            m_b[h] = cute.arch.fmax(m_b[h], sRows[r0 + 8 * h, 0])
        sums = self.exp_rows(s_mn, m_b)  # all 0 without tile B
        # P_B and m_B go to warpgroup 0 first; O_R's rescale (2^(m - m_A) 2^(m_A - m_B)) comes after the hand-off.
        p_frag, p = self.to_operand(acc_s)
        if has_b:
            self.store_p(p, qk_mma, t, sK, 1)
            cute.arch.fence_proxy("async.shared", space="cta")
        self.put_rows(sRows, 1, m_b, lane, r0)
        cute.arch.mbarrier_arrive(hand + H_M_B)
        self.mark(1, mark_at + 3, 3)
        factor = self.rescale_factors(m_i, m_b)
        self.rescale(acc_o, l_i, factor, sums)
        if has_b:  # O_R += P_B V_B,R (without tile B, P_B is 0: nothing to add)
            warpgroup.fence()
            self.pv(True, pv_rs, acc_o, p_frag, sV, 1, 1)
            warpgroup.commit_group()
            self.mark(1, mark_at + 4, 4)
        cute.arch.mbarrier_wait(hand + H_P_A, phase_a)
        self.mark(1, mark_at + 5, 5)
        self.pv_shared_p(pv_ss, acc_o, sK, sV, 0, 1)  # O_R += P_A V_A,R
        self.mark(1, mark_at + 6, 6)
        warpgroup.wait_group(1)  # P_B V_B,R done: its refill need not wait for P_A V_A,R
        if has_b:
            cute.arch.mbarrier_arrive(empty + 2)  # tile B's right half: only this warpgroup reads it
        warpgroup.wait_group(0)
        cute.arch.mbarrier_arrive(empty + 1)  # tile A's right half and P_A
        self.mark(1, mark_at + 7, 7)
        for h in cutlass.range_constexpr(2):
            m_i[h] = m_b[h]

    @cute.jit
    def mark(self, role: cutlass.Constexpr, index, event: cutlass.Constexpr):
        """Timeline variants only: thread 0 of `role` (warpgroup 0, 1, the producer) stores (event, SM clock) as
        entry `index` of its row of the buffer at self.timeline. No code in the shipped variant."""
        if const_expr(self.timeline != 0):
            tidx, _, _ = cute.arch.thread_idx()
            m_block, kv_head, part = self.cta_coords()
            part = part - self.timeline_first
            if (tidx % 128 == 0 and m_block == 0 and kv_head == 0 and part >= 0 and part < TIMELINE_CTAS
                    and index < TIMELINE_SLOTS):
                addr = Int64(self.timeline) + ((Int64(part) * 3 + role) * TIMELINE_SLOTS + index) * 16
                entry = _vector(Int64, addr, 2)
                entry[0] = Int64(event)
                entry[1] = cute.arch.clock64()

    @cute.jit
    def put_rows(self, sRows, col: cutlass.Constexpr, vals, lane, r0):
        """This quad's values of rows r0 and r0 + 8 (one per row: the quad has reduced them) into sRows[:, col]."""
        if lane % 4 == 0:
            sRows[r0, col] = vals[0]
            sRows[r0 + 8, col] = vals[1]

    @cute.jit
    def rescale_factors(self, m_old, m_new):
        """2^(m_old - m_new) per row: what O and l carried at m_old are worth at the new running max."""
        factor = cute.make_rmem_tensor((2,), Float32)
        for h in cutlass.range_constexpr(2):
            factor[h] = cute.math.exp2(m_old[h] - self.safe_max(m_new[h]), fastmath=True)
        return factor

    @cute.jit
    def safe_max(self, m):
        """The max to subtract: a row with nothing visible yet (m = -inf) uses 0, so 2^(-inf - 0) = 0."""
        r = m
        if m == -Float32.inf:
            r = Float32(0.0)
        return r

    @cute.jit
    def share_row_sums(self, role: cutlass.Constexpr, lane, r0, l_i, sRows, hand, phase):
        """This warpgroup's row sums, reduced over the quad, into sRows[:, 2 + role]; returns once both warpgroups'
        are there (the other's: sRows[:, 3 - role])."""
        for h in cutlass.range_constexpr(2):
            l_i[h] += cute.arch.shuffle_sync_bfly(l_i[h], offset=1)
            l_i[h] += cute.arch.shuffle_sync_bfly(l_i[h], offset=2)
        self.put_rows(sRows, 2 + role, l_i, lane, r0)
        cute.arch.mbarrier_arrive(hand + H_L)
        cute.arch.mbarrier_wait(hand + H_L, phase)

    @cute.jit
    def out_row(self, mO, b, row_g, kv_head, heads_per_kv):
        """The address of output row row_g (of the CTA's rows q_pos * heads_per_kv + head in group) of request b."""
        return mO[b, row_g // heads_per_kv, kv_head * heads_per_kv + row_g % heads_per_kv, None].iterator.toint()

    @cute.jit
    def store_out(self, role: cutlass.Constexpr, t, lane, acc_o, factor, sQ, mO, b, m_block, kv_head, n_rows,
                  heads_per_kv):
        """This warpgroup's half of the CTA's output rows (< n_rows), each row times factor[h], through shared memory
        so that the global stores are whole: stmatrix into the Q boxes this warpgroup loads (c % 2 == role; Q is free
        once both warpgroups met at the row sums, and each reloads only its own boxes next), then each warp stores
        rows of 512 contiguous bytes, 16 per lane (32 LDS.128 + 32 STG.128 per thread instead of 256 four-byte
        stores: the prefill's epilogue took 9-11 k cycles of a CTA that way, NOTES run 23)."""
        width = self.dtype.width // 8
        o16 = cute.make_rmem_tensor(acc_o.layout, self.dtype)
        o16_mn = acc_rows(o16)
        o_mn = acc_rows(acc_o)
        for h in cutlass.range_constexpr(2):
            o16_mn[h, None].store((o_mn[h, None].load() * factor[h]).to(self.dtype))
        # [64 rows, 256 columns] over boxes role, role + 2, role + 4, role + 6 of Q (128-byte swizzle kept)
        stage = cute.make_tensor(sQ.iterator + role * BLOCK_M * BOX,
                                 cute.make_layout(((8, 8), (BOX, HALF_BOXES)),
                                                  stride=((BOX, 8 * BOX), (1, 2 * BLOCK_M * BOX))))
        atom = cute.make_copy_atom(cute.nvgpu.warp.StMatrix8x8x16bOp(False, 4), self.dtype)
        copy = cute.make_tiled_copy_C(atom, pv_tiled_mma(self.dtype, True))
        thr = copy.get_slice(t)
        cute.copy(copy, thr.retile(o16), thr.partition_D(stage))
        _sync(BAR_WG + role, 128)
        policy = l2_evict_first() if const_expr(self.L2_EVICT_FIRST) else None
        warp = t // 32
        for k in cutlass.range_constexpr(BLOCK_M // 4):
            row = 4 * k + warp
            row_g = m_block * BLOCK_M + row
            if row_g < n_rows:
                frag = cute.make_rmem_tensor((8,), self.dtype)
                cute.autovec_copy(cute.local_tile(stage[row, None], (8,), (lane,)), frag)
                addr = self.out_row(mO, b, row_g, kv_head, heads_per_kv) + (role * HALF + lane * 8) * width
                if const_expr(self.L2_EVICT_FIRST):
                    store16_hinted(addr, cute.recast_tensor(frag, Int32), policy)
                else:
                    cute.autovec_copy(frag, _vector(self.dtype, addr, 8))
        _sync(BAR_WG + role, 128)  # every read of the stage done before this warpgroup reloads its Q boxes

    @cute.jit
    def epilogue(self, role: cutlass.Constexpr, lane, r0, c0, b, m_block, kv_head, n_rows, heads_per_kv,
                 has_work, mNumSplits, mO, mLse, mOp, mLp, acc_o, m_i, l_i, sRows, hand, phase, begin_req,
                 begin_split, t, sQ):
        """l = l of warpgroup 0 + l of warpgroup 1; a request wholly in this part writes out / lse, a cut one
        its partial."""
        self.share_row_sums(role, lane, r0, l_i, sRows, hand, phase)
        o_mn = acc_rows(acc_o)
        split_begin = mNumSplits[b]
        num_splits = mNumSplits[b + 1] - split_begin
        split_row = split_begin
        if b == begin_req:
            split_row = split_begin + begin_split
        factor = cute.make_rmem_tensor((2,), Float32)
        for h in cutlass.range_constexpr(2):
            row = r0 + 8 * h
            row_g = m_block * BLOCK_M + row
            l = l_i[h] + sRows[row, 3 - role]
            seen = l > 0.0
            inv = Float32(1.0)
            lse2 = -Float32.inf
            if seen:
                inv = 1.0 / l
                lse2 = m_i[h] + cute.math.log2(l, fastmath=True)
            factor[h] = inv
            if row_g < n_rows and has_work:
                q_pos = row_g // heads_per_kv
                head = kv_head * heads_per_kv + row_g % heads_per_kv
                if num_splits == 1:
                    if const_expr(role == 0):
                        if lane % 4 == 0:
                            lse = Float32.inf
                            if seen:
                                lse = lse2 * 0.6931471805599453
                            mLse[b, head, q_pos] = lse
                else:
                    store_half_row(o_mn, h, inv, mOp[split_row, kv_head, row_g, None].iterator.toint()
                                   + (role * HALF + c0) * 4, Float32)
                    if const_expr(role == 0):
                        if lane % 4 == 0:
                            mLp[split_row, kv_head, row_g] = lse2
        if num_splits == 1 and has_work:
            self.store_out(role, t, lane, acc_o, factor, sQ, mO, b, m_block, kv_head, n_rows, heads_per_kv)
