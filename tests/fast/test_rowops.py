"""Parity of the Triton row ops (fieldprint_fast.kernels.rowops) with ``spec.ops``.

``torch.equal`` on fresh random data: rows at every magnitude, zero rows, rows at +-ACT_MAX,
gains that saturate, epsilons from 2**-48 to near 1/4, the fused RMSNorm + quantize against
``spec.quant.quantize_rows(spec.ops.rms_norm(...))``. CPU runs use ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from spec import ops as spec_ops
from spec.constants import ACT_MAX
from spec.quant import quantize_rows as spec_quantize_rows
from spec.tables import rope_tables, sigmoid_table

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or TRITON_INTERPRET=1")

from fieldprint_fast import ops as fast_ops  # noqa: E402
from fieldprint_fast.kernels import rowops as R  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"
EXAMPLES = settings.default.max_examples


def rows(gen: torch.Generator, n: int, h: int, kind: str) -> torch.Tensor:
    """int64 [n, h] Q16 rows, each at its own magnitude; optionally a zero row and a saturated row."""
    mag = torch.randint(0, 32, (n, 1), generator=gen)
    x = torch.randint(-ACT_MAX, ACT_MAX + 1, (n, h), generator=gen, dtype=torch.int64) >> (31 - mag).clamp(min=0)
    if kind in ("zero", "both") and n > 1:
        x[0] = 0
    if kind in ("sat", "both"):
        x[-1] = torch.where(torch.rand(h, generator=gen) < 0.5, -ACT_MAX, ACT_MAX)
    return x


def assert_equal(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    got, want = got.cpu(), want.cpu()
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        raise AssertionError(f"{what}: {bad.shape[0]} of {want.numel()} differ, first at {bad[0].tolist()}")


def recombine(limbs: torch.Tensor) -> torch.Tensor:
    """Return sum_i limbs[i] * 2**(7 i) as int64 (the value a limb stack stands for)."""
    return sum(limbs[i].long() << (7 * i) for i in range(limbs.shape[0]))


def norm_inputs(gen, n, h, kind, gain_bits, eps_bits):
    x = rows(gen, n, h, kind)
    gamma = torch.randint(-(1 << gain_bits), 1 << gain_bits, (h,), generator=gen, dtype=torch.int64).to(torch.int32)
    eps = torch.tensor([1 << eps_bits], dtype=torch.int64)
    return x, gamma, eps


def test_isqrt_equals_spec():
    """rowops.isqrt (linear._isqrt: float64 sqrt, one correction each way) against spec.quant.isqrt where a
    float root is one off: n**2 - 1, n**2, n**2 + 2n, n**2 + 2n + 1 for random n up to the
    largest root below 2**63, 0, 1, 2**63 - 1, and values of every bit length."""
    from spec.quant import isqrt

    gen = torch.Generator().manual_seed(9)
    n = torch.cat([torch.randint(1, 3_037_000_499, (200,), generator=gen, dtype=torch.int64),
                   torch.tensor([1, 2, 3, 1 << 20, (1 << 26) + 1, 3_037_000_499, 3_037_000_498, 2_147_483_648])])
    v = torch.cat([n * n - 1, n * n, n * n + 2 * n, torch.tensor([0, 1, 2, 3, (1 << 63) - 1, (1 << 62), (1 << 62) - 1])])
    v = torch.cat([v, torch.randint(0, 1 << 62, (256,), generator=gen, dtype=torch.int64)
                   >> torch.randint(0, 62, (256,), generator=gen)])
    v = v[(v >= 0)]
    assert_equal(R.isqrt(v.to(DEVICE)), isqrt(v), "isqrt")


@settings(max_examples=EXAMPLES)
@given(n=st.integers(1, 6), h=st.integers(1, 300), kind=st.sampled_from(["plain", "zero", "sat", "both"]),
       gain_bits=st.sampled_from([4, 17, 30]), eps_bits=st.integers(0, 45), seed=st.integers(0, 2**31))
def test_rms_norm_equals_spec(n, h, kind, gain_bits, eps_bits, seed):
    """gain_bits 30 saturates many outputs; eps_bits 45 is an epsilon of 1/8."""
    x, gamma, eps = norm_inputs(torch.Generator().manual_seed(seed), n, h, kind, gain_bits, eps_bits)
    want = spec_ops.rms_norm(x, gamma, eps)
    got = R.rms_norm(x.to(DEVICE), gamma.to(DEVICE), eps.to(DEVICE))
    assert got.dtype == torch.int64
    assert_equal(got, want, "rms_norm")


@settings(max_examples=EXAMPLES)
@given(n=st.integers(1, 6), h=st.integers(1, 300), kind=st.sampled_from(["plain", "zero", "sat", "both"]),
       gain_bits=st.sampled_from([4, 17, 30]), bits=st.sampled_from([8, 12, 2, 15, 16]), seed=st.integers(0, 2**31))
def test_rms_norm_quantize_equals_spec(n, h, kind, gain_bits, bits, seed):
    x, gamma, eps = norm_inputs(torch.Generator().manual_seed(seed), n, h, kind, gain_bits, 20)
    want_q, want_m, want_e = spec_quantize_rows(spec_ops.rms_norm(x, gamma, eps), bits)
    limbs, m, e = R.rms_norm_quantize(x.to(DEVICE), gamma.to(DEVICE), eps.to(DEVICE), bits)
    q = recombine(limbs)
    assert_equal(q, want_q, "q")
    assert_equal(m.long(), want_m, "m")
    assert_equal(e.long(), want_e, "e")


@settings(max_examples=EXAMPLES)
@given(n=st.integers(1, 5), h=st.integers(1, 400), scale=st.integers(0, 31), seed=st.integers(0, 2**31))
def test_swiglu_equals_spec(n, h, scale, seed):
    """Gates beyond +-16 (table clamp), products that saturate."""
    gen = torch.Generator().manual_seed(seed)
    g = rows(gen, n, h, "both") >> (31 - scale) if scale < 31 else rows(gen, n, h, "both")
    u = rows(gen, n, h, "sat")
    table = sigmoid_table()
    assert_equal(R.swiglu(g.to(DEVICE), u.to(DEVICE), table), spec_ops.swiglu(g, u, table), "swiglu")


@settings(max_examples=EXAMPLES)
@given(n=st.integers(1, 5), h=st.integers(1, 1100), scale=st.integers(0, 31), seed=st.integers(0, 2**31))
def test_swiglu_reads_halves_in_place(n, h, scale, seed):
    """The two halves of a gate/up output [N, 2H], strided views, as the decode step passes them
    (H past the 1,024-value block: several programs per row)."""
    gen = torch.Generator().manual_seed(seed)
    gu = torch.cat([rows(gen, n, h, "both") >> (31 - scale), rows(gen, n, h, "sat")], dim=1)
    table = sigmoid_table()
    want = spec_ops.swiglu(gu[:, :h], gu[:, h:], table)
    gd = gu.to(DEVICE)
    assert_equal(R.swiglu(gd[:, :h], gd[:, h:], table), want, "swiglu halves")


@settings(max_examples=EXAMPLES)
@given(n=st.integers(1, 6), h=st.integers(1, 300), scale=st.integers(0, 31), bits=st.sampled_from([8, 12, 2, 15, 16]),
       block=st.sampled_from([None, 16, 64]), seed=st.integers(0, 2**31))
def test_swiglu_quantize_equals_spec(n, h, scale, bits, block, seed):
    """spec.quant.quantize_rows(spec.ops.swiglu(...)) from the halves of [N, 2H]: one pass (the
    row in registers) or two (block < H), zero rows (gate 0), saturating products, 1..3 limbs."""
    gen = torch.Generator().manual_seed(seed)
    g = rows(gen, n, h, "both") >> (31 - scale) if scale < 31 else rows(gen, n, h, "both")
    gu = torch.cat([g, rows(gen, n, h, "sat")], dim=1)
    table = sigmoid_table()
    want_q, want_m, want_e = spec_quantize_rows(spec_ops.swiglu(gu[:, :h], gu[:, h:], table), bits)
    gd = gu.to(DEVICE)
    with pytest.MonkeyPatch.context() as mp:
        if block:
            mp.setattr(R, "SWIGLU_QUANT_BLOCK", block)
        limbs, m, e = R.swiglu_quantize(gd[:, :h], gd[:, h:], table, bits)
    assert limbs.shape == (1 if bits <= 8 else 2 if bits <= 15 else 3, n, h)
    assert_equal(recombine(limbs), want_q, "q")
    assert_equal(m.long(), want_m, "m")
    assert_equal(e.long(), want_e, "e")


@settings(max_examples=EXAMPLES)
@given(n=st.integers(1, 5), h=st.integers(1, 3000), seed=st.integers(0, 2**31))
def test_residual_add_equals_spec(n, h, seed):
    gen = torch.Generator().manual_seed(seed)
    x, y = rows(gen, n, h, "sat"), rows(gen, n, h, "both")
    assert_equal(R.residual_add(x.to(DEVICE), y.to(DEVICE)), spec_ops.residual_add(x, y), "residual_add")


@settings(max_examples=EXAMPLES)
@given(v=st.integers(1, 50), h=st.integers(1, 1500), t=st.integers(1, 9), wide=st.booleans(),
       shift_lo=st.sampled_from([-3, 10]), seed=st.integers(0, 2**31))
def test_embed_equals_spec(v, h, t, wide, shift_lo, seed):
    """int8 and int16 tables; shifts below zero shift left and saturate."""
    gen = torch.Generator().manual_seed(seed)
    qm = 32767 if wide else 127
    w = torch.randint(-qm, qm + 1, (v, h), generator=gen, dtype=torch.int64).to(torch.int16 if wide else torch.int8)
    mul = torch.randint(1 << 12, 1 << 13, (v,), generator=gen, dtype=torch.int32)
    shift = torch.randint(shift_lo, shift_lo + 12, (v,), generator=gen, dtype=torch.int32)
    tok = torch.randint(0, v, (t,), generator=gen, dtype=torch.int64)
    want = spec_ops.embed(tok, w, mul, shift)
    got = R.embed(tok.to(DEVICE), w.to(DEVICE), mul.to(DEVICE), shift.to(DEVICE))
    assert_equal(got, want, "embed")


@settings(max_examples=EXAMPLES)
@given(n=st.integers(1, 5), heads=st.integers(1, 5), half=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_rope_equals_spec(n, heads, half, seed):
    """Real RoPE tables (spec.tables.rope_tables) at random positions; saturated inputs."""
    gen = torch.Generator().manual_seed(seed)
    cos, sin = rope_tables(2 * half, 10000.0, 64)
    x = rows(gen, n * heads, 2 * half, "both").view(n, heads, 2 * half)
    pos = torch.randint(0, 64, (n,), generator=gen, dtype=torch.int64)
    got = R.rope(x.to(DEVICE), pos.to(DEVICE), cos.to(DEVICE), sin.to(DEVICE))
    assert_equal(got, spec_ops.rope(x, pos, cos, sin), "rope")


def test_fast_ops_row_ops_dispatch():
    """fieldprint_fast.ops exposes the row ops under the spec's signatures."""
    gen = torch.Generator().manual_seed(17)
    x, gamma, eps = norm_inputs(gen, 3, 64, "both", 17, 20)
    d = [t.to(DEVICE) for t in (x, gamma, eps)]
    assert_equal(fast_ops.rms_norm(*d), spec_ops.rms_norm(x, gamma, eps), "ops.rms_norm")
    y = rows(gen, 3, 64, "plain")
    assert_equal(fast_ops.residual_add(d[0], y.to(DEVICE)), spec_ops.residual_add(x, y), "ops.residual_add")
    t = sigmoid_table()
    assert_equal(fast_ops.swiglu(d[0], y.to(DEVICE), t), spec_ops.swiglu(x, y, t), "ops.swiglu")
    cos, sin = rope_tables(16, 10000.0, 8)
    pos = torch.tensor([0, 7, 3])
    x3 = x.view(3, 4, 16)
    assert_equal(fast_ops.rope(x3.to(DEVICE), pos.to(DEVICE), cos.to(DEVICE), sin.to(DEVICE)),
                 spec_ops.rope(x3, pos, cos, sin), "ops.rope")


