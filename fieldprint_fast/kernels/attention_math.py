"""
Integer helpers shared by the attention kernels
===============================================

Triton transcriptions of the `spec` rules that `attention_decode.py` and `attention_prefill.py`
both apply, one helper per spec function, with the spec's names:

* ``_round_shift`` / ``_shift_round``: `spec.quant.round_shift` / `spec.quant.shift_round`;
* ``_score``: the rescale of `spec.attention.scores` (``acc * mq * mk`` shifted, saturated);
* ``_exp_neg``: `spec.ops.exp_neg` (base-2 conversion, table interpolation, shift);
* ``_weight``: `spec.attention.value_weights` for one tile;
* ``_weight_dot``: ``sum_j w_j q_j`` as int8 tensor-core dots of 7-bit weight limbs;
* ``_div_round_pow2``: `spec.quant.div_round_pow2` (long division, 14 quotient bits a step).

All of them work on magnitudes and non-negative shifts, so Triton's truncating ``//`` and its
arithmetic ``>>`` give exactly the spec's results. 64-bit shift counts are clamped to 0..62
before use (a shift by 64 or more is undefined on the GPU).
"""
from __future__ import annotations

import triton
import triton.language as tl

# Module globals read by @triton.jit code must be tl.constexpr.
SCORE_SHIFT = tl.constexpr(16)  # 2 * ACT_FRAC_BITS - SCORE_FRAC_BITS (spec.attention.scores)
SCORE_MAX = tl.constexpr(2**31 - 1)  # spec.constants.SCORE_MAX
EXP_CLAMP = tl.constexpr(32 << 16)  # spec.ops.exp_neg clamps d at 32 (Q16)
LOG2E_Q30 = tl.constexpr(1549082005)  # spec.constants.LOG2E_Q30
EXP_FRAC_BITS = tl.constexpr(30)  # spec.constants.EXP_FRAC_BITS
WEIGHT_SHIFT = tl.constexpr(44)  # EXP_FRAC_BITS + SCALE_MANT_BITS (spec.attention.value_weights)
DIV_CAP = tl.constexpr(2**40)  # spec.quant.DIV_POW2_CAP
ACT_MAX = tl.constexpr(2**31 - 1)  # spec.constants.ACT_MAX


@triton.jit
def _round_shift(x, s):
    """x / 2**s rounded half away from zero; x int64, 0 <= s <= 62 (int64, same shape or scalar)."""
    one = (s * 0 + 1).to(tl.int64)
    half = (one << s) >> 1
    mag = (tl.abs(x) + half) >> s
    return tl.where(x < 0, -mag, mag)


@triton.jit
def _shift_round(x, s):
    """x * 2**-s for any integer s: `_round_shift` when s >= 0, else a left shift saturated at 2**62."""
    left = tl.minimum(tl.maximum(-s, 0), 62)
    lim = ((left * 0 + 1).to(tl.int64) << 62) >> left
    up = tl.minimum(tl.maximum(x, -lim), lim) << left
    return tl.where(s >= 0, _round_shift(x, tl.minimum(tl.maximum(s, 0), 62)), up)


@triton.jit
def _unpack_scale(word):
    """(m, e) int64 of a page row's scale word (int32 little-endian: m u16, e i8, 0)."""
    m = (word & 0xFFFF).to(tl.int64)
    e = ((word << 8) >> 24).to(tl.int64)  # byte 2, sign-extended (byte 3 is zero)
    return m, e


@triton.jit
def _score(acc, mq, eq, mk, ek):
    """Q16 scores [M, N] from exact dots acc [M, N] (int32), query scales (mq, eq) [M] and key
    scales (mk, ek) [1 or M, N]: shift_round(acc * mq * mk, 16 - eq - ek), saturated to SCORE_MAX."""
    prod = acc.to(tl.int64) * mq[:, None] * mk
    s = _shift_round(prod, (-eq[:, None] - ek) + SCORE_SHIFT)  # tensor first: constexpr - tensor stays constexpr in the interpreter
    return tl.minimum(tl.maximum(s, -SCORE_MAX), SCORE_MAX)


