"""Derivation of the lookup tables the integer forward reads (stored in every QuantizedModel).

The 2**-f table is derived with exact integer arithmetic (Python big integers), so any engine or
auditor can rebuild it bit for bit. RoPE and sigmoid tables need transcendental functions: they
are computed once here in float64 at conversion time and then travel inside the model, so no
engine ever evaluates cos, sin or exp. RoPE scaling (linear, Llama 3, YaRN) is part of the RoPE
tables in the same way.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from spec.constants import (
    EXP_FRAC_BITS, EXP_TABLE_BITS, ROPE_FRAC_BITS, SIGMOID_DOMAIN, SIGMOID_FRAC_BITS, SIGMOID_STEP_BITS,
)


def iroot(n: int, k: int) -> int:
    """Return floor(n ** (1/k)) for integers n >= 0, k >= 1 (binary search on big integers)."""
    lo, hi = 0, 1 << (n.bit_length() // k + 1)
    while lo < hi:  # invariant: lo**k <= n < (hi+1)**k
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if mid**k <= n else (lo, mid - 1)
    return lo


def exp2_entry(j: int) -> int:
    """Return round(2**EXP_FRAC_BITS * 2**(-j / 2**EXP_TABLE_BITS)) exactly (ties cannot occur:
    the value is irrational for 0 < j < 2**EXP_TABLE_BITS)."""
    steps = 1 << EXP_TABLE_BITS
    # r = floor(2x) with x the wanted value, since (2x)**steps = 2**((F+1)*steps - j); round(x) = floor((r+1)/2)
    r = iroot(1 << ((EXP_FRAC_BITS + 1) * steps - j), steps)
    return (r + 1) // 2


@lru_cache(maxsize=None)
def _exp2_list() -> tuple[int, ...]:
    return tuple(exp2_entry(j) for j in range((1 << EXP_TABLE_BITS) + 1))


def exp2_table() -> torch.Tensor:
    """Return the int32 table T[j] = round(2**30 * 2**(-j/256)), j = 0..256 (T[0] = 2**30, T[256] = 2**29)."""
    return torch.tensor(_exp2_list(), dtype=torch.int32)


def sigmoid_table() -> torch.Tensor:
    """Return the int32 table round(2**16 * sigmoid(-16 + j/64)), j = 0..2048 (float64 math)."""
    n = 2 * SIGMOID_DOMAIN * (1 << SIGMOID_STEP_BITS)
    x = torch.arange(n + 1, dtype=torch.float64) / (1 << SIGMOID_STEP_BITS) - SIGMOID_DOMAIN
    return torch.round(torch.sigmoid(x) * (1 << SIGMOID_FRAC_BITS)).to(torch.int32)


# -- RoPE -------------------------------------------------------------------------------------
# RoPE scalings the spec implements. Each one is a fixed change of the inverse frequencies (and,
# for YaRN, one attention factor multiplying cos and sin), so it is computed here at conversion
# and travels inside the committed rope.cos / rope.sin tables: engines never see the scaling.
# Scalings whose frequencies depend on the sequence length ("dynamic", "longrope") cannot be
# tables and are refused by name.
ROPE_SCALINGS = {
    "linear": {"factor": float},
    "llama3": {"factor": float, "low_freq_factor": float, "high_freq_factor": float,
               "original_max_position_embeddings": int},
    "yarn": {"factor": float, "original_max_position_embeddings": int, "attention_factor": float,
             "beta_fast": float, "beta_slow": float, "truncate": bool},
}
ROPE_MAX_ATTENTION_FACTOR = 2.0  # cos, sin * factor * 2**30 must stay int32 (and |cos| + |sin| < 2**32)


def check_rope_scaling(scaling: dict | None) -> None:
    """Refuse a RoPE scaling the spec does not implement, naming the type or the field.

    ``scaling`` is None (unscaled) or a dict with ``rope_type`` in `ROPE_SCALINGS` and exactly
    that type's fields, every one given (conversion resolves the checkpoint's defaults)."""
    if scaling is None:
        return
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALINGS:
        raise ValueError(f"rope_scaling: rope_type {kind!r} is not in the spec (supported: "
                         f"{', '.join(ROPE_SCALINGS)}; position-dependent scalings such as 'dynamic' cannot be tables)")
    want = ROPE_SCALINGS[kind]
    if set(scaling) != set(want) | {"rope_type"}:
        raise ValueError(f"rope_scaling ({kind}): fields must be {sorted(want)}, got {sorted(set(scaling) - {'rope_type'})}")
    for name, kind_of in want.items():
        v = scaling[name]
        ok = isinstance(v, bool) if kind_of is bool else (isinstance(v, kind_of) and not isinstance(v, bool))
        if not ok or (kind_of is not bool and not v > 0):
            raise ValueError(f"rope_scaling ({kind}): field {name!r} must be a positive {kind_of.__name__}, got {v!r}")
    if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ValueError("rope_scaling (llama3): high_freq_factor must exceed low_freq_factor")
    if kind == "yarn" and not scaling["attention_factor"] < ROPE_MAX_ATTENTION_FACTOR:
        raise ValueError(f"rope_scaling (yarn): attention_factor {scaling['attention_factor']} must be below "
                         f"{ROPE_MAX_ATTENTION_FACTOR} (the tables are int32 Q30)")


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> tuple[torch.Tensor, float]:
    """Return (inverse frequencies float64 [head_dim/2], attention factor) of a RoPE scaling.

    Unscaled: inv_freq[i] = theta**(-2i/head_dim), factor 1. ``linear``: inv_freq / factor.
    ``llama3`` (Llama 3.1): with L = original_max_position_embeddings and wavelength
    w = 2 pi / inv_freq, frequencies with w > L / low_freq_factor are divided by factor, those
    with w < L / high_freq_factor are kept, and between the two s = (L/w - low) / (high - low)
    blends them: (1 - s) inv_freq / factor + s inv_freq. ``yarn``: with r(n) = head_dim *
    ln(L / (2 pi n)) / (2 ln theta), the correction range [lo, hi] = [r(beta_fast), r(beta_slow)]
    (floored/ceiled when truncate, clipped to [0, head_dim - 1]), ramp(i) = clamp((i - lo) /
    (hi - lo), 0, 1) (hi += 0.001 when equal), inv_freq = inv_freq/factor * ramp + inv_freq *
    (1 - ramp), and the attention factor multiplies cos and sin. These are the definitions of
    Hugging Face transformers (modeling_rope_utils), evaluated in float64.
    """
    check_rope_scaling(scaling)
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is None:
        return inv, 1.0
    kind, f = scaling["rope_type"], scaling["factor"]
    if kind == "linear":
        return inv / f, 1.0
    if kind == "llama3":
        ctx, lo, hi = scaling["original_max_position_embeddings"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        wavelen = 2 * math.pi / inv
        smooth = (ctx / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * inv / f + smooth * inv
        out = torch.where(wavelen > ctx / lo, inv / f, inv)
        return torch.where((wavelen >= ctx / hi) & (wavelen <= ctx / lo), blended, out), 1.0

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(scaling["original_max_position_embeddings"] / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    lo, hi = correction_dim(scaling["beta_fast"]), correction_dim(scaling["beta_slow"])
    if scaling["truncate"]:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, head_dim - 1)
    if lo == hi:
        hi += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - lo) / (hi - lo)).clamp(0, 1)
    return inv / f * ramp + inv * (1 - ramp), float(scaling["attention_factor"])


def rope_tables(head_dim: int, theta: float, max_position: int,
                scaling: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return int32 (cos, sin) [max_position, head_dim/2]: round(2**30 * a * cos(p * inv_freq[i])),
    with (inv_freq, a) = `rope_frequencies` (float64 math; the Hugging Face Llama rotate-half
    convention pairs i with i + head_dim/2). Unscaled, inv_freq[i] = theta**(-2i/head_dim), a = 1."""
    inv_freq, attention = rope_frequencies(head_dim, theta, scaling)
    ang = torch.arange(max_position, dtype=torch.float64)[:, None] * inv_freq[None, :]
    one = float(1 << ROPE_FRAC_BITS) * attention
    return torch.round(torch.cos(ang) * one).to(torch.int32), torch.round(torch.sin(ang) * one).to(torch.int32)
