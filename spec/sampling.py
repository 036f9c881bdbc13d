"""Deterministic sampling over integer logits with a counter-based BLAKE3 RNG."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch


@dataclass(frozen=True)
class SamplingParams:
    """temperature and top_p are exact rationals (Fraction; ints, decimal strings and floats are
    converted through their decimal text); temperature 0 = greedy; top_p None or 1 = off."""

    temperature: Fraction | int | str | float = 0
    top_k: int | None = None
    top_p: Fraction | int | str | float | None = None
    seed: int = 0


def sample(logits: torch.Tensor, params: SamplingParams, sequence: int, step: int, attempt: int) -> int:
    """Return the token drawn from int64 logits [vocab] (Q16) for this (sequence, step, attempt)."""
    raise NotImplementedError
