"""The integer quantization protocol: bit lengths, the one rounding rule, scales, requantization.

This module is the only home of rounding. Every rounding in the forward is *round half away
from zero*, computed on magnitudes so that only non-negative numbers are shifted or divided:

    round(n / d) = sign(n) * floor((2|n| + d) / (2d))        (d > 0)
    round(n / 2**s) = sign(n) * ((|n| + 2**(s-1)) >> s)      (s >= 1)

Because both operands are non-negative, floor division, C/Triton truncating division and
arithmetic or logical shifts all agree, so engines need no care about the sign conventions of
`//` (torch floors, C truncates) or `>>` on negative numbers.

Three places truncate instead, each on non-negative numbers: `floor_div` for the RMSNorm mean of
squares, `ceil_div` for row scales
(rounded up so quantized values never saturate), and `isqrt` (floor of the square root).

A *dynamic row scale* is an integer pair (m, e) meaning step = m * 2**e input units, with
2**(SCALE_MANT_BITS-2) < m <= 2**SCALE_MANT_BITS. A *static weight multiplier* is a pair
(mul, shift) meaning c = mul * 2**-shift, with 2**(WEIGHT_MANT_BITS-1) <= mul < 2**WEIGHT_MANT_BITS.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from spec.constants import ACT_MAX, FLOAT64_EXACT, SCALE_MANT_BITS

# The single documented exception to "no floating point in the forward": an integer matmul may be
# evaluated as a float64 matmul of integer data when every partial sum is below 2**53 (then every
# float64 addition is exact, in any order). Set to False to run the forward with integer ops only.
FLOAT64_MATMUL = True

_POW2 = 2 ** torch.arange(63, dtype=torch.int64)  # 2**0 .. 2**62


def qmax(bits: int) -> int:
    """Return the largest magnitude of a symmetric signed `bits`-bit integer: 2**(bits-1) - 1."""
    return (1 << (bits - 1)) - 1


def bit_length(x: torch.Tensor) -> torch.Tensor:
    """Return the number of bits of each element (0 for 0). Requires 0 <= x < 2**63."""
    return (x.unsqueeze(-1) >= _POW2.to(x.device)).sum(-1)


def absmax(x: torch.Tensor) -> int:
    """Return max |x| as a Python int (0 for an empty tensor)."""
    return int(x.abs().amax()) if x.numel() else 0


def saturate(x: torch.Tensor, bound: int = ACT_MAX) -> torch.Tensor:
    """Clamp x to [-bound, bound] (saturation, symmetric so that |x| is always representable)."""
    return x.clamp(-bound, bound)


def _as_int64(v, device) -> torch.Tensor:
    """Return v (an integer or a tensor) as an int64 tensor on ``device``. A Python integer
    becomes a filled 0-d tensor (one fill kernel) rather than a tensor built from host data and
    copied: the same value, with no host-to-device transfer inside a step that the GPU decode
    loop captures in a CUDA graph."""
    if isinstance(v, torch.Tensor):
        return v.to(device=device, dtype=torch.int64)
    return torch.full((), int(v), dtype=torch.int64, device=device)


def round_shift(x: torch.Tensor, s) -> torch.Tensor:
    """Return x / 2**s rounded half away from zero. Requires 0 <= s <= 62 and |x| + 2**(s-1) < 2**63."""
    s = _as_int64(s, x.device)
    half = torch.bitwise_left_shift(torch.ones_like(s), s) >> 1  # 2**(s-1), and 0 when s = 0
    mag = (x.abs() + half) >> s
    return torch.where(x < 0, -mag, mag)


def shift_round(x: torch.Tensor, s) -> torch.Tensor:
    """Return x * 2**-s for any integer s: `round_shift` when s >= 0, else an exact left shift
    saturated at 2**62 (x is first clamped to +-2**62 >> -s). Requires |x| < 2**63 - 2**61."""
    s = _as_int64(s, x.device)
    left = (-s).clamp(0, 62)
    lim = (1 << 62) >> left
    up = torch.maximum(torch.minimum(x, lim), -lim) << left
    return torch.where(s >= 0, round_shift(x, s.clamp(0, 62)), up)


def div_round(n: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Return n / d rounded half away from zero. Requires d >= 1 and 2|n| + d < 2**63."""
    mag = torch.div(2 * n.abs() + d, 2 * d, rounding_mode="floor")
    return torch.where(n < 0, -mag, mag)


DIV_POW2_CAP = 2**40  # `div_round_pow2` returns magnitudes at or above this as exactly this


