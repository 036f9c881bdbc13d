"""
Paged prefill attention, exact: causal, anchors, sliding window
===============================================================

A chunk of T query tokens of one sequence (context indices start .. start + T - 1, their own K/V
already written) against its paged int8 KV cache and optional pinned anchor pages, bit for bit
equal to `spec.attention.paged_attention` (numerics/2). Chunked prefill is the same call with
start > 0; a decode step is T = 1 (`attention_decode.py` is faster there).

Layout
------
A program owns ``BLOCK_M`` *rows*: ``BLOCK_M / GROUP`` consecutive tokens times the ``GROUP =
H / G`` query heads of one KV head (row r is token r // GROUP, head r % GROUP), so every key
block it loads serves all heads of the group: the GQA read saving of decode, and tensor-core
tiles of 64 rows with 4 heads per KV head.

Two passes over the visible keys
--------------------------------
The spec needs the exact row maximum m of the scores and the exact maximum E of the visible V
row exponents before the first weight (`spec.attention.value_weights`), so the program walks
its visible key blocks twice (the anchors, then the context blocks its rows can see: causal,
and not before the window of its first token):

1. scores (int8 tensor-core dots, a 12-bit query as two 7-bit-split limbs), m and E;
2. scores again, ``e = exp_neg(m - s)``, ``Z += sum e``, the integer weights ``w`` and
   ``N += w @ q_v`` as int8 x int8 -> int32 dots of 7-bit weight limbs;

then divides once per output element, ``round(N * 2**k / Z)``. Recomputing the scores costs a
second round of QK dots; storing them would cost 4 bytes per score of memory traffic, far more
at prefill sizes. Where the time goes: the integer epilogue per score (score rescale, exp_neg,
weight) is tens of 64-bit integer operations on CUDA cores, against the handful of float
operations of a float softmax (see docs/fast/attention.md).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fieldprint_fast.kernels.attention_math import (
    MAX_SPLIT_KEYS, SCORE_SHIFT, WEIGHT_SHIFT, _div_round_pow2, _exp_neg, _score, _unpack_scale, _weight, _weight_limbs,
    packed_exp_table, query_limbs, weight_limbs,
)

PAGE = tl.constexpr(16)  # spec.constants.PAGE_TOKENS
SCALE_BYTES = 4  # spec.constants.KV_SCALE_BYTES
NEG = tl.constexpr(-(2**31))  # "no key": below every score (spec: -SCORE_MAX - 1) and every exponent


@triton.jit
def _key_block(j, j_end, i_row, n_anchor, lo, window, q_lo, q_hi, mq, eq, pool_ptr, pool32_ptr, table_ptr,
               anchor_ptr, layer, g, stride_page, stride_layer, stride_slot,
               D: tl.constexpr, DK: tl.constexpr, Q_LIMBS: tl.constexpr):
    """Return (scores [M, N] int32, visibility [M, N], K row offsets [N]) of logical keys j [N]
    (anchor token j when j < A, else context token lo + j - A) for rows at context index i_row [M].
    q_lo, q_hi: [M, DK] with zeros past D (DK = max(D, 32): int8 tensor cores reduce >= 32)."""
    ROW: tl.constexpr = D + 4
    valid = j < j_end
    is_a = j < n_anchor
    tok = tl.where(is_a, j, lo + j - n_anchor)
    pa = tl.load(anchor_ptr + tok // PAGE, mask=valid & is_a, other=0)
    pc = tl.load(table_ptr + tok // PAGE, mask=valid & (~is_a), other=0)
    page = tl.where(is_a, pa, pc).to(tl.int64)
    krow = page * stride_page + layer * stride_layer + (tok % PAGE).to(tl.int64) * stride_slot + g * ROW
    krow = tl.multiple_of(tl.where(valid, krow, 0), 4)  # D + 4 and every stride are multiples of 4
    kc = tl.arange(0, DK)
    k = tl.load(pool_ptr + krow[:, None] + kc[None, :], mask=valid[:, None] & (kc < D)[None, :], other=0)
    acc = tl.dot(q_hi, tl.trans(k))
    if Q_LIMBS == 2:
        acc = tl.dot(q_lo, tl.trans(k), acc << 7, out_dtype=tl.int32)  # q = hi * 2**7 + lo; |acc| < 2**28
    mk, ek = _unpack_scale(tl.load(pool32_ptr + (krow + D) // 4, mask=valid, other=0))
    s = _score(acc, mq[:, None] * mk[None, :], (-eq[:, None] - ek[None, :]) + SCORE_SHIFT)
    # -- visibility: anchors always; context c <= i and (no window or i - c < window) ----------
    c = tok[None, :]
    ctx = (c <= i_row[:, None]) & ((window <= 0) | (i_row[:, None] - c < window))
    vis = valid[None, :] & (is_a[None, :] | ctx)
    return s, vis, krow


@triton.jit
def _prefill_kernel(
    # pointers
    pool_ptr, pool32_ptr, exp_ptr, qlo_ptr, qhi_ptr, mq_ptr, eq_ptr, table_ptr, anchor_ptr, out_ptr,
    # the chunk
    n_tokens, start, lo, window, n_anchor,
    # the pool (strides in int8 elements)
    layer, stride_page, stride_layer, kv_stride, stride_slot,
    # meta-parameters
    H, GROUP, D: tl.constexpr, DK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    Q_LIMBS: tl.constexpr, PROB_BITS, W_LIMBS: tl.constexpr, CHUNK: tl.constexpr, CHUNKED: tl.constexpr,
):
    blk, g = tl.program_id(0), tl.program_id(1)
    TOKENS = BLOCK_M // GROUP
    rows = tl.arange(0, BLOCK_M)
    t = blk * TOKENS + rows // GROUP
    head = g * GROUP + rows % GROUP
    rmask = (rows < TOKENS * GROUP) & (t < n_tokens)
    i_row = start + t  # context index of each row's token
    qoff = (t * H + head)[:, None] * D + tl.arange(0, D)[None, :]
    qc = tl.arange(0, DK)  # the query operand, zero-padded to DK columns
    qkoff = (t * H + head)[:, None] * D + qc[None, :]
    qkmask = rmask[:, None] & (qc < D)[None, :]
    q_lo = tl.load(qlo_ptr + qkoff, mask=qkmask, other=0)
    q_hi = q_lo
    if Q_LIMBS == 2:
        q_hi = tl.load(qhi_ptr + qkoff, mask=qkmask, other=0)
    mq = tl.load(mq_ptr + t * H + head, mask=rmask, other=0)
    eq = tl.load(eq_ptr + t * H + head, mask=rmask, other=0)
    # -- the key blocks these rows can see: anchors [0, A), then context [c_lo, c_hi) ----------
    i_first = start + blk * TOKENS
    i_last = tl.minimum(i_first + TOKENS, start + n_tokens) - 1
    c_lo = lo
    if window > 0:
        c_lo = tl.maximum(lo, i_first - window + 1)
    j_lo = n_anchor + c_lo - lo
    j_hi = n_anchor + i_last + 1 - lo
    # -- pass 1: exact maxima m (scores) and E (V row exponents) over the visible keys ---------
    m = tl.full([BLOCK_M, BLOCK_N], NEG, tl.int32)  # by columns, reduced after the pass
    big = tl.full([BLOCK_M, BLOCK_N], NEG, tl.int32)
    for phase in tl.static_range(2):
        j_begin = 0 if phase == 0 else j_lo
        j_end = n_anchor if phase == 0 else j_hi
        for j0 in range(j_begin, j_end, BLOCK_N):
            j = j0 + tl.arange(0, BLOCK_N)
            s, vis, krow = _key_block(j, j_end, i_row, n_anchor, lo, window, q_lo, q_hi, mq, eq, pool_ptr, pool32_ptr,
                                      table_ptr, anchor_ptr, layer, g, stride_page, stride_layer, stride_slot, D, DK, Q_LIMBS)
            m = tl.maximum(m, tl.where(vis, s, NEG))
            _, ev = _unpack_scale(tl.load(pool32_ptr + (krow + kv_stride + D) // 4, mask=j < j_end, other=0))
            big = tl.maximum(big, tl.where(vis, ev[None, :], NEG))
    m = tl.max(m, axis=1)
    wsh = tl.max(big, axis=1) + (WEIGHT_SHIFT - PROB_BITS)  # weight shift = wsh - ev (>= 24 where visible)
    # -- pass 2: numerators, Z, weights, N = sum w q_v -------------------------------------------
    # N is three int32 limb accumulators (7-bit limbs of w times int8 values: exact for at most
    # MAX_SPLIT_KEYS keys). Rows that may see more than CHUNK keys (CHUNKED) add them into int64
    # after every CHUNK keys of a phase and after each phase; the int64 tile costs registers, so
    # it exists only when needed.
    acc = tl.zeros([BLOCK_M, D], tl.int64) if CHUNKED else tl.zeros([1, D], tl.int64)
    a0 = tl.zeros([BLOCK_M, D], tl.int32)
    a1 = tl.zeros([BLOCK_M, D], tl.int32)
    a2 = tl.zeros([BLOCK_M, D], tl.int32)
    z = tl.zeros([BLOCK_M, BLOCK_N], tl.int64)
    for phase in tl.static_range(2):
        j_begin = 0 if phase == 0 else j_lo
        j_end = n_anchor if phase == 0 else j_hi
        for j0 in range(j_begin, j_end, BLOCK_N):
            j = j0 + tl.arange(0, BLOCK_N)
            s, vis, krow = _key_block(j, j_end, i_row, n_anchor, lo, window, q_lo, q_hi, mq, eq, pool_ptr,
                                      pool32_ptr, table_ptr, anchor_ptr, layer, g, stride_page, stride_layer,
                                      stride_slot, D, DK, Q_LIMBS)
            e = tl.where(vis, _exp_neg(m, s, exp_ptr), 0)
            z += e.to(tl.int64)
            vrow = krow + kv_stride
            mv, ev = _unpack_scale(tl.load(pool32_ptr + (vrow + D) // 4, mask=j < j_end, other=0))
            w0, w1, w2 = _weight_limbs(_weight(e, mv[None, :], wsh[:, None] - ev[None, :]), W_LIMBS)
            v = tl.load(pool_ptr + vrow[:, None] + tl.arange(0, D)[None, :], mask=(j < j_end)[:, None], other=0)
            a0 = tl.dot(w0, v, a0, out_dtype=tl.int32)
            if W_LIMBS > 1:
                a1 = tl.dot(w1, v, a1, out_dtype=tl.int32)
            if W_LIMBS > 2:
                a2 = tl.dot(w2, v, a2, out_dtype=tl.int32)
            if CHUNKED:
                if (j0 - j_begin + BLOCK_N) % CHUNK == 0:
                    acc += a0.to(tl.int64) + (a1.to(tl.int64) << 7) + (a2.to(tl.int64) << 14)
                    a0 = tl.zeros([BLOCK_M, D], tl.int32)
                    a1 = tl.zeros([BLOCK_M, D], tl.int32)
                    a2 = tl.zeros([BLOCK_M, D], tl.int32)
        if CHUNKED:
            acc += a0.to(tl.int64) + (a1.to(tl.int64) << 7) + (a2.to(tl.int64) << 14)
            a0 = tl.zeros([BLOCK_M, D], tl.int32)
            a1 = tl.zeros([BLOCK_M, D], tl.int32)
            a2 = tl.zeros([BLOCK_M, D], tl.int32)
    if not CHUNKED:
        acc += a0.to(tl.int64) + (a1.to(tl.int64) << 7) + (a2.to(tl.int64) << 14)
    z = tl.sum(z, axis=1)
    # -- one division per output element -------------------------------------------------------
    k = wsh.to(tl.int64)  # the output shift E + 44 - P is the weight shift of a key with ev = 0
    out = _div_round_pow2(acc, tl.maximum(z, 1)[:, None], k[:, None] + acc * 0)
    out = tl.minimum(tl.maximum(out, -(2**31 - 1)), 2**31 - 1)
    tl.store(out_ptr + qoff, out, mask=rmask[:, None])


def prefill_attention(q: torch.Tensor, pool: torch.Tensor, layer: int, table: torch.Tensor, start: int,
                      window: int | None, anchor_table: torch.Tensor | None, anchor_len: int,
                      q_bits: int, prob_bits: int, exp_table: torch.Tensor, block_m: int = 32,
                      block_n: int = 32, num_warps: int = 4, chunk: int = MAX_SPLIT_KEYS) -> torch.Tensor:
    """Return the Q16 attention output [T, H, d] (int64) of the chunk q [T, H, d] (Q16) at context
    indices start .. start + T - 1: `spec.attention.paged_attention`, element for element.

    pool: the KV pool's data [pages, layers, 2, 16, G, d + 4] int8; table: the sequence's block
    table; anchor_table: the anchor pages (or None) holding anchor_len tokens. block_m, block_n,
    num_warps are tuning knobs; chunk (a multiple of block_n, at most MAX_SPLIT_KEYS) is the number
    of keys after which the int32 limb accumulators are added into int64 (tests make it small so
    that the path long contexts take runs on small problems). Results never depend on them.
    """
    from fieldprint_fast.kernels.linear import quantize_rows  # spec.quant.quantize_rows as int8 limbs, one launch

    # -- (1) check ---------------------------------------------------------------------------
    t, h, d = q.shape
    g = pool.shape[4]
    if pool.dtype != torch.int8 or pool.dim() != 6 or pool.shape[3] != PAGE.value or pool.shape[5] != d + SCALE_BYTES:
        raise ValueError("pool must be int8 [pages, layers, 2, 16, kv_heads, head_dim + 4]")
    if h % g or d % 16 or not pool.is_contiguous() or not 2 <= q_bits <= 15 or not 1 <= prob_bits <= 20:
        raise ValueError("prefill_attention: heads % kv_heads == 0, head_dim % 16 == 0, q_bits <= 15, prob_bits <= 20")
    if block_n < 32 or block_m < 16:
        raise ValueError(f"prefill_attention: block_n {block_n} >= 32 (the value product reduces over block_n keys; "
                         f"int8 tensor cores need 32) and block_m {block_m} >= 16")
    if chunk % block_n or not 0 < chunk <= MAX_SPLIT_KEYS:
        raise ValueError(f"prefill_attention: chunk {chunk} must be a multiple of block_n {block_n}, at most {MAX_SPLIT_KEYS}")
    dev = q.device
    group = h // g
    block_m = max(block_m, triton.next_power_of_2(group))
    lo = 0 if window is None else max(0, start - window + 1)
    # -- (2) allocate: quantized queries as int8 limbs, the output -----------------------------
    limbs, mq, eq = quantize_rows(q.reshape(-1, d), q_bits)  # q = limbs[1] * 2**7 + limbs[0]
    q_limbs = query_limbs(q_bits)
    q_lo, q_hi = limbs[0], limbs[-1]
    table = table.to(device=dev, dtype=torch.int32).contiguous()
    if anchor_table is None or anchor_len == 0:
        anchor_table, anchor_len = torch.zeros(1, dtype=torch.int32, device=dev), 0
    anchor_table = anchor_table.to(device=dev, dtype=torch.int32).contiguous()
    out = torch.empty(t, h, d, dtype=torch.int64, device=dev)
    # -- (3) launch --------------------------------------------------------------------------
    grid = (triton.cdiv(t, block_m // group), g)
    _prefill_kernel[grid](
        pool, pool.view(torch.int32), packed_exp_table(exp_table, dev), q_lo, q_hi,
        mq, eq, table, anchor_table, out,
        t, start, lo, 0 if window is None else window, anchor_len,
        layer, pool.stride(0), pool.stride(1), pool.stride(2), pool.stride(3),
        H=h, GROUP=group, D=d, DK=max(d, 32), BLOCK_M=block_m, BLOCK_N=block_n, Q_LIMBS=q_limbs, PROB_BITS=prob_bits,
        W_LIMBS=weight_limbs(prob_bits), CHUNK=chunk, CHUNKED=anchor_len + start + t - lo > chunk - block_n, num_warps=num_warps, num_stages=1)  # triton 3.6 cannot pipeline this loop nest
    return out
