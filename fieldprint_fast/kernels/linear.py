"""
Integer linear layers on int8 tensor cores, bit for bit with ``spec.ops.linear``
================================================================================

``spec.ops.linear(x, act_bits, W, mul, shift, bias)`` is three steps (``spec/quant.py``):

1. ``quantize_rows``: each row of the Q16 input gets a scale ``(m, e)`` from its absmax, and
   ``q = round(x / (m * 2**e))`` with ``|q| <= qmax(act_bits)``;
2. ``int_matmul``: the exact integer product ``acc = q @ W.T``;
3. ``requantize``: ``y = round(acc * m * mul * 2**(e - shift))``, saturated to ``ACT_MAX``, then
   ``+ bias``, saturated again.

This module runs them as two launches: ``_quantize_rows_kernel`` (one pass over ``x``) and
``_linear_kernel`` (the matmul with steps 3 fused in its epilogue).

Limbs
-----
Tensor cores multiply int8 by int8 into int32 exactly. A wider integer is split into 7-bit
*limbs*: ``v = hi * 2**7 + lo`` with ``lo = v & 127`` in ``[0, 127]`` and ``hi = v >> 7``
(arithmetic shift) in ``[-128, 127]`` whenever ``|v| < 2**14``. Both limbs are int8, so the
``default`` profile's 12-bit activations and the 10-bit edge-layer weights (int16 storage)
become two int8 operands each, and

    acc = sum_ij dot(a_i, w_j) * 2**(7 (i + j))

is exact: every limb product is at most ``2**14`` in magnitude, so a limb dot over
``K <= MAX_K = 131071`` terms stays below ``2**31`` in its int32 accumulator, and the
combination runs in int64 in the epilogue. Activations of 15 or more bits, weights of 15 or
more bits, and ``K > MAX_K`` would need a third limb or a wider accumulator; ``linear`` runs
the spec itself for them (no profile of ``spec.profiles.PROFILES`` does).

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
* *Row quantization: a float64 quotient and one integer correction.* ``div_round`` needs
  ``floor((2|n| + d) / (2 d))`` per element with ``2|n| + d < 2**33``. Integer division is a
  long software sequence on the GPU; the float64 quotient of two integers below ``2**53`` is
  within one unit of the floor (here it is in fact exact: the quotient is below ``2**16`` and
  its distance to an integer is at least ``1 / (2 d) >= 2**-27``), and one step
  ``r = N - t D; t -= r < 0; t += r >= D`` makes it exact without relying on that argument.
  The scale itself (``row_scale``: a bit length and one ceiling division) is per row, in int64.

Shape classes
-------------
The same kernel runs every shape; the launcher picks the tile (``_config``):

* *GEMM* (prefill, ``M > 64``): 128-row tiles, grouped program order for L2 reuse
  (``GROUP_M``, as in Triton's matmul tutorial), a pipelined K loop.
* *Skinny* (decode, ``M <= 64``): 16- or 64-row tiles, and as few weight rows per program as
  it takes to give every SM several programs, so that the int8 weights stream once at memory
  bandwidth; the activation rows are tiny and stay in L2.

The weights are passed as ``[O, K]`` (K contiguous), which is the K-major operand layout
Hopper's 8-bit ``wgmma`` requires for both operands.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from spec.constants import ACT_MAX as _ACT_MAX, SCALE_MANT_BITS as _SCALE_MANT_BITS

ACT_MAX = tl.constexpr(_ACT_MAX)  # (= 2**31 - 1) saturation bound of Q16 activations
SCALE_MANT_BITS = tl.constexpr(_SCALE_MANT_BITS)  # (= 14) row-scale mantissa bits
LIMB_BITS = tl.constexpr(7)  # v = hi * 2**7 + lo, lo in [0, 127]
MAX_LIMBS = 2  # operands of up to 14 magnitude bits (|v| < 2**14)
MAX_K = (2**31 - 1) // 2**14  # (= 131,071) longest limb dot an int32 accumulator holds exactly
QUANT_BLOCK = 16384  # rows up to this long are quantized from registers, in one read


# %%
# Row quantization
# ----------------

@triton.jit
def _bit_length(v):
    """Return the bit length of 1 <= v < 2**53 (int64): the float64 exponent, read off its bits."""
    return ((v.to(tl.float64).to(tl.int64, bitcast=True) >> 52) & 2047) - 1022


@triton.jit
def _quantize_block(x, mask, q_out, stride_ql, left, d, LIMBS: tl.constexpr):
    """Store div_round(x << left, d) as int8 limbs: a float64 quotient, one integer correction."""
    two_d = 2 * d
    num = 2 * (tl.abs(x) << left) + d
    t = (num.to(tl.float64) / two_d.to(tl.float64)).to(tl.int64)
    r = num - t * two_d
    t = tl.where(r < 0, t - 1, t)
    t = tl.where(r >= two_d, t + 1, t)
    q = tl.where(x < 0, -t, t)
    if LIMBS == 1:
        tl.store(q_out, q.to(tl.int8), mask=mask)
    else:
        tl.store(q_out, (q & 127).to(tl.int8), mask=mask)
        tl.store(q_out + stride_ql, (q >> LIMB_BITS).to(tl.int8), mask=mask)


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, m_ptr, e_ptr,  # x [N, K] int32/int64; q [LIMBS, N, K] int8; m, e [N] int32
    K, stride_xn, stride_ql, stride_qn,
    QMAX: tl.constexpr, LIMBS: tl.constexpr, BLOCK: tl.constexpr, ONE_PASS: tl.constexpr,
):
    """One program per row: absmax, row scale (m, e), then q = div_round(x * 2**-e, m) as limbs."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    x_row = x_ptr + row * stride_xn
    # -- absmax of the row (ONE_PASS: the row is one block, kept in registers) --------------
    if ONE_PASS:
        x_all = tl.load(x_row + offs, mask=offs < K, other=0).to(tl.int64)
        amax = tl.abs(x_all)
    else:
        amax = tl.zeros([BLOCK], dtype=tl.int64)
        for k0 in range(0, K, BLOCK):
            x = tl.load(x_row + k0 + offs, mask=k0 + offs < K, other=0).to(tl.int64)
            amax = tl.maximum(amax, tl.abs(x))
    amax = tl.maximum(tl.max(amax, axis=0), 1)  # a zero row is treated as amax = 1
    # -- row scale: spec.quant.row_scale -------------------------------------------------
    e = _bit_length(amax) - _bit_length(tl.full([], QMAX, tl.int64)) + 1 - SCALE_MANT_BITS
    left = tl.maximum(-e, 0)
    right = tl.maximum(e, 0)
    den = tl.full([], QMAX, tl.int64) << right
    m = ((amax << left) + den - 1) // den  # ceil_div of non-negative integers
    d = m << right
    # -- q = div_round(x << left, d) -----------------------------------------------------
    if ONE_PASS:
        _quantize_block(x_all, offs < K, q_ptr + row * stride_qn + offs, stride_ql, left, d, LIMBS)
    else:
        for k0 in range(0, K, BLOCK):
            mask = k0 + offs < K
            x = tl.load(x_row + k0 + offs, mask=mask, other=0).to(tl.int64)
            _quantize_block(x, mask, q_ptr + row * stride_qn + k0 + offs, stride_ql, left, d, LIMBS)
    tl.store(m_ptr + row, m.to(tl.int32))
    tl.store(e_ptr + row, e.to(tl.int32))


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
def _epilogue(acc00, acc01, acc10, acc11, offs_m, offs_n, rm, rn, m_ptr, e_ptr, mul_ptr, shift_ptr, bias_ptr,
              y_ptr, M, N, stride_ym, stride_yn, LA: tl.constexpr, LW: tl.constexpr, HAS_BIAS: tl.constexpr,
              NARROW_MUL: tl.constexpr):
    """Combine the limb dots exactly (int64), requantize (spec.quant.requantize), add the bias, store."""
    m = tl.load(m_ptr + offs_m)
    e = tl.load(e_ptr + offs_m).to(tl.int64)
    mul = tl.load(mul_ptr + offs_n)
    shift = tl.load(shift_ptr + offs_n).to(tl.int64)
    acc = acc00.to(tl.int64)
    if LA == 2:
        acc += acc10.to(tl.int64) << LIMB_BITS
    if LW == 2:
        acc += acc01.to(tl.int64) << LIMB_BITS
        if LA == 2:
            acc += acc11.to(tl.int64) << (2 * LIMB_BITS)
    if NARROW_MUL:
        # |m * mul| < 2**14 * 2**17: one int32 product, then one multiply by it (32 x 32 -> 64
        # for a single limb pair); modulo 2**64 this is acc * m * mul, the spec's value.
        prod = acc * (m[:, None] * mul[None, :]).to(tl.int64)
    else:  # the spec's two int64 products
        prod = acc * m.to(tl.int64)[:, None] * mul.to(tl.int64)[None, :]
    y = _shift_round(prod, shift[None, :] - e[:, None])
    y = tl.minimum(tl.maximum(y, -ACT_MAX), ACT_MAX)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n).to(tl.int64)
        y = tl.minimum(tl.maximum(y + bias[None, :], -ACT_MAX), ACT_MAX)
    y_ptrs = y_ptr + rm[:, None].to(tl.int64) * stride_ym + rn[None, :] * stride_yn
    if LA * LW == 1:
        # |y| <= ACT_MAX: narrowing to int32 first is exact and keeps 32-bit values in registers
        # until the store (the int64 tile held whole spilled; two-limb tiles did better without).
        y = y.to(tl.int32)
    tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _linear_kernel(
    # pointers
    a_ptr, w_ptr, m_ptr, e_ptr, mul_ptr, shift_ptr, bias_ptr, y_ptr, ws_ptr, count_ptr,
    # dimensions: a [LA, M, K] int8 limbs, w [LW, N, K] int8 limbs, y [M, N]; ws [4, M, N] int32
    M, N, K, PLANE,  # PLANE = M * N (elements of one ws plane)
    # strides
    stride_al, stride_am, stride_ak, stride_wl, stride_wn, stride_wk, stride_ym, stride_yn,
    # meta-parameters
    LA: tl.constexpr, LW: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, NARROW_MUL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """y = requantize(sum_ij dot(a_i, w_j) << 7(i+j), m, e, mul, shift) (+ bias), saturated.

    With SPLIT_K > 1, program (tile, s) sums the s-th share of the K blocks and adds its int32
    partial dots into ``ws`` atomically (integer addition: exact in any order; every partial sum
    is bounded by the full one, < 2**31); the last program of a tile to arrive (``count``) takes
    the sums, leaves ``ws`` and ``count`` zero for the next launch, and runs the epilogue.
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
        if EVEN_K:
            a0 = tl.load(a_ptrs)
            w0 = tl.load(w_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a0 = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0)
            w0 = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0)
        acc00 = tl.dot(a0, w0, acc00, out_dtype=tl.int32)
        if LA == 2:
            if EVEN_K:
                a1 = tl.load(a_ptrs + stride_al)
            else:
                a1 = tl.load(a_ptrs + stride_al, mask=offs_k[None, :] < k_left, other=0)
            acc10 = tl.dot(a1, w0, acc10, out_dtype=tl.int32)
        if LW == 2:
            if EVEN_K:
                w1 = tl.load(w_ptrs + stride_wl)
            else:
                w1 = tl.load(w_ptrs + stride_wl, mask=offs_k[:, None] < k_left, other=0)
            acc01 = tl.dot(a0, w1, acc01, out_dtype=tl.int32)
            if LA == 2:
                acc11 = tl.dot(a1, w1, acc11, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if SPLIT_K == 1:
        _epilogue(acc00, acc01, acc10, acc11, offs_m, offs_n, rm, rn, m_ptr, e_ptr, mul_ptr, shift_ptr,
                  bias_ptr, y_ptr, M, N, stride_ym, stride_yn, LA, LW, HAS_BIAS, NARROW_MUL)
    else:
        # -- split K: exact integer sums in ws, the last program of the tile finishes -------
        inside = (rm[:, None] < M) & (rn[None, :] < N)
        ws = ws_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
        plane = PLANE
        tl.atomic_add(ws, acc00, mask=inside, sem="release")
        if LW == 2:
            tl.atomic_add(ws + plane, acc01, mask=inside, sem="release")
        if LA == 2:
            tl.atomic_add(ws + 2 * plane, acc10, mask=inside, sem="release")
            if LW == 2:
                tl.atomic_add(ws + 3 * plane, acc11, mask=inside, sem="release")
        tl.debug_barrier()  # every thread's partial sums precede the arrival below
        arrived = tl.atomic_add(count_ptr + pid, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            zero = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
            acc00 = tl.atomic_xchg(ws, zero, mask=inside, sem="acq_rel")
            if LW == 2:
                acc01 = tl.atomic_xchg(ws + plane, zero, mask=inside, sem="acq_rel")
            if LA == 2:
                acc10 = tl.atomic_xchg(ws + 2 * plane, zero, mask=inside, sem="acq_rel")
                if LW == 2:
                    acc11 = tl.atomic_xchg(ws + 3 * plane, zero, mask=inside, sem="acq_rel")
            tl.atomic_xchg(count_ptr + pid, 0)
            _epilogue(acc00, acc01, acc10, acc11, offs_m, offs_n, rm, rn, m_ptr, e_ptr, mul_ptr, shift_ptr,
                      bias_ptr, y_ptr, M, N, stride_ym, stride_yn, LA, LW, HAS_BIAS, NARROW_MUL)


# %%
# Launchers
# ---------

def _num_limbs(bits: int) -> int:
    """Return the int8 limbs a symmetric `bits`-bit integer needs (0 when more than MAX_LIMBS)."""
    return 1 if bits <= 8 else 2 if bits <= 15 else 0


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: any small number
    return torch.cuda.get_device_properties(device).multi_processor_count


def quantize_rows(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``spec.quant.quantize_rows(x, bits)`` as (limbs, m, e): limbs int8 ``[L, N, K]``
    (L = 1 for bits <= 8, else 2: q = limbs[1] * 2**7 + limbs[0]), m and e int32 ``[N]``.

    Requires x int32 or int64 ``[N, K]`` with ``|x| <= ACT_MAX`` and ``2 <= bits <= 15``.
    """
    limbs = _num_limbs(bits)
    if not 2 <= bits or not limbs:
        raise ValueError(f"quantize_rows: bits must be 2..15, got {bits}")
    if x.dim() != 2 or x.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"quantize_rows: x must be int32/int64 [N, K], got {x.dtype} {list(x.shape)}")
    n, k = x.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    q = torch.empty((limbs, n, k), dtype=torch.int8, device=x.device)
    m = torch.empty((n,), dtype=torch.int32, device=x.device)
    e = torch.empty((n,), dtype=torch.int32, device=x.device)
    if n == 0:
        return q, m, e
    block = min(QUANT_BLOCK, triton.next_power_of_2(max(k, 16)))
    warps = 4 if block <= 2048 else 8 if block <= 4096 else 16  # <= 32 int64 values per thread
    _quantize_rows_kernel[(n,)](x, q, m, e, k, x.stride(0), q.stride(0), q.stride(1),
                                QMAX=(1 << (bits - 1)) - 1, LIMBS=limbs, BLOCK=block, ONE_PASS=k <= block,
                                num_warps=warps)
    return q, m, e


