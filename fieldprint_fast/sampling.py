"""`spec.sampling.sample` for a batch of logits rows, on their device, with no value read back.

The spec samples one row at a time and reads scalars back to Python (the top-p threshold, the
cut, the total weight, the 128-bit draw). Here every row of a batch is sampled at once with
fixed-shape tensor ops, so the step can run inside a CUDA graph:

* per-row parameters are tensors (``SamplingRows``): temperature ``a/b``, ``top_k`` (the
  vocabulary size when off), ``top_p = c/d`` (``1/1`` when off), and the RNG draw ``u``, which
  the host computes ahead (BLAKE3 of the counter, `spec.sampling.rng_u128`: it depends on no
  value of the step) and passes as eight 16-bit limbs;
* rule 3 (top_k) and rule 4 (top_p) become ranks: a stable sort along the row, a mask of the
  first k (or first ``cut``) ranks scattered back to token order; ``cut`` is the number of
  running sums below ``ceil(c W / d)``, plus one (running sums never decrease);
* ``ceil(c W / d)`` is computed as ``c (W // d) + ceil(c (W % d) / d)``: no product reaches
  ``2**63`` (W < 2**47 for any vocabulary below 2**17);
* rule 5's ``floor(u W' / 2**128)`` is a schoolbook product of 16-bit limbs (columns below
  2**34, int64 carries), its limbs from the eighth up;
* the token is the number of running sums ``<= r`` (the first token whose sum exceeds ``r``).

Greedy rows take the largest logit, lowest id among ties (one Triton launch on the GPU,
`fieldprint_fast.kernels.argmax`). Equal to the spec row by row
(tests/fast/test_sampling_device.py, hypothesis).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from spec.ops import exp_neg
from spec.quant import div_round
from spec.sampling import rng_u128

LIMB_BITS = 16
U_LIMBS = 128 // LIMB_BITS  # (= 8) limbs of the 128-bit draw
MASK = (1 << LIMB_BITS) - 1


@dataclass
class SamplingRows:
    """Per-row sampling parameters as int64 tensors [B] (``u``: [B, 8] 16-bit limbs)."""

    greedy: torch.Tensor  # bool
    temp_num: torch.Tensor
    temp_den: torch.Tensor
    top_k: torch.Tensor
    top_p_num: torch.Tensor
    top_p_den: torch.Tensor
    u: torch.Tensor

    FIELDS = 6 + U_LIMBS

    @staticmethod
    def host_row(params, vocab: int, sequence: int, step: int, attempt: int) -> list[int]:
        """Return one row's parameters as FIELDS integers (the layout of `from_tensor`)."""
        if params.temperature == 0:
            return [1, 1, 1, vocab, 1, 1] + [0] * U_LIMBS
        t, p = params.temperature, params.top_p
        k = vocab if params.top_k is None else min(int(params.top_k), vocab)
        c, d = (1, 1) if p is None else (p.numerator, p.denominator)
        u = rng_u128(params.seed, sequence, step, attempt)
        return [0, t.numerator, t.denominator, k, c, d] + [(u >> (LIMB_BITS * i)) & MASK for i in range(U_LIMBS)]

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "SamplingRows":
        """View an int64 [B, FIELDS] tensor of `host_row` rows as SamplingRows."""
        return cls(greedy=t[:, 0] != 0, temp_num=t[:, 1], temp_den=t[:, 2], top_k=t[:, 3], top_p_num=t[:, 4],
                   top_p_den=t[:, 5], u=t[:, 6:])


def greedy_rows(logits: torch.Tensor, kernel: bool | None = None) -> torch.Tensor:
    """Return the id of each row's largest logit, the lowest id among ties (int64 [B]).
    ``kernel`` (default: on CUDA, or the CPU under TRITON_INTERPRET=1): one Triton launch
    (`fieldprint_fast.kernels.argmax.greedy`) instead of torch's two reductions."""
    if kernel is None:
        from fieldprint_fast.loop import use_kernels  # (loop imports this module)

        kernel = use_kernels(logits.device)
    if kernel and logits.dtype == torch.int64 and logits.shape[0] > 0:
        from fieldprint_fast.kernels.argmax import greedy

        return greedy(logits.contiguous())
    ids = torch.arange(logits.shape[1], device=logits.device)
    top = logits.amax(dim=1, keepdim=True)
    return torch.where(logits == top, ids, logits.shape[1]).amin(dim=1)


def _rank_mask(keys: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Return the bool mask [B, V] of the ``count[b]`` first tokens of each row in ascending
    stable order of ``keys`` (equal keys: lower id first)."""
    order = torch.sort(keys, dim=1, stable=True).indices
    ranks = torch.arange(keys.shape[1], device=keys.device)[None, :] < count[:, None]
    return torch.zeros_like(ranks).scatter(1, order, ranks)


def _ceil_frac(c: torch.Tensor, w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Return ceil(c * w / d) exactly for c, d <= 2**16, 0 <= w < 2**47."""
    q, r = torch.div(w, d, rounding_mode="floor"), torch.remainder(w, d)
    return c * q + torch.div(c * r + d - 1, d, rounding_mode="floor")


def _draw(u: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Return floor(u * total / 2**128) for u as 16-bit limbs [B, 8] and 0 <= total < 2**48."""
    t = [(total >> (LIMB_BITS * j)) & MASK for j in range(3)]
    cols = [torch.zeros_like(total) for _ in range(U_LIMBS + 3)]
    for i in range(U_LIMBS):
        for j in range(3):
            cols[i + j] = cols[i + j] + u[:, i] * t[j]  # < 3 * 2**32 per column
    carry, digits = torch.zeros_like(total), []
    for k in range(U_LIMBS + 3):
        v = cols[k] + carry
        digits.append(v & MASK)
        carry = v >> LIMB_BITS
    r = carry  # above the last column
    for k in range(U_LIMBS + 2, U_LIMBS - 1, -1):
        r = (r << LIMB_BITS) | digits[k]
    return r


def sample_rows(logits: torch.Tensor, rows: SamplingRows, exp_table: torch.Tensor) -> torch.Tensor:
    """Return the token of every row of int64 logits [B, V]: `spec.sampling.sample` of each."""
    lg = logits.to(torch.int64)
    v = lg.shape[1]
    z = div_round(lg * rows.temp_den[:, None], rows.temp_num[:, None])
    w = exp_neg(z.amax(dim=1, keepdim=True) - z, exp_table)
    keep = _rank_mask(-lg, rows.top_k)  # rule 3: top_k by (logit descending, id ascending)
    # rule 4: top_p over the kept tokens ranked by (w descending, id ascending)
    order = torch.sort(-torch.where(keep, w, -1), dim=1, stable=True).indices
    run = torch.cumsum(torch.gather(torch.where(keep, w, 0), 1, order), dim=1)
    need = _ceil_frac(rows.top_p_num, run[:, -1], rows.top_p_den)
    cut = (run < need[:, None]).sum(dim=1) + 1
    ranks = torch.arange(v, device=lg.device)[None, :] < cut[:, None]
    nucleus = torch.zeros_like(ranks).scatter(1, order, ranks)
    keep = torch.where((rows.top_p_num < rows.top_p_den)[:, None], nucleus, keep)
    w = torch.where(keep, w, 0)
    # rule 5: r = floor(u W' / 2**128); the first token whose running sum exceeds r
    r = _draw(rows.u, w.sum(dim=1))
    drawn = (torch.cumsum(w, dim=1) <= r[:, None]).sum(dim=1)
    return torch.where(rows.greedy, greedy_rows(lg), drawn)
