"""
Integer linear layers on int8 tensor cores, bit for bit with ``spec.ops.linear``
================================================================================

``spec.ops.linear(x, act_bits, W, mul, shift, bias)`` is three steps (``spec/quant.py``):

1. ``quantize_rows``: each row of the Q16 input gets a scale ``(m, e)`` from its absmax, and
   ``q = round(x / (m * 2**e))`` with ``|q| <= qmax(act_bits)``;
2. ``int_matmul``: the exact integer product ``acc = q @ W.T``;
3. ``requantize``: ``y = round(acc * m * mul * 2**(e - shift))``, saturated to ``ACT_MAX``, then
   ``+ bias``, saturated again.

``linear`` runs them as two launches: ``_quantize_rows_kernel`` (one pass over ``x``) and
``_linear_kernel`` or ``_linear_tma_kernel`` (the matmul with step 3 fused in its epilogue).
The decode step's ``linear_rows`` runs them as one, ``_linear_rows_kernel``, where that pays
(``fuse_rows_hint``), with ``spec.ops.rms_norm`` in front if asked; every epilogue can add a
residual (``spec.ops.residual_add``) after the bias, so o and down write ``x + o(...)``.

Limbs
-----
Tensor cores multiply int8 by int8 into int32 exactly. A wider integer is split into 7-bit
*limbs*: ``v = sum_i l_i * 2**(7 i)`` with the lower limbs ``(v >> 7 i) & 127`` in ``[0, 127]``
and the top one ``v >> 7 (L - 1)`` (arithmetic shift) signed. Two limbs hold ``|v| < 2**14``
(the ``default`` profile's 12-bit activations, the 10-bit edge-layer weights, any width up to
15 bits), three hold the spec's widest, 16 bits (``|v| <= 32767``). Then

    acc = sum_ij dot(a_i, w_j) * 2**(7 (i + j))

is exact: every limb product is at most ``2**14`` in magnitude, so a limb dot over
``K <= MAX_K = 131071`` terms stays below ``2**31`` in its int32 accumulator, and the
combination runs in int64. The kernel keeps one accumulator per limb pair for operands of up
to two limbs; a three-limb operand runs one launch per pair of limb groups (``RAW``: the exact
int64 sum of the group's limb dots), the shifted sum of which is requantized by
``spec.quant.requantize`` itself. Only ``K > MAX_K`` (and weights beyond 21 bits, which no
spec width has) runs the spec.

Exact arithmetic: which GPU forms, and why
------------------------------------------
* *Requantization in int64, in the epilogue.* ``acc * m * mul`` needs up to 61 bits
  (``spec.profiles.stage_bounds``), beyond float64's 53, so a float64 form would need a
  correction step for every output anyway. int64 wraps modulo ``2**64`` exactly as torch
  does, so the order of the products cannot matter, and the kernel uses that: when every
  ``|mul| < 2**17`` (checked once per multiplier tensor; the spec's are below ``2**13``)
  ``m * mul`` is one int32 product and the accumulator takes one multiply by it (32 x 32 ->
  64 for a single limb pair), otherwise the spec's two int64 products. The rounding (``_shift_round``) is
  ``spec.quant.shift_round`` written out, including its saturating left shift for negative
  shifts and its clamp of the shift at 62. With one limb pair the saturated result is
  narrowed to int32 before the store, whatever the output dtype: the int64 tile held whole
  until the store spilled registers (``bench_linear.py --resources``; docs/fast/linear.md).
* *Row quantization: a float64 product and one integer correction.* ``div_round`` needs
  ``floor((2|n| + d) / (2 d))`` per element with ``2|n| + d < 2**33``. Integer division is a
  long software sequence on the GPU; the float64 product of ``N`` with the row's
  float64 reciprocal ``1 / D`` is within a relative ``3 * 2**-53`` of ``N / D``, so its
  truncation is within one unit of the floor, and one step ``r = N - t D; t -= r < 0;
  t += r >= D`` makes it exact (``_floor_div``). The RMSNorm's ``div_round(xs * gamma, r)``
  (``|xs * gamma| < 2**54``) takes the same step, its quotient clamped at ``2**36`` first
  (past ``ACT_MAX`` it saturates anyway). The scale itself (``row_scale``: a bit length and
  one ceiling division) is per row, in int64.

Shape classes
-------------
The launcher picks the kernel and its tile (``_config``; the table was chosen by the H200 tile
sweeps of ``benchmarks/bench_linear.py --sweep``, docs/fast/linear.md):

* *GEMM* (prefill, ``M > 64``): ``_linear_tma_kernel``, whose tiles the tensor-memory
  accelerator fetches (no per-element address registers), grouped program order for L2 reuse
  (``GROUP_M``, as in Triton's matmul tutorial), 3-4 pipeline stages, and the epilogue run on
  column slices of the tile (``EPI_SPLIT``) where the whole tile's int64 temporaries would
  spill. Triton does not keep int8 ``wgmma`` groups in flight across K steps (it waits for
  each: ``pendings = 0``), which bounds this kernel near bf16 speed on the H200.
* *Decode* (``M <= 64``): 16- to 64-row tiles, 64 weight rows x 256 K per stage, so that the
  int8 weights stream once at memory bandwidth; the activation rows are tiny and stay in L2.
  Launches with fewer tiles than SMs split K (``split_k_hint``; 17..64 rows as well), exactly:
  see ``_linear_kernel``.
* *Decode, one launch* (``M <= 16``, ``linear_rows``): every program loads its first weight
  blocks, then reads the Q16 rows for their statistics (absmax, and the RMSNorm's sums) while
  those loads are in flight, then quantizes its own K blocks in registers: a redundant pass per
  program, cheap while the rows are a few tens of KB in L2, a loss for long rows or many tiles
  (``fuse_rows_hint`` then keeps two launches). Its K split (``rows_config``) aims for ~2
  programs per SM with shares about as long as the prefetch, so most weight bytes are in
  flight behind the statistics instead of queued after them.

The weights are passed as ``[O, K]`` (K contiguous), which is the K-major operand layout
Hopper's 8-bit ``wgmma`` requires for both operands.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

try:  # host-side tensor descriptors (Triton >= 3.4); without them the GEMM uses pointer loads
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None

from spec.constants import ACT_MAX as _ACT_MAX, RMS_NORM_BITS as _RMS_NORM_BITS, SCALE_MANT_BITS as _SCALE_MANT_BITS

ACT_MAX = tl.constexpr(_ACT_MAX)  # (= 2**31 - 1) saturation bound of Q16 activations
SCALE_MANT_BITS = tl.constexpr(_SCALE_MANT_BITS)  # (= 14) row-scale mantissa bits
RMS_NORM_BITS = tl.constexpr(_RMS_NORM_BITS)  # (= 23) bits of the largest rescaled magnitude in rms_norm
LIMB_BITS = tl.constexpr(7)  # v = sum_i l_i * 2**(7 i): l_i in [0, 127] below the top limb
MAX_LIMBS = 3  # operands of up to 21 magnitude bits (|v| < 2**21); the spec's widths stop at 16
MAX_K = (2**31 - 1) // 2**14  # (= 131,071) longest limb dot an int32 accumulator holds exactly
QUANT_BLOCK = 16384  # rows up to this long are quantized from registers, in one read
CHUNK_BLOCK = 1024  # values per block when a few long rows are quantized by many programs
CHUNK_MIN_K = 2048  # rows at least this long, too few to fill the GPU, are quantized in chunks
ROWS_MAX_M = 16  # rows a fused decode launch (`linear_rows`) quantizes in front of its matmul
FUSE_ROW_BYTES = 64 << 10  # ... when its rows (next_pow2(M) x K values) are at most this many bytes
FUSE_NORM_WORK = 1 << 21  # ... and, with the RMSNorm in front, programs x rows x K at most this
SWIGLU_QUANT_MIN_M = 32  # rows from which `linear_gated` quantizes the swiglu in its own launch (one program a row)
ROWS_PREFETCH = 2  # weight blocks a one-launch decode program loads before its row statistics (0..2)
ROWS_PREFETCH_MAX_M = 8  # ... for up to this many rows (16 rows: Triton 3.9 fails to compile it; 3.6 spills)
ROWS_SPLIT_MAX = 8  # most K shares of a one-launch decode linear (`rows_config`)
# `fuse_rows_hint` picks the one launch only for rows without the norm, up to this many. Measured
# on the H200 (bench_linear --decode, 2026-12-04, in CUDA graphs), one launch / quantize + matmul:
# M = 1 1B o 7.4 / 8.3 us, down 12.0 / 12.2, 8B o 12.2 / 11.9, down 25.0 / 23.9; with the norm
# 1B gate_up 24.2 / 19.4, 8B qkv 21.4 / 18.4, gate_up 69.2 / 48.1; M = 8 1B qkv 39.3 / 11.7,
# down 34.1 / 12.1. The statistics every program repeats cost more than the launch they save.
ROWS_FUSE_MAX_M = 1


# %%
# Row quantization
# ----------------

@triton.jit
def _bit_length(v):
    """Return the bit length of 1 <= v < 2**53 (int64): the float64 exponent, read off its bits."""
    return ((v.to(tl.float64).to(tl.int64, bitcast=True) >> 52) & 2047) - 1022


@triton.jit
def _floor_div(num, den, rcp, CAP: tl.constexpr):
    """Return floor(num / den) where it is below CAP, a value >= CAP elsewhere, for integers
    num >= 0, 1 <= den < 2**53 with num + den < 2**62, CAP <= 2**51, and rcp the float64 1 / den.

    The float64 product num * rcp is within a relative 3 * 2**-53 of num / den, so below CAP its
    truncation is within one of the floor, and the step ``r = num - t den; t -= r < 0;
    t += r >= den`` makes it exact (t <= floor + 1, so t den <= num + den: no overflow); a
    quotient at or past CAP truncates to >= CAP - 1, clamped to CAP, and comes out >= CAP
    (callers saturate below it). One multiply instead of a float64 division per element."""
    t = tl.minimum((num.to(tl.float64) * rcp).to(tl.int64), CAP)
    r = num - t * den
    t = tl.where(r < 0, t - 1, t)
    return tl.where(r >= den, t + 1, t)


@triton.jit
def _row_scale(amax, QMAX: tl.constexpr):
    """spec.quant.row_scale of amax >= 1 (int64; any shape): return (m, e) and the quantizer's
    operands (left, d, rcp): q = div_round(x << left, d), d = m << max(e, 0), rcp = 1 / (2 d)."""
    qmax = tl.full([], QMAX, tl.int64)
    e = _bit_length(amax) - _bit_length(qmax) + 1 - SCALE_MANT_BITS
    left = tl.maximum(-e, 0)
    right = tl.maximum(e, 0)
    den = qmax << right
    m = ((amax << left) + den - 1) // den  # ceil_div of non-negative integers
    d = m << right
    return m, e, left, d, 1.0 / (2 * d).to(tl.float64)


@triton.jit
def _quantize_values(x, left, d, rcp):
    """Return div_round(x << left, d) (int64) of Q16 values x with their row's quantizer
    (`_row_scale`): |q| <= qmax < 2**16, so the quotient never reaches `_floor_div`'s cap."""
    q = _floor_div(2 * (tl.abs(x) << left) + d, 2 * d, rcp, 1 << 20)
    return tl.where(x < 0, -q, q)