def split_limbs(w: torch.Tensor) -> torch.Tensor:
    """Return the int8 limbs ``[L, O, K]`` of an integer weight ``[O, K]``: int8 weights, and wider
    ones with |w| < 128, as they are (L = 1), others as (w & 127, w >> 7) (L = 2).
    Requires |w| < 2**14."""
    if w.dtype == torch.int8:
        return w.unsqueeze(0)
    w16 = w.to(torch.int32)
    top = int(w16.abs().amax()) if w16.numel() else 0
    if top >= 1 << 14:
        raise ValueError("split_limbs: weights must have |w| < 2**14 (two 7-bit limbs)")
    if top < 128:  # a wide dtype holding 8-bit values: one limb is the weight itself
        return w16.to(torch.int8).unsqueeze(0).contiguous()
    return torch.stack([(w16 & 127).to(torch.int8), (w16 >> 7).to(torch.int8)]).contiguous()


_LIMBS_ATTR = "fieldprint_fast_limbs"  # attribute of a weight tensor: (its _version, its limbs)


def weight_limbs(w: torch.Tensor) -> torch.Tensor | None:
    """Return ``split_limbs(w)``, made once per weight tensor and kept as an attribute of the
    tensor object (redone when its version counter moves); None when w needs three limbs."""
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


