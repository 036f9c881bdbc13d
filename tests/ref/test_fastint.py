"""`fieldprint_ref.fastint`: every fast form returns the spec function's integers, extremes included.

Each form is compared with `torch.equal` against the spec function it stands for, on hypothesis
inputs that reach the edges of its proof: |x| = ACT_MAX, exact rounding ties, accumulators whose
significand product crosses 2**52 (the per-row fallback), shifts outside [0, 62] (the per-call
fallback), int8 -128 and int16 -32768 weights, blocks of one column, ties among logits at the
top-k boundary. A form that silently always fell back would pass those comparisons, so the
fallbacks are also counted: typical inputs must take the fast path.
"""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fieldprint_ref import fastint
from fieldprint_ref import ops as ref_ops
from fieldprint_ref.weights import exact_view
from spec import ops as spec_ops
from spec import quant
from spec.attention import KVPool
from spec.attention import paged_attention as spec_attention
from spec.constants import ACT_MAX
from spec.model import AnchorRef, SequenceChunk
from spec.model import forward as spec_forward
from spec.sampling import SamplingParams
from spec.sampling import sample as spec_sample

MANY = max(20, settings.default.max_examples)
FEW = max(5, settings.default.max_examples // 4)


def _mismatch(a: torch.Tensor, b: torch.Tensor) -> str:
    bad = (a != b).nonzero()
    return f"{len(bad)} mismatches, first at {bad[0].tolist() if len(bad) else None}"


def _ints(g: torch.Generator, shape, lo: int, hi: int) -> torch.Tensor:
    return torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int64)


# -- pow2 ----------------------------------------------------------------------------------------


def test_pow2_is_exact_over_its_range():
    e = torch.arange(-1022, 1024)
    want = torch.tensor([2.0**int(k) for k in e], dtype=torch.float64)
    assert torch.equal(fastint.pow2(e), want)


# -- quantize_rows ---------------------------------------------------------------------------------


@st.composite
def act_rows(draw):
    """Rows of Q16 activations: random magnitudes (each row its own scale), the extremes, and
    values placed exactly on rounding ties of the row's own scale."""
    bits = draw(st.integers(2, 16))
    n, k = draw(st.integers(1, 4)), draw(st.integers(1, 24))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    top = torch.tensor([draw(st.sampled_from([1, 2, 3, 255, 2**16, 2**24 - 1, 2**24, ACT_MAX]))
                        for _ in range(n)])
    x = (torch.rand((n, k), generator=g, dtype=torch.float64) * 2 - 1).mul(top[:, None]).round().to(torch.int64)
    x[:, 0] = top * torch.where(_ints(g, (n,), 0, 1) == 1, 1, -1)  # the row's absmax, either sign
    if draw(st.booleans()):  # ties: x = (j + 1/2) * m * 2**e where that is an integer
        m, e = quant.row_scale(top, bits)
        j = _ints(g, (n, k), -quant.qmax(bits), quant.qmax(bits) - 1)
        num = (2 * j + 1) * m[:, None]
        sh = (e - 1)[:, None].expand(n, k)
        tie = torch.where(sh >= 0, num << sh.clamp(min=0), num >> (-sh).clamp(min=0))
        exact = (sh >= 0) | (num % (1 << (-sh).clamp(min=0, max=62)) == 0)
        ok = exact & (tie.abs() <= top[:, None])
        ok[:, 0] = False
        x = torch.where(ok, tie, x)
    if draw(st.booleans()):
        x[-1] = 0  # an all-zero row
    return x, bits


