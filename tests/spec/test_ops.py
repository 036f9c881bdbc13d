"""spec.ops: every operator stays in its documented range on adversarial inputs and tracks float math."""
import math

import torch
from hypothesis import given, strategies as st

from spec import ops
from spec.constants import ACT_MAX, EXP_FRAC_BITS, LOG2E_Q30
from spec.tables import exp2_table, rope_tables, sigmoid_table
from numeric_strategies import int_tensor

EXP, SIG = exp2_table(), sigmoid_table()
COS, SIN = rope_tables(8, 10000.0, 64)
Q16 = 65536.0


def test_log2e_constant_is_correctly_rounded():
    from decimal import Decimal, getcontext

    getcontext().prec = 50
    assert LOG2E_Q30 == int((Decimal(1) / Decimal(2).ln() * 2**30).to_integral_value())


def test_exp_table_known_answers():
    assert int(EXP[0]) == 2**30 and int(EXP[-1]) == 2**29 and int(EXP[128]) == round(2**29.5)
    err = max(abs(int(EXP[j]) - 2 ** (30 - j / 256)) for j in range(257))
    assert err <= 0.5 + 1e-6


@given(int_tensor((2, 40), lo=0, hi=2**40))
def test_exp_neg_range_and_error(d):
    e = ops.exp_neg(d, EXP)
    assert int(e.min()) >= 0 and int(e.max()) <= 2**EXP_FRAC_BITS
    ref = torch.exp(-d.double().clamp(max=2**22) / Q16) * 2**30
    assert bool(((e - ref).abs() <= ref * 2**-16 + 2).all())


def test_exp_neg_of_zero_is_one():
    assert int(ops.exp_neg(torch.tensor([0]), EXP)[0]) == 2**30


@given(int_tensor((3, 50)))
def test_sigmoid_range_and_error(x):
    s = ops.sigmoid(x, SIG)
    assert int(s.min()) >= 0 and int(s.max()) <= 2**16
    ref = torch.sigmoid(x.double() / Q16) * Q16
    assert float((s - ref).abs().max()) <= 1.5


@given(int_tensor((3, 20)), int_tensor((3, 20)))
def test_swiglu_range_and_error(g, u):
    y = ops.swiglu(g, u, SIG)
    assert int(y.abs().max()) <= ACT_MAX
    gf, uf = g.double() / Q16, u.double() / Q16
    ref = (gf * torch.sigmoid(gf) * uf).clamp(-ACT_MAX / Q16, ACT_MAX / Q16)
    tol = (gf.abs() * uf.abs()) * 2**-15 + uf.abs() * 2**-15 + 2**-15  # sigmoid error 2**-16, two roundings
    assert bool(((y.double() / Q16 - ref).abs() <= tol).all())


@given(int_tensor((3, 32)), st.sampled_from([1e-5, 1e-6, 0.1]))
def test_rms_norm_range_and_error(x, eps):
    gamma = torch.full((32,), 3 * 2**16, dtype=torch.int64)
    eps_q = torch.tensor([round(eps * 2**48)])
    y = ops.rms_norm(x, gamma, eps_q)
    assert int(y.abs().max()) <= ACT_MAX
    xf = x.double() / Q16
    ref = 3 * xf / torch.sqrt((xf**2).mean(-1, keepdim=True) + eps)
    assert bool(((y.double() / Q16 - ref).abs() <= ref.abs() * 2e-3 + 1e-4).all())


@given(int_tensor((4, 2, 8)), st.lists(st.integers(0, 63), min_size=4, max_size=4))
def test_rope_range_and_error(x, pos):
    p = torch.tensor(pos)
    y = ops.rope(x, p, COS, SIN)
    assert int(y.abs().max()) <= ACT_MAX
    c, s = COS[p].double()[:, None] / 2**30, SIN[p].double()[:, None] / 2**30
    xf = x.double()
    ref = torch.cat([xf[..., :4] * c - xf[..., 4:] * s, xf[..., 4:] * c + xf[..., :4] * s], -1).clamp(-ACT_MAX, ACT_MAX)
    assert float((y - ref).abs().max()) <= 1.0


def test_rope_position_zero_is_identity():
    x = torch.randint(-(2**20), 2**20, (3, 2, 8))
    assert torch.equal(ops.rope(x, torch.zeros(3, dtype=torch.int64), COS, SIN), x)