def _config(m: int, n: int, k: int, la: int, lw: int, device: torch.device) -> dict:
    """Return the tile of one launch: see the module docstring, "Shape classes"."""
    pairs = la * lw
    if m > 64:  # the fastest tiles of the 8192^3 sweep (benchmarks/results/linear-*.json)
        if pairs == 1:
            return dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4)
        return dict(BLOCK_M=128, BLOCK_N=128 if pairs == 2 else 64, BLOCK_K=128, GROUP_M=8, num_warps=8,
                    num_stages=4)
    # Split K (SPLIT_K > 1, see split_k_hint) stays off by default until a GPU parity run has
    # covered it (docs/fast/linear.md); pass config=dict(..., SPLIT_K=s) to use it.
    return dict(BLOCK_M=16 if m <= 16 else 64, BLOCK_N=64, BLOCK_K=256 if pairs == 1 else 128, GROUP_M=1,
                num_warps=4, num_stages=4, SPLIT_K=1)


def split_k_hint(m: int, n: int, k: int, cfg: dict, device: torch.device) -> int:
    """Return a K split that gives every SM about two programs, with >= 4 K blocks per program."""
    tiles = triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    return max(1, min(2 * _sm_count(device) // tiles, triton.cdiv(k, 4 * cfg["BLOCK_K"])))


def linear_quantized(q: torch.Tensor, m: torch.Tensor, e: torch.Tensor, w: torch.Tensor, mul: torch.Tensor,
                     shift: torch.Tensor, bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.int64,
                     config: dict | None = None) -> torch.Tensor:
    """Return ``requantize(q @ W.T, m, e, mul, shift)`` (+ bias, saturated) from quantized rows.

    q: int8 limbs ``[LA, M, K]`` with (m, e) int32 ``[M]`` (``quantize_rows``); w: int8 limbs
    ``[LW, O, K]`` (``split_limbs``); mul, shift ``[O]``; bias ``[O]`` or None. LA, LW <= 2 and
    K <= MAX_K. ``out_dtype`` int64 (the spec's) or int32 (values are within ACT_MAX either way).
    """
    la, mm, k = q.shape
    lw, n, kw = w.shape
    if kw != k or not (1 <= la <= MAX_LIMBS and 1 <= lw <= MAX_LIMBS) or k > MAX_K:
        raise ValueError(f"linear: limbs {la}x{lw} (<= 2 each), K {k} vs {kw} (<= {MAX_K})")
    if q.dtype != torch.int8 or w.dtype != torch.int8:
        raise ValueError("linear: limbs must be int8")
    y = torch.empty((mm, n), dtype=out_dtype, device=q.device)
    if mm == 0 or n == 0:
        return y
    if k == 0:  # an empty sum: acc = 0
        q = torch.zeros((la, mm, 1), dtype=torch.int8, device=q.device)
        w = torch.zeros((lw, n, 1), dtype=torch.int8, device=q.device)
        k = 1
    cfg = dict(SPLIT_K=1) | dict(config or _config(mm, n, k, la, lw, q.device))
    tiles = triton.cdiv(mm, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    cfg["SPLIT_K"] = max(1, min(cfg["SPLIT_K"], triton.cdiv(k, cfg["BLOCK_K"])))
    ws, count = _split_k_buffers(q.device, 4 * mm * n, tiles) if cfg["SPLIT_K"] > 1 else (y, y)
    _linear_kernel[(tiles, cfg["SPLIT_K"])](
        q, w, m, e, mul, shift, bias if bias is not None else mul, y, ws, count,
        mm, n, k, mm * n,
        q.stride(0), q.stride(1), q.stride(2), w.stride(0), w.stride(1), w.stride(2), y.stride(0), y.stride(1),
        LA=la, LW=lw, HAS_BIAS=bias is not None, EVEN_K=k % cfg["BLOCK_K"] == 0, NARROW_MUL=_narrow(mul), **cfg,
    )
    return y


def linear(x: torch.Tensor, act_bits: int, weight: torch.Tensor, mul: torch.Tensor, shift: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``spec.ops.linear(x, act_bits, weight, mul, shift, bias)``, bit for bit (int64 [N, O]).

    The kernels run when the operands fit two limbs and ``K <= MAX_K``; otherwise this calls the
    spec itself (same result, reference speed)."""
    w = weight_limbs(weight)
    if w is None or not _num_limbs(act_bits) or x.shape[-1] > MAX_K or x.dim() != 2:
        from spec.ops import linear as spec_linear

        return spec_linear(x, act_bits, weight, mul, shift, bias)
    q, m, e = quantize_rows(x, act_bits)
    return linear_quantized(q, m, e, w, mul, shift, bias)
