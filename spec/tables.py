"""Derivation of the lookup tables the integer forward reads (stored in every QuantizedModel).

The 2**-f table is derived with exact integer arithmetic (Python big integers), so any engine or
auditor can rebuild it bit for bit. RoPE and sigmoid tables need transcendental functions: they
are computed once here in float64 at conversion time and then travel inside the model, so no
engine ever evaluates cos, sin or exp.
"""
from __future__ import annotations

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


def rope_tables(head_dim: int, theta: float, max_position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return int32 (cos, sin) [max_position, head_dim/2]: round(2**30 * cos(p * theta**(-2i/head_dim)))
    (float64 math; the Hugging Face Llama rotate-half convention pairs i with i + head_dim/2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    ang = torch.arange(max_position, dtype=torch.float64)[:, None] * inv_freq[None, :]
    one = float(1 << ROPE_FRAC_BITS)
    return torch.round(torch.cos(ang) * one).to(torch.int32), torch.round(torch.sin(ang) * one).to(torch.int32)

