"""Exact fast forms of the reference engine's hot integer steps: speed only, never normative.

A teacher-forced replay (`auditor.teacher`) runs a whole ledger branch as one prefill, so its
time goes to elementwise integer work on [tokens, features] tensors rather than to reading
weights: the row quantization before every matmul, the requantization after it (the
``(acc * m * mul) >> s`` of `spec.quant.requantize`, with its rounding done on magnitudes in
int64, about twenty full-size passes), and a sampler that exponentiates and sorts the whole
vocabulary at every position. This module computes the same integers with fewer, cheaper passes,
in the way `spec.quant.int_matmul` already evaluates a matmul: in float64, and only where a bound
proves that every float64 operation involved is exact. Where the bound does not hold, the
spec's own function runs instead (per call, or per row where the step is row-wise), so every
result is the spec's for every input the spec accepts. The proofs are in the docstrings;
``tests/ref/test_fastint.py`` checks each form against the spec function with hypothesis,
extremes included.

The ops have the signatures of the spec functions they stand for (`spec.ops.linear`,
`spec.ops.lm_head`, `spec.attention.paged_attention`, `spec.sampling.sample`), so `fieldprint_ref.ops` can pass this module as
``kernels`` to `spec.model.forward` (the same hook the fast engine's Triton kernels use).
Set ``ENABLED = False`` to run the spec functions themselves.

Why float64 forms are exact here. A float64 holds every integer below 2**53 and every such
integer times a power of two (no underflow or overflow is within reach of these exponents);
a product of two such numbers is exact when the product of their significands is below 2**53;
division is correctly rounded (IEEE 754), so a quotient that is representable is exact and
any other is off by at most half an ulp.
"""
from __future__ import annotations

import torch

from spec import ops as spec_ops
from spec import sampling as spec_sampling
from spec.constants import ACT_MAX, FLOAT64_EXACT
from spec.quant import EXACT_VIEW, div_round, qmax, requantize, row_scale
from spec.sampling import rng_u128
from spec.tables import exp2_table

ENABLED = True  # False: every op below runs the spec function it stands for

F64 = torch.float64
SIG_LIMIT = 2**52  # the requantization product's significand must stay below this (see `requantize_f64`)


# -- exact powers of two ----------------------------------------------------------------------


def pow2(e: torch.Tensor) -> torch.Tensor:
    """Return 2**e as float64, exactly, for integer e in [-1022, 1023] (the IEEE 754 bit pattern
    with biased exponent e + 1023 and a zero fraction; no `pow` whose rounding one must trust)."""
    return ((e.to(torch.int64) + 1023) << 52).view(F64)


# -- row quantization -------------------------------------------------------------------------


