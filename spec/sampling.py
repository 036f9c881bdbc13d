"""Deterministic sampling over integer logits with a counter-based BLAKE3 RNG.

Logits are int64 Q16 (spec.model.forward). Sampling uses only integer arithmetic:

1. temperature 0 (greedy): the largest logit; ties go to the lowest token id.
2. otherwise, with T = a/b: z_i = round(l_i * b / a) (`spec.quant.div_round`), weights
   w_i = exp_neg(max z - z_i) in [0, 2**30] (`spec.ops.exp_neg`, the softmax numerators).
3. top_k: keep the k tokens ranked first by (z descending, id ascending).
4. top_p = c/d: rank kept tokens by (w descending, id ascending) and keep the shortest prefix whose
   weight sum S satisfies S * d >= c * W (W = sum of kept weights).
5. draw r = floor(u * W' / 2**128) with u the first 16 bytes of the RNG output read as an unsigned
   little-endian integer and W' the sum of kept weights; return the first kept token, in ascending
   id order, whose running weight sum exceeds r.

RNG counter: u = BLAKE3(SAMPLE_DOMAIN || seed || sequence || step || attempt), each of the four
an unsigned 64-bit little-endian integer (so a counter has exactly one encoding).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import blake3
import torch

from spec.constants import SAMPLE_DOMAIN
from spec.ops import exp_neg
from spec.quant import div_round
from spec.tables import exp2_table

U64 = 1 << 64


def _rational(x) -> Fraction:
    """Return x as an exact Fraction; floats go through their shortest decimal text (repr)."""
    return Fraction(repr(x)) if isinstance(x, float) else Fraction(x)


@dataclass(frozen=True)
class SamplingParams:
    """temperature and top_p are exact rationals with numerator and denominator <= 2**16 (Fraction;
    ints, decimal strings such as "0.7" and floats are converted through their decimal text);
    temperature 0 = greedy; top_p None = off; top_k None = off; seed in [0, 2**64)."""

    temperature: Fraction | int | str | float = 0
    top_k: int | None = None
    top_p: Fraction | int | str | float | None = None
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "temperature", _rational(self.temperature))
        if self.top_p is not None:
            object.__setattr__(self, "top_p", _rational(self.top_p))
        for f in (self.temperature, self.top_p or 1):
            if f.numerator > 1 << 16 or f.denominator > 1 << 16:
                raise ValueError("temperature and top_p numerators and denominators must be <= 2**16")
        if self.temperature < 0 or (self.top_p is not None and not 0 < self.top_p <= 1):
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        if (self.top_k is not None and self.top_k < 1) or not 0 <= self.seed < U64:
            raise ValueError("top_k must be >= 1 and seed in [0, 2**64)")

    def to_dict(self) -> dict:
        """Return the canonical JSON form: rationals as "a/b" strings."""
        rat = lambda f: None if f is None else f"{f.numerator}/{f.denominator}"  # noqa: E731
        return {"temperature": rat(self.temperature), "top_k": self.top_k, "top_p": rat(self.top_p), "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict) -> "SamplingParams":
        return cls(**d)


def rng_u128(seed: int, sequence: int, step: int, attempt: int) -> int:
    """Return the counter-based random integer u in [0, 2**128) for (seed, sequence, step, attempt)."""
    for v in (seed, sequence, step, attempt):
        if not 0 <= v < U64:
            raise ValueError("RNG counter fields must be in [0, 2**64)")
    msg = SAMPLE_DOMAIN + b"".join(v.to_bytes(8, "little") for v in (seed, sequence, step, attempt))
    return int.from_bytes(blake3.blake3(msg).digest()[:16], "little")


def greedy(logits: torch.Tensor) -> int:
    """Return the id of the largest logit, the lowest id among ties."""
    return int(torch.nonzero(logits == logits.max())[0, 0])


def weights(logits: torch.Tensor, temperature: Fraction) -> torch.Tensor:
    """Return int64 weights round(2**30 * exp((z_i - max z) / 2**16)) of z = logits / temperature."""
    z = div_round(logits.to(torch.int64) * temperature.denominator, torch.tensor(temperature.numerator, device=logits.device))
    return exp_neg(z.max() - z, exp2_table())


def keep_mask(logits: torch.Tensor, w: torch.Tensor, top_k: int | None, top_p: Fraction | None) -> torch.Tensor:
    """Return the bool mask of tokens that survive top_k, then top_p (rules 3 and 4).
    A stable ascending sort of the negated key keeps equal keys in ascending id order."""
    keep = torch.ones_like(logits, dtype=torch.bool)
    if top_k is not None and top_k < logits.numel():
        order = torch.sort(-logits.to(torch.int64), stable=True).indices
        keep = torch.zeros_like(keep)
        keep[order[:top_k]] = True
    if top_p is not None and top_p < 1:
        order = torch.sort(-torch.where(keep, w, -1), stable=True).indices[: int(keep.sum())]
        run = torch.cumsum(w[order], 0)  # <= vocab * 2**30 < 2**63
        need = -(-top_p.numerator * int(run[-1]) // top_p.denominator)  # ceil(c W / d), exact Python int
        cut = int(torch.nonzero(run >= need)[0, 0]) + 1  # S >= ceil(cW/d)  <=>  S d >= c W
        keep = torch.zeros_like(keep)
        keep[order[:cut]] = True
    return keep


def sample(logits: torch.Tensor, params: SamplingParams, sequence: int, step: int, attempt: int) -> int:
    """Return the token drawn from int64 logits [vocab] (Q16) for this (sequence, step, attempt)."""
    if params.temperature == 0:
        return greedy(logits)
    w = weights(logits, params.temperature)
    w = torch.where(keep_mask(logits, w, params.top_k, params.top_p), w, 0)
    total = int(w.sum())  # >= 2**30 unless top_k/top_p removed the maximum, which they never do
    r = (rng_u128(params.seed, sequence, step, attempt) * total) >> 128
    return int(torch.nonzero(torch.cumsum(w, 0) > r)[0, 0])
