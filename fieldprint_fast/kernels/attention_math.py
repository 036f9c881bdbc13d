"""
Integer helpers shared by the attention kernels
===============================================

Triton transcriptions of the `spec` rules that `attention_decode.py` and `attention_prefill.py`
both apply, one helper per spec step:

* ``_score``: the rescale of `spec.attention.scores` (``shift_round(acc * mq * mk, 16 - eq - ek)``,
  saturated);
* ``_exp_neg``: `spec.ops.exp_neg` of ``m - s`` (base-2 conversion, table interpolation, shift);
* ``_weight``: `spec.attention.value_weights` for one tile;
* ``_div_round_pow2``: `spec.quant.div_round_pow2` (long division, 14 quotient bits a step), once
  per output element.

Why they look different from the spec
-------------------------------------
The spec writes every step in int64 for clarity. On the GPU a 64 x 64-bit multiply, a
variable 64-bit shift, a 64-bit compare or select is several 32-bit instructions, and the
per-score steps above run on every (query head, key) pair: in the first transcription they were
~1,200 SASS instructions per score (`cuobjdump`), where FAST-NOTES budgets ~250 for the whole
score at the memory bandwidth. Each helper here is the same function rewritten over the ranges
the spec guarantees, so that everything but one 32 x 32 -> 64-bit product is 32-bit:

* score: ``|acc| * (mq * mk)`` is one widening product (``mq * mk <= 2**28`` and ``|acc| < 2**28``
  are 32-bit); the shift clamps at 58 (``|prod| < 2**56`` rounds to 0 beyond) and the left
  shift at 31 (any non-zero value saturates beyond), which is the spec's saturation at 2**62
  followed by SCORE_MAX;
* exp_neg: ``d = min(m - s, 2**21)`` fits 32 bits; ``d * LOG2E_Q30 < 2**52`` is one widening
  product; the interpolation ``(t0 - t1) * frac < 2**30`` and the final shift are 32-bit
  (unsigned, so ``2**30 + 2**30`` does not overflow); the two table entries come from one 64-bit
  load of a packed copy (``packed_exp_table``: ``t0 | (t0 - t1) << 32``);
* weight: ``round(e * mv / 2**sh)`` with ``sh >= 24``: because the rounding bias ``2**(sh - 1)``
  is a multiple of ``2**23``, ``floor((x + 2**(sh-1)) / 2**sh) = (floor(x / 2**23) + 2**(sh-24))
  >> (sh - 23)``, and ``floor(e * mv / 2**23) < 2**23`` is 32-bit; ``sh`` clamps at 47
  (``e * mv < 2**46`` rounds to 0 beyond).

Every helper works on magnitudes and non-negative shifts below the bit width (a shift by the
width or more is undefined on the GPU), so truncating ``//`` and arithmetic ``>>`` give exactly
the spec's results; `tests/fast/test_attention_math.py` checks each one against the spec over
the edges of its range.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Module globals read by @triton.jit code must be tl.constexpr.
SCORE_SHIFT = tl.constexpr(16)  # 2 * ACT_FRAC_BITS - SCORE_FRAC_BITS (spec.attention.scores)
SCORE_MAX = tl.constexpr(2**31 - 1)  # spec.constants.SCORE_MAX
EXP_CLAMP = tl.constexpr(32 << 16)  # spec.ops.exp_neg clamps d at 32 (Q16)
LOG2E_Q30 = tl.constexpr(1549082005)  # spec.constants.LOG2E_Q30
WEIGHT_SHIFT = tl.constexpr(44)  # EXP_FRAC_BITS + SCALE_MANT_BITS (spec.attention.value_weights)
DIV_CAP = tl.constexpr(2**40)  # spec.quant.DIV_POW2_CAP
ACT_MAX = tl.constexpr(2**31 - 1)  # spec.constants.ACT_MAX
MAX_SPLIT_KEYS = 65536  # int32 limb accumulators: 127 * 127 * 65536 < 2**31


@triton.jit
def _unpack_scale(word):
    """(m, e) int32 of a page row's scale word (int32 little-endian: m u16, e i8, 0)."""
    return word & 0xFFFF, (word << 8) >> 24  # byte 2, sign-extended (byte 3 is zero)


@triton.jit
def _score(acc, mqk, sh):
    """Q16 scores (int32) of exact dots acc (int32, |acc| < 2**28) with mqk = mq * mk (int32,
    <= 2**28) and sh = 16 - eq - ek (int32): shift_round(acc * mqk, sh) saturated to SCORE_MAX."""
    a = tl.abs(acc).to(tl.uint64) * mqk.to(tl.uint64)  # < 2**56
    rs = tl.minimum(tl.maximum(sh, 1), 58).to(tl.uint64)  # beyond 58 the result is 0 either way
    down = (a + ((rs * 0 + 1) << (rs - 1))) >> rs
    ls = tl.minimum(tl.maximum(-sh, 0), 31).to(tl.uint64)  # beyond 31 any a >= 1 saturates either way
    up = tl.minimum(a, 2**31) << ls
    r = tl.minimum(tl.where(sh > 0, down, up), SCORE_MAX).to(tl.int32)
    return tl.where(acc < 0, -r, r)


