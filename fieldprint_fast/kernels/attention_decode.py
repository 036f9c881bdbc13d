"""
Paged decode attention, exact, split over the context
=====================================================

One new query token per sequence against its paged int8 KV cache, bit for bit equal to
`spec.attention.paged_attention` (numerics/2, whose docstring is the rule): a batch of
sequences of different lengths, each with its own block table, optional pinned anchor pages
(always visible) and an optional sliding window; GQA, with all ``H / G`` query heads of a KV head
computed from one read of its keys and values.

Why three launches
------------------
The spec's softmax needs two exact maxima before any value is mixed: the score maximum ``m``
(for ``e_j = exp_neg(m - s_j)``) and the value exponent ``E = max ev_j`` (for the weights
``w_j``). Both are exact, and everything after them is an exact integer sum, so the context can
be split anywhere and the parts combined in any order:

1. ``_scores_kernel`` (grid: KV head, split, sequence): reads the keys of its split once,
   computes the exact scores of every query head of the group (int8 tensor-core dots, a 12-bit
   query as two limbs), writes them to a scratch buffer (4 bytes per head and key, against 132
   bytes of key row) and writes the split's maxima of ``s`` and of the V row exponents.
2. ``_mix_kernel`` (same grid): reduces the per-split maxima (a few hundred integers), reads
   its scores back and the values of its split once: ``e``, ``Z = sum e``, the weights ``w`` and
   ``N = sum w q`` as int8 x int8 -> int32 dots of 7-bit weight limbs; writes ``N`` and ``Z``.
3. ``_combine_kernel`` (grid: KV head, sequence): sums ``N`` and ``Z`` over the splits (int64,
   exact in any order) and divides once per output element: ``round(N * 2**k / Z)``.

Bytes per (key, KV head): 132 (K row) + 32 (the sector holding the V scale word) + 2 x 4 per
query head (scores out and back) + 132 (V row); 328 against the 264 of reading K and V once.

Packing KV heads. The tensor cores need 16 rows, a KV head has ``H / G`` query heads (4 for
GQA 32/8), so a program owns ``PK`` adjacent KV heads (16 rows: 4 KV heads x 4 query heads). The
queries form a block-diagonal operand ``[16, PK * d]`` (row r holds its query in the d-block of
its KV head) against the PK heads' keys stacked along d ``[PK * d, N]``: one dot gives every row
its scores against its own KV head, and the integer work per score runs on 16 useful rows instead
of 4 (measured 2.3x faster than one KV head per program, ``pack=1``). The value product is the
same trick transposed: block-diagonal weights ``[16, PK * N]`` against the stacked values
``[PK * N, d]``. The rows of the PK heads of a slot are adjacent in the page, so one program
reads contiguous bytes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fieldprint_fast.kernels.attention_math import (
    WEIGHT_SHIFT, _div_round_pow2, _exp_neg, _score, _unpack_scale, _weight, _weight_dot, query_limbs, weight_limbs,
)

PAGE = tl.constexpr(16)  # spec.constants.PAGE_TOKENS
SCALE_BYTES = 4  # spec.constants.KV_SCALE_BYTES
NEG = tl.constexpr(-(2**31))  # "no key": below every score (spec: -SCORE_MAX - 1) and every exponent


# %%
# Addressing a key
# ----------------
# Logical key j of sequence b is anchor token j when j < A_b, else context token lo_b + j - A_b.
# Its page is a block-table entry, and its K row starts at
#     page * stride_page + layer * stride_layer + slot * stride_slot + g * (D + 4)
# (int8 elements of the pool), its V row KV_STRIDE further; the 4 scale bytes follow the D
# values, at a 4-byte-aligned offset (D + 4 is a multiple of 4), read as one int32 word.

@triton.jit
def _key_rows(j, valid, n_anchor, lo, tables_ptr, anchors_ptr, row_b, arow_b,
              layer, g, stride_page, stride_layer, stride_slot, ROW: tl.constexpr):
    """Return the int64 element offset of the K rows of logical keys j [N] (0 where not valid)."""
    is_a = j < n_anchor
    tok = tl.where(is_a, j, lo + j - n_anchor)
    pa = tl.load(anchors_ptr + arow_b + tok // PAGE, mask=valid & is_a, other=0)
    pc = tl.load(tables_ptr + row_b + tok // PAGE, mask=valid & (~is_a), other=0)
    page = tl.where(is_a, pa, pc).to(tl.int64)
    slot = (tok % PAGE).to(tl.int64)
    off = page * stride_page + layer * stride_layer + slot * stride_slot + g * ROW
    return tl.where(valid, off, 0)


@triton.jit
def _scores_kernel(
    # pointers
    pool_ptr, pool32_ptr, qlo_ptr, qhi_ptr, mq_ptr, eq_ptr, tables_ptr, anchors_ptr, meta_ptr,
    s_ptr, mpart_ptr, epart_ptr,
    # dimensions and strides (int8 elements of the pool)
    layer, stride_page, stride_layer, kv_stride, stride_slot, n_tables, n_anchor_tables, n_splits, s_len,
    # meta-parameters
    H, GROUP, D: tl.constexpr, SPLIT,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, Q_LIMBS: tl.constexpr, PK: tl.constexpr,
):
    pg, sp, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ROW: tl.constexpr = D + 4
    g0 = pg * PK  # this program's first KV head; row r is query head g0 * GROUP + r (KV head g0 + r // GROUP)
    n_anchor = tl.load(meta_ptr + 3 * b)
    lo = tl.load(meta_ptr + 3 * b + 1)
    n_keys = tl.load(meta_ptr + 3 * b + 2)
    rows = tl.arange(0, BLOCK_M)
    heads = g0 * GROUP + rows
    hmask = rows < PK * GROUP
    rkv = (g0 + rows // GROUP).to(tl.int64)  # each row's KV head
    # -- the queries as a block-diagonal [BLOCK_M, PK * D] operand: row r holds its query in the
    #    d-block of its KV head and zeros elsewhere, so one dot against the PK heads' stacked keys
    #    gives every row the scores against its own KV head (rows are not wasted on padding) --
    idx = tl.arange(0, PK * D)
    qmask = hmask[:, None] & ((idx // D)[None, :] == (rows // GROUP)[:, None])
    qoff = (b * H + heads)[:, None] * D + (idx % D)[None, :]
    q_lo = tl.load(qlo_ptr + qoff, mask=qmask, other=0)
    if Q_LIMBS == 2:
        q_hi = tl.load(qhi_ptr + qoff, mask=qmask, other=0)
    mq = tl.load(mq_ptr + b * H + heads, mask=hmask, other=0).to(tl.int64)
    eq = tl.load(eq_ptr + b * H + heads, mask=hmask, other=0).to(tl.int64)
    m = tl.full([BLOCK_M], NEG, tl.int32)
    big = tl.full([BLOCK_M], NEG, tl.int32)
    kd = ((g0 + idx // D) * ROW + idx % D).to(tl.int64)  # offset of stacked element idx in a slot
    for j0 in range(sp * SPLIT, tl.minimum(sp * SPLIT + SPLIT, n_keys), BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        valid = j < n_keys
        krow = _key_rows(j, valid, n_anchor, lo, tables_ptr, anchors_ptr, b * n_tables, b * n_anchor_tables,
                         layer, 0, stride_page, stride_layer, stride_slot, ROW)
        # -- exact scores of every head from one read of the keys ----------------------------------
        k = tl.load(pool_ptr + krow[None, :] + kd[:, None], mask=valid[None, :], other=0)  # [PK * D, N] int8
        acc = tl.dot(q_lo, k)
        if Q_LIMBS == 2:
            acc += tl.dot(q_hi, k) << 7
        srow = krow[None, :] + rkv[:, None] * ROW  # [M, N]: each row's own K row
        mk, ek = _unpack_scale(tl.load(pool32_ptr + (srow + D) // 4, mask=valid[None, :] & hmask[:, None], other=0))
        s = _score(acc, mq, eq, mk, ek).to(tl.int32)
        s = tl.where(valid[None, :], s, NEG)
        tl.store(s_ptr + (b * H + heads)[:, None] * s_len + j[None, :], s, mask=hmask[:, None] & valid[None, :])
        m = tl.maximum(m, tl.max(s, axis=1))
        # -- the V row exponents, for E = max ev (per row: its KV head's) ----------------------
        _, ev = _unpack_scale(tl.load(pool32_ptr + (srow + kv_stride + D) // 4, mask=valid[None, :] & hmask[:, None], other=0))
        big = tl.maximum(big, tl.max(tl.where(valid[None, :], ev.to(tl.int32), NEG), axis=1))
    part = (b * tl.num_programs(0) + pg) * n_splits + sp
    tl.store(mpart_ptr + part * BLOCK_M + rows, m)
    tl.store(epart_ptr + part * BLOCK_M + rows, big)


@triton.jit
def _mix_kernel(
    # pointers
    pool_ptr, pool32_ptr, exp_ptr, tables_ptr, anchors_ptr, meta_ptr, s_ptr, mpart_ptr, epart_ptr,
    npart_ptr, zpart_ptr,
    # dimensions and strides
    layer, stride_page, stride_layer, kv_stride, stride_slot, n_tables, n_anchor_tables, n_splits, s_len,
    # meta-parameters
    H, GROUP, D: tl.constexpr, SPLIT,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
    PROB_BITS, W_LIMBS: tl.constexpr, PK: tl.constexpr,
):
    pg, sp, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ROW: tl.constexpr = D + 4
    g0 = pg * PK
    n_anchor = tl.load(meta_ptr + 3 * b)
    lo = tl.load(meta_ptr + 3 * b + 1)
    n_keys = tl.load(meta_ptr + 3 * b + 2)
    rows = tl.arange(0, BLOCK_M)
    heads = g0 * GROUP + rows
    hmask = rows < PK * GROUP
    rkv = (g0 + rows // GROUP).to(tl.int64)
    # -- the exact maxima m and E [BLOCK_M] over every split of this (sequence, KV heads) -----
    base = (b * tl.num_programs(0) + pg) * n_splits
    si = tl.arange(0, BLOCK_S)
    pm = (base + si)[:, None] * BLOCK_M + rows[None, :]
    m = tl.max(tl.load(mpart_ptr + pm, mask=(si < n_splits)[:, None], other=NEG), axis=0).to(tl.int64)
    big = tl.max(tl.load(epart_ptr + pm, mask=(si < n_splits)[:, None], other=NEG), axis=0).to(tl.int64)
    acc = tl.zeros([BLOCK_M, D], tl.int64)
    z = tl.zeros([BLOCK_M], tl.int64)
    cols = tl.arange(0, D)
    c = tl.arange(0, PK * BLOCK_N)  # stacked values: column c is key c % N of KV head g0 + c // N
    wmask = (c // BLOCK_N)[None, :] == (rows // GROUP)[:, None]
    for j0 in range(sp * SPLIT, tl.minimum(sp * SPLIT + SPLIT, n_keys), BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        valid = j < n_keys
        krow = _key_rows(j, valid, n_anchor, lo, tables_ptr, anchors_ptr, b * n_tables, b * n_anchor_tables,
                         layer, 0, stride_page, stride_layer, stride_slot, ROW)
        vrow = krow[None, :] + rkv[:, None] * ROW + kv_stride  # [M, N]: each row's own V row
        # -- numerators e = exp_neg(m - s), 0 past the end -----------------------------------------
        s = tl.load(s_ptr + (b * H + heads)[:, None] * s_len + j[None, :], mask=hmask[:, None] & valid[None, :], other=0)
        e = _exp_neg(m[:, None] - s.to(tl.int64), exp_ptr)
        e = tl.where(valid[None, :], e, 0)
        z += tl.sum(e, axis=1)
        # -- weights with the V row scale folded in -----------------------------------------------
        mv, ev = _unpack_scale(tl.load(pool32_ptr + (vrow + D) // 4, mask=valid[None, :] & hmask[:, None], other=0))
        w = _weight(e, mv, ev, big, PROB_BITS)
        # -- N += w @ q_v on int8 tensor cores: block-diagonal weights [M, PK * N] against the PK
        #    heads' values stacked along the keys [PK * N, D] ------------------------------------
        jc = j0 + c % BLOCK_N
        vc = _key_rows(jc, jc < n_keys, n_anchor, lo, tables_ptr, anchors_ptr, b * n_tables, b * n_anchor_tables,
                       layer, 0, stride_page, stride_layer, stride_slot, ROW) + (g0 + c // BLOCK_N).to(tl.int64) * ROW
        v = tl.load(pool_ptr + (vc + kv_stride)[:, None] + cols[None, :], mask=(jc < n_keys)[:, None], other=0)
        wide = tl.reshape(tl.broadcast_to(w[:, None, :], [BLOCK_M, PK, BLOCK_N]), [BLOCK_M, PK * BLOCK_N])
        acc += _weight_dot(tl.where(wmask, wide, 0), v, W_LIMBS)
    part = (base + sp) * BLOCK_M + rows
    tl.store(npart_ptr + part[:, None] * D + cols[None, :], acc)
    tl.store(zpart_ptr + part, z)


@triton.jit
def _combine_kernel(npart_ptr, zpart_ptr, epart_ptr, out_ptr, n_splits,
                    H, GROUP, D: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_S: tl.constexpr, PROB_BITS, PK: tl.constexpr):
    pg, b = tl.program_id(0), tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, D)
    base = (b * tl.num_programs(0) + pg) * n_splits
    si = tl.arange(0, BLOCK_S)
    big = tl.max(tl.load(epart_ptr + (base + si)[:, None] * BLOCK_M + rows[None, :], mask=(si < n_splits)[:, None],
                         other=NEG), axis=0).to(tl.int64)
    n = tl.zeros([BLOCK_M, D], tl.int64)
    z = tl.zeros([BLOCK_M], tl.int64)
    for sp in range(0, n_splits):  # exact integer sums: any order gives the same result
        part = (base + sp) * BLOCK_M + rows
        n += tl.load(npart_ptr + part[:, None] * D + cols[None, :])
        z += tl.load(zpart_ptr + part)
    k = big + (WEIGHT_SHIFT - PROB_BITS)
    hmask = rows < PK * GROUP
    k = tl.where(hmask, k, 0)  # padding rows: any valid shift
    out = _div_round_pow2(n, tl.maximum(z, 1)[:, None], k[:, None] + n * 0)
    out = tl.minimum(tl.maximum(out, -(2**31 - 1)), 2**31 - 1)
    heads = pg * PK * GROUP + rows
    tl.store(out_ptr + (b * H + heads)[:, None] * D + cols[None, :], out, mask=hmask[:, None])


def _launch_shape(n_max: int, batch: int, kv_heads: int, block_n: int) -> tuple[int, int]:
    """Return (split length, number of splits): enough programs to fill the GPU several times
    (>= ~1024 of them), splits of at least 4 key blocks, at most 256 splits."""
    want = max(1, min(256, -(-1024 // (batch * kv_heads))))
    split = max(4 * block_n, -(-n_max // want))
    split = -(-split // block_n) * block_n
    return split, -(-n_max // split)


def decode_attention(q: torch.Tensor, pool: torch.Tensor, layer: int, tables: torch.Tensor, starts: list[int],
                     windows: list[int | None], anchor_tables: torch.Tensor | None, anchor_lens: list[int],
                     q_bits: int, prob_bits: int, exp_table: torch.Tensor, block_n: int = 32,
                     split: int | None = None, num_warps: int = 4, pack: int | None = None) -> torch.Tensor:
    """Return the Q16 attention output [B, H, d] (int64) of one query token per sequence.

    q: [B, H, d] Q16 (int64) at context index starts[b] (its own K/V already written);
    pool: the KV pool's data [pages, layers, 2, 16, G, d + 4] int8; tables: [B, n] int block
    tables; windows[b]: None or >= 1; anchor_tables: [B, n_a] int (or None) with anchor_lens[b]
    tokens. Equal, element for element, to `spec.attention.paged_attention` of each sequence.
    ``split`` (a multiple of block_n) overrides the keys per split (tests place split boundaries);
    block_n keys per inner step, num_warps and pack (KV heads per program; default: as many as
    fill 16 rows) are tuning knobs (results never depend on them).
    """
    from fieldprint_fast.kernels.linear import quantize_rows  # spec.quant.quantize_rows as int8 limbs, one launch

    # -- (1) check ---------------------------------------------------------------------------
    bsz, h, d = q.shape
    g = pool.shape[4]
    if pool.dtype != torch.int8 or pool.dim() != 6 or pool.shape[3] != PAGE.value or pool.shape[5] != d + SCALE_BYTES:
        raise ValueError("pool must be int8 [pages, layers, 2, 16, kv_heads, head_dim + 4]")
    if h % g or d % 16 or not pool.is_contiguous() or not 2 <= q_bits <= 15 or not 1 <= prob_bits <= 20:
        raise ValueError("decode_attention: heads % kv_heads == 0, head_dim % 16 == 0, q_bits <= 15, prob_bits <= 20")
    dev = q.device
    lo = [0 if w is None else max(0, s - w + 1) for s, w in zip(starts, windows)]
    n_keys = [a + s + 1 - l for a, s, l in zip(anchor_lens, starts, lo)]
    meta = torch.tensor([[a, l, n] for a, l, n in zip(anchor_lens, lo, n_keys)], dtype=torch.int32, device=dev)
    tables = tables.to(device=dev, dtype=torch.int32).contiguous()
    if anchor_tables is None or anchor_tables.numel() == 0:
        anchor_tables = torch.zeros(bsz, 1, dtype=torch.int32, device=dev)
    anchor_tables = anchor_tables.to(device=dev, dtype=torch.int32).contiguous()
    group = h // g
    block_m = max(16, triton.next_power_of_2(group))
    pk = pack or max(1, block_m // group)
    pk = 1 << (pk.bit_length() - 1)  # a power of two (tile widths) that divides G
    while g % pk:
        pk //= 2
    gp = g // pk  # programs per (split, sequence)
    split_override = split
    split, n_splits = _launch_shape(max(n_keys), bsz, gp, block_n)
    if split_override:
        if split_override % block_n:
            raise ValueError(f"split {split_override} is not a multiple of block_n {block_n}")
        split, n_splits = split_override, -(-max(n_keys) // split_override)
    # -- (2) allocate: quantized queries as int8 limbs, scratch, partial results -----------
    limbs, mq, eq = quantize_rows(q.reshape(-1, d), q_bits)  # q = limbs[1] * 2**7 + limbs[0]
    q_limbs = query_limbs(q_bits)
    q_lo, q_hi = limbs[0], limbs[-1]
    s_len = n_splits * split
    s_buf = torch.empty(bsz, h, s_len, dtype=torch.int32, device=dev)
    mpart = torch.empty(bsz, gp, n_splits, block_m, dtype=torch.int32, device=dev)
    epart = torch.empty(bsz, gp, n_splits, block_m, dtype=torch.int32, device=dev)
    npart = torch.empty(bsz, gp, n_splits, block_m, d, dtype=torch.int64, device=dev)
    zpart = torch.empty(bsz, gp, n_splits, block_m, dtype=torch.int64, device=dev)
    out = torch.empty(bsz, h, d, dtype=torch.int64, device=dev)
    pool32 = pool.view(torch.int32)
    exp_table = exp_table.to(device=dev, dtype=torch.int32).contiguous()
    stride_page, stride_layer, kv_stride, stride_slot = pool.stride(0), pool.stride(1), pool.stride(2), pool.stride(3)
    # -- (3) launch --------------------------------------------------------------------------
    grid = (gp, n_splits, bsz)
    dims = (layer, stride_page, stride_layer, kv_stride, stride_slot, tables.shape[1], anchor_tables.shape[1], n_splits, s_len)
    _scores_kernel[grid](pool, pool32, q_lo, q_hi, mq, eq,
                         tables, anchor_tables, meta, s_buf, mpart, epart, *dims,
                         H=h, GROUP=group, D=d, SPLIT=split, BLOCK_M=block_m, BLOCK_N=block_n, Q_LIMBS=q_limbs, PK=pk,
                         num_warps=num_warps)
    block_s = max(2, triton.next_power_of_2(n_splits))
    _mix_kernel[grid](pool, pool32, exp_table, tables, anchor_tables, meta, s_buf, mpart, epart, npart, zpart, *dims,
                      H=h, GROUP=group, D=d, SPLIT=split, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_S=block_s,
                      PROB_BITS=prob_bits, W_LIMBS=weight_limbs(prob_bits), PK=pk, num_warps=num_warps)
    _combine_kernel[(gp, bsz)](npart, zpart, epart, out, n_splits, H=h, GROUP=group, D=d, BLOCK_M=block_m,
                               BLOCK_S=block_s, PROB_BITS=prob_bits, PK=pk, num_warps=4)
    return out
