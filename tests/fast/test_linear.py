"""Parity of the Triton integer linear layer (fieldprint_fast.kernels.linear) with ``spec``.

Every check is ``torch.equal`` against ``spec.ops.linear`` / ``spec.quant.quantize_rows`` on
fresh random data: shapes whose K is not a multiple of any tile, M = 1, zero rows, rows at
+-ACT_MAX, saturating multipliers and negative shifts, both profiles' widths, int16 weights.
On a CPU machine the kernels run under ``TRITON_INTERPRET=1`` on small shapes; the
``gpu``-marked tests run real Llama sizes on a CUDA device (``pytest -m gpu``).
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from spec import ops as spec_ops
from spec.constants import ACT_MAX
from spec.profiles import PROFILES
from spec.quant import quantize_rows as spec_quantize_rows

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or TRITON_INTERPRET=1")

from fieldprint_fast import ops as fast_ops  # noqa: E402
from fieldprint_fast.kernels import linear as K  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"
EXAMPLES = settings.default.max_examples
# (weight bits, act bits) of every linear stage of the shipped profiles
PROFILE_WIDTHS = sorted({PROFILES[p].linear_bits(s, layer) for p in PROFILES
                         for s in ("qkv", "o", "gate_up", "down", "lm_head") for layer in (None, 0)})


def q16_rows(gen: torch.Generator, n: int, k: int, kind: str) -> torch.Tensor:
    """Return int64 [n, k] Q16 activations: each row at its own magnitude (2**0 .. 2**31), with
    one zero row and one row at +-ACT_MAX mixed in when kind says so."""
    mag = torch.randint(0, 32, (n, 1), generator=gen)
    x = torch.randint(-ACT_MAX, ACT_MAX + 1, (n, k), generator=gen, dtype=torch.int64) >> (31 - mag).clamp(min=0)
    if kind in ("zero", "both") and n > 1:
        x[torch.randint(0, n, (1,), generator=gen)] = 0
    if kind in ("sat", "both"):
        r = int(torch.randint(0, n, (1,), generator=gen))
        x[r] = torch.where(torch.rand(k, generator=gen) < 0.5, -ACT_MAX, ACT_MAX)
    return x


def weights(gen: torch.Generator, o: int, k: int, bits: int, wide: bool) -> torch.Tensor:
    """Return [o, k] symmetric `bits`-bit weights, int16 when wide (as the spec stores > 8 bits)."""
    qm = (1 << (bits - 1)) - 1
    w = torch.randint(-qm, qm + 1, (o, k), generator=gen, dtype=torch.int64)
    w[0, : min(k, 3)] = torch.tensor([qm, -qm, qm])[: min(k, 3)]  # the extremes occur
    return w.to(torch.int16 if wide or bits > 8 else torch.int8)


def multipliers(gen: torch.Generator, o: int, shift_lo: int, shift_hi: int):
    """Return (mul, shift) int32 [o]: mul in [2**12, 2**13), shift in [shift_lo, shift_hi]."""
    mul = torch.randint(1 << 12, 1 << 13, (o,), generator=gen, dtype=torch.int32)
    shift = torch.randint(shift_lo, shift_hi + 1, (o,), generator=gen, dtype=torch.int32)
    return mul, shift


def to_dev(*ts):
    return [None if t is None else t.to(DEVICE) for t in ts]


def assert_equal(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    got, want = got.cpu(), want.cpu()
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        raise AssertionError(f"{what}: {bad.shape[0]} of {want.numel()} differ, first at {bad[0].tolist()}: "
                             f"{got[tuple(bad[0])]} != {want[tuple(bad[0])]}")


# %%
# Row quantization
# ----------------

@settings(max_examples=EXAMPLES)
@given(n=st.integers(1, 9), k=st.integers(1, 300), bits=st.integers(2, 15),
       kind=st.sampled_from(["plain", "zero", "sat", "both"]), int32=st.booleans(), seed=st.integers(0, 2**31))
def test_quantize_rows_equals_spec(n, k, bits, kind, int32, seed):
    gen = torch.Generator().manual_seed(seed)
    x = q16_rows(gen, n, k, kind)
    want_q, want_m, want_e = spec_quantize_rows(x, bits)
    (xd,) = to_dev(x.to(torch.int32) if int32 else x)
    limbs, m, e = K.quantize_rows(xd, bits)
    assert limbs.shape[0] == (1 if bits <= 8 else 2)
    q = limbs[0].long() if limbs.shape[0] == 1 else limbs[1].long() * 128 + limbs[0].long()
    if limbs.shape[0] == 2:
        assert int(limbs[0].min()) >= 0  # the low limb is unsigned 7-bit
    assert_equal(q, want_q, "q")
    assert_equal(m.long(), want_m, "m")
    assert_equal(e.long(), want_e, "e")


def test_quantize_rows_long_rows(monkeypatch):
    """Rows longer than QUANT_BLOCK take the two-pass path (absmax, then quantize block by block)."""
    monkeypatch.setattr(K, "QUANT_BLOCK", 64)
    gen = torch.Generator().manual_seed(13)
    for n, k, bits in ((3, 65, 8), (2, 200, 12), (1, 128, 15)):
        x = q16_rows(gen, n, k, "both")
        want_q, want_m, want_e = spec_quantize_rows(x, bits)
        limbs, m, e = K.quantize_rows(*to_dev(x), bits)
        q = limbs[0].long() if limbs.shape[0] == 1 else limbs[1].long() * 128 + limbs[0].long()
        assert_equal(q, want_q, f"q {n}x{k}")
        assert_equal(m.long(), want_m, "m")
        assert_equal(e.long(), want_e, "e")


def test_quantize_rows_refuses_bad_width():
    with pytest.raises(ValueError, match="bits"):
        K.quantize_rows(torch.zeros((1, 4), dtype=torch.int64, device=DEVICE), 16)


# %%
# The linear layer
# ----------------

@settings(max_examples=EXAMPLES)
@given(n=st.integers(1, 20), k=st.integers(1, 200), o=st.integers(1, 70),
       widths=st.one_of(st.sampled_from(PROFILE_WIDTHS), st.tuples(st.integers(2, 14), st.integers(2, 15))),
       wide=st.booleans(), kind=st.sampled_from(["plain", "zero", "sat", "both"]),
       shifts=st.sampled_from([(14, 30), (-4, 12), (30, 70)]), bias=st.sampled_from([None, "small", "huge"]),
       seed=st.integers(0, 2**31))
def test_linear_equals_spec(n, k, o, widths, wide, kind, shifts, bias, seed):
    """Shifts (-4, 12) saturate most outputs and shift some left; (30, 70) round many to 0 and
    exercise the clamp of the shift at 62; "huge" biases saturate after the add."""
    w_bits, a_bits = widths
    gen = torch.Generator().manual_seed(seed)
    x = q16_rows(gen, n, k, kind)
    w = weights(gen, o, k, w_bits, wide)
    mul, shift = multipliers(gen, o, *shifts)
    b = None if bias is None else torch.randint(-(1 << (20 if bias == "small" else 31)) + 1,
                                                1 << (20 if bias == "small" else 31), (o,), generator=gen,
                                                dtype=torch.int64).to(torch.int32)
    want = spec_ops.linear(x, a_bits, w, mul, shift, b)
    got = K.linear(*to_dev(x), a_bits, *to_dev(w, mul, shift, b))
    assert got.dtype == torch.int64 and got.shape == (n, o)
    assert_equal(got, want, f"linear {n}x{k}x{o} w{w_bits} a{a_bits}")


TILES = [dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=1, num_warps=1, num_stages=1),
         dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=64, GROUP_M=2, num_warps=2, num_stages=2),
         dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=3, num_warps=2, num_stages=2),
         dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=1, num_warps=1, num_stages=1, SPLIT_K=3),
         dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=2, num_stages=2, SPLIT_K=2)]


@settings(max_examples=EXAMPLES)
@given(n=st.integers(1, 70), k=st.integers(1, 150), o=st.integers(1, 70), tile=st.sampled_from(TILES),
       la=st.integers(1, 2), lw=st.integers(1, 2), int32_out=st.booleans(), wide_mul=st.booleans(),
       seed=st.integers(0, 2**31))
def test_linear_quantized_tiles(n, k, o, tile, la, lw, int32_out, wide_mul, seed):
    """Many programs per launch (grouped order, edge tiles wrapping around, K tails, split K)
    for every limb combination, against the spec's requantize(int_matmul(q, W)). Split-K
    launches must leave their workspace zero: each example reuses it."""
    gen = torch.Generator().manual_seed(seed)
    a_bits, w_bits = (8, 12)[la - 1], (8, 10)[lw - 1]
    x = q16_rows(gen, n, k, "both")
    w = weights(gen, o, k, w_bits, lw == 2)
    mul, shift = multipliers(gen, o, 8, 30)
    if wide_mul:
        mul = mul << 6  # [2**18, 2**19): |acc| * m * mul stays below 2**61 for these K and widths
    want = spec_ops.linear(x, a_bits, w, mul, shift)
    q, m, e = K.quantize_rows(*to_dev(x), a_bits)
    limbs = K.split_limbs(w.to(DEVICE))
    got = K.linear_quantized(q, m, e, limbs, *to_dev(mul, shift), out_dtype=torch.int32 if int32_out else torch.int64,
                             config=tile)
    assert_equal(got.long(), want, f"tile {tile}")
    for ws, count in K._SPLIT_K_BUFFERS.values():
        assert not ws.any() and not count.any()


def test_split_limbs_recombine():
    gen = torch.Generator().manual_seed(7)
    w = torch.randint(-(2**14) + 1, 2**14, (9, 33), generator=gen, dtype=torch.int16)
    limbs = K.split_limbs(w)
    assert limbs.shape == (2, 9, 33) and int(limbs[0].min()) >= 0
    assert torch.equal(limbs[1].long() * 128 + limbs[0].long(), w.long())
    small = torch.randint(-127, 128, (4, 5), generator=gen, dtype=torch.int16)
    assert torch.equal(K.split_limbs(small)[0].long(), small.long())  # one limb suffices
    with pytest.raises(ValueError, match="2\\*\\*14"):
        K.split_limbs(torch.full((2, 2), 1 << 14, dtype=torch.int16))


def test_wide_operands_fall_back_to_spec():
    """16-bit activations and 15-bit weights need a third limb: the op runs the spec itself."""
    gen = torch.Generator().manual_seed(3)
    x = q16_rows(gen, 3, 40, "both")
    for a_bits, w_bits in ((16, 8), (8, 15)):
        w = weights(gen, 5, 40, w_bits, True)
        mul, shift = multipliers(gen, 5, 20, 40)
        assert_equal(K.linear(*to_dev(x), a_bits, *to_dev(w, mul, shift)), spec_ops.linear(x, a_bits, w, mul, shift),
                     f"w{w_bits} a{a_bits}")


def test_weight_limb_cache_follows_in_place_edits():
    gen = torch.Generator().manual_seed(5)
    w = weights(gen, 6, 20, 10, True).to(DEVICE)
    first = K.weight_limbs(w)
    assert K.weight_limbs(w) is first
    w[0, 0] = -w[0, 0] - 1
    assert torch.equal(K.weight_limbs(w)[1].long() * 128 + K.weight_limbs(w)[0].long(), w.long())


def test_fast_ops_linear_and_lm_head():
    """fieldprint_fast.ops.linear / lm_head: the spec signatures, the spec's results."""
    gen = torch.Generator().manual_seed(11)
    x = q16_rows(gen, 4, 96, "both")
    w = weights(gen, 24, 96, 8, False)
    mul, shift = multipliers(gen, 24, 14, 26)
    b = torch.randint(-1000, 1000, (24,), generator=gen, dtype=torch.int32)
    assert_equal(fast_ops.linear(*to_dev(x), 12, *to_dev(w, mul, shift, b)), spec_ops.linear(x, 12, w, mul, shift, b),
                 "ops.linear")
    assert_equal(fast_ops.lm_head(*to_dev(x), 8, *to_dev(w, mul, shift)), spec_ops.lm_head(x, 8, w, mul, shift),
                 "ops.lm_head")


# %%
# Real sizes (GPU)
# ----------------

LLAMA_SHAPES = [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336), (2048, 8192), (3072, 2048)]


@pytest.mark.gpu
@pytest.mark.parametrize("profile", ["int8", "default"])
@pytest.mark.parametrize("m", [1, 7, 16, 64, 300, 1024])
def test_linear_real_sizes(profile, m):
    if INTERPRET:
        pytest.skip("real sizes run on the GPU without the interpreter")
    gen = torch.Generator().manual_seed(m)
    for o, k in LLAMA_SHAPES:
        for stage in ("qkv", "down") if profile == "int8" else ("qkv", "down", "edge"):
            w_bits, a_bits = (10, 12) if stage == "edge" else PROFILES[profile].linear_bits(stage)
            x = q16_rows(gen, m, k, "both" if m > 1 else "plain").cuda()
            w = weights(gen, o, k, w_bits, False).cuda()
            mul, shift = (t.cuda() for t in multipliers(gen, o, 16, 30))
            got = K.linear(x, a_bits, w, mul, shift)
            want = spec_ops.linear(x, a_bits, w, mul, shift)
            assert_equal(got, want, f"{profile} {stage} M={m} {o}x{k}")
