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
import triton
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


def residual_rows(gen: torch.Generator, n: int, o: int, kind: str) -> torch.Tensor:
    """Return int64 [n, o] Q16 residual rows: random over the whole range ("sat": half of them at
    +-ACT_MAX, so that most sums with a linear's output saturate), else small."""
    if kind != "sat":
        return torch.randint(-(1 << 20), 1 << 20, (n, o), generator=gen, dtype=torch.int64)
    r = torch.randint(-ACT_MAX, ACT_MAX + 1, (n, o), generator=gen, dtype=torch.int64)
    edge = torch.rand(n, o, generator=gen) < 0.5
    return torch.where(edge, torch.where(r < 0, -ACT_MAX, ACT_MAX), r)


def recombine(limbs: torch.Tensor) -> torch.Tensor:
    """Return sum_i limbs[i] * 2**(7 i) as int64 (the value a limb stack stands for)."""
    return sum(limbs[i].long() << (7 * i) for i in range(limbs.shape[0]))


def to_dev(*ts):
    return [None if t is None else t.to(DEVICE) for t in ts]


def assert_split_k_buffers_clean() -> None:
    """Every split-K workspace and arrival counter is back to zero (the last program of a tile
    clears them, so the next launch, or graph replay, starts clean)."""
    for ws, count in K._SPLIT_K_BUFFERS.values():
        assert not ws.any() and not count.any()


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
@given(n=st.integers(1, 9), k=st.integers(1, 300), bits=st.integers(2, 16),
       kind=st.sampled_from(["plain", "zero", "sat", "both"]), int32=st.booleans(), seed=st.integers(0, 2**31))
def test_quantize_rows_equals_spec(n, k, bits, kind, int32, seed):
    gen = torch.Generator().manual_seed(seed)
    x = q16_rows(gen, n, k, kind)
    want_q, want_m, want_e = spec_quantize_rows(x, bits)
    (xd,) = to_dev(x.to(torch.int32) if int32 else x)
    limbs, m, e = K.quantize_rows(xd, bits)
    assert limbs.shape[0] == (1 if bits <= 8 else 2 if bits <= 15 else 3)
    q = recombine(limbs)
    if limbs.shape[0] > 1:
        assert int(limbs[:-1].min()) >= 0 and int(limbs[:-1].max()) <= 127  # lower limbs: unsigned 7-bit
    assert_equal(q, want_q, "q")
    assert_equal(m.long(), want_m, "m")
    assert_equal(e.long(), want_e, "e")


@pytest.mark.parametrize("path", ["two-pass", "chunked"])
def test_quantize_rows_long_rows(monkeypatch, path):
    """Rows longer than QUANT_BLOCK take the two-pass path (absmax, then quantize block by block);
    a few long rows (decode) are cut into chunks, one program per (row, chunk)."""
    if path == "two-pass":
        monkeypatch.setattr(K, "QUANT_BLOCK", 64)
    else:
        monkeypatch.setattr(K, "CHUNK_MIN_K", 100)
        monkeypatch.setattr(K, "QUANT_BLOCK", 128)  # rows of 165..300: the absmax loop; 128: one load
        monkeypatch.setattr(K, "CHUNK_BLOCK", 32)
        monkeypatch.setattr(K, "_sm_count", lambda device: 4 if device.type != "cuda" else 132)
    gen = torch.Generator().manual_seed(13)
    for n, k, bits in ((3, 165, 8), (2, 200, 12), (1, 128, 15), (1, 300, 16), (2, 100, 9)):
        x = q16_rows(gen, n, k, "both")
        want_q, want_m, want_e = spec_quantize_rows(x, bits)
        limbs, m, e = K.quantize_rows(*to_dev(x), bits)
        q = recombine(limbs)
        assert_equal(q, want_q, f"q {n}x{k}")
        assert_equal(m.long(), want_m, "m")
        assert_equal(e.long(), want_e, "e")


def test_quantize_rows_refuses_bad_width():
    with pytest.raises(ValueError, match="bits"):
        K.quantize_rows(torch.zeros((1, 4), dtype=torch.int64, device=DEVICE), 17)


# %%
# The linear layer
# ----------------

@settings(max_examples=EXAMPLES)
@given(n=st.integers(1, 20), k=st.integers(1, 200), o=st.integers(1, 70),
       widths=st.one_of(st.sampled_from(PROFILE_WIDTHS), st.tuples(st.integers(2, 16), st.integers(2, 16))),
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
         dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, GROUP_M=3, num_warps=2, num_stages=2, EPI_SPLIT=2),
         dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=32, GROUP_M=2, num_warps=2, num_stages=2, EPI_SPLIT=4),
         dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=1, num_warps=1, num_stages=1, SPLIT_K=3),
         dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=2, num_stages=2, SPLIT_K=2, EPI_SPLIT=2)]


