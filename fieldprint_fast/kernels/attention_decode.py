"""
Paged decode attention, exact, split over the context
=====================================================

One new query token per sequence against its paged int8 KV cache, bit for bit equal to
`spec.attention.paged_attention` (numerics/2, whose docstring is the rule): a batch of
sequences of different lengths, each with its own block table, optional pinned anchor pages
(always visible) and an optional sliding window; GQA, with all ``H / G`` query heads of a KV head
computed from one read of its keys and values.

Two paths, one launch or two
----------------------------
The spec's softmax needs two exact maxima before any value is mixed: the score maximum ``m``
(for ``e_j = exp_neg(m - s_j)``) and the value exponent ``E = max ev_j`` (for the weights
``w_j``). Both are exact, and everything after them is an exact integer sum, so the context can
be split anywhere and the parts combined in any order (integer atomics: max and add are exact,
so their order cannot change a bit). Which path runs depends only on the launch shape (the
key capacity a CUDA graph is captured for, `decode_path`), never on a device value.

*Fused* (capacities up to FUSED_PAGES, the end-to-end loop's short contexts, at batches that
fill the machine with one program per sequence and head group): one kernel,
``_fused_kernel``, grid (KV-head group, share, sequence). Each program walks all the pages of
its sequence for the exact scores and both maxima (walk 1), keeping the scores of its share in
the scratch buffer (L2-resident at these sizes), then walks its share again for ``e``, ``Z``,
the weights and ``N`` (walk 2). With one share it divides and is done: one launch, nothing
zeroed, no atomics. With several (small batches: more programs, shorter walks 2) each adds
``N`` and ``Z`` atomically to a zeroed accumulator and arrives at a counter; the last to
arrive divides. A step takes several pages at once and issues the next step's loads first.

*Split* (longer contexts): the scores and the mix of a sequence are spread over many programs,
which meet in one zeroed int64 buffer per (sequence, query head): ``N [d], Z, m + 2**31,
E + 2**31``, and a counter:

1. ``_scores_kernel`` (grid: KV-head group, split, sequence; small splits, one warp each, for
   occupancy at batch 1): reads the keys of its split once, computes the exact scores of every
   query head of the group (int8 tensor-core dots, a 12-bit query as two limbs), writes them to
   a scratch buffer (4 bytes per head and key, against 132 bytes of key row) and atomically
   raises the sequence's maxima of ``s`` and of the V row exponents.
2. ``_mix_kernel`` (same grid, larger splits, four warps): reads its scores back and the values
   of its split once: ``e``, ``Z = sum e``, the weights ``w`` and ``N = sum w q`` as int8 x int8
   -> int32 dots of 7-bit weight limbs (int32 accumulators: a split has at most 65,536 keys);
   adds ``N`` and ``Z`` atomically; the last split of a (sequence, head group) to arrive
   computes ``round(N * 2**k / Z)`` (there is no third launch).

Bytes per (key, KV head), both paths: 132 (K row) + 32 (the sector holding the V scale word) +
2 x 4 per query head (scores out and back) + 132 (V row); 328 against the 264 of reading K and V
once (the fused path with several shares reads K once per share, mostly from L2).

Packing KV heads. The tensor cores need 16 rows, a KV head has ``H / G`` query heads (4 for
GQA 32/8), so a program owns ``PK`` adjacent KV heads (16 rows: 4 KV heads x 4 query heads). The
queries form a block-diagonal operand ``[16, PK * d]`` (row r holds its query in the d-block of
its KV head) against the PK heads' keys stacked along d ``[PK * d, N]``: one dot gives every row
its scores against its own KV head, and the integer work per score runs on 16 useful rows instead
of 4. The value product is the same trick transposed: block-diagonal weights ``[16, PK * N]``
against the stacked values ``[PK * N, d]``. The rows of the PK heads of a slot are adjacent in the page, so one program
reads contiguous bytes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fieldprint_fast.kernels.attention_math import (
    ACT_MAX, MAX_SPLIT_KEYS, SCORE_SHIFT, WEIGHT_SHIFT, _div_round_pow2, _exp_neg, _score, _unpack_scale, _weight, _weight_limbs,
    packed_exp_table, query_limbs, weight_limbs,
)

PAGE = tl.constexpr(16)  # spec.constants.PAGE_TOKENS
SCALE_BYTES = 4  # spec.constants.KV_SCALE_BYTES
NEG = tl.constexpr(-(2**31))  # "no key": below every score (spec: -SCORE_MAX - 1) and every exponent
BIAS = tl.constexpr(2**31)  # maxima are kept as value + 2**31 >= 0 in a zeroed int64 buffer


# %%
# Walking the keys a page at a time
# ---------------------------------
# A sequence's keys are its anchor pages, then the context pages from the one holding the window
# start ``lo`` to the one holding the query (``start``). The kernels number these pages
# ``0 .. n_pages - 1`` (*virtual* pages: anchors first) and walk them one page (16 keys) per step,
# masking the slots that are not keys: past the anchor length on the last anchor page, before
# ``lo`` or after ``start`` on the context pages. Softmax maxima and sums are exact, so neither
# the order nor the masked slots change anything.
#
# Stepping by whole pages makes every address a scalar page base plus offsets that do not change
# from step to step: the K row of (slot, KV head g, element i) is
#     page * stride_page + [layer * stride_layer + slot * stride_slot + g * (D + 4) + i]
# and the bracket is computed once per program. Per-key addressing (a block-table load and a
# 64-bit multiply-add for every key and layout) was most of the first version's instructions.
# The 4 scale bytes follow the D values at a 4-byte-aligned offset (D + 4 is a multiple of 4) and
# are read as one int32 word.

@triton.jit
def _page(p, a_pages, n_anchor, lo, start, tables_ptr, anchors_ptr, row_b, arow_b):
    """Return (pool page, first key slot, end key slot) of virtual page p of a sequence."""
    is_a = p < a_pages
    c = p - a_pages  # context page, counted from the one holding lo
    tok0 = (lo // PAGE + c) * PAGE
    pa = tl.load(anchors_ptr + arow_b + p, mask=is_a, other=0)
    pc = tl.load(tables_ptr + row_b + lo // PAGE + c, mask=~is_a, other=0)
    page = tl.where(is_a, pa, pc)
    s_lo = tl.where(is_a, 0, tl.maximum(lo - tok0, 0))
    s_hi = tl.where(is_a, tl.minimum(n_anchor - p * PAGE, PAGE), tl.minimum(start + 1 - tok0, PAGE))
    return page, s_lo, s_hi


@triton.jit
def _scores_kernel(
    # pointers
    pool_ptr, pool32_ptr, qlo_ptr, qhi_ptr, mq_ptr, eq_ptr, tables_ptr, anchors_ptr, meta_ptr,
    s_ptr, acc_ptr,
    # dimensions and strides (int8 elements of the pool)
    layer, stride_page, stride_layer, kv_stride, stride_slot, n_tables, n_anchor_tables, s_len,
    # meta-parameters
    H, GROUP, D: tl.constexpr, SPLIT_PAGES,
    BLOCK_M: tl.constexpr, Q_LIMBS: tl.constexpr, PK: tl.constexpr,
):
    pg, sp, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ROW: tl.constexpr = D + 4
    g0 = pg * PK  # this program's first KV head; row r is query head g0 * GROUP + r (KV head g0 + r // GROUP)
    n_anchor = tl.load(meta_ptr + 4 * b)
    lo = tl.load(meta_ptr + 4 * b + 1)
    start = tl.load(meta_ptr + 4 * b + 2)
    n_pages = tl.load(meta_ptr + 4 * b + 3)
    a_pages = (n_anchor + PAGE - 1) // PAGE
    rows = tl.arange(0, BLOCK_M)
    heads = g0 * GROUP + rows
    hmask = (rows < PK * GROUP) & (heads < H)  # a last program may hold fewer than PK KV heads
    rkv = g0 + rows // GROUP  # each row's KV head
    # -- the queries as a block-diagonal [BLOCK_M, PK * D] operand: row r holds its query in the
    #    d-block of its KV head and zeros elsewhere, so one dot against the PK heads' stacked keys
    #    gives every row the scores against its own KV head (rows are not wasted on padding) --
    idx = tl.arange(0, PK * D)
    qmask = hmask[:, None] & ((idx // D)[None, :] == (rows // GROUP)[:, None])
    qoff = (b * H + heads)[:, None] * D + (idx % D)[None, :]
    q_lo = tl.load(qlo_ptr + qoff, mask=qmask, other=0)
    q_hi = q_lo
    if Q_LIMBS == 2:
        q_hi = tl.load(qhi_ptr + qoff, mask=qmask, other=0)
    mq = tl.load(mq_ptr + b * H + heads, mask=hmask, other=0)
    eq = tl.load(eq_ptr + b * H + heads, mask=hmask, other=0)
    m = tl.full([BLOCK_M, PAGE], NEG, tl.int32)  # running maxima, reduced over slots at the end
    big = tl.full([BLOCK_M, PAGE], NEG, tl.int32)
    # -- in-page offsets, the same at every step ---------------------------------------------
    slot = tl.arange(0, PAGE)
    base = layer * stride_layer
    koff = (base + slot * stride_slot)[:, None, None] + ((g0 + tl.arange(0, PK)) * ROW)[None, :, None] \
        + tl.arange(0, D)[None, None, :]  # [16, PK, D]: the PK heads' K rows of each slot
    kv_in = g0 + tl.arange(0, PK) < H // GROUP  # which of the PK heads exist
    soff = (base + slot[None, :] * stride_slot + rkv[:, None] * ROW + D) // 4  # [M, 16]: each row's K scale word
    sbuf = s_ptr + (b * H + heads).to(tl.int64)[:, None] * s_len + slot[None, :]
    for p in range(sp * SPLIT_PAGES, tl.minimum(sp * SPLIT_PAGES + SPLIT_PAGES, n_pages)):
        page, s_lo, s_hi = _page(p, a_pages, n_anchor, lo, start, tables_ptr, anchors_ptr, b * n_tables,
                                 b * n_anchor_tables)
        valid = (slot >= s_lo) & (slot < s_hi)
        pbase = page.to(tl.int64) * stride_page
        # -- exact scores of every head from one read of the keys: [16, PK, D] rows, contiguous
        #    along D, stacked to the [16, PK * D] operand (K-major, as int8 tensor cores want) --
        k = tl.reshape(tl.load(pool_ptr + pbase + koff, mask=valid[:, None, None] & kv_in[None, :, None], other=0),
                       [PAGE, PK * D])
        acc = tl.dot(q_hi, tl.trans(k))
        if Q_LIMBS == 2:
            acc = tl.dot(q_lo, tl.trans(k), acc << 7, out_dtype=tl.int32)  # q = hi * 2**7 + lo; |acc| < 2**28
        w32 = pool32_ptr + pbase // 4 + soff
        mk, ek = _unpack_scale(tl.load(w32, mask=valid[None, :] & hmask[:, None], other=0))
        s = _score(acc, mq[:, None] * mk, (-eq[:, None] - ek) + SCORE_SHIFT)
        s = tl.where(valid[None, :], s, NEG)
        tl.store(sbuf + p * PAGE, s, mask=hmask[:, None])
        m = tl.maximum(m, s)
        # -- the V row exponents, for E = max ev (per row: its KV head's) ----------------------
        _, ev = _unpack_scale(tl.load(w32 + kv_stride // 4, mask=valid[None, :] & hmask[:, None], other=0))
        big = tl.maximum(big, tl.where(valid[None, :], ev, NEG))
    # -- this split's maxima into the sequence's: an atomic max is exact in any order -----------
    out = acc_ptr + ((b * H + heads) * (D + 4) + D + 1).to(tl.int64)
    tl.atomic_max(out, tl.max(m, axis=1).to(tl.int64) + BIAS, mask=hmask, sem="relaxed")
    tl.atomic_max(out + 1, tl.max(big, axis=1).to(tl.int64) + BIAS, mask=hmask, sem="relaxed")


@triton.jit
def _mix_loads(p, p_end, pool_ptr, pool32_ptr, voff, soff, kv_in, hmask, sbuf, stride_page, a_pages, n_anchor, lo,
               start, tables_ptr, anchors_ptr, row_b, arow_b, PK: tl.constexpr, D: tl.constexpr):
    """The loads of page p of a `_mix_kernel` split (none at or past p_end): which slots are keys
    [16], their scores and V scale words [M, 16], the PK heads' V rows [PK * 16, D]."""
    page, s_lo, s_hi = _pages(p, p_end, a_pages, n_anchor, lo, start, tables_ptr, anchors_ptr, row_b, arow_b)
    slot = tl.arange(0, PAGE)
    valid = (slot >= s_lo) & (slot < s_hi)
    pbase = page.to(tl.int64) * stride_page
    s = tl.load(sbuf + p * PAGE, mask=hmask[:, None] & valid[None, :], other=0)
    vw = tl.load(pool32_ptr + pbase // 4 + soff, mask=valid[None, :] & hmask[:, None], other=0)
    v = tl.load(pool_ptr + pbase + voff, mask=valid[None, :, None] & kv_in[:, None, None], other=0)
    return valid, s, vw, tl.reshape(v, [PK * PAGE, D])


@triton.jit
def _mix_page(valid, s, vw, v, m, wsh, exp_ptr, wmask, a0, a1, a2, z,
              BLOCK_M: tl.constexpr, PK: tl.constexpr, W_LIMBS: tl.constexpr):
    """One page of `_mix_kernel` from its loads: e, Z, the weights and N (a0..a2, z updated)."""
    # -- numerators e = exp_neg(m - s), 0 for slots that are not keys ------------------------------
    e = tl.where(valid[None, :], _exp_neg(m, s, exp_ptr), 0)
    z += e.to(tl.int64)
    # -- weights with the V row scale folded in ---------------------------------------------------
    mv, ev = _unpack_scale(vw)
    w = _weight(e, mv, wsh[:, None] - ev)
    # -- N += w @ q_v on int8 tensor cores: block-diagonal weights [M, PK * 16] (row r keeps the
    #    weights of its KV head's block, zeros elsewhere) against the PK heads' values stacked
    #    along the keys [PK * 16, D] ------------------------------------------------------------------
    w = tl.where(wmask, tl.reshape(tl.broadcast_to(w[:, None, :], [BLOCK_M, PK, PAGE]), [BLOCK_M, PK * PAGE]), 0)
    w0, w1, w2 = _weight_limbs(w, W_LIMBS)
    a0 = tl.dot(w0, v, a0, out_dtype=tl.int32)
    if W_LIMBS > 1:
        a1 = tl.dot(w1, v, a1, out_dtype=tl.int32)
    if W_LIMBS > 2:
        a2 = tl.dot(w2, v, a2, out_dtype=tl.int32)
    return a0, a1, a2, z


@triton.jit
def _mix_kernel(
    # pointers
    pool_ptr, pool32_ptr, exp_ptr, tables_ptr, anchors_ptr, meta_ptr, s_ptr, acc_ptr, out_ptr,
    # dimensions and strides
    layer, stride_page, stride_layer, kv_stride, stride_slot, n_tables, n_anchor_tables, s_len,
    # meta-parameters
    H, GROUP, D: tl.constexpr, SPLIT_PAGES,
    BLOCK_M: tl.constexpr, PROB_BITS, W_LIMBS: tl.constexpr, PK: tl.constexpr, PREFETCH: tl.constexpr,
):
    pg, sp, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ROW: tl.constexpr = D + 4
    g0 = pg * PK
    n_anchor = tl.load(meta_ptr + 4 * b)
    lo = tl.load(meta_ptr + 4 * b + 1)
    start = tl.load(meta_ptr + 4 * b + 2)
    n_pages = tl.load(meta_ptr + 4 * b + 3)
    a_pages = (n_anchor + PAGE - 1) // PAGE
    rows = tl.arange(0, BLOCK_M)
    heads = g0 * GROUP + rows
    hmask = (rows < PK * GROUP) & (heads < H)  # a last program may hold fewer than PK KV heads
    rkv = g0 + rows // GROUP
    # -- the exact maxima m and E [BLOCK_M] of the sequence (`_scores_kernel`) ------------------
    out = acc_ptr + ((b * H + heads) * (D + 4)).to(tl.int64)
    m = (tl.load(out + D + 1, mask=hmask, other=BIAS) - BIAS).to(tl.int32)
    big = (tl.load(out + D + 2, mask=hmask, other=BIAS) - BIAS).to(tl.int32)
    wsh = big + (WEIGHT_SHIFT - PROB_BITS)  # weight shift = wsh - ev (>= 24 for visible keys)
    # -- N = sum w q as three int32 limb accumulators (exact: a split has <= 65536 keys) ------
    a0 = tl.zeros([BLOCK_M, D], tl.int32)
    a1 = tl.zeros([BLOCK_M, D], tl.int32)
    a2 = tl.zeros([BLOCK_M, D], tl.int32)
    z = tl.zeros([BLOCK_M, PAGE], tl.int64)  # Z by slots, reduced at the end
    cols = tl.arange(0, D)
    c = tl.arange(0, PK * PAGE)  # stacked values: column c is slot c % 16 of KV head g0 + c // 16
    wmask = (c // PAGE)[None, :] == (rows // GROUP)[:, None]
    # -- in-page offsets, the same at every step ---------------------------------------------
    slot = tl.arange(0, PAGE)
    base = layer * stride_layer + kv_stride
    voff = (base + slot * stride_slot)[None, :, None] + ((g0 + tl.arange(0, PK)) * ROW)[:, None, None] \
        + cols[None, None, :]  # [PK, 16, D]: the V rows of each KV head, slot
    kv_in = g0 + tl.arange(0, PK) < H // GROUP  # which of the PK heads exist
    soff = (base + slot[None, :] * stride_slot + rkv[:, None] * ROW + D) // 4  # [M, 16]: each row's V scale word
    sbuf = s_ptr + (b * H + heads).to(tl.int64)[:, None] * s_len + slot[None, :]
    p_lo = sp * SPLIT_PAGES
    p_hi = tl.minimum(p_lo + SPLIT_PAGES, n_pages)
    if PREFETCH:  # each page issues the next page's loads before its own arithmetic
        valid, s, vw, v = _mix_loads(p_lo, p_hi, pool_ptr, pool32_ptr, voff, soff, kv_in, hmask, sbuf, stride_page,
                                     a_pages, n_anchor, lo, start, tables_ptr, anchors_ptr, b * n_tables,
                                     b * n_anchor_tables, PK, D)
        for p in range(p_lo, p_hi):
            valid_n, s_n, vw_n, v_n = _mix_loads(p + 1, p_hi, pool_ptr, pool32_ptr, voff, soff, kv_in, hmask, sbuf,
                                                 stride_page, a_pages, n_anchor, lo, start, tables_ptr, anchors_ptr,
                                                 b * n_tables, b * n_anchor_tables, PK, D)
            a0, a1, a2, z = _mix_page(valid, s, vw, v, m, wsh, exp_ptr, wmask, a0, a1, a2, z, BLOCK_M, PK, W_LIMBS)
            valid, s, vw, v = valid_n, s_n, vw_n, v_n
    else:
        for p in range(p_lo, p_hi):
            page, s_lo, s_hi = _page(p, a_pages, n_anchor, lo, start, tables_ptr, anchors_ptr, b * n_tables,
                                     b * n_anchor_tables)
            valid = (slot >= s_lo) & (slot < s_hi)
            pbase = page.to(tl.int64) * stride_page
            s = tl.load(sbuf + p * PAGE, mask=hmask[:, None], other=0)
            vw = tl.load(pool32_ptr + pbase // 4 + soff, mask=valid[None, :] & hmask[:, None], other=0)
            v = tl.reshape(tl.load(pool_ptr + pbase + voff, mask=valid[None, :, None] & kv_in[:, None, None], other=0),
                           [PK * PAGE, D])
            a0, a1, a2, z = _mix_page(valid, s, vw, v, m, wsh, exp_ptr, wmask, a0, a1, a2, z, BLOCK_M, PK, W_LIMBS)
    # -- this split's N and Z into the sequence's: integer atomic adds are exact in any order ----
    acc = a0.to(tl.int64) + (a1.to(tl.int64) << 7) + (a2.to(tl.int64) << 14)
    tl.atomic_add(out[:, None] + cols[None, :], acc, mask=hmask[:, None], sem="relaxed")
    tl.atomic_add(out + D, tl.sum(z, axis=1), mask=hmask, sem="relaxed")
    # -- the last split of (sequence, head group) to arrive divides (`_arrive`) -----------------
    if _arrive(acc_ptr + ((b * H + g0 * GROUP) * (D + 4) + D + 3).to(tl.int64), tl.num_programs(1)):
        n = tl.atomic_add(out[:, None] + cols[None, :], tl.zeros([BLOCK_M, D], tl.int64), mask=hmask[:, None],
                          sem="relaxed")  # the full sums, read through L2
        zs = tl.atomic_add(out + D, tl.zeros([BLOCK_M], tl.int64), mask=hmask, sem="relaxed")
        _divide_rows(n, zs, big, out_ptr + ((b * H + heads) * D).to(tl.int64), hmask, cols, PROB_BITS)


# %%
# The last program divides
# ------------------------
# A split adds its partial sums into the accumulator with relaxed atomics, then *arrives*: one
# acq-rel atomic increment of a counter per (sequence, head group), after a CTA barrier (so every
# thread's sums precede it). The program that reads ``splits - 1`` is the last: every other
# split's sums happened before its acquire, so it reads the full sums (through L2, by atomics)
# and divides. No program waits for another, so this is also right under TRITON_INTERPRET=1,
# where programs run one after another. The counter is the spare int64 word ``d + 3`` of the
# group's first head in the accumulator, which the launch zeroes anyway: no reset is needed.
# (The same "last block" pattern as `kernels.linear._split_k_sums`.)

@triton.jit
def _arrive(count_ptr, splits):
    """Arrive at the counter; return whether this program is the last of ``splits``."""
    tl.debug_barrier()  # every thread's partial sums precede the arrival
    arrived = tl.atomic_add(count_ptr, 1, sem="acq_rel")
    tl.debug_barrier()  # the acquire precedes every thread's reads after it
    return arrived == splits - 1


@triton.jit
def _divide_rows(n, z, big, out_ptrs, hmask, cols, PROB_BITS):
    """out = round(N * 2**k / Z), k = E + 44 - P, saturated, for the [BLOCK_M, D] sums n (int64),
    Z [BLOCK_M] (int64) and E [BLOCK_M] (int32) of a program's rows; out_ptrs [BLOCK_M]: each row's
    output. Once per output element; rows outside hmask are neither divided nor stored."""
    k = tl.where(hmask, big.to(tl.int64) + (WEIGHT_SHIFT - PROB_BITS), 0)
    zz = tl.where(hmask, tl.maximum(z, 1), 1)
    o = _div_round_pow2(n, zz[:, None] + n * 0, k[:, None] + n * 0)
    tl.store(out_ptrs[:, None] + cols[None, :], tl.minimum(tl.maximum(o, -ACT_MAX), ACT_MAX), mask=hmask[:, None])


# %%
# One launch: scores, maxima, mix and division in one program
# -----------------------------------------------------------
# For contexts a program can walk quickly (the graph's key capacity is small), the passes become
# one kernel, with no wait between programs: a program of (sequence, head group) walks all the
# sequence's pages for the scores and their exact maxima ``m`` and ``E`` (walk 1); it then knows
# everything the spec's softmax needs, and walks its *share* of the pages again (walk 2) for
# ``e``, ``Z``, the weights and ``N``, reading back the scores of its share, which it left in the
# scratch buffer (L2-resident at these sizes) in walk 1.
#
# * Without SPLIT one program owns the whole sequence: it divides at the end. One launch,
#   nothing zeroed, nothing atomic.
# * With SPLIT, ``splits`` programs share a sequence (``SPLIT_PAGES`` pages each for walk 2),
#   each computing the same exact maxima redundantly in walk 1 (the keys are read once per
#   share, mostly from L2; at small batches the SMs are idle anyway). Each adds its ``N`` and
#   ``Z`` to the zeroed accumulator and arrives (`_arrive`); the last one divides. One kernel
#   plus the accumulator's memset, and the walk a program makes is ``pages + pages / splits``
#   steps instead of ``2 pages``.
#
# A program is a chain of dependent steps (block-table entries, then rows, then dots and the
# integer steps), so its latency is its steps: a step takes ``PPS`` pages at once (``PPS * 16``
# keys: [PPS, 16, PK, d] rows of K or V, one vector of PPS table entries), which divides the
# chain by PPS and keeps PPS pages of loads in flight.

@triton.jit
def _pages(p, p_end, a_pages, n_anchor, lo, start, tables_ptr, anchors_ptr, row_b, arow_b):
    """`_page` of a vector p of virtual pages; pages at or past p_end have no keys (and their
    table entries are not read)."""
    inside = p < p_end
    is_a = p < a_pages
    c = p - a_pages
    tok0 = (lo // PAGE + c) * PAGE
    pa = tl.load(anchors_ptr + arow_b + p, mask=is_a & inside, other=0)
    pc = tl.load(tables_ptr + row_b + lo // PAGE + c, mask=(~is_a) & inside, other=0)
    page = tl.where(is_a, pa, pc)
    s_lo = tl.where(is_a, 0, tl.maximum(lo - tok0, 0))
    s_hi = tl.where(is_a, tl.minimum(n_anchor - p * PAGE, PAGE), tl.minimum(start + 1 - tok0, PAGE))
    return page, s_lo, tl.where(inside, s_hi, 0)


@triton.jit
def _k_step(p0, n_pages, pool_ptr, pool32_ptr, koff, soff, kv_in, hmask, stride_page, kv_stride, a_pages, n_anchor,
            lo, start, tables_ptr, anchors_ptr, row_b, arow_b,
            BLOCK_M: tl.constexpr, PK: tl.constexpr, D: tl.constexpr, PPS: tl.constexpr):
    """The loads of one walk-1 step, pages p0 .. p0 + PPS - 1 (none at or past n_pages): which
    of its keys exist [KS], the K rows [KS, PK * D] and each row's K and V scale words [M, KS]."""
    KS: tl.constexpr = PPS * PAGE
    slot = tl.arange(0, PAGE)
    page, s_lo, s_hi = _pages(p0 + tl.arange(0, PPS), n_pages, a_pages, n_anchor, lo, start, tables_ptr,
                              anchors_ptr, row_b, arow_b)
    valid = (slot[None, :] >= s_lo[:, None]) & (slot[None, :] < s_hi[:, None])  # [PPS, 16]
    pbase = page.to(tl.int64) * stride_page  # [PPS]
    k = tl.load(pool_ptr + pbase[:, None, None, None] + koff[None, :, :, :],
                mask=valid[:, :, None, None] & kv_in[None, None, :, None], other=0)
    smask = valid[None, :, :] & hmask[:, None, None]  # [M, PPS, 16]
    w32 = pool32_ptr + (pbase // 4)[None, :, None] + soff[:, None, :]
    kw = tl.load(w32, mask=smask, other=0)
    vw = tl.load(w32 + kv_stride // 4, mask=smask, other=0)
    return (tl.reshape(valid, [KS]), tl.reshape(k, [KS, PK * D]), tl.reshape(kw, [BLOCK_M, KS]),
            tl.reshape(vw, [BLOCK_M, KS]))


@triton.jit
def _v_step(p0, p_end, pool_ptr, pool32_ptr, voff, soff, kv_in, hmask, srow, stride_page, kv_stride, a_pages,
            n_anchor, lo, start, tables_ptr, anchors_ptr, row_b, arow_b,
            BLOCK_M: tl.constexpr, PK: tl.constexpr, D: tl.constexpr, PPS: tl.constexpr):
    """The loads of one walk-2 step (pages p0 .. p0 + PPS - 1, none at or past p_end): which of
    its keys exist [KS], their scores and V scale words [M, KS], the V rows [PK * KS, D]."""
    KS: tl.constexpr = PPS * PAGE
    slot = tl.arange(0, PAGE)
    page, s_lo, s_hi = _pages(p0 + tl.arange(0, PPS), p_end, a_pages, n_anchor, lo, start, tables_ptr,
                              anchors_ptr, row_b, arow_b)
    valid = (slot[None, :] >= s_lo[:, None]) & (slot[None, :] < s_hi[:, None])
    vk = tl.reshape(valid, [KS])
    pbase = page.to(tl.int64) * stride_page
    s = tl.load(srow + p0 * PAGE + tl.arange(0, KS)[None, :], mask=hmask[:, None] & vk[None, :], other=0)
    w32 = pool32_ptr + (pbase // 4)[None, :, None] + soff[:, None, :] + kv_stride // 4
    vw = tl.load(w32, mask=valid[None, :, :] & hmask[:, None, None], other=0)
    v = tl.load(pool_ptr + pbase[None, :, None, None] + voff,
                mask=valid[None, :, :, None] & kv_in[:, None, None, None], other=0)
    return vk, s, tl.reshape(vw, [BLOCK_M, KS]), tl.reshape(v, [PK * KS, D])


@triton.jit
def _fused_kernel(
    # pointers
    pool_ptr, pool32_ptr, qlo_ptr, qhi_ptr, mq_ptr, eq_ptr, exp_ptr, tables_ptr, anchors_ptr, meta_ptr,
    s_ptr, acc_ptr, out_ptr,
    # dimensions and strides (int8 elements of the pool)
    layer, stride_page, stride_layer, kv_stride, stride_slot, n_tables, n_anchor_tables, s_len,
    # meta-parameters
    H, GROUP, D: tl.constexpr, SPLIT_PAGES, BLOCK_M: tl.constexpr, Q_LIMBS: tl.constexpr, PROB_BITS,
    W_LIMBS: tl.constexpr, PK: tl.constexpr, PPS: tl.constexpr, SPLIT: tl.constexpr,
):
    pg, sp, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ROW: tl.constexpr = D + 4
    KS: tl.constexpr = PPS * PAGE  # keys per step
    g0 = pg * PK  # this program's first KV head; row r is query head g0 * GROUP + r
    n_anchor = tl.load(meta_ptr + 4 * b)
    lo = tl.load(meta_ptr + 4 * b + 1)
    start = tl.load(meta_ptr + 4 * b + 2)
    n_pages = tl.load(meta_ptr + 4 * b + 3)
    a_pages = (n_anchor + PAGE - 1) // PAGE
    row_b, arow_b = b * n_tables, b * n_anchor_tables
    rows = tl.arange(0, BLOCK_M)
    heads = g0 * GROUP + rows
    hmask = (rows < PK * GROUP) & (heads < H)
    rkv = g0 + rows // GROUP
    # -- the block-diagonal queries [BLOCK_M, PK * D] (as in `_scores_kernel`) -----------------
    idx = tl.arange(0, PK * D)
    qmask = hmask[:, None] & ((idx // D)[None, :] == (rows // GROUP)[:, None])
    qoff = (b * H + heads)[:, None] * D + (idx % D)[None, :]
    q_lo = tl.load(qlo_ptr + qoff, mask=qmask, other=0)
    q_hi = q_lo
    if Q_LIMBS == 2:
        q_hi = tl.load(qhi_ptr + qoff, mask=qmask, other=0)
    mq = tl.load(mq_ptr + b * H + heads, mask=hmask, other=0)
    eq = tl.load(eq_ptr + b * H + heads, mask=hmask, other=0)
    # -- offsets inside a page, the same at every step ------------------------------------------
    slot = tl.arange(0, PAGE)
    kk = tl.arange(0, KS)  # key kk of a step: page pp = kk // 16, slot kk % 16
    cols = tl.arange(0, D)
    base = layer * stride_layer
    koff = (base + slot * stride_slot)[:, None, None] + ((g0 + tl.arange(0, PK)) * ROW)[None, :, None] \
        + cols[None, None, :]  # [16, PK, D]: the PK heads' K rows of each slot
    kv_in = g0 + tl.arange(0, PK) < H // GROUP
    soff = (base + slot[None, :] * stride_slot + rkv[:, None] * ROW + D) // 4  # [M, 16]: K scale words
    srow = s_ptr + (b * H + heads).to(tl.int64)[:, None] * s_len  # [M, 1]: each row's scores
    # -- walk 1: the scores of every page and their exact maxima; the program keeps the scores of
    #    its share of the pages (all of them without SPLIT) in scratch. Each step issues the next
    #    step's loads first, so that they are in flight while this step computes --------------
    p_first = sp * SPLIT_PAGES
    p_end = tl.minimum(p_first + SPLIT_PAGES, n_pages)
    m = tl.full([BLOCK_M, KS], NEG, tl.int32)
    big = tl.full([BLOCK_M, KS], NEG, tl.int32)
    vk, k, kw, vw = _k_step(0, n_pages, pool_ptr, pool32_ptr, koff, soff, kv_in, hmask, stride_page, kv_stride,
                            a_pages, n_anchor, lo, start, tables_ptr, anchors_ptr, row_b, arow_b, BLOCK_M, PK, D, PPS)
    for p0 in range(0, n_pages, PPS):
        vk_n, k_n, kw_n, vw_n = _k_step(p0 + PPS, n_pages, pool_ptr, pool32_ptr, koff, soff, kv_in, hmask,
                                        stride_page, kv_stride, a_pages, n_anchor, lo, start, tables_ptr, anchors_ptr,
                                        row_b, arow_b, BLOCK_M, PK, D, PPS)
        acc = tl.dot(q_hi, tl.trans(k))
        if Q_LIMBS == 2:
            acc = tl.dot(q_lo, tl.trans(k), acc << 7, out_dtype=tl.int32)
        mk, ek = _unpack_scale(kw)
        s = _score(acc, mq[:, None] * mk, (-eq[:, None] - ek) + SCORE_SHIFT)
        s = tl.where(vk[None, :], s, NEG)
        key = p0 * PAGE + kk
        mine = (key >= p_first * PAGE) & (key < p_end * PAGE)  # keys of this program's share
        tl.store(srow + key[None, :], s, mask=hmask[:, None] & mine[None, :])
        m = tl.maximum(m, s)
        _, ev = _unpack_scale(vw)
        big = tl.maximum(big, tl.where(vk[None, :], ev, NEG))
        vk, k, kw, vw = vk_n, k_n, kw_n, vw_n
    m_row = tl.max(m, axis=1)
    big_row = tl.max(big, axis=1)
    tl.debug_barrier()  # the scores this program stored precede its reads below
    # -- walk 2: e, Z, the weights and N over the program's share (loads one step ahead) ------
    wsh = big_row + (WEIGHT_SHIFT - PROB_BITS)
    a0 = tl.zeros([BLOCK_M, D], tl.int32)
    a1 = tl.zeros([BLOCK_M, D], tl.int32)
    a2 = tl.zeros([BLOCK_M, D], tl.int32)
    z = tl.zeros([BLOCK_M], tl.int64)
    c = tl.arange(0, PK * KS)  # stacked values: column c is key c % KS of KV head g0 + c // KS
    wmask = (c // KS)[None, :] == (rows // GROUP)[:, None]
    voff = (base + kv_stride + slot * stride_slot)[None, None, :, None] \
        + ((g0 + tl.arange(0, PK)) * ROW)[:, None, None, None] + cols[None, None, None, :]  # [PK, 1, 16, D]
    vk, s, vw, v = _v_step(p_first, p_end, pool_ptr, pool32_ptr, voff, soff, kv_in, hmask, srow, stride_page,
                           kv_stride, a_pages, n_anchor, lo, start, tables_ptr, anchors_ptr, row_b, arow_b, BLOCK_M,
                           PK, D, PPS)
    for p0 in range(p_first, p_end, PPS):
        vk_n, s_n, vw_n, v_n = _v_step(p0 + PPS, p_end, pool_ptr, pool32_ptr, voff, soff, kv_in, hmask, srow,
                                       stride_page, kv_stride, a_pages, n_anchor, lo, start, tables_ptr, anchors_ptr,
                                       row_b, arow_b, BLOCK_M, PK, D, PPS)
        e = tl.where(vk[None, :], _exp_neg(m_row, s, exp_ptr), 0)
        z += tl.sum(e.to(tl.int64), axis=1)
        mv, ev = _unpack_scale(vw)
        w = _weight(e, mv, wsh[:, None] - ev)
        w = tl.where(wmask, tl.reshape(tl.broadcast_to(w[:, None, :], [BLOCK_M, PK, KS]), [BLOCK_M, PK * KS]), 0)
        w0, w1, w2 = _weight_limbs(w, W_LIMBS)
        a0 = tl.dot(w0, v, a0, out_dtype=tl.int32)
        if W_LIMBS > 1:
            a1 = tl.dot(w1, v, a1, out_dtype=tl.int32)
        if W_LIMBS > 2:
            a2 = tl.dot(w2, v, a2, out_dtype=tl.int32)
        vk, s, vw, v = vk_n, s_n, vw_n, v_n
    n = a0.to(tl.int64) + (a1.to(tl.int64) << 7) + (a2.to(tl.int64) << 14)
    out_rows = out_ptr + ((b * H + heads) * D).to(tl.int64)
    if SPLIT:  # the shares' N and Z add up exactly; the last share to arrive divides
        acc_row = acc_ptr + ((b * H + heads) * (D + 4)).to(tl.int64)
        tl.atomic_add(acc_row[:, None] + cols[None, :], n, mask=hmask[:, None], sem="relaxed")
        tl.atomic_add(acc_row + D, z, mask=hmask, sem="relaxed")
        if _arrive(acc_ptr + ((b * H + g0 * GROUP) * (D + 4) + D + 3).to(tl.int64), tl.num_programs(1)):
            n = tl.atomic_add(acc_row[:, None] + cols[None, :], tl.zeros([BLOCK_M, D], tl.int64), mask=hmask[:, None],
                              sem="relaxed")
            z = tl.atomic_add(acc_row + D, tl.zeros([BLOCK_M], tl.int64), mask=hmask, sem="relaxed")
            _divide_rows(n, z, big_row, out_rows, hmask, cols, PROB_BITS)
    else:
        _divide_rows(n, z, big_row, out_rows, hmask, cols, PROB_BITS)


def pack_heads(h: int, g: int, pack: int | None = None) -> tuple[int, int, int]:
    """Return (PK, BLOCK_M, programs per split and sequence) for H query and G KV heads: PK, a
    power of two, KV heads per program (``pack``, or as many as fill 16 rows, preferring a
    divisor of G), and at least 2, since the value dot's reduction is PK x 16 keys and int8 tensor
    cores need 32. Where PK does not divide G the last program masks the heads past G."""
    group = h // g
    pk = pack or max(1, 16 // triton.next_power_of_2(group))
    pk = 1 << (pk.bit_length() - 1)  # a power of two (tile widths)
    while pk > 2 and g % pk:
        pk //= 2
    pk = max(pk, 2)
    return pk, max(16, triton.next_power_of_2(group * pk)), -(-g // pk)


def _split_pages(n_pages: int, batch: int, kv_groups: int, programs: int, least: int) -> int:
    """Return the pages per split that make about `programs` programs (at least `least` pages a
    split, at most MAX_SPLIT_KEYS keys)."""
    want = max(1, -(-programs // (batch * kv_groups)))
    return max(1, min(MAX_SPLIT_KEYS // PAGE.value, max(least, -(-n_pages // want))))


FUSED_PAGES = 64  # virtual pages (1,024 keys) up to which `decode_path` picks the one-launch path


def decode_path(n_max: int, batch: int, kv_groups: int) -> str:
    """Return the decode path for a launch shape (static: the graph's page capacity ``n_max``,
    the batch and the programs per sequence): "fused", one launch whose programs walk a
    sequence's pages twice, while a walk is a few steps and one program per (sequence, head
    group) fills the machine (`fused_splits` is 1); "split" (scores, then mix, spread over the
    context) otherwise. Measured on the H200 (2026-12-04, `benchmarks/profile_e2e.py`, 1B shape,
    ~600 keys, inside the decode graph): batch 64 fused 66 us a layer against 88 for the split
    path; batch 1 fused with 8 shares 47 us against ~21 (the shares repeat walk 1 in full)."""
    return "fused" if n_max <= FUSED_PAGES and fused_splits(batch, kv_groups) == 1 else "split"


FUSED_WARPS = 8
FUSED_PROGRAMS = 64  # programs the fused path aims for at small batches (shares of a sequence)


def fused_splits(batch: int, kv_groups: int) -> int:
    """Return the programs per (sequence, head group) of the fused path: 1 from FUSED_PROGRAMS
    programs up (one launch, no memset), else up to 8 shares."""
    return max(1, min(8, FUSED_PROGRAMS // (batch * kv_groups)))


def fused_step_pages(pk: int, d: int) -> int:
    """Return the pages per step of the fused path: a power of two, 2 to 8, with a step's K or V
    tile (``pages * 16 * pk * d`` bytes) at most 16 KB: with FUSED_WARPS = 8 the sm_90 build then
    keeps everything in registers (GQA 32/8: d = 64 4 pages, d = 128 2 pages; 32 KB tiles
    spilled 1.5-2.5 KB a thread, `cuobjdump -res-usage`)."""
    pps = max(2, min(8, 16384 // (PAGE.value * pk * d)))
    return 1 << (pps.bit_length() - 1)


def decode_attention(q: torch.Tensor, pool: torch.Tensor, layer: int, tables: torch.Tensor, starts: list[int],
                     windows: list[int | None], anchor_tables: torch.Tensor | None, anchor_lens: list[int],
                     q_bits: int, prob_bits: int, exp_table: torch.Tensor, split: int | tuple[int, int] | None = None,
                     num_warps: int | tuple[int, int] | None = None, pack: int | None = None, path: str | None = None,
                     step_pages: int | None = None, capacity: int | None = None, prefetch: bool = False) -> torch.Tensor:
    """Return the Q16 attention output [B, H, d] (int64) of one query token per sequence.

    q: [B, H, d] Q16 (int64) at context index starts[b] (its own K/V already written);
    pool: the KV pool's data [pages, layers, 2, 16, G, d + 4] int8; tables: [B, n] int block
    tables; windows[b]: None or >= 1; anchor_tables: [B, n_a] int (or None) with anchor_lens[b]
    tokens. Equal, element for element, to `spec.attention.paged_attention` of each sequence.
    ``split`` (keys per split of the scores and of the mix kernel, or one number for both; each a
    multiple of 16, at most MAX_SPLIT_KEYS) overrides the launch shape (tests place split
    boundaries; on the fused path the first is the keys of a program's share); num_warps (likewise)
    and pack (KV heads per program; default: as many as fill 16 rows) are tuning knobs; ``path``
    and ``step_pages`` choose the path and its step, ``prefetch`` the split mix's loads (`launch`); ``capacity`` (virtual pages, at
    least every row's) sets the launch shape as a captured graph's capacity does. Results never
    depend on any of them.
    """
    from fieldprint_fast.kernels.linear import quantize_rows  # spec.quant.quantize_rows as int8 limbs, one launch

    # -- (1) check ---------------------------------------------------------------------------
    bsz, h, d = q.shape
    g = pool.shape[4]
    if pool.dtype != torch.int8 or pool.dim() != 6 or pool.shape[3] != PAGE.value or pool.shape[5] != d + SCALE_BYTES:
        raise ValueError("pool must be int8 [pages, layers, 2, 16, kv_heads, head_dim + 4]")
    if h % g or d % 16 or not pool.is_contiguous() or not 2 <= q_bits <= 15 or not 1 <= prob_bits <= 20:
        raise ValueError("decode_attention: heads % kv_heads == 0, head_dim % 16 == 0, q_bits <= 15, prob_bits <= 20")
    if pool[0].numel() >= 2**31:
        raise ValueError("decode_attention: one page of the pool must hold fewer than 2**31 bytes (int32 offsets)")
    dev = q.device
    lo = [0 if w is None else max(0, s - w + 1) for s, w in zip(starts, windows)]
    # virtual pages: the anchor pages, then the context pages from lo's to start's
    n_pages = [-(-a // PAGE.value) + s // PAGE.value - l // PAGE.value + 1 for a, s, l in zip(anchor_lens, starts, lo)]
    meta = torch.tensor([[a, l, s, n] for a, l, s, n in zip(anchor_lens, lo, starts, n_pages)], dtype=torch.int32,
                        device=dev)
    tables = tables.to(device=dev, dtype=torch.int32).contiguous()
    if anchor_tables is None or anchor_tables.numel() == 0:
        anchor_tables = torch.zeros(bsz, 1, dtype=torch.int32, device=dev)
    anchor_tables = anchor_tables.to(device=dev, dtype=torch.int32).contiguous()
    n_max = max(n_pages)
    if capacity is not None:
        if capacity < n_max:
            raise ValueError(f"capacity {capacity} pages: below the {n_max} virtual pages of a row")
        n_max = capacity
    split_pages = None
    if split is not None:
        keys = (split, split) if isinstance(split, int) else tuple(split)
        if any(x % PAGE.value or not 0 < x <= MAX_SPLIT_KEYS for x in keys):
            raise ValueError(f"split {split}: positive multiples of {PAGE.value}, at most {MAX_SPLIT_KEYS}")
        split_pages = tuple(x // PAGE.value for x in keys)
    # -- (2) quantize the queries (int8 limbs), then (3) allocate and launch ------------------
    limbs, mq, eq = quantize_rows(q.reshape(-1, d), q_bits)  # q = limbs[1] * 2**7 + limbs[0]
    warps = (num_warps, num_warps) if isinstance(num_warps, int) else num_warps and tuple(num_warps)
    return launch(limbs, mq, eq, pool, layer, tables, anchor_tables, meta, n_max, q_bits, prob_bits, exp_table,
                  split_pages=split_pages, num_warps=warps, pack=pack, path=path, step_pages=step_pages,
                  prefetch=prefetch)


def launch(limbs: torch.Tensor, mq: torch.Tensor, eq: torch.Tensor, pool: torch.Tensor, layer: int,
           tables: torch.Tensor, anchor_tables: torch.Tensor, meta: torch.Tensor, n_max: int, q_bits: int,
           prob_bits: int, exp_table: torch.Tensor, split_pages: tuple[int, int] | None = None,
           num_warps: tuple[int, int] | None = None, pack: int | None = None, path: str | None = None,
           step_pages: int | None = None, prefetch: bool = False) -> torch.Tensor:
    """Allocate and launch the kernels; return the output [B, H, d] (int64).

    The quantized queries ``(limbs [L, B H, d], mq, eq)`` (`kernels.linear.quantize_rows`), int32
    ``tables`` [B, n] and ``anchor_tables`` [B, n_a], and ``meta`` [B, 4] int32 (anchor length,
    lo, start, virtual pages) are on the device; ``n_max`` virtual pages (at least every row's)
    set the launch shape and the path (`decode_path`), so nothing here reads a device value: the
    GPU decode loop captures this in a CUDA graph. A split past a row's pages adds "no key" maxima
    and zero sums, which change nothing.

    ``path``: "fused" (one launch, `_fused_kernel`) or "split" (scores, then mix, whose last split
    divides), default by `decode_path`. ``split_pages``: pages per split of the scores and of the
    mix kernel (default: by `_split_pages`); on the fused path the first is the pages of a
    program's share of a sequence (default: by `fused_splits`). ``step_pages``: pages
    per step of the fused path (default `fused_step_pages`). ``num_warps``: (scores, mix) warps
    (default (1, 4)); the fused path takes the second (default FUSED_WARPS). ``prefetch``: the
    split path's mix kernel issues each page's loads one page ahead (a tuning knob for long
    contexts, off until measured)."""
    bsz, d = meta.shape[0], limbs.shape[2]
    h, g = limbs.shape[1] // bsz, pool.shape[4]
    group = h // g
    pk, block_m, gp = pack_heads(h, g, pack)
    path = path or decode_path(n_max, bsz, gp)
    if path not in ("fused", "split"):
        raise ValueError(f"decode path {path!r}: 'fused' or 'split'")
    if path == "fused" and n_max * PAGE.value > MAX_SPLIT_KEYS:
        raise ValueError(f"fused decode path: at most {MAX_SPLIT_KEYS} keys (int32 limb sums), got {n_max} pages")
    dev = limbs.device
    s_len = PAGE.value * n_max
    s_buf = torch.empty(bsz, h, s_len, dtype=torch.int32, device=dev)
    out = torch.empty(bsz, h, d, dtype=torch.int64, device=dev)
    dims = (layer, pool.stride(0), pool.stride(1), pool.stride(2), pool.stride(3), tables.shape[1],
            anchor_tables.shape[1], s_len)
    pool32 = pool.view(torch.int32)
    exp = packed_exp_table(exp_table, dev)
    if path == "fused":
        sp = split_pages[0] if split_pages else -(-n_max // fused_splits(bsz, gp))
        sp = max(1, min(n_max, sp))
        splits = -(-n_max // sp)
        pps = step_pages or fused_step_pages(pk, d)
        if pps < 1 or pps & (pps - 1):
            raise ValueError(f"step_pages {pps}: a power of two")
        # the accumulator (maxima and the arrival counter) only when several programs share a sequence
        acc = torch.zeros(bsz, h, d + 4, dtype=torch.int64, device=dev) if splits > 1 else out
        _fused_kernel[(gp, splits, bsz)](
            pool, pool32, limbs[0], limbs[-1], mq, eq, exp, tables, anchor_tables, meta, s_buf, acc, out, *dims,
            H=h, GROUP=group, D=d, SPLIT_PAGES=sp, BLOCK_M=block_m, Q_LIMBS=query_limbs(q_bits), PROB_BITS=prob_bits,
            W_LIMBS=weight_limbs(prob_bits), PK=pk, PPS=pps, SPLIT=splits > 1,
            num_warps=num_warps[1] if num_warps else FUSED_WARPS)
        return out
    if split_pages is None:  # scores: many one-warp programs (latency); mix: fewer, larger ones
        split_pages = _split_pages(n_max, bsz, gp, 4096, 2), _split_pages(n_max, bsz, gp, 1024, 4)
    sp1, sp2 = split_pages
    num_warps = num_warps or (1, 4)
    acc = torch.zeros(bsz, h, d + 4, dtype=torch.int64, device=dev)  # N [d], Z, m + 2**31, E + 2**31, counter
    _scores_kernel[(gp, -(-n_max // sp1), bsz)](
        pool, pool32, limbs[0], limbs[-1], mq, eq, tables, anchor_tables, meta, s_buf, acc, *dims,
        H=h, GROUP=group, D=d, SPLIT_PAGES=sp1, BLOCK_M=block_m, Q_LIMBS=query_limbs(q_bits), PK=pk,
        num_warps=num_warps[0])
    _mix_kernel[(gp, -(-n_max // sp2), bsz)](
        pool, pool32, exp, tables, anchor_tables, meta, s_buf, acc, out, *dims,
        H=h, GROUP=group, D=d, SPLIT_PAGES=sp2, BLOCK_M=block_m, PROB_BITS=prob_bits,
        W_LIMBS=weight_limbs(prob_bits), PK=pk, PREFETCH=prefetch, num_warps=num_warps[1])
    return out