# %%
# Real sizes (GPU)
# ----------------

@pytest.mark.gpu
@pytest.mark.parametrize("h", [2048, 4096, 14336])
def test_row_ops_real_sizes(h):
    if INTERPRET:
        pytest.skip("real sizes run on the GPU without the interpreter")
    gen = torch.Generator().manual_seed(h)
    x, gamma, eps = norm_inputs(gen, 300, h, "both", 17, 20)
    xc, gc, ec = x.cuda(), gamma.cuda(), eps.cuda()
    want = spec_ops.rms_norm(xc, gc, ec)
    assert_equal(R.rms_norm(xc, gc, ec), want, f"rms_norm {h}")
    for bits in (8, 12, 16):
        limbs, m, e = R.rms_norm_quantize(xc, gc, ec, bits)
        wq, wm, we = spec_quantize_rows(want, bits)
        q = recombine(limbs)
        assert_equal(q, wq, f"rms_norm_quantize q {h}")
        assert_equal(m.long(), wm, "m")
        assert_equal(e.long(), we, "e")
    y = rows(gen, 300, h, "plain").cuda()
    t = sigmoid_table()
    assert_equal(R.swiglu(xc, y, t), spec_ops.swiglu(xc, y, t.cuda()), "swiglu")
    for n in (1, 8, 64):  # the decode step's gate/up output, its halves in place
        gu = torch.cat([xc[:n], y[:n]], dim=1)
        want_y = spec_ops.swiglu(gu[:, :h], gu[:, h:], t.cuda())
        assert_equal(R.swiglu(gu[:, :h], gu[:, h:], t), want_y, f"swiglu halves {n}x{h}")
        for bits in (8, 12):
            limbs, m, e = R.swiglu_quantize(gu[:, :h], gu[:, h:], t, bits)
            wq, wm, we = spec_quantize_rows(want_y, bits)
            assert_equal(recombine(limbs), wq, f"swiglu_quantize q {n}x{h} a{bits}")
            assert_equal(m.long(), wm, "m")
            assert_equal(e.long(), we, "e")
    assert_equal(R.residual_add(xc, y), spec_ops.residual_add(xc, y), "residual_add")
