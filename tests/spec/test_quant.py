"""spec.quant: the rounding rule, integer square root, row scales and exact matmul."""
from fractions import Fraction
import math

import pytest
import torch
from hypothesis import given, strategies as st

from spec import quant
from spec.constants import ACT_MAX, FLOAT64_EXACT, SCALE_MANT_BITS
from spec.quant import (
    bit_length, ceil_div, div_round, int_matmul, isqrt, qmax, quantize_rows, requantize, round_shift, row_scale,
    shift_round,
)
from numeric_strategies import int_tensor


def _round_away(fr: Fraction) -> int:
    """Round half away from zero, exactly."""
    mag = math.floor(abs(fr) + Fraction(1, 2))
    return mag if fr >= 0 else -mag


@given(st.integers(-(2**62), 2**62), st.integers(0, 62))
def test_round_shift_is_round_half_away(x, s):
    assert int(round_shift(torch.tensor([x]), s)[0]) == _round_away(Fraction(x, 2**s))


@given(st.integers(-(2**61), 2**61), st.integers(-62, 62))
def test_shift_round_any_sign(x, s):
    got = int(shift_round(torch.tensor([x]), torch.tensor([s]))[0])
    if s >= 0:
        assert got == _round_away(Fraction(x, 2**s))
    else:
        lim = (1 << 62) >> -s
        assert got == max(-lim, min(lim, x)) << -s


@given(st.integers(-(2**60), 2**60), st.integers(1, 2**40))
def test_div_round_and_ceil_div(n, d):
    assert int(div_round(torch.tensor([n]), torch.tensor([d]))[0]) == _round_away(Fraction(n, d))
    if n >= 0:
        assert int(ceil_div(torch.tensor([n]), torch.tensor([d]))[0]) == -(-n // d)


def test_round_ties_go_away_from_zero():
    x = torch.tensor([-3, -1, 1, 3])
    assert round_shift(x, 1).tolist() == [-2, -1, 1, 2]


@given(st.integers(0, 2**63 - 1))
def test_isqrt_exact(v):
    assert int(isqrt(torch.tensor([v]))[0]) == math.isqrt(v)


@given(st.integers(0, 2**63 - 1))
def test_bit_length(v):
    assert int(bit_length(torch.tensor([v]))[0]) == v.bit_length()


@given(st.integers(0, ACT_MAX), st.integers(2, 16))
def test_row_scale_bounds(amax, bits):
    """2**(S-2) < m <= 2**S and m * 2**e is the smallest such step >= amax / qmax."""
    m, e = (int(t) for t in row_scale(torch.tensor([amax]), bits))
    assert 2 ** (SCALE_MANT_BITS - 2) < m <= 2**SCALE_MANT_BITS
    step = Fraction(m) * Fraction(2) ** e
    assert step * qmax(bits) >= max(amax, 1) > (step - Fraction(2) ** e) * qmax(bits)


@given(int_tensor((3, 17)), st.integers(2, 16))
def test_quantize_rows_in_range_and_close(x, bits):
    q, m, e = quantize_rows(x, bits)
    assert int(q.abs().max()) <= qmax(bits)
    back = quant.dequantize_rows(q, m, e)
    step = (m * 2.0 ** e.double())[:, None]
    assert bool(((back - x).abs() <= step / 2 + 1).all())  # half a step plus the Q16 rounding


@given(int_tensor((5, 33), lo=-(2**11), hi=2**11), int_tensor((7, 33), lo=-(2**15), hi=2**15))
def test_int_matmul_float64_equals_int64(a, w):
    assert quant.FLOAT64_MATMUL and 33 * 2**11 * 2**15 < FLOAT64_EXACT  # these inputs take the float64 path
    fast = int_matmul(a, w)
    quant.FLOAT64_MATMUL = False
    try:
        exact = int_matmul(a, w)
    finally:
        quant.FLOAT64_MATMUL = True
    assert torch.equal(fast, exact) and fast.dtype == torch.int64


def test_int_matmul_falls_back_beyond_2_53():
    a = torch.full((1, 4), 2**29 - 1)
    w = torch.full((1, 4), 2**29 + 1)
    assert int(int_matmul(a, w)[0, 0]) == 4 * (2**58 - 1)  # exact, far above 2**53


@given(int_tensor((4, 6), lo=-(2**40), hi=2**40), st.integers(2**12, 2**14), st.integers(-20, 20),
       st.integers(2**12, 2**13 - 1), st.integers(-20, 60))
def test_requantize_saturates(acc, m, e, mul, shift):
    y = requantize(acc, torch.full((4,), m), torch.full((4,), e), torch.full((6,), mul), torch.full((6,), shift))
    assert int(y.abs().max()) <= ACT_MAX


@pytest.mark.parametrize("bits", [2, 8, 12, 16])
def test_qmax(bits):
    assert qmax(bits) == 2 ** (bits - 1) - 1