@given(int_tensor((3, 24)), st.integers(2, 16), st.integers(2, 8))
def test_linear_range(x, a_bits, w_bits):
    g = torch.Generator().manual_seed(0)
    qm = 2 ** (w_bits - 1) - 1
    w = torch.randint(-qm, qm + 1, (5, 24), generator=g)
    mul = torch.randint(2**12, 2**13, (5,), generator=g)
    shift = torch.tensor([0, 10, 20, 40, 60])
    bias = torch.tensor([ACT_MAX, -ACT_MAX, 0, 1, -1])
    y = ops.linear(x, a_bits, w, mul, shift, bias)
    assert int(y.abs().max()) <= ACT_MAX


def test_linear_tracks_float():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-(2**18), 2**18, (4, 64), generator=g)
    w = torch.randint(-127, 128, (8, 64), generator=g)
    mul, shift = torch.full((8,), 2**12), torch.full((8,), 19)  # weight scale 2**-7
    y = ops.linear(x, 12, w, mul, shift).double()
    ref = x.double() @ (w.double() * 2**-7).T
    assert float((y - ref).abs().max()) <= float(ref.abs().max()) * 2e-3


@given(int_tensor((6,), lo=0, hi=95), st.integers(2, 16))
def test_embed_range(tokens, bits):
    qm = 2 ** (bits - 1) - 1
    w = torch.randint(-qm, qm + 1, (96, 8), generator=torch.Generator().manual_seed(2))
    mul = torch.randint(2**12, 2**13, (96,), generator=torch.Generator().manual_seed(3))
    shift = torch.randint(-5, 40, (96,), generator=torch.Generator().manual_seed(4))
    assert int(ops.embed(tokens, w, mul, shift).abs().max()) <= ACT_MAX


@given(int_tensor((2, 9)), int_tensor((2, 9)))
def test_residual_add_saturates(a, b):
    y = ops.residual_add(a, b)
    assert int(y.abs().max()) <= ACT_MAX
    assert torch.equal(y, (a + b).clamp(-ACT_MAX, ACT_MAX))


# -- attention operators ------------------------------------------------------------------------
from spec import attention  # noqa: E402
from spec.constants import SCORE_MAX  # noqa: E402


@given(int_tensor((3, 4, 8)), int_tensor((5, 2, 8)), st.integers(2, 16))
def test_scores_range(q, k, q_bits):
    s = attention.scores(q, q_bits, attention.pack_rows(k))
    assert s.shape == (4, 3, 5) and int(s.abs().max()) <= SCORE_MAX


@given(int_tensor((2, 3, 9), lo=-SCORE_MAX, hi=SCORE_MAX), st.integers(0, 2**31))
def test_numerators_range(s, seed):
    vis = torch.rand(2, 3, 9, generator=torch.Generator().manual_seed(seed)) < 0.5
    vis[..., 0] = True  # every row sees at least one key
    e = attention.numerators(s, vis, EXP)
    assert int(e.min()) >= 0 and int(e.max()) <= 2**30 and bool((e[~vis] == 0).all())
    assert bool((e.amax(-1) == 2**30).all())  # the row maximum has e = 2**30 exactly


@given(int_tensor((4, 3, 6), lo=0, hi=2**30), int_tensor((6, 2, 8)), st.integers(0, 2**31), st.integers(1, 30))
def test_mix_values_is_a_rounded_weighted_mean(e, v, seed, prob_bits):
    """The output lies within the range of the values plus the weights' rounding slack (each
    weight is within 1/2 of exact, and the top key's weight is >= 2**(P-2)), and a row that sees
    one key returns that key's dequantized value up to 1 part in 2**(P-1)."""
    vis = torch.rand(1, 3, 6, generator=torch.Generator().manual_seed(seed)) < 0.6
    vis[..., 0] = True
    e = torch.where(vis, e, 0)
    e[..., 0] = 2**30  # a visible maximum
    rows = attention.pack_rows(v)
    o = attention.mix_values(e, vis, rows, prob_bits)
    deq = quant_dequant(rows)  # [6, 2, 8]
    vmax = int(deq.abs().max())
    assert o.shape == (3, 4, 8) and int(o.abs().max()) <= vmax + 16 * 6 * vmax // 2**prob_bits + 1
    one = torch.zeros(1, 3, 6, dtype=torch.bool)
    one[..., 2] = True
    o1 = attention.mix_values(torch.where(one, 2**30, 0).expand(4, 3, 6), one, rows, prob_bits)
    want = deq[2][torch.arange(4) // 2]  # [4, 8]: head h reads kv head h // 2
    assert int((o1 - want[None]).abs().max()) <= vmax // 2 ** (prob_bits - 1) + 1


def quant_dequant(rows):
    from spec.quant import dequantize_rows

    return dequantize_rows(*attention.unpack_rows(rows))