def quantize_rows_f64(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return `spec.quant.quantize_rows(x, bits)` with q as float64 (the same integers).

    (m, e) come from the spec's `row_scale` of each row's absmax (taken with one `aminmax` pass).
    q = round(v) for v = x / (m * 2**e), rounded half away from zero, is computed as
    t = fl(x / d) with d = m * 2**e (exact), then sign(t) * floor(|t| + 0.5). Exact because:
    |v| <= qmax(bits) <= 2**15 and e <= 17 (e = bitlen(amax) - bitlen(qmax) + 1 - 14 with
    amax < 2**31), so a v that is not a half-integer lies at least 1 / (2 * m * 2**max(e, 0)) >=
    2**-32 from every half-integer, while t differs from v by at most 2**15 * 2**-53 = 2**-38
    and |t| + 0.5 is rounded by at most ulp(2**16) / 2 = 2**-37: neither crosses one. A v that is
    a half-integer is representable, so t = v and |t| + 0.5 (an integer below 2**16) are exact.
    Requires |x| <= ACT_MAX and 2 <= bits <= 16 (as the spec).
    """
    if x.numel() == 0 or not 2 <= bits <= 16:
        q, m, e = _spec_quantize_rows(x, bits)
        return q.to(F64), m, e
    lo, hi = torch.aminmax(x, dim=-1)
    amax = torch.maximum(hi, -lo)
    if int(amax.max()) > ACT_MAX:  # outside the spec's requirement: let the spec decide
        q, m, e = _spec_quantize_rows(x, bits)
        return q.to(F64), m, e
    m, e = row_scale(amax, bits)
    t = x.to(F64).div_((m.to(F64) * pow2(e)).unsqueeze(-1))
    return t.abs().add_(0.5).floor_().copysign_(t), m, e


def _spec_quantize_rows(x, bits):
    from spec.quant import quantize_rows

    return quantize_rows(x, bits)


# -- requantization ---------------------------------------------------------------------------


def requantize_f64(acc: torch.Tensor, m: torch.Tensor, e: torch.Tensor, mul: torch.Tensor, shift: torch.Tensor,
                   bias: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Return `spec.quant.requantize(acc, m, e, mul, shift)` (+ bias, saturated, as `spec.ops.linear`)
    as int64 (written into ``out`` when given), from exact integer accumulators ``acc`` held in
    float64 [N, O]. ``acc`` is overwritten (the work is done in place: a fresh tensor per pass
    costs more than the pass).

    The spec's value is v = acc * m * mul * 2**-s with s = shift - e, rounded half away from
    zero and saturated to ACT_MAX. Here t = (acc * (m * 2**e)) * (mul * 2**-shift) in float64:
    both factors are exact (an integer below 2**15 times a power of two), and each product is
    exact while the significand product |acc| * m * |mul| stays below 2**52, so t = v. Then
    y = sign(t) * floor(min(|t|, ACT_MAX) + 0.5): the clamp commutes with the rounding (ACT_MAX
    is an integer), and min(|t|, ACT_MAX) + 0.5 is exact (a number below 2**31 with at most 52
    significant bits, plus 2**-1, needs at most 53 bits). The spec's shift clamps s to [0, 62]
    (a negative s shifts left, saturated), so the float64 form runs only when 0 <= s <= 62 holds
    for every (row, channel); otherwise the spec runs. Rows whose max|acc| * m * max|mul|
    reaches 2**52 go through the spec's `requantize` on int64 accumulators.
    """
    shift64 = shift.to(torch.int64)
    if out is None:
        out = torch.empty(acc.shape, dtype=torch.int64, device=acc.device)
    if acc.numel() == 0 or int(shift64.min()) - int(e.max()) < 0 or int(shift64.max()) - int(e.min()) > 62:
        out.copy_(_requantize_exact(acc, m, e, mul, shift, bias))
        return out
    lo, hi = torch.aminmax(acc, dim=-1)
    mul_max = max(int(mul.max()), -int(mul.min()))
    # rounding is monotone and 2**52 is a float64, so a bound at or above 2**52 never reads as below it
    big = (torch.maximum(hi, -lo) * m.to(F64) * float(mul_max) >= SIG_LIMIT).nonzero().squeeze(-1)
    exact = _requantize_exact(acc[big], m[big], e[big], mul, shift, bias) if big.numel() else None
    t = acc.mul_((m.to(F64) * pow2(e)).unsqueeze(-1)).mul_((mul.to(F64) * pow2(-shift64)).unsqueeze(0))
    y = t.clamp_(-ACT_MAX, ACT_MAX).abs().add_(0.5).floor_().copysign_(t)
    if bias is not None:
        y.add_(bias.to(F64)).clamp_(-ACT_MAX, ACT_MAX)  # |y + bias| < 2**32: exact
    out.copy_(y)  # integers below 2**31: the conversion is exact
    if exact is not None:
        out[big] = exact
    return out


def _requantize_exact(acc, m, e, mul, shift, bias):
    """The spec's requantization (+ bias) of float64-held exact accumulators."""
    y = requantize(acc.to(torch.int64), m, e, mul, shift)
    return y if bias is None else y.add(bias.to(torch.int64)).clamp(-ACT_MAX, ACT_MAX)


# -- linear layers ----------------------------------------------------------------------------


def _weight_absmax(w: torch.Tensor) -> int:
    """Return max|w| (the engine's cached ExactView's when w carries one)."""
    view = getattr(w, EXACT_VIEW, None)
    if view is not None:
        return view.absmax
    return max(int(w.max()), -int(w.min())) if w.numel() else 0


def _weight_block(w: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Return rows lo..hi-1 of w as float64: a slice of the engine's cached ExactView when w
    carries one, else converted now (a block in cache, cheaper than a fresh float64 copy of the
    whole weight when many rows share it)."""
    view = getattr(w, EXACT_VIEW, None)
    return view.float64[lo:hi] if view is not None else w[lo:hi].to(F64)


BLOCK_ELEMS = 2**18  # float64 accumulators per block of output channels (2 MiB: stays in cache)
WEIGHT_BLOCK_ELEMS = 2**20  # weights per block when they are converted to float64 here (8 MiB)
MIN_ROWS = 16  # fewer rows (a decode step) run the spec: a matrix-vector product is bound by reading
# the weights, and the blocks' per-call overhead costs more than the elementwise passes it saves


def linear(x: torch.Tensor, act_bits: int, weight: torch.Tensor, mul: torch.Tensor, shift: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Return `spec.ops.linear(x, act_bits, weight, mul, shift, bias)`: `quantize_rows_f64`, a
    float64 matmul (exact: every partial sum is at most K * qmax(act_bits) * max|w| < 2**53,
    checked, as `spec.quant.int_matmul` does), `requantize_f64` on the float64 accumulators.
    Output channels go in blocks of about BLOCK_ELEMS accumulators, so the requantization's
    passes run over a block in cache instead of streaming [N, O] tensors (an LM head's are
    tens of MB) through memory once per pass. Falls back to the spec when the matmul bound or
    FLOAT64_MATMUL does not hold, and for fewer than MIN_ROWS rows."""
    from spec import quant

    n, k = x.shape if x.dim() == 2 else (0, 0)
    if not ENABLED or not quant.FLOAT64_MATMUL or n < max(1, MIN_ROWS) or k == 0:
        return spec_ops.linear(x, act_bits, weight, mul, shift, bias)
    if k * qmax(act_bits) * _weight_absmax(weight) >= FLOAT64_EXACT:
        return spec_ops.linear(x, act_bits, weight, mul, shift, bias)
    q, m, e = quantize_rows_f64(x, act_bits)
    o = weight.shape[0]
    out = torch.empty((n, o), dtype=torch.int64, device=x.device)
    step = max(16, min(BLOCK_ELEMS // n, WEIGHT_BLOCK_ELEMS // k))
    for lo in range(0, o, step):
        hi = min(o, lo + step)
        requantize_f64(q @ _weight_block(weight, lo, hi).T, m, e, mul[lo:hi], shift[lo:hi],
                       None if bias is None else bias[lo:hi], out=out[:, lo:hi])
    return out


def lm_head(x: torch.Tensor, act_bits: int, weight: torch.Tensor, mul: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Return `spec.ops.lm_head`: a `linear` with no bias."""
    return linear(x, act_bits, weight, mul, shift)


# -- attention --------------------------------------------------------------------------------

QUERY_BLOCK = 64  # queries per call of the spec's attention in a long chunk


def paged_attention(q: torch.Tensor, pool, layer: int, block_table: torch.Tensor, start: int, anchors,
                    window: int | None, q_bits: int, prob_bits: int, exp_table: torch.Tensor) -> torch.Tensor:
    """Return `spec.attention.paged_attention` of a chunk of queries, computed by the spec itself
    on blocks of QUERY_BLOCK consecutive queries.

    The spec scores every query of a chunk against every key the chunk can see, and masks the
    causal half: for a long prefill, half the scores, exponentials and weights it computes are
    discarded. Each query's output depends only on that query and the keys it sees (the maxima
    and sums are per query row), and the chunk's K/V is already written, so the block of queries
    start + i .. start + i + b - 1 gives, over only the keys up to start + i + b, the same rows.
    The blocks read the chunk's visible range in order (the first block from the chunk's first
    visible token, the last one to its end), and the range is checked first as the spec checks
    it, so a chunk the spec refuses is refused with the same error. About half the work for
    T >> QUERY_BLOCK; the spec's numerics, whatever their version, are the spec's own.
    """
    from spec.attention import MAX_KEYS, _slots
    from spec.attention import paged_attention as spec_attention

    t = q.shape[0]
    if not ENABLED or t <= QUERY_BLOCK:
        return spec_attention(q, pool, layer, block_table, start, anchors, window, q_bits, prob_bits, exp_table)
    lo = 0 if window is None else max(0, start - window + 1)
    a = 0 if anchors is None else anchors.length
    dev = pool.data.device
    _slots(block_table, torch.arange(lo, start + t, device=dev))
    if a:
        _slots(anchors.block_table, torch.arange(0, a, device=dev))
    if a + start + t - lo >= MAX_KEYS:
        raise ValueError(f"attention over {a + start + t - lo} keys: at most {MAX_KEYS - 1} (Z < 2**48)")
    return torch.cat([spec_attention(q[i:i + QUERY_BLOCK], pool, layer, block_table, start + i, anchors, window,
                                     q_bits, prob_bits, exp_table) for i in range(0, t, QUERY_BLOCK)])


# -- sampling ---------------------------------------------------------------------------------


def sample(logits: torch.Tensor, params, sequence: int, step: int, attempt: int) -> int:
    """Return `spec.sampling.sample(logits, params, sequence, step, attempt)`.

    With top_k = k below the vocabulary, the spec weighs every token and sorts the vocabulary,
    then zeroes all but k weights. Only the k survivors matter, so here they are found with one
    `topk` (kth largest logit L: every token above L, then the lowest ids equal to L until k, which
    is the spec's order: logit descending, id ascending), and only their weights are computed.
    The weights need max z over the whole vocabulary: z = div_round(l * b, a) is non-decreasing
    in l, so it is the z of the largest logit, which survives. top_p then ranks the survivors by
    (weight descending, id ascending), as the spec's stable sort does, and the draw walks the
    survivors in ascending id order (the spec's cumulative sum over the vocabulary only rises at
    tokens with a non-zero weight, all of them survivors). Every other case runs the spec.
    """
    v, k = logits.numel(), params.top_k
    if not ENABLED or params.temperature == 0 or k is None or k >= v or logits.dim() != 1:
        return spec_sampling.sample(logits, params, sequence, step, attempt)
    ids = _top_k_ids(logits.to(torch.int64), k)  # ascending
    lk = logits[ids].to(torch.int64)
    t = params.temperature
    z = div_round(lk * t.denominator, torch.tensor(t.numerator, device=lk.device))
    w = spec_ops.exp_neg(z.max() - z, exp2_table().to(lk.device))
    if params.top_p is not None and params.top_p < 1:
        order = torch.sort(-w, stable=True).indices
        run = torch.cumsum(w[order], 0)
        need = -(-params.top_p.numerator * int(run[-1]) // params.top_p.denominator)
        cut = int(torch.nonzero(run >= need)[0, 0]) + 1
        keep = torch.zeros_like(w, dtype=torch.bool)
        keep[order[:cut]] = True
        w = torch.where(keep, w, 0)
    total = int(w.sum())
    r = (rng_u128(params.seed, sequence, step, attempt) * total) >> 128
    return int(ids[int(torch.nonzero(torch.cumsum(w, 0) > r)[0, 0])])


def _top_k_ids(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Return, in ascending order, the ids of the k tokens ranked first by (logit descending, id
    ascending). Requires 1 <= k < logits.numel()."""
    kth = torch.topk(logits, k).values[-1]
    above = torch.nonzero(logits > kth).squeeze(-1)
    ties = torch.nonzero(logits == kth).squeeze(-1)[: k - above.numel()]
    return torch.sort(torch.cat([above, ties])).values