@triton.jit
def _exp_neg(m, s, tab_ptr):
    """exp_neg(m - s) (`spec.ops.exp_neg`) in [0, 2**30] (int32) for scores s (int32 [M, N]) and
    their row maxima m (int32 [M], m >= s); tab_ptr: `packed_exp_table`."""
    mlo = tl.maximum(m, -(2**31) + EXP_CLAMP) - EXP_CLAMP  # no int32 overflow below
    d = m[:, None] - tl.maximum(s, mlo[:, None])  # = min(m - s, 2**21): the spec's clamp
    b = ((d.to(tl.uint64) * LOG2E_Q30 + (1 << 29)) >> 30).to(tl.int32)  # base 2, Q16, < 2**22
    n = b >> 16
    pair = tl.load(tab_ptr + ((b >> 8) & 255))  # t0 | (t0 - t1) << 32
    t0 = pair.to(tl.int32)  # low word (t0 < 2**31)
    dt = (pair >> 32).to(tl.int32)
    v = (t0 - ((dt * (b & 255) + 128) >> 8)).to(tl.uint32)  # dt * frac < 2**30
    nn = tl.minimum(n, 31).to(tl.uint32)
    e = (v + ((nn * 0 + 1) << nn >> 1)) >> nn  # v <= 2**30: no uint32 overflow
    return tl.where(n > 31, 0, e.to(tl.int32))


@triton.jit
def _weight(e, mv, sh):
    """Integer weights round(e * mv / 2**sh) (int32) of `spec.attention.value_weights`, for
    numerators e in [0, 2**30], V mantissas mv < 2**16 and shifts sh = E - ev + 44 - P >= 24
    (int32, same shape or broadcast)."""
    t = tl.minimum(tl.maximum(sh, 24), 47)  # e * mv < 2**46 rounds to 0 beyond 47 either way
    x = ((e.to(tl.uint64) * mv.to(tl.uint64)) >> 23).to(tl.int32)  # < 2**23
    return (x + (1 << (t - 24))) >> (t - 23)


@triton.jit
def _weight_limbs(w, W_LIMBS: tl.constexpr):
    """The 7-bit limbs of weights 0 <= w < 2**(7 * W_LIMBS) as int8 tiles (high limb last)."""
    w0 = (w & 127).to(tl.int8)
    w1 = ((w >> 7) & 127).to(tl.int8)
    w2 = (w >> 14).to(tl.int8)
    return w0, w1, w2


@triton.jit
def _div_round_pow2(n, z, k):
    """n * 2**k / z rounded half away from zero, magnitude capped at 2**40 (`spec.quant.div_round_pow2`);
    n int64, 1 <= z < 2**48, -7 <= k <= 56 (k < 0: z * 2**-k < 2**61). Once per output element."""
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


_PACKED: dict = {}


def packed_exp_table(exp_table: torch.Tensor, device) -> torch.Tensor:
    """Return int64 [256]: entry i = T[i] | (T[i] - T[i + 1]) << 32 of the 257-entry 2**-f table
    (`spec.tables.exp2_table`), so `_exp_neg` reads both interpolation points in one load.
    Not normative (a layout of the same numbers); cached per table contents and device."""
    key = (exp_table.data_ptr(), exp_table.device, exp_table._version, str(device))
    if key not in _PACKED:  # the entry keeps exp_table alive, so its address cannot be reused
        t = exp_table.to(torch.int64).cpu()
        if t.numel() != 257 or bool((t[:-1] < t[1:]).any()) or int(t.max()) >= 2**31 or int(t.min()) < 0:
            raise ValueError("exp_table must be the 257 falling non-negative int32 entries of spec.tables.exp2_table")
        _PACKED[key] = ((t[:-1] | ((t[:-1] - t[1:]) << 32)).to(device), exp_table)
    return _PACKED[key][0]


def weight_limbs(prob_bits: int) -> int:
    """Return the number of 7-bit limbs of a weight in [0, 2**prob_bits] (1..3; prob_bits <= 20)."""
    return -(-(prob_bits + 1) // 7)


def query_limbs(q_bits: int) -> int:
    """Return the number of int8 limbs of a query (1 up to 8 bits; 2 = (hi, lo 7 bits) up to 15)."""
    return 1 if q_bits <= 8 else 2