@triton.jit
def _exp_neg(d, table_ptr):
    """round(2**30 * exp(-d / 2**16)) by the rule of `spec.ops.exp_neg`, for d >= 0 (int64)."""
    d = tl.minimum(tl.maximum(d, 0), EXP_CLAMP)
    b = _round_shift(d * LOG2E_Q30, d * 0 + 30)  # base 2, Q16; < 2**52 before rounding
    n = b >> 16
    f = b & 0xFFFF
    idx = (f >> 8).to(tl.int32)
    frac = f & 255
    t0 = tl.load(table_ptr + idx).to(tl.int64)
    t1 = tl.load(table_ptr + idx + 1).to(tl.int64)
    v = t0 - _round_shift((t0 - t1) * frac, d * 0 + 8)  # 2**-f falls: t0 >= t1
    return _round_shift(v, tl.minimum(n, EXP_FRAC_BITS + 2))


@triton.jit
def _weight(e, mv, ev, big, prob_bits):
    """Integer weights w [M, N] in [0, 2**P] (`spec.attention.value_weights`): round(e * mv *
    2**-(E - ev + 44 - P)); e int64 [M, N], (mv, ev) [1 or M, N], E [M] (E = big)."""
    sh = big[:, None] - ev + (WEIGHT_SHIFT - prob_bits)
    sh = tl.minimum(tl.maximum(sh, 0), 62)  # >= 14 wherever e > 0
    return _round_shift(e * mv, sh)


@triton.jit
def _weight_dot(w, v, W_LIMBS: tl.constexpr):
    """Exact sum_j w[m, j] * v[j, :] (int64 [M, D]) for weights 0 <= w < 2**(7 * W_LIMBS) (int64
    [M, N]) and int8 values v [N, D]: one int8 x int8 -> int32 dot per 7-bit limb of w
    (|limb dot| <= 127 * 127 * N < 2**31 for N < 2**17), combined in int64."""
    acc = tl.dot((w & 127).to(tl.int8), v).to(tl.int64)
    if W_LIMBS > 1:
        acc += tl.dot(((w >> 7) & 127).to(tl.int8), v).to(tl.int64) << 7
    if W_LIMBS > 2:
        acc += tl.dot(((w >> 14) & 127).to(tl.int8), v).to(tl.int64) << 14
    return acc


@triton.jit
def _div_round_pow2(n, z, k):
    """n * 2**k / z rounded half away from zero, magnitude capped at 2**40 (`spec.quant.div_round_pow2`);
    n int64, 1 <= z < 2**48, -7 <= k <= 56 (k < 0: z * 2**-k < 2**61)."""
    a = tl.abs(n)
    q = tl.minimum(a // z, DIV_CAP)
    r = a % z
    left = tl.maximum(k, 0)
    for _ in tl.static_range(4):  # 4 * 14 = 56 quotient bits
        c = tl.minimum(left, 14)
        rc = r << c
        q = tl.minimum((q << c) + rc // z, DIV_CAP)
        r = rc % z
        left -= c
    up = tl.minimum(q + (2 * r >= z).to(tl.int64), DIV_CAP)
    dd = z << tl.minimum(tl.maximum(-k, 0), 62)
    down = tl.minimum((2 * a + dd) // (2 * dd), DIV_CAP)
    mag = tl.where(k >= 0, up, down)
    return tl.where(n < 0, -mag, mag)


def weight_limbs(prob_bits: int) -> int:
    """Return the number of 7-bit limbs of a weight in [0, 2**prob_bits] (1..3; prob_bits <= 20)."""
    return -(-(prob_bits + 1) // 7)


def query_limbs(q_bits: int) -> int:
    """Return the number of int8 limbs of a query (1 up to 8 bits; 2 = (hi, lo 7 bits) up to 15)."""
    return 1 if q_bits <= 8 else 2