def div_round_pow2(n: torch.Tensor, d: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Return n * 2**k / d rounded half away from zero, magnitudes capped at DIV_POW2_CAP (callers
    saturate below it), for per-element integers k. Requires 1 <= d < 2**48, |n| < 2**61 and,
    where k < 0, d * 2**-k < 2**61.

    For k >= 0 it is long division on |n|: q, r = divmod(|n|, d), then k bits of the quotient at
    most 14 at a time (q, r = q * 2**c + (r * 2**c) // d, (r * 2**c) % d; r * 2**14 < 2**62), and
    q + 1 when 2r >= d. Capping q at every step is exact: later steps only make it larger."""
    k = _as_int64(k, n.device).expand_as(n)
    d = _as_int64(d, n.device).expand_as(n)
    a = n.abs()
    q, r = torch.div(a, d, rounding_mode="floor").clamp(max=DIV_POW2_CAP), a % d
    left = k.clamp(min=0)
    while bool((left > 0).any()):
        c = left.clamp(max=14)
        rc = r << c
        q = ((q << c) + torch.div(rc, d, rounding_mode="floor")).clamp(max=DIV_POW2_CAP)
        r, left = rc % d, left - c
    up = (q + (2 * r >= d).to(torch.int64)).clamp(max=DIV_POW2_CAP)
    dd = d << (-k).clamp(min=0)
    down = torch.div(2 * a + dd, 2 * dd, rounding_mode="floor").clamp(max=DIV_POW2_CAP)
    mag = torch.where(k >= 0, up, down)
    return torch.where(n < 0, -mag, mag)


def floor_div(n: torch.Tensor, d) -> torch.Tensor:
    """Return floor(n / d). Requires n >= 0 and d >= 1 (so truncation and floor agree)."""
    return torch.div(n, d, rounding_mode="floor")


def ceil_div(n: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Return ceil(n / d). Requires n >= 0, d >= 1, n + d < 2**63."""
    return torch.div(n + d - 1, d, rounding_mode="floor")


def isqrt(v: torch.Tensor) -> torch.Tensor:
    """Return floor(sqrt(v)) elementwise, by the binary digit-by-digit method (32 steps).
    Requires 0 <= v < 2**63."""
    v = v.clone()
    res = torch.zeros_like(v)
    one = 1 << 62
    for _ in range(32):  # one result bit per step, from bit 31 down to bit 0
        t = res + one
        ge = v >= t
        v = torch.where(ge, v - t, v)
        res = torch.where(ge, (res >> 1) + one, res >> 1)
        one >>= 2
    return res


def row_scale(amax: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the row scale (m, e): the smallest m with m * 2**e >= amax / qmax(bits), where
    e = bitlen(amax) - bitlen(qmax) + 1 - SCALE_MANT_BITS, so 2**(S-2) < m <= 2**S (S = SCALE_MANT_BITS).
    A zero row is treated as amax = 1. Requires 0 <= amax < 2**31 and 2 <= bits <= 16."""
    amax = amax.clamp(min=1)
    qm = torch.full_like(amax, qmax(bits))
    e = bit_length(amax) - bit_length(qm) + 1 - SCALE_MANT_BITS
    m = ceil_div(amax << (-e).clamp(min=0), qm << e.clamp(min=0))
    return m, e


def quantize_rows(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize each row (last dim) of x symmetrically to `bits` bits with its absmax row scale.

    Return (q, m, e) with q = round(x / (m * 2**e)) and |q| <= qmax(bits) (m is rounded up).
    Requires |x| <= ACT_MAX. Every intermediate is below 2**31 * 2**SCALE_MANT_BITS * 2 < 2**47.
    """
    m, e = row_scale(x.abs().amax(-1), bits)
    m, e = m.unsqueeze(-1), e.unsqueeze(-1)
    return div_round(x << (-e).clamp(min=0), m << e.clamp(min=0)), m.squeeze(-1), e.squeeze(-1)


def dequantize_rows(q: torch.Tensor, m: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Return q * m * 2**e rounded to the input units, saturated to ACT_MAX (q: [..., K]; m, e: [...])."""
    return saturate(shift_round(q * m.unsqueeze(-1), -e.unsqueeze(-1)))


class ExactView(NamedTuple):
    """Not normative (speed only): a copy of a weight tensor `w` made once, so that `int_matmul`
    need not convert `w` on every call. ``absmax`` is max|w| (a Python int) and ``float64`` is w
    as float64 (same shape; integers below 2**53 are exact in float64). An engine attaches it as
    the attribute EXACT_VIEW of the tensor object it passes as `w` (`fieldprint_ref.weights`);
    it must describe that tensor exactly, and results are the same with or without it."""

    absmax: int
    float64: torch.Tensor


EXACT_VIEW = "fieldprint_exact_view"  # attribute name of a weight tensor's ExactView


def int_matmul(a: torch.Tensor, w: torch.Tensor, bound: int | None = None) -> torch.Tensor:
    """Return the exact int64 product a @ w.T (a: [N, K], w: [O, K]).

    `bound` bounds |every partial sum| (default K * max|a| * max|w|). When FLOAT64_MATMUL is on
    and bound < 2**53, every partial sum of every summation order is an integer below 2**53, so
    a float64 matmul is exact and is used instead.
    """
    a64 = a.to(torch.int64)
    view = getattr(w, EXACT_VIEW, None)  # an engine's cached copy of w (ExactView), or None
    if bound is None:
        bound = a.shape[-1] * absmax(a64) * (view.absmax if view is not None else absmax(w.to(torch.int64)))
    if FLOAT64_MATMUL and bound < FLOAT64_EXACT:
        w_f64 = view.float64 if view is not None else w.to(torch.int64).to(torch.float64)
        return (a64.to(torch.float64) @ w_f64.T).to(torch.int64)
    return a64 @ w.to(torch.int64).T


def requantize(acc: torch.Tensor, m: torch.Tensor, e: torch.Tensor, mul: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Return acc * (m * 2**e) * (mul * 2**-shift) rounded half away from zero, saturated to ACT_MAX.

    acc: [N, O] exact accumulators; (m, e): [N] row scales; (mul, shift): [O] channel multipliers.
    Requires |acc| * m * mul < 2**63 - 2**61 (checked per stage by PrecisionProfile validation).
    """
    prod = acc * m.unsqueeze(-1) * mul.to(torch.int64)
    return saturate(shift_round(prod, shift.to(torch.int64) - e.unsqueeze(-1)))