@triton.jit
def _limb(q, I: tl.constexpr, LIMBS: tl.constexpr):
    """Return limb I of q as int8: q itself for one limb, else (q >> 7 I) & 127, the top one signed."""
    if LIMBS == 1:
        out = q.to(tl.int8)
    elif I == LIMBS - 1:
        out = (q >> (LIMB_BITS * I)).to(tl.int8)
    else:
        out = ((q >> (LIMB_BITS * I)) & 127).to(tl.int8)
    return out


@triton.jit
def _quantize_block(x, mask, q_out, stride_ql, left, d, rcp, LIMBS: tl.constexpr):
    """Store div_round(x << left, d) as int8 limbs (`_quantize_values`, `_limb`)."""
    q = _quantize_values(x, left, d, rcp)
    tl.store(q_out, _limb(q, 0, LIMBS), mask=mask)
    if LIMBS >= 2:
        tl.store(q_out + stride_ql, _limb(q, 1, LIMBS), mask=mask)
    if LIMBS == 3:
        tl.store(q_out + 2 * stride_ql, _limb(q, 2, LIMBS), mask=mask)


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, m_ptr, e_ptr,  # x [N, K] int32/int64; q [LIMBS, N, K] int8; m, e [N] int32
    K, CHUNK_BLOCKS, stride_xn, stride_ql, stride_qn,
    QMAX: tl.constexpr, LIMBS: tl.constexpr, BLOCK: tl.constexpr, ONE_PASS: tl.constexpr,
    ROW_BLOCK: tl.constexpr,
):
    """Program (row, c): absmax of the row, its scale (m, e), then q = div_round(x * 2**-e, m)
    as limbs for the c-th chunk of CHUNK_BLOCKS blocks (ONE_PASS: the row is one block, read once).

    A row split over several programs is read once per program for its absmax (from L2), in
    one load of ROW_BLOCK values when the row fits (a loop of dependent block loads is a chain
    of L2 round trips: 9.7 us for a 14,336-value row, measured); the division, which costs far
    more than the read, is then shared out, so a decode step's one long row is quantized by
    many SMs instead of one."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    x_row = x_ptr + row * stride_xn
    # -- absmax of the row ---------------------------------------------------------------
    if ONE_PASS:
        x_all = tl.load(x_row + offs, mask=offs < K, other=0).to(tl.int64)
        amax = tl.abs(x_all)
    elif ROW_BLOCK > 0:
        offs_row = tl.arange(0, ROW_BLOCK)
        amax = tl.abs(tl.load(x_row + offs_row, mask=offs_row < K, other=0).to(tl.int64))
    else:
        amax = tl.zeros([BLOCK], dtype=tl.int64)
        for k0 in range(0, K, BLOCK):
            x = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0).to(tl.int64)
            amax = tl.maximum(amax, tl.abs(x))
    amax = tl.maximum(tl.max(amax, axis=0), 1)  # a zero row is treated as amax = 1
    m, e, left, d, rcp = _row_scale(amax, QMAX)  # spec.quant.row_scale
    # -- q = div_round(x << left, d) -----------------------------------------------------
    if ONE_PASS:
        _quantize_block(x_all, offs < K, q_ptr + row * stride_qn + offs, stride_ql, left, d, rcp, LIMBS)
    else:
        first = c * CHUNK_BLOCKS * BLOCK
        for k0 in range(first, tl.minimum(first + CHUNK_BLOCKS * BLOCK, K), BLOCK):
            mask = k0 + offs < K
            x = tl.load(x_row + k0 + offs, mask=mask, other=0).to(tl.int64)
            _quantize_block(x, mask, q_ptr + row * stride_qn + k0 + offs, stride_ql, left, d, rcp, LIMBS)
    tl.store(m_ptr + row, m.to(tl.int32), mask=c == 0)
    tl.store(e_ptr + row, e.to(tl.int32), mask=c == 0)


# %%
# RMSNorm (spec.ops.rms_norm), written as the steps a row kernel and a fused linear share
# ---------------------------------------------------------------------------------------

@triton.jit
def _isqrt(v):
    """Return floor(sqrt(v)) for 0 <= v < 2**63 (int64, any shape), the value of spec.quant.isqrt.

    The spec's 32-step digit-by-digit loop is a dependent chain of ~400 int64 instructions on
    the statistics' critical path; here t = trunc(sqrt(double(v))) and one integer correction
    each way. double(v) is within a relative 2**-53 of v and sqrt.rn rounds correctly, so
    sqrt(double(v)) is within 2**-21 of sqrt(v) < 2**31.5: t is floor(sqrt(v)) or one off.
    ``t * t > v`` then takes one away (t <= 3,037,000,499, so t * t < 2**63), and ``r = v - t*t
    >= 2 t + 1`` adds one ((t + 1)**2 itself could pass 2**63)."""
    t = tl.sqrt(v.to(tl.float64)).to(tl.int64)
    t = tl.where(t * t > v, t - 1, t)
    return tl.where(v - t * t >= 2 * t + 1, t + 1, t)


@triton.jit
def _rms_shift(amax):
    """Step 1: s = bitlen(max|x|) - RMS_NORM_BITS, clamped to >= -16 (a zero row has bitlen 0)."""
    bits = tl.where(amax > 0, _bit_length(tl.maximum(amax, 1)), 0)
    return tl.maximum(bits - RMS_NORM_BITS, -16)


@triton.jit
def _rms_root(sum_sq, H, eps_q48, s):
    """Steps 2-3: r = max(isqrt(floor(sum_sq / H) + shift_round(eps_q48, 16 + 2 s)), 1), the
    exact int64 sum of squares of the rescaled row given (any order of addition gives it)."""
    eps = _shift_round(eps_q48 + tl.zeros_like(s).to(tl.int64), 16 + 2 * s)
    return tl.maximum(_isqrt(sum_sq // H + eps), 1)


@triton.jit
def _rms_scale(xs, g, r, rcp):
    """Step 3: saturate(div_round(xs * g, r)) with rcp = 1 / (2 r) (float64): |xs * g| < 2**54
    and r <= 2**31, so `_floor_div` (cap 2**36 > ACT_MAX) is exact wherever y is unsaturated."""
    n = xs * g
    mag = _floor_div(2 * tl.abs(n) + r, 2 * r, rcp, 1 << 36)
    y = tl.where(n < 0, -mag, mag)
    return tl.minimum(tl.maximum(y, -ACT_MAX), ACT_MAX)


# %%
# Requantization (spec.quant.shift_round, spec.quant.saturate)
# ------------------------------------------------------------

@triton.jit
def _shift_round(p, s):
    """Return p * 2**-s (int64): round half away from zero when s >= 0 (s clamped to 62),
    else a left shift saturated at 2**62, exactly as ``spec.quant.shift_round``."""
    right = tl.minimum(tl.maximum(s, 0), 62)
    one = tl.full(p.shape, 1, tl.int64)
    half = (one << right) >> 1
    mag = (tl.abs(p) + half) >> right
    rounded = tl.where(p < 0, -mag, mag)
    left = tl.minimum(tl.maximum(-s, 0), 62)
    lim = (one << 62) >> left
    up = tl.maximum(tl.minimum(p, lim), -lim) << left
    return tl.where(s >= 0, rounded, up)


# %%
# The matmul with the fused epilogue
# ----------------------------------

@triton.jit
def _epilogue(acc00, acc01, acc10, acc11, pid_m, col0, m, e, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr,
              M, N, stride_rm, stride_ym, stride_yn, BLOCK_M: tl.constexpr, BN: tl.constexpr, LA: tl.constexpr,
              LW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, NARROW_MUL: tl.constexpr,
              RAW: tl.constexpr):
    """Columns col0 .. col0 + BN of the tile: combine the limb dots exactly (int64), requantize
    (spec.quant.requantize) with the rows' scales m, e (int32 [BLOCK_M, 1]), add the bias
    (spec.ops.linear) and the residual rows (spec.ops.residual_add: saturate(res + y)), store;
    RAW stores the combined accumulator instead."""
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = col0 + tl.arange(0, BN)
    offs_m = rm % M  # rows and columns past the edge wrap around: loads need no mask
    offs_n = rn % N
    acc = acc00.to(tl.int64)
    if LA == 2:
        acc += acc10.to(tl.int64) << LIMB_BITS
    if LW == 2:
        acc += acc01.to(tl.int64) << LIMB_BITS
        if LA == 2:
            acc += acc11.to(tl.int64) << (2 * LIMB_BITS)
    y_ptrs = y_ptr + rm[:, None].to(tl.int64) * stride_ym + rn[None, :] * stride_yn
    inside = (rm[:, None] < M) & (rn[None, :] < N)
    if RAW:
        tl.store(y_ptrs, acc, mask=inside)
    else:
        mul = tl.load(mul_ptr + offs_n)
        shift = tl.load(shift_ptr + offs_n).to(tl.int64)
        if NARROW_MUL:
            # |m * mul| < 2**14 * 2**17: one int32 product, then one multiply by it (32 x 32 -> 64
            # for a single limb pair); modulo 2**64 this is acc * m * mul, the spec's value.
            prod = acc * (m * mul[None, :]).to(tl.int64)
        else:  # the spec's two int64 products
            prod = acc * m.to(tl.int64) * mul.to(tl.int64)[None, :]
        y = _shift_round(prod, shift[None, :] - e.to(tl.int64))
        y = tl.minimum(tl.maximum(y, -ACT_MAX), ACT_MAX)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_n).to(tl.int64)
            y = tl.minimum(tl.maximum(y + bias[None, :], -ACT_MAX), ACT_MAX)
        if HAS_RES:  # |res + y| <= 2 ACT_MAX: no overflow in int64
            res = tl.load(res_ptr + offs_m[:, None].to(tl.int64) * stride_rm + offs_n[None, :]).to(tl.int64)
            y = tl.minimum(tl.maximum(res + y, -ACT_MAX), ACT_MAX)
        if LA * LW == 1:
            # |y| <= ACT_MAX: narrowing to int32 first is exact and keeps 32-bit values in
            # registers until the store (the int64 tile held whole spilled).
            y = y.to(tl.int32)
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _halves(x, BM: tl.constexpr, BN: tl.constexpr):
    """Return the left and right column halves of a [BM, BN] tile."""
    return tl.split(tl.permute(tl.reshape(x, (BM, 2, BN // 2)), (0, 2, 1)))


@triton.jit
def _split_accs(acc00, acc01, acc10, acc11, BM: tl.constexpr, BN: tl.constexpr, LA: tl.constexpr,
                LW: tl.constexpr):
    """Split every accumulator in use into column halves (unused ones repeat acc00's: never read)."""
    l00, r00 = _halves(acc00, BM, BN)
    l01, r01, l10, r10, l11, r11 = l00, r00, l00, r00, l00, r00
    if LW == 2:
        l01, r01 = _halves(acc01, BM, BN)
    if LA == 2:
        l10, r10 = _halves(acc10, BM, BN)
        if LW == 2:
            l11, r11 = _halves(acc11, BM, BN)
    return l00, l01, l10, l11, r00, r01, r10, r11


@triton.jit
def _finish(acc00, acc01, acc10, acc11, pid_m, pid_n, m, e, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr,
            M, N, stride_rm, stride_ym, stride_yn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LA: tl.constexpr,
            LW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, NARROW_MUL: tl.constexpr,
            RAW: tl.constexpr, EPI_SPLIT: tl.constexpr):
    """Run the epilogue on the whole tile, or on EPI_SPLIT column slices one after another: the
    int64 temporaries of a whole 128 x 256 tile would not fit the registers (they spill)."""
    c0 = pid_n * BLOCK_N
    if EPI_SPLIT == 1:
        _epilogue(acc00, acc01, acc10, acc11, pid_m, c0, m, e, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr,
                  M, N, stride_rm, stride_ym, stride_yn, BLOCK_M, BLOCK_N, LA, LW, HAS_BIAS, HAS_RES, NARROW_MUL, RAW)
    elif EPI_SPLIT == 2:
        l00, l01, l10, l11, r00, r01, r10, r11 = _split_accs(acc00, acc01, acc10, acc11, BLOCK_M, BLOCK_N, LA, LW)
        _epilogue(l00, l01, l10, l11, pid_m, c0, m, e, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr,
                  M, N, stride_rm, stride_ym, stride_yn, BLOCK_M, BLOCK_N // 2, LA, LW, HAS_BIAS, HAS_RES,
                  NARROW_MUL, RAW)
        _epilogue(r00, r01, r10, r11, pid_m, c0 + BLOCK_N // 2, m, e, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr,
                  M, N, stride_rm, stride_ym, stride_yn, BLOCK_M, BLOCK_N // 2, LA, LW, HAS_BIAS, HAS_RES,
                  NARROW_MUL, RAW)
    else:  # EPI_SPLIT == 4
        l00, l01, l10, l11, r00, r01, r10, r11 = _split_accs(acc00, acc01, acc10, acc11, BLOCK_M, BLOCK_N, LA, LW)
        a00, a01, a10, a11, b00, b01, b10, b11 = _split_accs(l00, l01, l10, l11, BLOCK_M, BLOCK_N // 2, LA, LW)
        _epilogue(a00, a01, a10, a11, pid_m, c0, m, e, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr,
                  M, N, stride_rm, stride_ym, stride_yn, BLOCK_M, BLOCK_N // 4, LA, LW, HAS_BIAS, HAS_RES,
                  NARROW_MUL, RAW)
        _epilogue(b00, b01, b10, b11, pid_m, c0 + BLOCK_N // 4, m, e, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr,
                  M, N, stride_rm, stride_ym, stride_yn, BLOCK_M, BLOCK_N // 4, LA, LW, HAS_BIAS, HAS_RES,
                  NARROW_MUL, RAW)
        a00, a01, a10, a11, b00, b01, b10, b11 = _split_accs(r00, r01, r10, r11, BLOCK_M, BLOCK_N // 2, LA, LW)
        _epilogue(a00, a01, a10, a11, pid_m, c0 + BLOCK_N // 2, m, e, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr,
                  M, N, stride_rm, stride_ym, stride_yn, BLOCK_M, BLOCK_N // 4, LA, LW, HAS_BIAS, HAS_RES,
                  NARROW_MUL, RAW)
        _epilogue(b00, b01, b10, b11, pid_m, c0 + 3 * BLOCK_N // 4, m, e, mul_ptr, shift_ptr, bias_ptr, res_ptr,
                  y_ptr, M, N, stride_rm, stride_ym, stride_yn, BLOCK_M, BLOCK_N // 4, LA, LW, HAS_BIAS, HAS_RES,
                  NARROW_MUL, RAW)


@triton.jit
def _row_scales(m_ptr, e_ptr, pid_m, M, BLOCK_M: tl.constexpr):
    """Return the tile's row scales (m, e) as int32 [BLOCK_M, 1] columns (rows past M wrap around)."""
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    return tl.load(m_ptr + offs_m)[:, None], tl.load(e_ptr + offs_m)[:, None]


@triton.jit
def _weight_block(w_ptrs, stride_wl, k_left, offs_k, LW: tl.constexpr, EVEN_K: tl.constexpr):
    """Load one K block of the weight limbs [BLOCK_K, BLOCK_N] (zero past k_left unless EVEN_K);
    the second limb repeats the first when LW == 1 (never read)."""
    if EVEN_K:
        w0 = tl.load(w_ptrs)
    else:
        w0 = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0)
    w1 = w0
    if LW == 2:
        if EVEN_K:
            w1 = tl.load(w_ptrs + stride_wl)
        else:
            w1 = tl.load(w_ptrs + stride_wl, mask=offs_k[:, None] < k_left, other=0)
    return w0, w1


@triton.jit
def _block_dots(a0, a1, w0, w1, acc00, acc01, acc10, acc11, LA: tl.constexpr, LW: tl.constexpr):
    """Add every limb pair's exact int32 dot of one K block to its accumulator."""
    acc00 = tl.dot(a0, w0, acc00, out_dtype=tl.int32)
    if LA == 2:
        acc10 = tl.dot(a1, w0, acc10, out_dtype=tl.int32)
    if LW == 2:
        acc01 = tl.dot(a0, w1, acc01, out_dtype=tl.int32)
        if LA == 2:
            acc11 = tl.dot(a1, w1, acc11, out_dtype=tl.int32)
    return acc00, acc01, acc10, acc11


@triton.jit
def _limb_dots(a0, a1, w_ptrs, stride_wl, k_left, offs_k, acc00, acc01, acc10, acc11, LA: tl.constexpr,
               LW: tl.constexpr, EVEN_K: tl.constexpr):
    """One K block: load the weight limbs (`_weight_block`) and add every limb pair's exact int32
    dot to its accumulator (`_block_dots`; a1 is read only when LA == 2)."""
    w0, w1 = _weight_block(w_ptrs, stride_wl, k_left, offs_k, LW, EVEN_K)
    return _block_dots(a0, a1, w0, w1, acc00, acc01, acc10, acc11, LA, LW)


@triton.jit
def _split_k_sums(acc00, acc01, acc10, acc11, ws_ptr, count_ptr, tile, pid_m, pid_n, M, N, PLANE, SPLIT_K,
                  LA: tl.constexpr, LW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  PARTIAL_SEM: tl.constexpr):
    """Exact split K: add this program's int32 partial dots into ``ws`` atomically (integer
    addition: exact in any order; every partial sum is bounded by the full one, < 2**31) and
    arrive at the tile's counter. Return (last, sums): the last program of the tile to arrive
    gets the full sums and leaves ``ws`` and ``count`` zero for the next launch."""
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = (rm[:, None] < M) & (rn[None, :] < N)
    ws = ws_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
    plane = PLANE
    # The partial sums are relaxed reductions: a release on every element put a fence before
    # each (M = 64 tiles ran 5x slower, measured); one release, by the arrival below after
    # the CTA barrier, orders them all (the pattern of CUDA's "last block" reductions).
    tl.atomic_add(ws, acc00, mask=inside, sem=PARTIAL_SEM)
    if LW == 2:
        tl.atomic_add(ws + plane, acc01, mask=inside, sem=PARTIAL_SEM)
    if LA == 2:
        tl.atomic_add(ws + 2 * plane, acc10, mask=inside, sem=PARTIAL_SEM)
        if LW == 2:
            tl.atomic_add(ws + 3 * plane, acc11, mask=inside, sem=PARTIAL_SEM)
    tl.debug_barrier()  # every thread's partial sums precede the arrival below
    arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel")
    tl.debug_barrier()  # the acquire precedes every thread's reads below
    last = arrived == SPLIT_K - 1
    if last:
        zero = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        acc00 = tl.atomic_xchg(ws, zero, mask=inside, sem=PARTIAL_SEM)
        if LW == 2:
            acc01 = tl.atomic_xchg(ws + plane, zero, mask=inside, sem=PARTIAL_SEM)
        if LA == 2:
            acc10 = tl.atomic_xchg(ws + 2 * plane, zero, mask=inside, sem=PARTIAL_SEM)
            if LW == 2:
                acc11 = tl.atomic_xchg(ws + 3 * plane, zero, mask=inside, sem=PARTIAL_SEM)
        tl.atomic_xchg(count_ptr + tile, 0)
    return last, acc00, acc01, acc10, acc11


@triton.jit
def _linear_kernel(
    # pointers
    a_ptr, w_ptr, m_ptr, e_ptr, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr, ws_ptr, count_ptr,
    # dimensions: a [LA, M, K] int8 limbs, w [LW, N, K] int8 limbs, res and y [M, N]; ws [4, M, N] int32
    M, N, K, PLANE, SPLIT_K,  # PLANE = M * N (elements of one ws plane); SPLIT_K: programs per tile
    # strides
    stride_al, stride_am, stride_ak, stride_wl, stride_wn, stride_wk, stride_rm, stride_ym, stride_yn,
    # meta-parameters
    LA: tl.constexpr, LW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, EVEN_K: tl.constexpr,
    NARROW_MUL: tl.constexpr, RAW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, USE_SPLIT: tl.constexpr, EPI_SPLIT: tl.constexpr,
    PARTIAL_SEM: tl.constexpr,
):
    """y = requantize(sum_ij dot(a_i, w_j) << 7(i+j), m, e, mul, shift) (+ bias) (+ res), saturated
    (RAW: y = the int64 sum itself, no requantization).

    With USE_SPLIT (SPLIT_K > 1, a run-time number so that every split shares one compiled
    kernel), program (tile, s) sums the s-th share of the K blocks and adds its int32
    partial dots into ``ws`` atomically; the last program of a tile to arrive runs the
    epilogue (`_split_k_sums`).
    """
    # -- grouped program order (Triton matmul tutorial, "L2 Cache Optimizations") ----------
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    group_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % group) % group_m)
    pid_n = (pid % group) // group_m
    # Rows and columns past the edge wrap around (loads need no mask; the store is masked).
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    # -- this program's share of the K blocks ---------------------------------------------
    k_blocks = tl.cdiv(K, BLOCK_K)
    share = tl.cdiv(k_blocks, SPLIT_K)
    k_first = pid_k * share
    k_stop = tl.minimum(k_first + share, k_blocks)
    offs_m = tl.max_contiguous(tl.multiple_of(offs_m, BLOCK_M), BLOCK_M)
    offs_n = tl.max_contiguous(tl.multiple_of(offs_n, BLOCK_N), BLOCK_N)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + (k_first * BLOCK_K + offs_k[None, :]) * stride_ak
    w_ptrs = w_ptr + (k_first * BLOCK_K + offs_k[:, None]) * stride_wk + offs_n[None, :] * stride_wn
    # -- K loop: one int32 accumulator per limb pair --------------------------------------
    acc00 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc01 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc10 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc11 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(k_first, k_stop):
        k_left = K - k * BLOCK_K
        if EVEN_K:
            a0 = tl.load(a_ptrs)
        else:
            a0 = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0)
        a1 = a0
        if LA == 2:
            if EVEN_K:
                a1 = tl.load(a_ptrs + stride_al)
            else:
                a1 = tl.load(a_ptrs + stride_al, mask=offs_k[None, :] < k_left, other=0)
        acc00, acc01, acc10, acc11 = _limb_dots(a0, a1, w_ptrs, stride_wl, k_left, offs_k, acc00, acc01, acc10, acc11,
                                                LA, LW, EVEN_K)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk
    last = True
    if USE_SPLIT:
        last, acc00, acc01, acc10, acc11 = _split_k_sums(acc00, acc01, acc10, acc11, ws_ptr, count_ptr, pid, pid_m,
                                                         pid_n, M, N, PLANE, SPLIT_K, LA, LW, BLOCK_M, BLOCK_N,
                                                         PARTIAL_SEM)
    if last:
        m, e = _row_scales(m_ptr, e_ptr, pid_m, M, BLOCK_M)
        _finish(acc00, acc01, acc10, acc11, pid_m, pid_n, m, e, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr,
                M, N, stride_rm, stride_ym, stride_yn, BLOCK_M, BLOCK_N, LA, LW, HAS_BIAS, HAS_RES, NARROW_MUL, RAW,
                EPI_SPLIT)