@settings(max_examples=max(EXAMPLES * 2 // 3, 1))
@given(n=st.integers(1, 40), k=st.integers(1, 120), o=st.integers(1, 70), tile=st.sampled_from(TILES),
       la=st.integers(1, 3), lw=st.integers(1, 3), int32_out=st.booleans(), wide_mul=st.booleans(),
       bias=st.booleans(), residual=st.booleans(), seed=st.integers(0, 2**31))
def test_linear_quantized_tiles(n, k, o, tile, la, lw, int32_out, wide_mul, bias, residual, seed):
    """Many programs per launch (grouped order, edge tiles wrapping around, K tails, split K, the
    epilogue in column slices) for every limb combination (three limbs: the grouped RAW launches),
    against the spec's requantize(int_matmul(q, W)), with and without a residual added in the
    epilogue. Split-K launches must leave their workspace zero: each example reuses it."""
    gen = torch.Generator().manual_seed(seed)
    a_bits, w_bits = (8, 12, 16)[la - 1], (8, 10, 16)[lw - 1]
    x = q16_rows(gen, n, k, "both")
    w = weights(gen, o, k, w_bits, lw > 1)
    mul, shift = multipliers(gen, o, 8, 30)
    if wide_mul:
        mul = mul << 6  # [2**18, 2**19): the general int64 epilogue
    b = torch.randint(-(1 << 31) + 1, 1 << 31, (o,), generator=gen, dtype=torch.int64).to(torch.int32) if bias else None
    want = spec_ops.linear(x, a_bits, w, mul, shift, b)
    res = residual_rows(gen, n, o, "sat") if residual else None
    want = want if res is None else spec_ops.residual_add(res, want)
    q, m, e = K.quantize_rows(*to_dev(x), a_bits)
    limbs = K.split_limbs(w.to(DEVICE))
    assert (q.shape[0], limbs.shape[0]) == (la, lw)
    out_dtype = torch.int32 if int32_out else torch.int64
    got = K.linear_quantized(q, m, e, limbs, *to_dev(mul, shift, b), out_dtype=out_dtype, config=tile,
                             residual=to_dev(res)[0])
    assert_equal(got.long(), want, f"tile {tile}")
    assert_split_k_buffers_clean()


@settings(max_examples=max(EXAMPLES // 3, 1))
@given(n=st.integers(1, 40), k16=st.integers(1, 5), o=st.integers(1, 40), la=st.integers(1, 3), lw=st.integers(1, 3),
       epi=st.sampled_from([1, 2]), seed=st.integers(0, 2**31))
def test_linear_tma_tiles(n, k16, o, la, lw, epi, seed):
    """The tensor-descriptor GEMM kernel (K a multiple of 16): limb planes stacked in one view,
    tiles that run past M or N into the next plane, K tails zero-filled."""
    launches = []
    real = K._linear_tma_kernel

    class Spy:
        def __getitem__(self, grid):
            launches.append(grid)
            return real[grid]

    gen = torch.Generator().manual_seed(seed)
    k = 16 * k16
    a_bits, w_bits = (8, 12, 16)[la - 1], (8, 10, 16)[lw - 1]
    x = q16_rows(gen, n, k, "both")
    w = weights(gen, o, k, w_bits, lw > 1)
    mul, shift = multipliers(gen, o, 8, 30)
    res = residual_rows(gen, n, o, "sat")
    want = spec_ops.residual_add(res, spec_ops.linear(x, a_bits, w, mul, shift))
    tile = dict(BLOCK_M=16, BLOCK_N=16 * epi, BLOCK_K=32, GROUP_M=2, num_warps=1, num_stages=2, EPI_SPLIT=epi, TMA=True)
    q, m, e = K.quantize_rows(*to_dev(x), a_bits)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(K, "_linear_tma_kernel", Spy())
        got = K.linear_quantized(q, m, e, K.split_limbs(w.to(DEVICE)), *to_dev(mul, shift), config=tile,
                                 residual=to_dev(res)[0])
    assert_equal(got, want, f"tma {n}x{k}x{o} L{la}x{lw}")
    assert launches


def test_split_limbs_recombine():
    gen = torch.Generator().manual_seed(7)
    w = torch.randint(-(2**14) + 1, 2**14, (9, 33), generator=gen, dtype=torch.int16)
    limbs = K.split_limbs(w)
    assert limbs.shape == (2, 9, 33) and int(limbs[0].min()) >= 0
    assert torch.equal(recombine(limbs), w.long())
    w16 = torch.randint(-(2**15) + 1, 2**15, (9, 33), generator=gen, dtype=torch.int16)
    w16[0, 0] = -(2**15) + 1
    limbs = K.split_limbs(w16)
    assert limbs.shape == (3, 9, 33) and int(limbs[:2].min()) >= 0 and int(limbs[:2].max()) <= 127
    assert torch.equal(recombine(limbs), w16.long())
    small = torch.randint(-127, 128, (4, 5), generator=gen, dtype=torch.int16)
    assert torch.equal(K.split_limbs(small)[0].long(), small.long())  # one limb suffices
    with pytest.raises(ValueError, match="2\\*\\*21"):
        K.split_limbs(torch.full((2, 2), 1 << 21, dtype=torch.int32))


def test_every_profile_width_runs_the_kernels(monkeypatch):
    """Every (weight, activation) width of spec.profiles.PROFILES, and the spec's widest (16, 16),
    goes through the kernels (the spec fallback is disabled here) and matches the spec."""
    import spec.ops

    gen = torch.Generator().manual_seed(17)
    cases = []
    for w_bits, a_bits in sorted(set(PROFILE_WIDTHS) | {(16, 16), (16, 8), (8, 16)}):
        x = q16_rows(gen, 3, 70, "both")
        w = weights(gen, 19, 70, w_bits, w_bits > 8)
        mul, shift = multipliers(gen, 19, 20, 40)
        cases.append((x, w, mul, shift, a_bits, spec_ops.linear(x, a_bits, w, mul, shift)))
    monkeypatch.setattr(spec.ops, "linear", lambda *a, **k: pytest.fail("the kernels fell back to the spec"))
    for x, w, mul, shift, a_bits, want in cases:
        assert_equal(K.linear(*to_dev(x), a_bits, *to_dev(w, mul, shift)), want, f"a{a_bits} w{w.dtype}")


def test_very_wide_weights_fall_back_to_spec():
    """Weights past 21 bits (no spec width has them; int32 storage) would need a fourth limb."""
    gen = torch.Generator().manual_seed(3)
    x = q16_rows(gen, 3, 40, "both")
    w = torch.randint(-(1 << 22), 1 << 22, (5, 40), generator=gen, dtype=torch.int32)
    mul, shift = multipliers(gen, 5, 40, 60)
    assert K.weight_limbs(w) is None
    assert_equal(K.linear(*to_dev(x), 8, *to_dev(w, mul, shift)), spec_ops.linear(x, 8, w, mul, shift), "w23")


def test_weight_limb_cache_follows_in_place_edits():
    gen = torch.Generator().manual_seed(5)
    w = weights(gen, 6, 20, 10, True).to(DEVICE)
    first = K.weight_limbs(w)
    assert K.weight_limbs(w) is first
    w[0, 0] = -w[0, 0] - 1
    assert torch.equal(recombine(K.weight_limbs(w)), w.long())


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
# The decode linear: quantization (and RMSNorm) in front, residual in the epilogue
# --------------------------------------------------------------------------------

ROWS_TILES = [None,  # the committed decode tile (16 x 64 x 256 or 128): one program, one K block here
              dict(BLOCK_N=16, BLOCK_K=32, SPLIT_K=1, num_warps=1, num_stages=1, ROW_BLOCK=16, NORM_BLOCK=32),
              dict(BLOCK_N=16, BLOCK_K=32, SPLIT_K=3, num_warps=1, num_stages=1, ROW_BLOCK=32, NORM_BLOCK=16),
              dict(BLOCK_N=32, BLOCK_K=64, SPLIT_K=2, num_warps=2, num_stages=2, ROW_BLOCK=64, NORM_BLOCK=64),
              # the prefetch of 0 and 1 blocks (the committed 2 above), shares of 1 block (the
              # second prefetched block is then not the program's and must add nothing)
              dict(BLOCK_N=16, BLOCK_K=32, SPLIT_K=4, num_warps=1, num_stages=2, ROW_BLOCK=32, NORM_BLOCK=32,
                   PREFETCH=0),
              dict(BLOCK_N=16, BLOCK_K=32, SPLIT_K=2, num_warps=1, num_stages=2, ROW_BLOCK=32, NORM_BLOCK=32,
                   PREFETCH=1),
              dict(BLOCK_N=16, BLOCK_K=32, SPLIT_K=7, num_warps=1, num_stages=2, ROW_BLOCK=16, NORM_BLOCK=32,
                   PREFETCH=2)]
ROWS_WIDTHS = sorted({wa for wa in PROFILE_WIDTHS if max(wa) <= 15} | {(8, 8), (10, 12), (15, 15), (2, 2)})


@settings(max_examples=EXAMPLES)
@given(n=st.integers(1, 16), k=st.integers(1, 200), o=st.integers(1, 50), widths=st.sampled_from(ROWS_WIDTHS),
       wide=st.booleans(), kind=st.sampled_from(["plain", "zero", "sat", "both"]), norm=st.booleans(),
       gain_bits=st.sampled_from([16, 20, 31]), residual=st.sampled_from([None, "small", "sat"]),
       bias=st.booleans(), tile=st.sampled_from(ROWS_TILES), int32_in=st.booleans(), seed=st.integers(0, 2**31))
def test_linear_rows_equals_spec(n, k, o, widths, wide, kind, norm, gain_bits, residual, bias, tile, int32_in, seed):
    """One launch: the rows' absmax and scale (and RMSNorm) in every program, the limbs quantized
    in registers, exact split K, bias and residual in the epilogue, against spec.ops.linear /
    rms_norm / residual_add. Gains of 31 bits saturate the norm; "sat" residuals saturate the
    sum; K tails, statistics in several steps (ROW_BLOCK), zero rows and rows at +-ACT_MAX."""
    w_bits, a_bits = widths
    gen = torch.Generator().manual_seed(seed)
    x = q16_rows(gen, n, k, kind)
    w = weights(gen, o, k, w_bits, wide)
    mul, shift = multipliers(gen, o, 14, 34)
    b = torch.randint(-(1 << 24), 1 << 24, (o,), generator=gen, dtype=torch.int64).to(torch.int32) if bias else None
    gamma = torch.randint(-(1 << gain_bits) + 1, 1 << gain_bits, (k,), generator=gen, dtype=torch.int64)
    gamma, eps = gamma.to(torch.int32), torch.tensor([1 << int(torch.randint(0, 46, (1,), generator=gen))])
    res = None if residual is None else residual_rows(gen, n, o, residual)
    h = spec_ops.rms_norm(x, gamma, eps) if norm else x
    want = spec_ops.linear(h, a_bits, w, mul, shift, b)
    want = want if res is None else spec_ops.residual_add(res, want)
    xd, gd, ed, rd = to_dev(x.to(torch.int32) if int32_in else x, gamma, eps, res)
    limbs = K.weight_limbs(w.to(DEVICE))
    got = K.linear_rows(xd, a_bits, limbs, *to_dev(mul, shift, b), residual=rd, norm=(gd, ed) if norm else None,
                        fuse=True, config=tile)
    assert got.dtype == torch.int64 and got.shape == (n, o)
    assert_equal(got, want, f"rows {n}x{k}x{o} w{w_bits} a{a_bits} norm={norm} res={residual} tile={tile}")
    assert_split_k_buffers_clean()


@pytest.mark.parametrize("m", [1, 2, 3, 8, 16])
@pytest.mark.parametrize("widths", [(8, 8), (8, 12), (10, 8), (10, 12)])
def test_linear_rows_committed_tiles(m, widths):
    """The one launch with `rows_config`'s tile (the prefetch of two blocks for 1..8 rows, none
    for 16), normed and with a residual, K a multiple of the 128-value block and not, every
    limb combination of the profiles: the variants the decode step launches (so that
    ``tools.sm90_check`` compiles each of them)."""
    w_bits, a_bits = widths
    gen = torch.Generator().manual_seed(1000 * m + w_bits + a_bits)
    for k, norm in ((256, True), (300, False), (300, True), (256, False)):
        o = 70
        x = q16_rows(gen, m, k, "both")
        w = weights(gen, o, k, w_bits, False)
        mul, shift = multipliers(gen, o, 14, 34)
        gamma = torch.randint(-(1 << 20), 1 << 20, (k,), generator=gen, dtype=torch.int32)
        eps = torch.tensor([1 << 30])
        res = None if norm else residual_rows(gen, m, o, "sat")
        want = spec_ops.linear(spec_ops.rms_norm(x, gamma, eps) if norm else x, a_bits, w, mul, shift)
        want = want if res is None else spec_ops.residual_add(res, want)
        cfg = K.rows_config(m, o, k, K._num_limbs(a_bits), K.weight_limbs(w).shape[0], norm, torch.device(DEVICE))
        assert cfg["PREFETCH"] == (2 if m <= 8 else 0)
        got = K.linear_rows(*to_dev(x.to(torch.int32)), a_bits, K.weight_limbs(w.to(DEVICE)), *to_dev(mul, shift),
                            residual=to_dev(res)[0], norm=tuple(to_dev(gamma, eps)) if norm else None, fuse=True)
        assert_equal(got, want, f"rows {m}x{k}x{o} a{a_bits} w{w_bits} norm={norm} cfg={cfg}")


@pytest.mark.parametrize("fuse", [None, False])
def test_linear_rows_two_launch_paths(fuse):
    """The hint's choice and the two-launch path (quantize_rows or rms_norm_quantize, then the
    matmul with the residual in its epilogue), three-limb activations and M > 16 included."""
    gen = torch.Generator().manual_seed(21)
    for n, k, o, w_bits, a_bits, norm in ((1, 90, 30, 8, 8, True), (17, 40, 20, 8, 12, False), (3, 50, 9, 10, 16, True),
                                          (16, 64, 33, 16, 12, False)):
        x = q16_rows(gen, n, k, "both")
        w = weights(gen, o, k, w_bits, w_bits > 8)
        mul, shift = multipliers(gen, o, 14, 34)
        gamma = torch.randint(-(1 << 20), 1 << 20, (k,), generator=gen, dtype=torch.int32)
        eps = torch.tensor([1 << 30])
        res = residual_rows(gen, n, o, "sat")
        want = spec_ops.residual_add(res, spec_ops.linear(spec_ops.rms_norm(x, gamma, eps) if norm else x, a_bits, w,
                                                          mul, shift))
        got = K.linear_rows(*to_dev(x), a_bits, K.weight_limbs(w.to(DEVICE)), *to_dev(mul, shift),
                            residual=to_dev(res)[0], norm=tuple(to_dev(gamma, eps)) if norm else None, fuse=fuse)
        assert_equal(got, want, f"rows {n}x{k}x{o} a{a_bits} w{w_bits} fuse={fuse}")


@settings(max_examples=max(EXAMPLES // 2, 1))
@given(n=st.integers(1, 64), inter=st.integers(1, 150), o=st.integers(1, 40),
       widths=st.sampled_from([(8, 8), (8, 12), (10, 12), (8, 16)]), scale=st.integers(0, 31),
       residual=st.sampled_from([None, "small", "sat"]), bias=st.booleans(), seed=st.integers(0, 2**31))
def test_linear_gated_equals_spec(n, inter, o, widths, scale, residual, bias, seed):
    """The down projection of the decode step: swiglu of the halves of [gate | up], then the
    linear with the residual in its epilogue, against spec.ops.swiglu / linear / residual_add.
    M = 1..64 covers the three paths (swiglu + the one-launch linear; swiglu + quantize_rows +
    the matmul; swiglu_quantize + the matmul from SWIGLU_QUANT_MIN_M rows, split K at 17..64
    rows), 16-bit activations the three-limb launches."""
    from spec.tables import sigmoid_table

    w_bits, a_bits = widths
    gen = torch.Generator().manual_seed(seed)
    gu = torch.cat([q16_rows(gen, n, inter, "both") >> (31 - scale), q16_rows(gen, n, inter, "sat")], dim=1)
    w = weights(gen, o, inter, w_bits, False)
    mul, shift = multipliers(gen, o, 14, 34)
    b = torch.randint(-(1 << 24), 1 << 24, (o,), generator=gen, dtype=torch.int64).to(torch.int32) if bias else None
    res = None if residual is None else residual_rows(gen, n, o, residual)
    table = sigmoid_table()
    want = spec_ops.linear(spec_ops.swiglu(gu[:, :inter], gu[:, inter:], table), a_bits, w, mul, shift, b)
    want = want if res is None else spec_ops.residual_add(res, want)
    got = K.linear_gated(*to_dev(gu), table, a_bits, K.weight_limbs(w.to(DEVICE)), *to_dev(mul, shift, b),
                         residual=to_dev(res)[0])
    assert_equal(got, want, f"gated {n}x{inter}x{o} w{w_bits} a{a_bits} res={residual}")
    assert_split_k_buffers_clean()


def test_split_k_hint_covers_the_sms():
    """M <= 16: the measured rule (>= 16 K blocks); 17..64 rows: enough shares to cover the SMs
    once, each of >= WIDE_SPLIT_MIN_BLOCKS blocks, at most WIDE_SPLIT_MAX; many tiles: none."""
    dev = torch.device("cuda") if CUDA and not INTERPRET else torch.device("cpu")
    sms = K._sm_count(dev)

    def split(m, n, k):
        return K._config(m, n, k, 1, 1, dev)["SPLIT_K"]

    assert split(1, K.SKINNY_N, 14336) == min(K.SKINNY_SPLIT, 14336 // 256 // 4)
    assert split(1, K.SKINNY_N, 2048) == 1  # 8 K blocks
    assert split(64, 256 * K.SKINNY_N, 8192) == 1  # tiles >= SMs
    for m, n, k in ((64, 2048, 8192), (64, 3072, 2048), (33, 4096, 14336), (17, 64, 4096)):
        cfg = K._config(m, n, k, 1, 1, dev)
        tiles = triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
        s = cfg["SPLIT_K"]
        k_blocks = triton.cdiv(k, cfg["BLOCK_K"])
        assert 1 <= s <= K.WIDE_SPLIT_MAX and (s == 1 or k_blocks // s >= K.WIDE_SPLIT_MIN_BLOCKS)
        assert tiles >= sms or s == min(K.WIDE_SPLIT_MAX, k_blocks // K.WIDE_SPLIT_MIN_BLOCKS, -(-sms // tiles))


@pytest.mark.parametrize("m", [17, 64])
@pytest.mark.parametrize("a_bits", [8, 12])
def test_wide_split_k_committed_tile(m, a_bits):
    """17..64 rows with the committed decode tile split over K (3 shares: `split_k_hint` splits
    none at these rows now, WIDE_SPLIT_MAX), K not a multiple of the block, the residual in the
    epilogue; twice on one workspace."""
    gen = torch.Generator().manual_seed(m + a_bits)
    k, o = 2100, 64
    x = q16_rows(gen, m, k, "both")
    w = weights(gen, o, k, 8, False)
    mul, shift = multipliers(gen, o, 20, 34)
    res = residual_rows(gen, m, o, "sat")
    want = spec_ops.residual_add(res, spec_ops.linear(x, a_bits, w, mul, shift))
    cfg = dict(K._config(m, o, k, K._num_limbs(a_bits), 1, torch.device(DEVICE)), SPLIT_K=3)
    q, qm, qe = K.quantize_rows(*to_dev(x), a_bits)
    for _ in range(2):
        got = K.linear_quantized(q, qm, qe, K.weight_limbs(w.to(DEVICE)), *to_dev(mul, shift), residual=to_dev(res)[0],
                                 config=cfg)
        assert_equal(got, want, f"split {cfg['SPLIT_K']} M={m} a{a_bits}")
    assert_split_k_buffers_clean()


def test_fuse_rows_hint():
    """The hint only picks shapes the one-launch kernel covers, and keeps long rows out."""
    dev = torch.device(DEVICE)
    assert K.fuse_rows_hint(1, 4096, 4096, 1, 1, False, 8, dev)
    assert not K.fuse_rows_hint(17, 4096, 4096, 1, 1, False, 8, dev)  # M > ROWS_MAX_M
    assert not K.fuse_rows_hint(1, 4096, 4096, 3, 1, False, 8, dev)  # three limbs
    assert not K.fuse_rows_hint(8, 4096, 14336, 1, 1, False, 8, dev)  # 8 x 14336 x 8 bytes per program
    assert not K.fuse_rows_hint(1, 4096, 4096, 1, 1, True, 8, dev)  # the norm: two launches (measured)
    assert not K.fuse_rows_hint(2, 4096, 4096, 1, 1, False, 8, dev)  # M > ROWS_FUSE_MAX_M
    with pytest.raises(ValueError, match="one launch"):
        x = torch.zeros((17, 8), dtype=torch.int64, device=DEVICE)
        w = torch.zeros((1, 4, 8), dtype=torch.int8, device=DEVICE)
        K.linear_rows(x, 8, w, *to_dev(torch.ones(4, dtype=torch.int32), torch.ones(4, dtype=torch.int32)), fuse=True)


# %%
# Real sizes (GPU)
# ----------------

LLAMA_SHAPES = [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336), (2048, 8192), (3072, 2048)]
GPU_WIDTHS = sorted(set(PROFILE_WIDTHS) | {(16, 16)})  # (weight bits, act bits); 16: three limbs


def cuda_case(gen: torch.Generator, m: int, o: int, k: int, w_bits: int):
    """Random Q16 rows (own magnitude each, a zero row and a +-ACT_MAX row when m > 2), weights
    of w_bits with their extremes, multipliers and shifts, generated on the GPU."""
    mag = torch.randint(0, 32, (m, 1), generator=gen, device="cuda")
    x = torch.randint(-ACT_MAX, ACT_MAX + 1, (m, k), generator=gen, device="cuda", dtype=torch.int64) >> (31 - mag)
    if m > 2:
        x[0] = 0
        x[1] = torch.where(torch.rand(k, generator=gen, device="cuda") < 0.5, -ACT_MAX, ACT_MAX)
    qm = (1 << (w_bits - 1)) - 1
    w = torch.randint(-qm, qm + 1, (o, k), generator=gen, device="cuda", dtype=torch.int32)
    w[0, :2] = torch.tensor([qm, -qm], device="cuda")
    w = w.to(torch.int16 if w_bits > 8 else torch.int8)
    mul = torch.randint(1 << 12, 1 << 13, (o,), generator=gen, device="cuda", dtype=torch.int32)
    shift = torch.randint(16, 44, (o,), generator=gen, device="cuda", dtype=torch.int32)
    return x, w, mul, shift


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 7, 16, 33, 64, 300, 1024])
def test_linear_real_sizes(m):
    """Llama shapes at decode and prefill sizes for every width of the profiles and (16, 16):
    the committed tiles (split K for M <= 64, the sliced epilogue for the GEMM tiles)."""
    if INTERPRET:
        pytest.skip("real sizes run on the GPU without the interpreter")
    gen = torch.Generator(device="cuda").manual_seed(m)
    outputs = 0
    for o, k in LLAMA_SHAPES:
        for w_bits, a_bits in GPU_WIDTHS:
            x, w, mul, shift = cuda_case(gen, m, o, k, w_bits)
            bias = torch.randint(-(1 << 24), 1 << 24, (o,), generator=gen, device="cuda", dtype=torch.int32)
            got = K.linear(x, a_bits, w, mul, shift, bias)
            want = spec_ops.linear(x, a_bits, w, mul, shift, bias)
            assert_equal(got, want, f"w{w_bits} a{a_bits} M={m} {o}x{k}")
            outputs += want.numel()
    assert_split_k_buffers_clean()
    print(f"M={m}: {outputs} outputs equal")


@pytest.mark.gpu
@pytest.mark.parametrize("split", [2, 3, 7, 16])
def test_split_k_real_sizes(split):
    """Explicit K splits (uneven shares included) on a decode shape, repeated launches on one
    workspace: the integer atomics must give the spec's bits every time."""
    if INTERPRET:
        pytest.skip("real sizes run on the GPU without the interpreter")
    gen = torch.Generator(device="cuda").manual_seed(split)
    for m, (o, k), la_bits in ((1, (4096, 14336), 8), (16, (6144, 4096), 12), (64, (2048, 8192), 8)):
        x, w, mul, shift = cuda_case(gen, m, o, k, 8)
        want = spec_ops.linear(x, la_bits, w, mul, shift)
        q, qm, qe = K.quantize_rows(x, la_bits)
        cfg = dict(BLOCK_M=16 if m <= 16 else 64, BLOCK_N=64, BLOCK_K=256, GROUP_M=1, num_warps=4, num_stages=4,
                   SPLIT_K=split)
        for _ in range(3):
            assert_equal(K.linear_quantized(q, qm, qe, w.unsqueeze(0), mul, shift, config=cfg), want,
                         f"split {split} M={m}")


DECODE_SHAPES = {  # name -> (O, K): the decode step's linears (q/k/v and gate/up fused)
    "1B.qkv": (3072, 2048), "1B.o": (2048, 2048), "1B.gate_up": (16384, 2048), "1B.down": (2048, 8192),
    "8B.qkv": (6144, 4096), "8B.o": (4096, 4096), "8B.gate_up": (28672, 4096), "8B.down": (4096, 14336),
}


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8, 16])
def test_linear_rows_real_sizes(m):
    """The one-launch decode linear at Llama-3.2-1B and Llama-3-8B shapes (forced, whatever the
    hint says), both profiles' widths and the 15-bit edge, normed (q/k/v, gate/up) or with the
    residual (o, down), saturating residuals, split K as committed; repeated launches on one
    workspace."""
    if INTERPRET:
        pytest.skip("real sizes run on the GPU without the interpreter")
    gen = torch.Generator(device="cuda").manual_seed(100 + m)
    outputs = 0
    for name, (o, k) in DECODE_SHAPES.items():
        normed = name.split(".")[1] in ("qkv", "gate_up")
        for w_bits, a_bits in sorted({wa for wa in GPU_WIDTHS if max(wa) <= 15} | {(10, 12)}):
            x, w, mul, shift = cuda_case(gen, m, o, k, w_bits)
            gamma = torch.randint(-(1 << 18), 1 << 18, (k,), generator=gen, device="cuda", dtype=torch.int32)
            eps = torch.tensor([1 << 28], device="cuda")
            res = torch.randint(-ACT_MAX, ACT_MAX + 1, (m, o), generator=gen, device="cuda", dtype=torch.int64)
            bias = torch.randint(-(1 << 24), 1 << 24, (o,), generator=gen, device="cuda", dtype=torch.int32)
            h = spec_ops.rms_norm(x, gamma, eps) if normed else x
            want = spec_ops.linear(h, a_bits, w, mul, shift, bias)
            want = want if normed else spec_ops.residual_add(res, want)
            limbs = K.weight_limbs(w)
            for fuse, xin in ((True, x), (None, x), (None, x.to(torch.int32))):  # int32: as the step's rows
                for _ in range(2):
                    got = K.linear_rows(xin, a_bits, limbs, mul, shift, bias, residual=None if normed else res,
                                        norm=(gamma, eps) if normed else None, fuse=fuse)
                    assert_equal(got, want, f"rows {name} M={m} w{w_bits} a{a_bits} fuse={fuse} {xin.dtype}")
            outputs += want.numel()
    assert_split_k_buffers_clean()
    print(f"M={m}: {outputs} outputs equal")


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8, 64])
def test_linear_gated_real_sizes(m):
    """The decode step's down projection at the 1B and 8B shapes: swiglu of the halves of the
    gate/up output (int32, as the step keeps it), then the linear with the residual, both
    profiles' widths; and the q/k/v, o, gate/up linears on int32 rows at M = 64 (the split K
    of 17..64 rows, the two-launch path)."""
    if INTERPRET:
        pytest.skip("real sizes run on the GPU without the interpreter")
    from spec.tables import sigmoid_table

    gen = torch.Generator(device="cuda").manual_seed(200 + m)
    table = sigmoid_table().cuda()
    outputs = 0
    for o, inter in ((2048, 8192), (4096, 14336)):
        for w_bits, a_bits in ((8, 8), (8, 12), (10, 12)):
            g, w, mul, shift = cuda_case(gen, m, o, inter, w_bits)
            u, _, _, _ = cuda_case(gen, m, 1, inter, 8)
            gu = torch.cat([g >> 8, u], dim=1).to(torch.int32)
            res = torch.randint(-ACT_MAX, ACT_MAX + 1, (m, o), generator=gen, device="cuda", dtype=torch.int64)
            want = spec_ops.residual_add(res, spec_ops.linear(spec_ops.swiglu(gu[:, :inter].long(), gu[:, inter:].long(),
                                                                              table), a_bits, w, mul, shift))
            for _ in range(2):
                got = K.linear_gated(gu, table, a_bits, K.weight_limbs(w), mul, shift, residual=res.to(torch.int32),
                                     out_dtype=torch.int32)
                assert_equal(got.long(), want, f"gated M={m} {o}x{inter} w{w_bits} a{a_bits}")
            outputs += want.numel()
    if m == 64:
        for name, (o, k) in DECODE_SHAPES.items():
            normed = name.split(".")[1] in ("qkv", "gate_up")
            x, w, mul, shift = cuda_case(gen, m, o, k, 8)
            gamma = torch.randint(-(1 << 18), 1 << 18, (k,), generator=gen, device="cuda", dtype=torch.int32)
            eps = torch.tensor([1 << 28], device="cuda")
            res = torch.randint(-ACT_MAX, ACT_MAX + 1, (m, o), generator=gen, device="cuda", dtype=torch.int64)
            h = spec_ops.rms_norm(x, gamma, eps) if normed else x
            want = spec_ops.linear(h, 8, w, mul, shift)
            want = want if normed else spec_ops.residual_add(res, want)
            got = K.linear_rows(x.to(torch.int32), 8, K.weight_limbs(w), mul, shift,
                                residual=None if normed else res.to(torch.int32), norm=(gamma, eps) if normed else None)
            assert_equal(got, want, f"rows {name} M=64")
            outputs += want.numel()
    assert_split_k_buffers_clean()
    print(f"M={m}: {outputs} outputs equal")

