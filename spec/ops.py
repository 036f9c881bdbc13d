"""Integer operators of the forward pass. Each is a pure function of integer tensors.

Activations are int64 tensors holding int32-range fixed point with ACT_FRAC_BITS = 16 fractional
bits (|x| <= ACT_MAX = 2**31 - 1, i.e. |value| < 32768). Every operator saturates its output to
that range, so every operator's input satisfies the requirement of the next.
"""
from __future__ import annotations

import torch

from spec.constants import (
    ACT_FRAC_BITS, EXP_FRAC_BITS, EXP_TABLE_BITS, LOG2E_Q30, MAX_HIDDEN, RMS_NORM_BITS, ROPE_FRAC_BITS,
    SIGMOID_DOMAIN, SIGMOID_FRAC_BITS, SIGMOID_STEP_BITS,
)
from spec.quant import (
    bit_length, div_round, floor_div, int_matmul, isqrt, quantize_rows, requantize, round_shift, saturate, shift_round,
)


def embed(tokens: torch.Tensor, weight: torch.Tensor, mul: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Return the embedding rows of `tokens` in Q16: round(W[t] * mul[t] * 2**-shift[t]), saturated.

    weight: [V, H] int (per-row symmetric); mul, shift: [V]. |W * mul| < 2**15 * 2**13 = 2**28.
    """
    w = weight[tokens].to(torch.int64)
    return saturate(shift_round(w * mul[tokens, None].to(torch.int64), shift[tokens, None].to(torch.int64)))


def linear(x: torch.Tensor, act_bits: int, weight: torch.Tensor, mul: torch.Tensor, shift: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Return x @ W.T (+ bias) in Q16: quantize each row of x to act_bits, exact integer matmul,
    one requantization (`spec.quant.requantize`), then add the Q16 bias and saturate.

    x: [N, K] Q16; weight: [O, K] int; mul, shift: [O]; bias: [O] Q16 or None.
    Requires qmax(act_bits) * max|W| * K * 2**14 * 2**13 < 2**61 (`spec.profiles.validate_profile`).
    """
    q, m, e = quantize_rows(x, act_bits)
    y = requantize(int_matmul(q, weight), m, e, mul, shift)
    return y if bias is None else saturate(y + bias.to(torch.int64))


def residual_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return x + y saturated to ACT_MAX. |x + y| < 2**32, no overflow in int64."""
    return saturate(x + y)


def rms_norm(x: torch.Tensor, gamma: torch.Tensor, eps_q48: torch.Tensor) -> torch.Tensor:
    """Return x / sqrt(mean(x**2) + eps) * gamma in Q16, per row (last dim H <= 2**16).

    1. Rescale the row: s = bitlen(max|x|) - 23, clamped to >= -16; xs = x * 2**-s (`shift_round`),
       so |xs| <= 2**23 and sum(xs**2) <= H * 2**46 <= 2**62.
    2. msq = floor(sum(xs**2) / H); eps in xs**2 units = eps_q48 * 2**(-16 - 2s), eps < 2**-2.
    3. r = isqrt(msq + eps) >= 1; y = round(xs * gamma / r) (`div_round`), |xs * gamma| < 2**54.
    """
    h = x.shape[-1]
    assert h <= MAX_HIDDEN
    s = (bit_length(x.abs().amax(-1, keepdim=True)) - RMS_NORM_BITS).clamp(min=-16)
    xs = shift_round(x, s)
    msq = floor_div((xs * xs).sum(-1, keepdim=True), h)
    eps = shift_round(eps_q48.to(torch.int64).expand_as(s), 16 + 2 * s)
    r = isqrt(msq + eps).clamp(min=1)
    return saturate(div_round(xs * gamma.to(torch.int64), r))


def sigmoid(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Return sigmoid(x) in Q16 (0..2**16) by linear interpolation in `table` (2049 entries,
    step 2**-6 over [-16, 16]); x (Q16) is clamped to [-16, 16]. Error vs sigmoid <= 1.5 * 2**-16:
    interpolation (2**-6)**2 / 8 * max|sigmoid''| < 2**-17, table and result roundings 2**-17 each,
    clamping sigmoid(-16) = 1.1e-7 < 2**-17.
    """
    lim = SIGMOID_DOMAIN << ACT_FRAC_BITS
    u = x.clamp(-lim, lim) + lim  # 0 .. 2**21
    fb = ACT_FRAC_BITS - SIGMOID_STEP_BITS  # fraction bits inside one table step (= 10)
    idx, frac = u >> fb, u & ((1 << fb) - 1)
    t = table.to(device=x.device, dtype=torch.int64)
    t0, t1 = t[idx], t[(idx + 1).clamp(max=t.numel() - 1)]
    return t0 + round_shift((t1 - t0) * frac, fb)  # sigmoid rises: t1 >= t0


def swiglu(gate: torch.Tensor, up: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Return silu(gate) * up in Q16 with silu(g) = g * sigmoid(g): two roundings,
    silu = round(g * sig * 2**-16) (|.| < 2**47) then round(silu * up * 2**-16) (|.| < 2**62), saturated."""
    silu = saturate(round_shift(gate * sigmoid(gate, table), SIGMOID_FRAC_BITS))
    return saturate(round_shift(silu * up, ACT_FRAC_BITS))


def rope(x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [N, heads, d] (Q16) by position pos [N] (rotate-half pairing i <-> i + d/2):
    out1 = round((x1 cos - x2 sin) * 2**-30), out2 = round((x2 cos + x1 sin) * 2**-30), saturated.
    cos, sin: [max_position, d/2] Q30 with |cos| + |sin| < 2**32 (checked by QuantizedModel; a YaRN
    attention factor < 2 is folded into the tables), so |x1 cos - x2 sin| < 2**31 * 2**32 = 2**63."""
    half = x.shape[-1] // 2
    c, s = cos[pos].to(torch.int64)[:, None, :], sin[pos].to(torch.int64)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    out1 = round_shift(x1 * c - x2 * s, ROPE_FRAC_BITS)
    out2 = round_shift(x2 * c + x1 * s, ROPE_FRAC_BITS)
    return saturate(torch.cat([out1, out2], dim=-1))


def exp_neg(d: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Return round(2**30 * exp(-d * 2**-16)) approximately, for d >= 0 (Q16), as an integer in [0, 2**30].

    d is clamped to 32 * 2**16 (exp(-32) < 2**-46 rounds to 0 anyway), converted to base 2:
    b = round(d * LOG2E_Q30 * 2**-30) (Q16, < 2**52 before rounding), b = n + f / 2**16; then
    2**-f by linear interpolation in the 257-entry table (index = top 8 bits of f), shifted by n.
    |result - 2**30 exp(-d/2**16)| <= 2**-16 * 2**30 exp(-d/2**16) + 2 (base-2 rounding
    2**-17 * ln 2 relative, interpolation < 2**-19 relative, table and shift roundings 1 unit each).
    """
    b = round_shift(d.clamp(0, 32 << ACT_FRAC_BITS) * LOG2E_Q30, 30)
    n, f = b >> ACT_FRAC_BITS, b & ((1 << ACT_FRAC_BITS) - 1)
    fb = ACT_FRAC_BITS - EXP_TABLE_BITS  # fraction bits inside one table step (= 8)
    idx, frac = f >> fb, f & ((1 << fb) - 1)
    t = table.to(device=d.device, dtype=torch.int64)
    t0, t1 = t[idx], t[idx + 1]
    v = t0 - round_shift((t0 - t1) * frac, fb)  # 2**-f falls: t0 >= t1
    return round_shift(v, n.clamp(max=EXP_FRAC_BITS + 2))


def lm_head(x: torch.Tensor, act_bits: int, weight: torch.Tensor, mul: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Return the Q16 logits [N, vocab] of the final-normed rows x: a `linear` with no bias
    (a tied head passes `embed.weight` with the `lm_head.mul`/`lm_head.shift` multipliers)."""
    return linear(x, act_bits, weight, mul, shift)