@triton.jit
def _linear_tma_kernel(
    a_desc, w_desc,  # tensor descriptors of a [LA * M, K] and w [LW * N, K] int8 (limb planes stacked)
    m_ptr, e_ptr, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr,
    M, N, K, stride_rm, stride_ym, stride_yn,
    LA: tl.constexpr, LW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, NARROW_MUL: tl.constexpr,
    RAW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EPI_SPLIT: tl.constexpr,
):
    """``_linear_kernel`` for the GEMM class with its tiles fetched by the tensor-memory
    accelerator (Hopper's bulk tensor copies: no address arithmetic or registers per element,
    zero fill past K). Limb plane l of ``a`` is rows l*M .. l*M + M - 1 of the stacked view; a tile
    that runs past row M reads the next plane's rows (or zeros), which only reach outputs of rows
    past M, and those are masked at the store. The same holds for ``w`` and columns past N."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    group_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % group) % group_m)
    pid_n = (pid % group) // group_m
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc00 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc01 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc10 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc11 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        off_k = k * BLOCK_K
        a0 = a_desc.load([off_m, off_k])
        w0 = w_desc.load([off_n, off_k])
        acc00 = tl.dot(a0, w0.T, acc00, out_dtype=tl.int32)
        if LA == 2:
            a1 = a_desc.load([M + off_m, off_k])
            acc10 = tl.dot(a1, w0.T, acc10, out_dtype=tl.int32)
        if LW == 2:
            w1 = w_desc.load([N + off_n, off_k])
            acc01 = tl.dot(a0, w1.T, acc01, out_dtype=tl.int32)
            if LA == 2:
                acc11 = tl.dot(a1, w1.T, acc11, out_dtype=tl.int32)
    m, e = _row_scales(m_ptr, e_ptr, pid_m, M, BLOCK_M)
    _finish(acc00, acc01, acc10, acc11, pid_m, pid_n, m, e, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr,
            M, N, stride_rm, stride_ym, stride_yn, BLOCK_M, BLOCK_N, LA, LW, HAS_BIAS, HAS_RES, NARROW_MUL, RAW,
            EPI_SPLIT)


# %%
# The decode linear: row quantization (and RMSNorm) in front, one launch
# ----------------------------------------------------------------------
# At decode (M <= 16) the rows are a few KB to a few hundred KB, far less than the weights, and
# stay in L2: every program reads them for its rows' statistics instead of waiting for a
# separate quantization launch, then quantizes each K block of its share in registers. The
# statistics are a serial chain (~2-4 us) that no weight byte depends on, so the program's
# first weight blocks are loaded before it and arrive meanwhile. The redundancy (every
# program repeats the statistics) is what `fuse_rows_hint` weighs.

@triton.jit
def _repeat_rows(t, ROWS: tl.constexpr, BLOCK_M: tl.constexpr):
    """Return t [ROWS, C] as [BLOCK_M, C], row i = t[i % ROWS]: an int8 dot operand needs >= 16
    rows, and rows past M only reach outputs that are never stored."""
    if ROWS == BLOCK_M:
        out = t
    else:
        out = tl.reshape(tl.broadcast_to(t[None, :, :], (BLOCK_M // ROWS, ROWS, t.shape[1])), (BLOCK_M, t.shape[1]))
    return out


@triton.jit
def _rows_block(x_rows, gamma_ptr, kk, inside, s, r, rcp_r, left, d, rcp, NORM: tl.constexpr, LA: tl.constexpr,
                ROWS: tl.constexpr, BLOCK_M: tl.constexpr):
    """The dot operands of one K block of the rows: load x (zero where not ``inside``, so q = 0),
    norm it (NORM: `_rms_scale` of ``shift_round(x, s)``), quantize it (`_quantize_values`) and
    return its int8 limbs with the rows repeated to BLOCK_M (`_repeat_rows`)."""
    v = tl.load(x_rows + kk, mask=inside, other=0).to(tl.int64)
    if NORM:
        g = tl.load(gamma_ptr + kk, mask=inside, other=0).to(tl.int64)
        v = _rms_scale(_shift_round(v, s), g, r, rcp_r)
    q = _quantize_values(v, left, d, rcp)
    a0 = _repeat_rows(_limb(q, 0, LA), ROWS, BLOCK_M)
    a1 = a0
    if LA == 2:
        a1 = _repeat_rows(_limb(q, 1, LA), ROWS, BLOCK_M)
    return a0, a1


@triton.jit
def _linear_rows_kernel(
    # pointers
    x_ptr, gamma_ptr, eps_ptr, w_ptr, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr, ws_ptr, count_ptr,
    # dimensions: x [M, K] Q16 (int32/int64), w [LW, N, K] int8 limbs, res and y [M, N]; ws [4, M, N]
    M, N, K, PLANE, SPLIT_K,
    # strides
    stride_xm, stride_wl, stride_wn, stride_wk, stride_rm, stride_ym, stride_yn,
    # meta-parameters
    QMAX: tl.constexpr, LA: tl.constexpr, LW: tl.constexpr, NORM: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr, EVEN_K: tl.constexpr, NARROW_MUL: tl.constexpr, ROWS: tl.constexpr,
    ROW_BLOCK: tl.constexpr, NORM_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PREFETCH: tl.constexpr,
    USE_SPLIT: tl.constexpr, PARTIAL_SEM: tl.constexpr,
):
    """y = linear(h, QMAX, W, mul, shift) (+ bias) (+ res), saturated as ``spec.ops.linear`` and
    ``spec.ops.residual_add``, where h = x, or ``spec.ops.rms_norm(x, gamma, eps)`` with NORM.
    Program (column tile, s) of one row tile (M <= BLOCK_M; ROWS = next_pow2(M) rows computed):

    0. load the first PREFETCH (0..2) weight blocks of its K share: the statistics below are a
       serial chain of L2 round trips and reductions (~2-4 us), and no weight byte depends on
       them, so these loads are in flight meanwhile (a share of <= PREFETCH blocks is then
       read entirely behind the statistics);
    1. absmax of every row over all K (ROW_BLOCK values a step; rows past M wrap around);
    2. NORM: s = `_rms_shift`, then in one more pass (NORM_BLOCK values a step: its int64
       temporaries spill past ~1,024 values per program; the rows are in L1 by now) the exact
       int64 sum of squares of
       xs = shift_round(x, s) and max |xs * gamma|, so r = `_rms_root`; the absmax of the
       normed row is ``saturate(div_round(max |xs * gamma|, r))`` because div_round and
       saturation are monotone in |n|, one division per row instead of one per element;
    3. (m, e) = `_row_scale` of the absmax, then for each K block of this program's share:
       load x (and gamma), norm it (`_rms_scale`), quantize it (`_quantize_values`) into
       int8 limbs in registers (`_rows_block`), and add the exact limb dots (`_block_dots`), as
       `_linear_kernel`; the prefetched blocks first;
    4. split K (`_split_k_sums`) and the epilogue (`_finish`) as in `_linear_kernel`, the
       residual added last.
    """
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    # -- 0. this program's share of the K blocks; its first PREFETCH weight blocks -----------
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_n = tl.max_contiguous(tl.multiple_of(offs_n, BLOCK_N), BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    k_blocks = tl.cdiv(K, BLOCK_K)
    share = tl.cdiv(k_blocks, SPLIT_K)
    k_first = pid_k * share
    k_stop = tl.minimum(k_first + share, k_blocks)  # every share has >= 1 block (the launcher's split)
    w_ptrs = w_ptr + (k_first * BLOCK_K + offs_k[:, None]) * stride_wk + offs_n[None, :] * stride_wn
    if PREFETCH >= 1:
        p0w0, p0w1 = _weight_block(w_ptrs, stride_wl, K - k_first * BLOCK_K, offs_k, LW, EVEN_K)
    if PREFETCH == 2:
        # block k_first + 1 when the share has it, else block k_first again (a valid address);
        # its rows are masked to zero below when it is not this program's, so it adds nothing
        k_second = tl.minimum(k_first + 1, k_stop - 1)
        p1w0, p1w1 = _weight_block(w_ptrs + (k_second - k_first) * BLOCK_K * stride_wk, stride_wl,
                                   K - k_second * BLOCK_K, offs_k, LW, EVEN_K)
    rows = tl.arange(0, ROWS) % M
    x_rows = x_ptr + rows[:, None].to(tl.int64) * stride_xm  # [ROWS, 1]
    offs_r = tl.arange(0, ROW_BLOCK)[None, :]
    # -- 1. absmax of the rows ------------------------------------------------------------
    amax = tl.zeros([ROWS], dtype=tl.int64)
    for k0 in range(0, K, ROW_BLOCK):
        v = tl.load(x_rows + k0 + offs_r, mask=k0 + offs_r < K, other=0).to(tl.int64)
        amax = tl.maximum(amax, tl.max(tl.abs(v), axis=1))
    amax = amax[:, None]  # [ROWS, 1]
    # -- 2. RMSNorm statistics: s, r, and the normed row's absmax ---------------------------
    s = tl.zeros([ROWS, 1], dtype=tl.int64)
    r = tl.full([ROWS, 1], 1, tl.int64)
    if NORM:
        s = _rms_shift(amax)
        sum_sq = tl.zeros([ROWS], dtype=tl.int64)
        n_max = tl.zeros([ROWS], dtype=tl.int64)
        offs_h = tl.arange(0, NORM_BLOCK)[None, :]
        for k0 in range(0, K, NORM_BLOCK):
            inside = k0 + offs_h < K
            xs = _shift_round(tl.load(x_rows + k0 + offs_h, mask=inside, other=0).to(tl.int64), s)
            g = tl.load(gamma_ptr + k0 + offs_h, mask=inside, other=0).to(tl.int64)
            sum_sq += tl.sum(xs * xs, axis=1)
            n_max = tl.maximum(n_max, tl.max(tl.abs(xs * g), axis=1))
        r = _rms_root(sum_sq[:, None], K, tl.load(eps_ptr).to(tl.int64), s)
        amax = _rms_scale(n_max[:, None], 1, r, 1.0 / (2 * r).to(tl.float64))
    rcp_r = 1.0 / (2 * r).to(tl.float64)
    amax = tl.maximum(amax, 1)  # a zero row is treated as amax = 1
    m, e, left, d, rcp = _row_scale(amax, QMAX)  # spec.quant.row_scale, [ROWS, 1]
    # -- 3. quantize each K block of the share in registers, exact limb dots ---------------
    acc00 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc01 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc10 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc11 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    if PREFETCH >= 1:
        kk = k_first * BLOCK_K + offs_k[None, :]
        a0, a1 = _rows_block(x_rows, gamma_ptr, kk, kk < K, s, r, rcp_r, left, d, rcp, NORM, LA, ROWS, BLOCK_M)
        acc00, acc01, acc10, acc11 = _block_dots(a0, a1, p0w0, p0w1, acc00, acc01, acc10, acc11, LA, LW)
    if PREFETCH == 2:
        kk = (k_first + 1) * BLOCK_K + offs_k[None, :]
        mine = kk < tl.where(k_first + 1 < k_stop, K, 0)  # nothing of the block when it is not this program's
        a0, a1 = _rows_block(x_rows, gamma_ptr, kk, mine, s, r, rcp_r, left, d, rcp, NORM, LA, ROWS, BLOCK_M)
        acc00, acc01, acc10, acc11 = _block_dots(a0, a1, p1w0, p1w1, acc00, acc01, acc10, acc11, LA, LW)
    w_ptrs += PREFETCH * BLOCK_K * stride_wk
    for k in range(k_first + PREFETCH, k_stop):
        kk = k * BLOCK_K + offs_k[None, :]
        a0, a1 = _rows_block(x_rows, gamma_ptr, kk, kk < K, s, r, rcp_r, left, d, rcp, NORM, LA, ROWS, BLOCK_M)
        acc00, acc01, acc10, acc11 = _limb_dots(a0, a1, w_ptrs, stride_wl, K - k * BLOCK_K, offs_k, acc00, acc01,
                                                acc10, acc11, LA, LW, EVEN_K)
        w_ptrs += BLOCK_K * stride_wk
    # -- 4. split K, epilogue -------------------------------------------------------------
    last = True
    if USE_SPLIT:
        last, acc00, acc01, acc10, acc11 = _split_k_sums(acc00, acc01, acc10, acc11, ws_ptr, count_ptr, pid_n, 0,
                                                         pid_n, M, N, PLANE, SPLIT_K, LA, LW, BLOCK_M, BLOCK_N,
                                                         PARTIAL_SEM)
    if last:
        m_col = _repeat_rows(m.to(tl.int32), ROWS, BLOCK_M)
        e_col = _repeat_rows(e.to(tl.int32), ROWS, BLOCK_M)
        _finish(acc00, acc01, acc10, acc11, 0, pid_n, m_col, e_col, mul_ptr, shift_ptr, bias_ptr, res_ptr, y_ptr,
                M, N, stride_rm, stride_ym, stride_yn, BLOCK_M, BLOCK_N, LA, LW, HAS_BIAS, HAS_RES, NARROW_MUL, False,
                1)


# %%
# Launchers
# ---------

def _num_limbs(bits: int) -> int:
    """Return the int8 limbs a symmetric `bits`-bit integer needs: qmax(bits) < 2**(7 L)
    (1 for bits <= 8, 2 for <= 15, 3 for 16; 0 past the spec's 16 bits)."""
    return 1 if bits <= 8 else 2 if bits <= 15 else 3 if bits <= 16 else 0


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: any small number
    return torch.cuda.get_device_properties(device).multi_processor_count


def quantize_rows(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``spec.quant.quantize_rows(x, bits)`` as (limbs, m, e): limbs int8 ``[L, N, K]``
    (L = ``_num_limbs(bits)``: q = sum_i limbs[i] * 2**(7 i)), m and e int32 ``[N]``.

    Requires x int32 or int64 ``[N, K]`` with ``|x| <= ACT_MAX`` and ``2 <= bits <= 16``.
    """
    limbs = _num_limbs(bits)
    if not 2 <= bits or not limbs:
        raise ValueError(f"quantize_rows: bits must be 2..16, got {bits}")
    if x.dim() != 2 or x.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"quantize_rows: x must be int32/int64 [N, K], got {x.dtype} {list(x.shape)}")
    n, k = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    q = torch.empty((limbs, n, k), dtype=torch.int8, device=x.device)
    m = torch.empty((n,), dtype=torch.int32, device=x.device)
    e = torch.empty((n,), dtype=torch.int32, device=x.device)
    if n == 0:
        return q, m, e
    sms = _sm_count(x.device)
    row_block = 0
    if k >= CHUNK_MIN_K and n < sms:
        # a few long rows (decode): every row in chunks of CHUNK_BLOCK, ~2 programs per SM
        block, one_pass = CHUNK_BLOCK, False
        blocks = triton.cdiv(k, block)
        per = triton.cdiv(blocks, min(blocks, max(1, 2 * sms // n)))
        chunks = triton.cdiv(blocks, per)
        row_block = triton.next_power_of_2(k) if k <= QUANT_BLOCK else 0
    else:
        block = min(QUANT_BLOCK, triton.next_power_of_2(max(k, 16)))
        one_pass = k <= block
        per, chunks = triton.cdiv(k, block), 1
    widest = max(block, row_block)
    warps = 4 if widest <= 2048 else 8 if widest <= 4096 else 16  # <= 32 int64 values per thread
    _quantize_rows_kernel[(n, chunks)](x, q, m, e, k, per, x.stride(0), q.stride(0), q.stride(1),
                                       QMAX=(1 << (bits - 1)) - 1, LIMBS=limbs, BLOCK=block, ONE_PASS=one_pass,
                                       ROW_BLOCK=row_block, num_warps=warps)
    return q, m, e


def split_limbs(w: torch.Tensor) -> torch.Tensor:
    """Return the int8 limbs ``[L, O, K]`` of an integer weight ``[O, K]``, the fewest that hold
    max|w|: int8 weights (and wider dtypes with |w| < 128) as they are (L = 1); else the 7-bit
    limbs ``w & 127``, ``(w >> 7) & 127``, ..., the top one signed (L = 2 for |w| < 2**14, 3 for
    |w| < 2**21). Requires |w| < 2**21."""
    if w.dtype == torch.int8:
        return w.unsqueeze(0)
    w32 = w.to(torch.int32)
    top = int(w32.abs().amax()) if w32.numel() else 0
    if top >= 1 << 21:
        raise ValueError("split_limbs: weights must have |w| < 2**21 (three 7-bit limbs)")
    if top < 128:  # a wide dtype holding 8-bit values: one limb is the weight itself
        return w32.to(torch.int8).unsqueeze(0).contiguous()
    if top < 1 << 14:
        return torch.stack([(w32 & 127).to(torch.int8), (w32 >> 7).to(torch.int8)]).contiguous()
    return torch.stack([(w32 & 127).to(torch.int8), ((w32 >> 7) & 127).to(torch.int8),
                        (w32 >> 14).to(torch.int8)]).contiguous()


_LIMBS_ATTR = "fieldprint_fast_limbs"  # attribute of a weight tensor: (its _version, its limbs)


def weight_limbs(w: torch.Tensor) -> torch.Tensor | None:
    """Return ``split_limbs(w)``, made once per weight tensor and kept as an attribute of the
    tensor object (redone when its version counter moves); None when w needs four limbs."""
    if w.dtype == torch.int8:
        return w.unsqueeze(0) if w.stride(-1) == 1 else w.contiguous().unsqueeze(0)
    hit = getattr(w, _LIMBS_ATTR, None)
    if hit is not None and hit[0] == w._version:
        return hit[1]
    try:
        limbs = split_limbs(w)
    except ValueError:
        limbs = None
    setattr(w, _LIMBS_ATTR, (w._version, limbs))
    return limbs


_NARROW_ATTR = "fieldprint_fast_narrow"  # attribute of a multiplier tensor: (its _version, max|mul| < 2**17)


def _narrow(mul: torch.Tensor) -> bool:
    """Return whether max|mul| < 2**17 (so m * mul fits int32), cached on the tensor like the limbs.
    The spec's multipliers are below 2**13; wider ones take the general int64 epilogue."""
    hit = getattr(mul, _NARROW_ATTR, None)
    if hit is not None and hit[0] == mul._version:
        return hit[1]
    narrow = mul.numel() == 0 or int(mul.to(torch.int64).abs().max()) < 1 << 17
    setattr(mul, _NARROW_ATTR, (mul._version, narrow))
    return narrow


_SPLIT_K_BUFFERS: dict = {}


def _split_k_buffers(device: torch.device, ws_numel: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return zeroed int32 (workspace, arrival counters) for split-K launches on the current
    stream, grown as needed and kept: each launch leaves them zero again (see _linear_kernel)."""
    stream = torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0
    key = (str(device), stream)
    ws, count = _SPLIT_K_BUFFERS.get(key, (None, None))
    if ws is None or ws.numel() < ws_numel or count.numel() < tiles:
        ws = torch.zeros(max(ws_numel, 0 if ws is None else ws.numel()), dtype=torch.int32, device=device)
        count = torch.zeros(max(tiles, 0 if count is None else count.numel()), dtype=torch.int32, device=device)
        _SPLIT_K_BUFFERS[key] = (ws, count)
    return ws, count


# Tiles by shape class, chosen from the tile sweeps of benchmarks/bench_linear.py --sweep on the
# H200 (benchmarks/results/linear-*.json; docs/fast/linear.md, "Measured"). Keys: limb pairs.
GEMM_TILES = {
    1: dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=4, EPI_SPLIT=1, TMA=True),
    2: dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=4, EPI_SPLIT=2, TMA=True),
    4: dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=4, EPI_SPLIT=1),
}
# One limb pair with int32 output: the wider tile wins (8192^3: 1.55 ms against 1.81); with the
# spec's int64 output its epilogue stores cost more than the tile saves (2.47 ms against 1.69).
GEMM_TILE_INT32 = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=4, EPI_SPLIT=4,
                       TMA=True)
SKINNY_N = 64  # weight rows per decode program: 64 x 256 int8 = 16 KB per pipeline stage
SKINNY_SPLIT = 4  # K split of a decode launch (M <= 16) with fewer tiles than SMs and >= 16 K blocks
# most K shares of a 17..64-row launch with fewer tiles than SMs (`split_k_hint`): 1, i.e. none.
# Measured on the H200 at M = 64 (bench_linear --decode, 2026-12-04, linear-decode-...json): split
# against unsplit, 1B qkv 12.7 / 9.4 us, o 11.9 / 8.9, 8B qkv 23.7 / 14.0, o 19.6 / 13.1, down
# 33.0 / 29.5; only 1B down gained (15.1 / 17.7)
WIDE_SPLIT_MAX = 1
WIDE_SPLIT_MIN_BLOCKS = 4  # ... each share at least this many K blocks (the partial sums cost one tile each)


def _config(m: int, n: int, k: int, la: int, lw: int, device: torch.device,
            out_dtype: torch.dtype = torch.int64) -> dict:
    """Return the tile of one launch: see the module docstring, "Shape classes"."""
    pairs = la * lw
    if m > 64:
        tile = GEMM_TILE_INT32 if pairs == 1 and out_dtype == torch.int32 else GEMM_TILES[pairs]
        return dict(tile, SPLIT_K=1)
    cfg = dict(BLOCK_M=16 if m <= 16 else 32 if m <= 32 else 64, BLOCK_N=SKINNY_N,
               BLOCK_K=256 if pairs == 1 else 128, GROUP_M=1, num_warps=4, num_stages=4, EPI_SPLIT=1)
    cfg["SPLIT_K"] = split_k_hint(m, n, k, cfg, device)
    return cfg


def split_k_hint(m: int, n: int, k: int, cfg: dict, device: torch.device) -> int:
    """Return the K split of a skinny launch (M <= 64) with fewer tiles than the GPU has SMs.

    * M <= 16: SKINNY_SPLIT when K has >= 16 blocks. Measured on the H200 at M = 1 (gemm only):
      8B down 28.9 -> 20.1 us, qkv 13.5 -> 12.2, o 11.2 -> 10.0, 1B down 14.9 -> 9.7; with
      K = 2,048 (1B o, qkv) or many tiles (gate_up, lm_head) a split gains nothing.
    * 17 <= M <= 64: enough shares to cover the SMs once (``ceil(SMs / tiles)``), at most
      WIDE_SPLIT_MAX and each of at least WIDE_SPLIT_MIN_BLOCKS K blocks. Unsplit, the 1B
      shapes at M = 64 run 32-48 programs on 132 SMs (1B down: 32 programs of 512 KB each);
      the batch-64 decode step measured ~1.1 TB/s for its linears (profile_e2e, 2026-12-03).
      The one measurement of a split at M = 64 (8B qkv 5x slower) had a release fence on every
      partial sum; the partial sums are relaxed since (``bench_linear.py --decode`` times both).
    """
    tiles = triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    k_blocks = triton.cdiv(k, cfg["BLOCK_K"])
    sms = _sm_count(device)
    if tiles >= sms:
        return 1
    if m <= 16:
        return min(SKINNY_SPLIT, k_blocks // 4) if k_blocks >= 16 else 1
    return max(1, min(WIDE_SPLIT_MAX, k_blocks // WIDE_SPLIT_MIN_BLOCKS, triton.cdiv(sms, tiles)))


def _tma_ok(q: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether both limb stacks can be read through tensor descriptors: contiguous, K a multiple
    of 16 (16-byte row strides), 16-byte aligned bases."""
    return all(t.is_contiguous() and t.shape[-1] % 16 == 0 and t.data_ptr() % 16 == 0 for t in (q, w))


def _launch(q, m, e, w, mul, shift, bias, y, config, raw, residual=None):
    """One _linear_kernel launch: q [LA <= 2, M, K], w [LW <= 2, N, K] limbs into y [M, N]
    (+ residual [M, N], unit column stride)."""
    res = residual if residual is not None else y
    la, mm, k = q.shape
    lw, n, _ = w.shape
    cfg = dict(SPLIT_K=1, EPI_SPLIT=1, TMA=False, PARTIAL_SEM="relaxed") | dict(
        config or _config(mm, n, k, la, lw, q.device, y.dtype))
    if cfg.pop("TMA") and cfg["SPLIT_K"] == 1 and _tma_ok(q, w) and TensorDescriptor is not None:
        cfg.pop("SPLIT_K")
        cfg.pop("PARTIAL_SEM")
        a_desc = TensorDescriptor.from_tensor(q.view(la * mm, k), [cfg["BLOCK_M"], cfg["BLOCK_K"]])
        w_desc = TensorDescriptor.from_tensor(w.view(lw * n, k), [cfg["BLOCK_N"], cfg["BLOCK_K"]])
        tiles = triton.cdiv(mm, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
        _linear_tma_kernel[(tiles,)](
            a_desc, w_desc, m, e, mul, shift, bias if bias is not None else mul, res, y, mm, n, k, res.stride(0),
            y.stride(0), y.stride(1), LA=la, LW=lw, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
            NARROW_MUL=_narrow(mul), RAW=raw, **cfg)
        return
    tiles = triton.cdiv(mm, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    k_blocks = triton.cdiv(k, cfg["BLOCK_K"])
    share = triton.cdiv(k_blocks, max(1, min(cfg["SPLIT_K"], k_blocks)))
    cfg["SPLIT_K"] = triton.cdiv(k_blocks, share)  # every split has work
    split = cfg.pop("SPLIT_K")
    ws, count = _split_k_buffers(q.device, 4 * mm * n, tiles) if split > 1 else (y, y)
    _linear_kernel[(tiles, split)](
        q, w, m, e, mul, shift, bias if bias is not None else mul, res, y, ws, count,
        mm, n, k, mm * n, split,
        q.stride(0), q.stride(1), q.stride(2), w.stride(0), w.stride(1), w.stride(2), res.stride(0), y.stride(0),
        y.stride(1), LA=la, LW=lw, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
        EVEN_K=k % cfg["BLOCK_K"] == 0, NARROW_MUL=_narrow(mul), RAW=raw, USE_SPLIT=split > 1, **cfg,
    )


def _limb_groups(limbs: int) -> list[tuple[int, int]]:
    """(first limb, count) groups of at most two limbs: one kernel launch multiplies two groups."""
    return [(0, min(limbs, 2))] + ([(2, limbs - 2)] if limbs > 2 else [])


def _residual_rows(residual: torch.Tensor | None, m: int, n: int) -> torch.Tensor | None:
    """Return the residual as the epilogue reads it: [m, n] rows with unit column stride
    (broadcast and copied if it is not), or None."""
    if residual is not None and (residual.shape != (m, n) or residual.stride(-1) != 1):
        residual = residual.expand(m, n).contiguous()
    return residual


def linear_quantized(q: torch.Tensor, m: torch.Tensor, e: torch.Tensor, w: torch.Tensor, mul: torch.Tensor,
                     shift: torch.Tensor, bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.int64,
                     config: dict | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``requantize(q @ W.T, m, e, mul, shift)`` (+ bias, saturated) from quantized rows;
    with ``residual`` [M, O] (Q16), ``spec.ops.residual_add(residual, that)`` in the same epilogue.

    q: int8 limbs ``[LA, M, K]`` with (m, e) int32 ``[M]`` (``quantize_rows``); w: int8 limbs
    ``[LW, O, K]`` (``split_limbs``); mul, shift ``[O]``; bias ``[O]`` or None. LA, LW <= 3 and
    K <= MAX_K. ``out_dtype`` int64 (the spec's) or int32 (values are within ACT_MAX either way).

    Up to two limbs per operand it is one launch, epilogue fused. A three-limb operand (16-bit
    values) runs one launch per pair of limb groups in RAW mode, each the exact int64 sum of its
    limb dots; their shifted sum is the exact accumulator, requantized by ``spec.quant`` itself.
    """
    la, mm, k = q.shape
    lw, n, kw = w.shape
    if kw != k or not (1 <= la <= MAX_LIMBS and 1 <= lw <= MAX_LIMBS) or k > MAX_K:
        raise ValueError(f"linear: limbs {la}x{lw} (<= {MAX_LIMBS} each), K {k} vs {kw} (<= {MAX_K})")
    if q.dtype != torch.int8 or w.dtype != torch.int8:
        raise ValueError("linear: limbs must be int8")
    residual = _residual_rows(residual, mm, n)
    if mm == 0 or n == 0:
        return torch.empty((mm, n), dtype=out_dtype, device=q.device)
    if k == 0:  # an empty sum: acc = 0
        q = torch.zeros((la, mm, 1), dtype=torch.int8, device=q.device)
        w = torch.zeros((lw, n, 1), dtype=torch.int8, device=q.device)
    if la <= 2 and lw <= 2:
        y = torch.empty((mm, n), dtype=out_dtype, device=q.device)
        _launch(q, m, e, w, mul, shift, bias, y, config, raw=False, residual=residual)
        return y
    from spec.quant import requantize, saturate

    acc = torch.zeros((mm, n), dtype=torch.int64, device=q.device)
    part = torch.empty_like(acc)
    for a0, na in _limb_groups(la):
        for w0, nw in _limb_groups(lw):
            _launch(q[a0:a0 + na], m, e, w[w0:w0 + nw], mul, shift, None, part, config, raw=True)
            acc += part << (7 * (a0 + w0))
    y = requantize(acc, m.to(torch.int64), e.to(torch.int64), mul, shift)
    y = y if bias is None else saturate(y + bias.to(torch.int64))
    y = y if residual is None else saturate(residual.to(torch.int64) + y)  # spec.ops.residual_add
    return y.to(out_dtype)


def rows_config(m: int, n: int, k: int, la: int, lw: int, norm: bool, device: torch.device) -> dict:
    """Return the tile of a one-launch decode linear (`_linear_rows_kernel`): `_config`'s decode
    tile, ROWS_PREFETCH weight blocks loaded before the statistics, and a K split of its own.

    In this kernel a program's time is its statistics (a serial chain, ~2-4 us, the same
    whatever the split) followed by its share of the weight stream, of which the first
    ROWS_PREFETCH blocks are already in flight. So the split aims for ~2 programs per SM
    (``ceil(2 SMs / tiles)`` shares, at most ROWS_SPLIT_MAX) and shares not shorter than the
    prefetch, and is never below `split_k_hint`'s measured rule; with the norm it is cut until
    the redundant statistics (programs x rows x K) are at most FUSE_NORM_WORK."""
    rows = triton.next_power_of_2(m)
    prefetch = ROWS_PREFETCH if rows <= ROWS_PREFETCH_MAX_M else 0
    cfg = dict(_config(m, n, k, la, lw, device), PREFETCH=prefetch)
    if prefetch:
        # 128-value K blocks (8 KB a weight limb): two of them held in registers through the
        # statistics compile without spills for 1..8 rows; two 256-value blocks took the 1-row
        # normed variant from 96 registers to 255 and 700 bytes of stack (sm_90, cuobjdump)
        cfg["BLOCK_K"] = 128
        cfg["SPLIT_K"] = split_k_hint(m, n, k, cfg, device)
    tiles = triton.cdiv(n, cfg["BLOCK_N"])
    k_blocks = triton.cdiv(k, cfg["BLOCK_K"])
    sms = _sm_count(device)
    split = cfg["SPLIT_K"]
    if tiles < 2 * sms:
        split = max(split, min(ROWS_SPLIT_MAX, triton.cdiv(k_blocks, max(1, prefetch)), triton.cdiv(2 * sms, tiles)))
    while norm and split > 1 and tiles * split * rows * k > FUSE_NORM_WORK:
        split -= 1
    cfg["SPLIT_K"] = max(1, min(split, k_blocks))
    return cfg


def fuse_rows_hint(m: int, n: int, k: int, la: int, lw: int, norm: bool, row_bytes: int, device: torch.device) -> bool:
    """Return whether `linear_rows` quantizes the rows inside the linear's launch: at most
    ROWS_FUSE_MAX_M rows without the norm (measured: with the norm or more rows the two launches
    are as fast or faster, see ROWS_FUSE_MAX_M), at most two limbs each, and every program's read
    of the rows (next_pow2(M) x K values of ``row_bytes``) at most FUSE_ROW_BYTES.
    ``benchmarks/bench_linear.py --decode`` times both paths per shape; ``fuse=True`` still runs
    the one launch with the norm (its split then bounded by FUSE_NORM_WORK, `rows_config`)."""
    if not (1 <= m <= ROWS_MAX_M and la <= 2 and lw <= 2 and 1 <= k <= MAX_K):
        return False
    if norm or m > ROWS_FUSE_MAX_M:
        return False
    return triton.next_power_of_2(m) * k * row_bytes <= FUSE_ROW_BYTES


def rows_step(rows: int, norm: bool) -> int:
    """Return the values per row that `_linear_rows_kernel` reads in one statistics step: few
    steps (a loop of dependent loads is a chain of L2 round trips, see `_quantize_rows_kernel`),
    one for rows up to FUSE_ROW_BYTES of int64; with the norm 2,048 (1, 2 rows) or 1,024 values
    per program a step, the most that compiled for sm_90 without spills (``bench_linear.py
    --resources rows``: 96-250 registers, no stack; 4,096 values spilled at 16 rows)."""
    if not norm:
        return max(16, FUSE_ROW_BYTES // 8 // rows)
    return max(16, (2048 if rows <= 2 else 1024) // rows)


def linear_rows(x: torch.Tensor, act_bits: int, w: torch.Tensor, mul: torch.Tensor, shift: torch.Tensor,
                bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                norm: tuple[torch.Tensor, torch.Tensor] | None = None, fuse: bool | None = None,
                out_dtype: torch.dtype = torch.int64, config: dict | None = None) -> torch.Tensor:
    """Return ``spec.ops.linear(h, act_bits, W, mul, shift, bias)``, h = x or, with ``norm`` =
    (gamma, eps_q48), ``spec.ops.rms_norm(x, gamma, eps_q48)``; with ``residual`` [M, O],
    ``spec.ops.residual_add(residual, that)``. The decode step's linear (no value is read back:
    CUDA-graph capturable).

    x: Q16 int32/int64 ``[M, K]``; w: int8 limbs ``[LW, O, K]`` (``weight_limbs``). When
    ``fuse`` (default: `fuse_rows_hint`) it is one `_linear_rows_kernel` launch; otherwise the
    rows are quantized first (`quantize_rows`, or ``rowops.rms_norm_quantize`` with the norm)
    and `linear_quantized` adds the residual in its epilogue: two launches either way.
    ``config`` (tests, sweeps): BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages, ROW_BLOCK and
    NORM_BLOCK (values per statistics step), PREFETCH (0..2 weight blocks loaded before the
    statistics) of the one launch, else `rows_config`.
    """
    mm, k = x.shape
    lw, n, kw = w.shape
    la = _num_limbs(act_bits)
    if kw != k or not la or act_bits < 2:
        raise ValueError(f"linear_rows: K {k} vs {kw}, act_bits {act_bits} (2..16)")
    x = x if x.stride(-1) == 1 else x.contiguous()
    if fuse is None:
        fuse = fuse_rows_hint(mm, n, k, la, lw, norm is not None, x.element_size(), x.device)
    if not fuse or mm == 0 or n == 0:
        if norm is None:
            rows = quantize_rows(x, act_bits)
        else:
            from fieldprint_fast.kernels.rowops import rms_norm_quantize

            rows = rms_norm_quantize(x, norm[0], norm[1], act_bits)
        return linear_quantized(*rows, w, mul, shift, bias, out_dtype=out_dtype, residual=residual)
    if not (mm <= ROWS_MAX_M and la <= 2 and lw <= 2 and 1 <= k <= (MAX_K if norm is None else 1 << 16)):
        raise ValueError(f"linear_rows: one launch needs M <= {ROWS_MAX_M}, <= 2 limbs each, 1 <= K <= {MAX_K} "
                         f"(<= 2**16 with the norm: spec.ops.rms_norm's MAX_HIDDEN)")
    residual = _residual_rows(residual, mm, n)
    y = torch.empty((mm, n), dtype=out_dtype, device=x.device)
    res = residual if residual is not None else y
    gamma, eps = norm if norm is not None else (mul, mul)
    rows = triton.next_power_of_2(mm)
    row_block = min(triton.next_power_of_2(k), rows_step(rows, norm is not None))
    if rows == 1 and norm is not None:  # triton 3.6 cannot lay out one-row statistics blocks narrower
        row_block = max(row_block, 128)  # than 128 (a failing layout pass; `python -m tools.sm90_check`)
    cfg = dict(ROW_BLOCK=row_block, NORM_BLOCK=row_block, PREFETCH=0) | dict(
        config or rows_config(mm, n, k, la, lw, norm is not None, x.device))
    tiles = triton.cdiv(n, cfg["BLOCK_N"])
    k_blocks = triton.cdiv(k, cfg["BLOCK_K"])
    share = triton.cdiv(k_blocks, max(1, min(cfg.get("SPLIT_K", 1), k_blocks)))
    split = triton.cdiv(k_blocks, share)  # every split has work
    ws, count = _split_k_buffers(x.device, 4 * mm * n, tiles) if split > 1 else (y, y)
    _linear_rows_kernel[(tiles, split)](
        x, gamma, eps, w, mul, shift, bias if bias is not None else mul, res, y, ws, count,
        mm, n, k, mm * n, split,
        x.stride(0), w.stride(0), w.stride(1), w.stride(2), res.stride(0), y.stride(0), y.stride(1),
        QMAX=(1 << (act_bits - 1)) - 1, LA=la, LW=lw, NORM=norm is not None, HAS_BIAS=bias is not None,
        HAS_RES=residual is not None, EVEN_K=k % cfg["BLOCK_K"] == 0, NARROW_MUL=_narrow(mul), ROWS=rows,
        ROW_BLOCK=cfg["ROW_BLOCK"], NORM_BLOCK=cfg["NORM_BLOCK"], BLOCK_M=ROWS_MAX_M, BLOCK_N=cfg["BLOCK_N"],
        BLOCK_K=cfg["BLOCK_K"], PREFETCH=min(cfg["PREFETCH"], 2), USE_SPLIT=split > 1, PARTIAL_SEM="relaxed",
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return y


def linear_gated(gate_up: torch.Tensor, table: torch.Tensor, act_bits: int, w: torch.Tensor, mul: torch.Tensor,
                 shift: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                 out_dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Return ``linear_rows(spec.ops.swiglu(gate, up, table), ...)`` for ``gate_up`` = [gate | up]
    ``[M, 2 I]`` (the fused gate/up linear's output): the down projection of the decode step,
    with the residual in its epilogue. Two launches either way, and the halves are read in place:

    * where `fuse_rows_hint` takes the one-launch linear (M <= 16, short rows): ``rowops.swiglu``,
      then `linear_rows` (which takes the row statistics itself);
    * M >= SWIGLU_QUANT_MIN_M (batch 32, 64): ``rowops.swiglu_quantize`` (the swiglu and its row
      quantization in one pass, one program per row, the swiglu never written), then
      `linear_quantized`;
    * a few long rows otherwise (8B down at M = 1..16): one program per row would be a serial
      pass over 14,336 values, so ``rowops.swiglu`` (many programs a row), `quantize_rows`
      (its chunked form spreads a row over the SMs) and `linear_quantized`: three launches.
    """
    from fieldprint_fast.kernels import rowops

    mm, two_i = gate_up.shape
    inter = two_i // 2
    if two_i != 2 * inter or w.shape[-1] != inter:
        raise ValueError(f"linear_gated: gate_up [M, 2 I] with I = the weight's K (got {two_i}, K {w.shape[-1]})")
    gate, up = gate_up[:, :inter], gate_up[:, inter:]
    la = _num_limbs(act_bits)
    if fuse_rows_hint(mm, w.shape[1], inter, la, w.shape[0], False, 8, gate_up.device):
        return linear_rows(rowops.swiglu(gate, up, table), act_bits, w, mul, shift, bias, residual=residual, fuse=True,
                           out_dtype=out_dtype)
    if mm >= SWIGLU_QUANT_MIN_M:
        q, m, e = rowops.swiglu_quantize(gate, up, table, act_bits)
    else:
        q, m, e = quantize_rows(rowops.swiglu(gate, up, table), act_bits)
    return linear_quantized(q, m, e, w, mul, shift, bias, residual=residual, out_dtype=out_dtype)


def linear(x: torch.Tensor, act_bits: int, weight: torch.Tensor, mul: torch.Tensor, shift: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``spec.ops.linear(x, act_bits, weight, mul, shift, bias)``, bit for bit (int64 [N, O]).

    The kernels run every width of the spec (2..16 bits) when ``K <= MAX_K``; otherwise (or
    for weights of more than 21 bits, which no profile has) this calls the spec itself."""
    w = weight_limbs(weight)
    if w is None or not _num_limbs(act_bits) or x.shape[-1] > MAX_K or x.dim() != 2:
        from spec.ops import linear as spec_linear

        return spec_linear(x, act_bits, weight, mul, shift, bias)
    q, m, e = quantize_rows(x, act_bits)
    return linear_quantized(q, m, e, w, mul, shift, bias)
