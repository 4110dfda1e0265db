"""Shared pieces of the CuTe DSL attention kernels: the accumulator's row view (acc_rows) and the score mask of the
kernels whose keys are rows named by an index list (the sparse prefill kernel; a sparse decode one can mix it in):
a mixin over the seesaw consumers' hooks (core/cute_seesaw.py: score_inputs, masked_scores).

Slot `col` of a tile is valid when col < hi (the part's end: the list's length) and its index names a row,
0 <= index < self.t_rows; an invalid slot's score is -inf (its gathered row is zeros, so P V adds nothing). A kernel
mixing this in sets self.t_idx (the indices, [x, y, slot]) and self.t_rows in its trace and defines
index_coords() -> (x, y): the list of the CTA's current tile. The indices are loaded before S is issued
(score_inputs), so their latency hides under the wgmmas.
"""
from __future__ import annotations

import cutlass
import cutlass.cute as cute
from cutlass import Float32, Int32


def acc_rows(acc):
    """A wgmma accumulator fragment of a 64 x N tile seen as [2 rows, N/4 columns] of this thread: rows r0 and r0 + 8,
    columns 8 g + 2 (lane % 4) + v indexed (v, g) (the m64nNk16 accumulator layout)."""
    n = cute.size(acc)
    return cute.make_tensor(acc.iterator, cute.make_layout((2, (2, n // 4)), stride=(2, (1, 4))))


class IndexMask:
    @cute.jit
    def score_inputs(self, c0, start, hi):
        """The indices of this thread's 16 columns of the tile (-1 past hi)."""
        x, y = self.index_coords()
        mIdx = self.t_idx
        idx = cute.make_rmem_tensor((16,), Int32)  # a thread's columns of a 64-slot tile: 8 g + v
        for g in cutlass.range_constexpr(8):
            for v in cutlass.range_constexpr(2):
                col = start + 8 * g + c0 + v
                index = Int32(-1)
                if col < hi:
                    index = mIdx[x, y, col]
                idx[2 * g + v] = index
        return idx

    @cute.jit
    def masked_scores(self, acc_s, c0, start, hi, key_end, scale_log2, pre):
        """Scale to the log2 domain; slots past hi or naming no row (pre: their indices) get -inf."""
        s_mn = acc_rows(acc_s)
        rows = self.t_rows  # (a local: the DSL's runtime `if` cannot carry `self`)
        for g in cutlass.range_constexpr(8):
            for v in cutlass.range_constexpr(2):
                index = pre[2 * g + v]
                valid = index >= 0 and index < rows
                for h in cutlass.range_constexpr(2):
                    x = s_mn[h, (v, g)] * scale_log2
                    if not valid:
                        x = -Float32.inf
                    s_mn[h, (v, g)] = x
        return s_mn