@settings(max_examples=MANY)
@given(act_rows())
@example((torch.tensor([[ACT_MAX, -ACT_MAX, 0, 1, -1]]), 16))
@example((torch.tensor([[ACT_MAX, -ACT_MAX, ACT_MAX // 2]]), 2))
def test_quantize_rows_f64_equals_spec(rows):
    x, bits = rows
    q, m, e = fastint.quantize_rows_f64(x, bits)
    q0, m0, e0 = quant.quantize_rows(x, bits)
    assert q.dtype == torch.float64 and torch.equal(m, m0) and torch.equal(e, e0)
    assert torch.equal(q.to(torch.int64), q0), _mismatch(q.to(torch.int64), q0)


# -- requantize ------------------------------------------------------------------------------------


@st.composite
def accumulators(draw):
    """Exact accumulators with row scales and channel multipliers as the profiles make them, some
    rows large enough that |acc| * m * mul crosses 2**52, and shifts that may leave [0, 62]."""
    n, o = draw(st.integers(1, 5)), draw(st.integers(1, 12))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    big = draw(st.sampled_from([2**10, 2**24, 2**30, 2**33]))
    acc = _ints(g, (n, o), -big, big)
    acc[0, 0] = draw(st.sampled_from([big, -big, 0]))
    m = _ints(g, (n,), 2**12 + 1, 2**14)
    mul = _ints(g, (o,), 2**12, 2**13 - 1).to(torch.int32)
    e = _ints(g, (n,), -30, 17)
    lo = draw(st.sampled_from([-2, 0, 30]))  # shift - e may then fall outside [0, 62]
    shift = (e.max() + _ints(g, (o,), lo, lo + 30)).to(torch.int32)
    bias = _ints(g, (o,), -2**31 + 1, 2**31 - 1).to(torch.int32) if draw(st.booleans()) else None
    return acc, m, e, mul, shift, bias


def _spec_requantize(acc, m, e, mul, shift, bias):
    y = quant.requantize(acc, m, e, mul, shift)
    return y if bias is None else quant.saturate(y + bias.to(torch.int64))


@settings(max_examples=MANY)
@given(accumulators())
def test_requantize_f64_equals_spec(args):
    acc, m, e, mul, shift, bias = args
    want = _spec_requantize(acc, m, e, mul, shift, bias)
    got = fastint.requantize_f64(acc.to(torch.float64), m, e, mul, shift, bias)
    assert got.dtype == torch.int64 and torch.equal(got, want), _mismatch(got, want)


def test_requantize_f64_takes_the_fast_path_and_falls_back_per_row(monkeypatch):
    """Typical accumulators never reach the spec; a row past the 2**52 bound alone does."""
    calls = []
    exact = fastint._requantize_exact
    monkeypatch.setattr(fastint, "_requantize_exact", lambda acc, *a: calls.append(acc.shape[0]) or exact(acc, *a))
    g = torch.Generator().manual_seed(7)
    acc = _ints(g, (6, 40), -2**22, 2**22)
    m, e = _ints(g, (6,), 2**12 + 1, 2**14), _ints(g, (6,), -20, -10)
    mul, shift = _ints(g, (40,), 2**12, 2**13 - 1).to(torch.int32), _ints(g, (40,), 20, 30).to(torch.int32)
    assert torch.equal(fastint.requantize_f64(acc.double(), m, e, mul, shift), quant.requantize(acc, m, e, mul, shift))
    assert calls == []
    acc[3, 5] = 2**33  # 2**33 * 2**12 * 2**12 = 2**57 > 2**52
    assert torch.equal(fastint.requantize_f64(acc.double(), m, e, mul, shift), quant.requantize(acc, m, e, mul, shift))
    assert calls == [1]


# -- linear ----------------------------------------------------------------------------------------


@st.composite
def linears(draw):
    n, k, o = draw(st.integers(1, 6)), draw(st.integers(1, 40)), draw(st.integers(1, 20))
    dtype = draw(st.sampled_from([torch.int8, torch.int16]))
    bits = draw(st.integers(2, 16))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    info = torch.iinfo(dtype)
    wmax = draw(st.sampled_from([info.max, 2**9 - 1 if dtype == torch.int16 else 127]))
    w = _ints(g, (o, k), -wmax, wmax).to(dtype)
    if draw(st.booleans()):
        w[0, 0] = info.min
    top = draw(st.sampled_from([2**16, 2**24, ACT_MAX]))
    x = _ints(g, (n, k), -top, top)
    mul = _ints(g, (o,), 2**12, 2**13 - 1).to(torch.int32)
    shift = _ints(g, (o,), 24, 40).to(torch.int32)
    bias = _ints(g, (o,), -2**31 + 1, 2**31 - 1).to(torch.int32) if draw(st.booleans()) else None
    return x, bits, w, mul, shift, bias, draw(st.booleans()), draw(st.sampled_from([1, 3, 2**18]))


@settings(max_examples=MANY)
@given(linears())
def test_linear_equals_spec(args):
    x, bits, w, mul, shift, bias, view, block = args
    if view:
        w = w.detach()
        setattr(w, quant.EXACT_VIEW, exact_view(w))
    want = spec_ops.linear(x, bits, w, mul, shift, bias)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastint, "MIN_ROWS", 1)  # every row count takes the fast path
        mp.setattr(fastint, "BLOCK_ELEMS", block)  # 1 and 3: blocks of 16 channels, many per call
        got = fastint.linear(x, bits, w, mul, shift, bias)
    assert torch.equal(got, want), _mismatch(got, want)


def test_linear_falls_back_when_float64_is_off_or_unsafe(monkeypatch):
    calls = []
    monkeypatch.setattr(fastint, "spec_ops", type("S", (), {"linear": lambda *a: calls.append(1) or spec_ops.linear(*a)}))
    g = torch.Generator().manual_seed(3)
    x, w = _ints(g, (fastint.MIN_ROWS, 8), -2**20, 2**20), _ints(g, (5, 8), -127, 127).to(torch.int8)
    mul, shift = _ints(g, (5,), 2**12, 2**13 - 1).to(torch.int32), _ints(g, (5,), 24, 30).to(torch.int32)
    want = spec_ops.linear(x, 12, w, mul, shift)
    assert torch.equal(fastint.linear(x, 12, w, mul, shift), want) and calls == []  # the fast path ran
    monkeypatch.setattr(quant, "FLOAT64_MATMUL", False)  # integer-only forward: the spec runs
    assert torch.equal(fastint.linear(x, 12, w, mul, shift), want) and calls == [1]
    monkeypatch.setattr(quant, "FLOAT64_MATMUL", True)
    # a weight whose max|w| makes K * qmax * max|w| reach 2**53 (claimed by its view: a real one
    # would need K ~ 2**23): the spec runs
    w = w.detach()
    setattr(w, quant.EXACT_VIEW, quant.ExactView(absmax=2**50, float64=w.double()))
    assert torch.equal(fastint.linear(x, 12, w, mul, shift), want) and calls == [1, 1]
    assert torch.equal(fastint.linear(x[:1], 12, w, mul, shift), want[:1]) and calls == [1, 1, 1]  # a decode row


# -- attention ---------------------------------------------------------------------------------------


@settings(max_examples=FEW)
@given(t=st.integers(1, 23), start=st.integers(0, 20), anchors=st.integers(0, 5),
       window=st.one_of(st.none(), st.integers(1, 30)), block=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_paged_attention_in_query_blocks_equals_spec(model, t, start, anchors, window, block, seed):
    """Random K/V bytes in the pool (any int8 row with a valid scale is a page row)."""
    c, p = model.config, model.profile
    g = torch.Generator().manual_seed(seed)
    pool = KVPool.allocate(c, p, 6)
    rows = _ints(g, (6, c.num_layers, 2, 16, c.num_kv_heads, c.head_dim), -127, 127)
    pool.data[..., :c.head_dim] = rows.to(torch.int8)
    m = _ints(g, (6, c.num_layers, 2, 16, c.num_kv_heads), 2**12 + 1, 2**14)
    pool.data[..., c.head_dim] = ((m & 255) - (((m & 255) >> 7) << 8)).to(torch.int8)
    pool.data[..., c.head_dim + 1] = (m >> 8).to(torch.int8)
    pool.data[..., c.head_dim + 2] = _ints(g, m.shape, -20, -8).to(torch.int8)
    table = torch.tensor([1, 2, 3, 4, 5])[: -(-(start + t) // 16)]
    if window is not None and start - window + 1 >= 16:
        table[0] = -1  # a block before the window, evicted
    anc = AnchorRef(block_table=torch.tensor([0]), length=anchors) if anchors else None
    q = _ints(g, (t, c.num_heads, c.head_dim), -2**20, 2**20)
    args = (pool, 1, table, start, anc, window, p.q_bits, p.prob_bits, model.tensors["exp2.table"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastint, "QUERY_BLOCK", block)
        got = fastint.paged_attention(q, *args)
    assert torch.equal(got, spec_attention(q, *args))


def test_paged_attention_refuses_what_the_spec_refuses(model, monkeypatch):
    monkeypatch.setattr(fastint, "QUERY_BLOCK", 2)
    c, p = model.config, model.profile
    pool = KVPool.allocate(c, p, 4)
    q = torch.ones((6, c.num_heads, c.head_dim), dtype=torch.int64) << 16
    for table in (torch.tensor([0, -1]), torch.tensor([0])):  # an evicted visible block; a short table
        args = (pool, 0, table, 12, None, None, p.q_bits, p.prob_bits, model.tensors["exp2.table"])
        with pytest.raises(ValueError) as want:
            spec_attention(q, *args)
        with pytest.raises(ValueError) as got:
            fastint.paged_attention(q, *args)
        assert str(got.value) == str(want.value)


# -- the whole forward ------------------------------------------------------------------------------


@settings(max_examples=max(3, FEW // 2))
@given(lens=st.lists(st.integers(1, 40), min_size=1, max_size=2), anchors=st.integers(0, 9),
       window=st.one_of(st.none(), st.integers(3, 30)), seed=st.integers(0, 2**32 - 1))
def test_ref_forward_equals_spec_forward(model, lens, anchors, window, seed):
    """`fieldprint_ref.ops.forward` (fastint's linear, lm_head, attention) against `spec.model.forward`:
    logits and every byte of the pool, for one or two chunks, with anchors and a window."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    pools = [KVPool.allocate(c, model.profile, 10) for _ in range(2)]
    anc = None
    if anchors:
        a_chunk = SequenceChunk(tokens=_ints(g, (anchors,), 0, c.vocab_size - 1), start=0, block_table=torch.tensor([9]))
        for pool in pools:
            spec_forward(model, pool, [a_chunk])
        anc = AnchorRef(block_table=torch.tensor([9]), length=anchors)
    chunks = [SequenceChunk(tokens=_ints(g, (n,), 0, c.vocab_size - 1), start=0,
                            block_table=torch.tensor([3 * i, 3 * i + 1, 3 * i + 2]), anchors=anc, window=window)
              for i, n in enumerate(lens)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastint, "QUERY_BLOCK", 8)
        got = ref_ops.forward(model, pools[0], chunks)
    want = spec_forward(model, pools[1], chunks)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert torch.equal(pools[0].data, pools[1].data)


# -- sampling ----------------------------------------------------------------------------------------


@st.composite
def sampling_cases(draw):
    v = draw(st.integers(1, 300))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from([3, 2**16, 2**24, ACT_MAX]))  # 3: many ties, also at the top-k boundary
    logits = _ints(g, (v,), -spread, spread)
    if draw(st.booleans()):
        logits[_ints(g, (min(v, 5),), 0, v - 1)] = int(logits.max())  # ties at the top
    temperature = draw(st.sampled_from([Fraction(0), Fraction(1, 3), Fraction(7, 10), Fraction(1), Fraction(5, 2)]))
    top_k = draw(st.one_of(st.none(), st.integers(1, v + 2)))
    top_p = draw(st.sampled_from([None, Fraction(1, 10), Fraction(9, 10), Fraction(1)]))
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=draw(st.integers(0, 2**64 - 1)))
    return logits, params, draw(st.integers(0, 3)), draw(st.integers(0, 10**6)), draw(st.integers(0, 3))


@settings(max_examples=MANY)
@given(sampling_cases())
def test_sample_equals_spec(case):
    logits, params, sequence, step, attempt = case
    assert fastint.sample(logits, params, sequence, step, attempt) == spec_sample(logits, params, sequence, step, attempt)


def test_sample_takes_the_top_k_path(monkeypatch):
    calls = []
    monkeypatch.setattr(fastint, "spec_sampling", type("S", (), {"sample": lambda *a: calls.append(1)}))
    logits = torch.arange(1000, dtype=torch.int64) * 1000 % 77777
    for step in range(5):
        fastint.sample(logits, SamplingParams(temperature="0.7", top_k=40, seed=1), 0, step, 0)
    assert calls == []
