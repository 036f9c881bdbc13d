"""
Row-wise and elementwise operators in Triton, bit for bit with ``spec.ops``
===========================================================================

* ``rms_norm``: one program per row, the row held in registers (``H <= MAX_ROW``): absmax, the
  rescale ``s``, the exact int64 sum of squares (integer addition: any order gives the same
  sum), the floor mean, epsilon in the row's units, ``spec.quant.isqrt`` per row (a float64
  ``sqrt`` with one integer correction each way, ``linear._isqrt``: exact, and a short chain on
  the row's critical path), then ``div_round(xs * gamma, r)`` per element in int64 (integer
  division on non-negative operands, as the spec defines it).
* ``rms_norm_quantize``: the same row, then ``spec.quant.quantize_rows`` of the result while it
  is still in registers, written as the int8 limbs ``fieldprint_fast.kernels.linear`` reads;
  it replaces ``rms_norm`` + ``quantize_rows`` (two reads and a write of the row) before the
  q/k/v and gate/up linears.
* ``rope``: one program per token, all heads, the rotate-half pairs in int64 (``_rope_pair``,
  shared with ``kernels.kv_write``).
* ``swiglu`` (sigmoid by table interpolation, two roundings), ``residual_add`` and ``embed``:
  elementwise, in int64; ``swiglu`` reads its gate and up rows in place (any row stride: the
  two halves of the fused gate/up output need no copies).
* ``swiglu_quantize``: the swiglu of a row and ``spec.quant.quantize_rows`` of it in one
  launch, as the limbs the down projection's matmul reads (its two-launch path, M > 16).

Rows longer than ``MAX_ROW`` run the spec (no Llama-family model has them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fieldprint_fast.kernels.linear import (  # noqa: F401
    _isqrt, _num_limbs, _quantize_block, _rms_root, _rms_scale, _rms_shift, _row_scale, _shift_round, ACT_MAX, LIMB_BITS,
    RMS_NORM_BITS,
)
from spec.constants import (
    ACT_FRAC_BITS as _ACT_FRAC_BITS, ROPE_FRAC_BITS as _ROPE_FRAC_BITS, SIGMOID_DOMAIN as _SIGMOID_DOMAIN,
    SIGMOID_FRAC_BITS as _SIGMOID_FRAC_BITS, SIGMOID_STEP_BITS as _SIGMOID_STEP_BITS,
)

ROPE_FRAC_BITS = tl.constexpr(_ROPE_FRAC_BITS)  # (= 30) cos/sin table fraction bits
ACT_FRAC_BITS = tl.constexpr(_ACT_FRAC_BITS)  # (= 16)
SIGMOID_FRAC_BITS = tl.constexpr(_SIGMOID_FRAC_BITS)  # (= 16)
SIG_LIM = tl.constexpr(_SIGMOID_DOMAIN << _ACT_FRAC_BITS)  # (= 2**20) sigmoid input clamp, Q16
SIG_FB = tl.constexpr(_ACT_FRAC_BITS - _SIGMOID_STEP_BITS)  # (= 10) fraction bits in one table step
SIG_MASK = tl.constexpr((1 << (_ACT_FRAC_BITS - _SIGMOID_STEP_BITS)) - 1)  # (= 1,023)
MAX_ROW = 16384  # longest row a program keeps in registers
BLOCK = 1024  # elements per program of the elementwise kernels


# %%
# RMSNorm (+ quantize)
# --------------------

@triton.jit
def _rms_norm_kernel(x_ptr, gamma_ptr, eps_ptr, y_ptr, q_ptr, m_ptr, e_ptr,
                     H, stride_xn, stride_yn, stride_ql, stride_qn,
                     QUANTIZE: tl.constexpr, QMAX: tl.constexpr, LIMBS: tl.constexpr, BLOCK_H: tl.constexpr):
    """One row: y = spec.ops.rms_norm(x)[row] (the steps of ``linear._rms_shift``, ``_rms_root``,
    ``_rms_scale``, shared with the fused decode linear); with QUANTIZE, its quantize_rows limbs."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    inside = offs < H
    x = tl.load(x_ptr + row * stride_xn + offs, mask=inside, other=0).to(tl.int64)
    # -- 1. rescale so the largest magnitude has RMS_NORM_BITS bits ------------------------
    s = _rms_shift(tl.max(tl.abs(x), axis=0))
    xs = _shift_round(x, tl.zeros_like(x) + s)
    # -- 2. mean of squares and epsilon in xs**2 units; 3. r, y = div_round(xs * gamma, r) --
    r = _rms_root(tl.sum(xs * xs, axis=0), H, tl.load(eps_ptr).to(tl.int64), s)
    g = tl.load(gamma_ptr + offs, mask=inside, other=0).to(tl.int64)
    y = _rms_scale(xs, g, r, 1.0 / (2 * r).to(tl.float64))
    if QUANTIZE:  # spec.quant.quantize_rows of this row, as linear._quantize_rows_kernel does
        m, e, left, d, rcp = _row_scale(tl.maximum(tl.max(tl.abs(y), axis=0), 1), QMAX)
        _quantize_block(y, inside, q_ptr + row * stride_qn + offs, stride_ql, left, d, rcp, LIMBS)
        tl.store(m_ptr + row, m.to(tl.int32))
        tl.store(e_ptr + row, e.to(tl.int32))
    else:
        tl.store(y_ptr + row * stride_yn + offs, y, mask=inside)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def rms_norm(x: torch.Tensor, gamma: torch.Tensor, eps_q48: torch.Tensor) -> torch.Tensor:
    """Return ``spec.ops.rms_norm(x, gamma, eps_q48)`` (int64, the shape of x)."""
    h = x.shape[-1]
    if h > MAX_ROW or h == 0:
        from spec.ops import rms_norm as spec_rms_norm

        return spec_rms_norm(x, gamma, eps_q48)
    x2 = _rows(x.reshape(-1, h))
    y = torch.empty(x2.shape, dtype=torch.int64, device=x.device)
    if x2.shape[0]:
        block = triton.next_power_of_2(h)
        _rms_norm_kernel[(x2.shape[0],)](x2, gamma, eps_q48, y, y, y, y, h, x2.stride(0), y.stride(0), 0, 0,
                                         QUANTIZE=False, QMAX=1, LIMBS=1, BLOCK_H=block, num_warps=_warps(block))
    return y.reshape(x.shape)


def rms_norm_quantize(x: torch.Tensor, gamma: torch.Tensor, eps_q48: torch.Tensor, bits: int):
    """Return ``linear.quantize_rows(spec.ops.rms_norm(x, gamma, eps_q48), bits)``: int8 limbs
    ``[L, N, H]`` and int32 (m, e) ``[N]``, from one read of x. Requires x ``[N, H]``, H <= MAX_ROW."""
    n, h = x.shape
    limbs = _num_limbs(bits)
    if h > MAX_ROW or h == 0 or not limbs or bits < 2:
        raise ValueError(f"rms_norm_quantize: rows of 1..{MAX_ROW} values and bits 2..16 (got {h}, {bits})")
    x = _rows(x)
    q = torch.empty((limbs, n, h), dtype=torch.int8, device=x.device)
    m = torch.empty((n,), dtype=torch.int32, device=x.device)
    e = torch.empty((n,), dtype=torch.int32, device=x.device)
    if n:
        block = triton.next_power_of_2(h)
        _rms_norm_kernel[(n,)](x, gamma, eps_q48, q, q, m, e, h, x.stride(0), 0, q.stride(0), q.stride(1),
                               QUANTIZE=True, QMAX=(1 << (bits - 1)) - 1, LIMBS=limbs, BLOCK_H=block,
                               num_warps=_warps(block))
    return q, m, e


@triton.jit
def _isqrt_kernel(v_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    tl.store(out_ptr + offs, _isqrt(tl.load(v_ptr + offs, mask=inside, other=0).to(tl.int64)), mask=inside)


def isqrt(v: torch.Tensor) -> torch.Tensor:
    """Return ``spec.quant.isqrt(v)`` (int64, the shape of v): the row kernels' `_isqrt` on its own
    (its tests). Requires 0 <= v < 2**63."""
    flat = v.reshape(-1).to(torch.int64).contiguous()
    out = torch.empty_like(flat)
    if flat.numel():
        _isqrt_kernel[(triton.cdiv(flat.numel(), BLOCK),)](flat, out, flat.numel(), BLOCK=BLOCK)
    return out.reshape(v.shape)


def _warps(block: int) -> int:
    return 4 if block <= 2048 else 8 if block <= 4096 else 16


# %%
# Elementwise operators
# ---------------------

@triton.jit
def _sigmoid(g, table_ptr, TABLE_LAST: tl.constexpr):
    """spec.ops.sigmoid: clamp to [-16, 16], linear interpolation in the 2049-entry table."""
    u = tl.minimum(tl.maximum(g, -SIG_LIM), SIG_LIM) + SIG_LIM
    idx = u >> SIG_FB
    frac = u & SIG_MASK
    t0 = tl.load(table_ptr + idx).to(tl.int64)
    t1 = tl.load(table_ptr + tl.minimum(idx + 1, TABLE_LAST)).to(tl.int64)
    return t0 + _shift_round((t1 - t0) * frac, tl.zeros_like(frac) + SIG_FB)


@triton.jit
def _swiglu(g, u, table_ptr, TABLE_LAST: tl.constexpr):
    """spec.ops.swiglu of int64 gates g and ups u: silu = saturate(round(g * sigmoid(g) 2**-16)),
    then saturate(round(silu * u 2**-16))."""
    sixteen = tl.zeros_like(g) + SIGMOID_FRAC_BITS
    silu = _shift_round(g * _sigmoid(g, table_ptr, TABLE_LAST), sixteen)
    silu = tl.minimum(tl.maximum(silu, -ACT_MAX), ACT_MAX)
    y = _shift_round(silu * u, tl.zeros_like(g) + ACT_FRAC_BITS)
    return tl.minimum(tl.maximum(y, -ACT_MAX), ACT_MAX)


@triton.jit
def _swiglu_kernel(g_ptr, u_ptr, table_ptr, y_ptr, H, stride_g, stride_u, TABLE_LAST: tl.constexpr,
                   BLOCK: tl.constexpr):
    """Program (row, block): y[row, block] = swiglu(g[row, block], u[row, block]). g and u are
    rows of any stride (the two halves of the gate/up linear's output, read in place)."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < H
    g = tl.load(g_ptr + row * stride_g + offs, mask=inside, other=0).to(tl.int64)
    u = tl.load(u_ptr + row * stride_u + offs, mask=inside, other=0).to(tl.int64)
    tl.store(y_ptr + row * H + offs, _swiglu(g, u, table_ptr, TABLE_LAST), mask=inside)


@triton.jit
def _swiglu_quantize_kernel(g_ptr, u_ptr, table_ptr, q_ptr, m_ptr, e_ptr, H, stride_g, stride_u, stride_ql, stride_qn,
                            TABLE_LAST: tl.constexpr, QMAX: tl.constexpr, LIMBS: tl.constexpr, BLOCK: tl.constexpr,
                            ONE_PASS: tl.constexpr):
    """One row: y = swiglu(g, u) (`_swiglu`), then spec.quant.quantize_rows of y written as int8
    limbs (as ``linear._quantize_rows_kernel``). ONE_PASS: the row is one block, y stays in
    registers; else pass 1 takes the absmax block by block and pass 2 recomputes each block's
    y (cheaper than a round trip of y through memory) and quantizes it."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    g_row = g_ptr + row * stride_g
    u_row = u_ptr + row * stride_u
    q_row = q_ptr + row * stride_qn
    if ONE_PASS:
        inside = offs < H
        y = _swiglu(tl.load(g_row + offs, mask=inside, other=0).to(tl.int64),
                    tl.load(u_row + offs, mask=inside, other=0).to(tl.int64), table_ptr, TABLE_LAST)
        amax = tl.max(tl.abs(y), axis=0)
    else:
        amax_b = tl.zeros([BLOCK], dtype=tl.int64)
        for k0 in range(0, H, BLOCK):
            inside = k0 + offs < H
            y = _swiglu(tl.load(g_row + k0 + offs, mask=inside, other=0).to(tl.int64),
                        tl.load(u_row + k0 + offs, mask=inside, other=0).to(tl.int64), table_ptr, TABLE_LAST)
            amax_b = tl.maximum(amax_b, tl.abs(y))
        amax = tl.max(amax_b, axis=0)
    m, e, left, d, rcp = _row_scale(tl.maximum(amax, 1), QMAX)  # spec.quant.row_scale (a zero row: amax 1)
    if ONE_PASS:
        _quantize_block(y, offs < H, q_row + offs, stride_ql, left, d, rcp, LIMBS)
    else:
        for k0 in range(0, H, BLOCK):
            inside = k0 + offs < H
            y = _swiglu(tl.load(g_row + k0 + offs, mask=inside, other=0).to(tl.int64),
                        tl.load(u_row + k0 + offs, mask=inside, other=0).to(tl.int64), table_ptr, TABLE_LAST)
            _quantize_block(y, inside, q_row + k0 + offs, stride_ql, left, d, rcp, LIMBS)
    tl.store(m_ptr + row, m.to(tl.int32))
    tl.store(e_ptr + row, e.to(tl.int32))


@triton.jit
def _residual_add_kernel(x_ptr, y_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    s = tl.load(x_ptr + offs, mask=inside, other=0).to(tl.int64) + tl.load(y_ptr + offs, mask=inside, other=0).to(tl.int64)
    tl.store(out_ptr + offs, tl.minimum(tl.maximum(s, -ACT_MAX), ACT_MAX), mask=inside)


@triton.jit
def _embed_kernel(tok_ptr, w_ptr, mul_ptr, shift_ptr, out_ptr, H, stride_wv, BLOCK_H: tl.constexpr):
    """Row t of the output: saturate(shift_round(W[tok[t]] * mul[tok[t]], shift[tok[t]]))."""
    t = tl.program_id(0).to(tl.int64)
    col = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    inside = col < H
    tok = tl.load(tok_ptr + t).to(tl.int64)
    w = tl.load(w_ptr + tok * stride_wv + col, mask=inside, other=0).to(tl.int64)
    mul = tl.load(mul_ptr + tok).to(tl.int64)
    shift = tl.load(shift_ptr + tok).to(tl.int64)
    y = _shift_round(w * mul, tl.zeros_like(w) + shift)
    tl.store(out_ptr + t * H + col, tl.minimum(tl.maximum(y, -ACT_MAX), ACT_MAX), mask=inside)


@triton.jit
def _rope_pair(x1, x2, c, s):
    """spec.ops.rope of the pairs (x1, x2) (int64, |x| <= ACT_MAX) by (cos, sin) = (c, s) (Q30):
    round((x1 c - x2 s) 2**-30) and round((x2 c + x1 s) 2**-30), half away from zero, saturated.
    |c| + |s| < 2**32 keeps both sums below 2**63."""
    thirty = tl.zeros_like(x1) + ROPE_FRAC_BITS
    out1 = _shift_round(x1 * c - x2 * s, thirty)
    out2 = _shift_round(x2 * c + x1 * s, thirty)
    return tl.minimum(tl.maximum(out1, -ACT_MAX), ACT_MAX), tl.minimum(tl.maximum(out2, -ACT_MAX), ACT_MAX)


@triton.jit
def _rope_kernel(x_ptr, pos_ptr, cos_ptr, sin_ptr, out_ptr, HEADS, HALF, stride_tab,
                 BLOCK_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Token t, all heads: out1 = round((x1 cos - x2 sin) 2**-30), out2 = round((x2 cos + x1 sin) 2**-30)."""
    t = tl.program_id(0).to(tl.int64)
    hd = tl.arange(0, BLOCK_HEADS)[:, None]
    i = tl.arange(0, BLOCK_HALF)[None, :]
    inside = (hd < HEADS) & (i < HALF)
    p = tl.load(pos_ptr + t).to(tl.int64)
    c = tl.load(cos_ptr + p * stride_tab + i, mask=i < HALF, other=0).to(tl.int64)
    s = tl.load(sin_ptr + p * stride_tab + i, mask=i < HALF, other=0).to(tl.int64)
    base = x_ptr + t * HEADS * 2 * HALF + hd * 2 * HALF + i
    x1 = tl.load(base, mask=inside, other=0).to(tl.int64)
    x2 = tl.load(base + HALF, mask=inside, other=0).to(tl.int64)
    out1, out2 = _rope_pair(x1, x2, c, s)
    o = out_ptr + t * HEADS * 2 * HALF + hd * 2 * HALF + i
    tl.store(o, out1, mask=inside)
    tl.store(o + HALF, out2, mask=inside)


def rope(x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Return ``spec.ops.rope(x, pos, cos, sin)`` for x [N, heads, d] (int64)."""
    n, heads, d = x.shape
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.int64, device=x.device)
    if x.numel():
        _rope_kernel[(n,)](x, pos.to(x.device).contiguous(), cos.contiguous(), sin.contiguous(), out, heads, d // 2,
                           cos.stride(0), BLOCK_HEADS=triton.next_power_of_2(heads),
                           BLOCK_HALF=triton.next_power_of_2(max(d // 2, 1)))
    return out


def _gate_rows(gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return gate and up as [N, H] rows with unit column stride (views where they already are:
    the halves of the gate/up linear's output are read in place, not copied)."""
    h = gate.shape[-1]
    g, u = gate.reshape(-1, h), up.expand_as(gate).reshape(-1, h)
    return (g if g.stride(-1) == 1 else g.contiguous()), (u if u.stride(-1) == 1 else u.contiguous())


def swiglu(gate: torch.Tensor, up: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Return ``spec.ops.swiglu(gate, up, table)`` (int64, the shape of gate)."""
    g, u = _gate_rows(gate, up)
    t = table.to(device=gate.device).contiguous()
    n, h = g.shape
    y = torch.empty((n, h), dtype=torch.int64, device=g.device)
    if g.numel():
        _swiglu_kernel[(n, triton.cdiv(h, BLOCK))](g, u, t, y, h, g.stride(0), u.stride(0), TABLE_LAST=t.numel() - 1,
                                                   BLOCK=BLOCK)
    return y.reshape(gate.shape)


SWIGLU_QUANT_BLOCK = 4096  # values per step of `swiglu_quantize` (a row up to this long: one pass, in registers)


def swiglu_quantize(gate: torch.Tensor, up: torch.Tensor, table: torch.Tensor, bits: int):
    """Return ``linear.quantize_rows(spec.ops.swiglu(gate, up, table), bits)``: int8 limbs
    ``[L, N, H]`` and int32 (m, e) ``[N]``, one launch, the swiglu never written. gate, up:
    ``[N, H]`` (any row stride: the halves of the gate/up output as they are)."""
    limbs = _num_limbs(bits)
    if gate.dim() != 2 or gate.shape[1] == 0 or not limbs or bits < 2:
        raise ValueError(f"swiglu_quantize: gate [N, H] with H >= 1 and bits 2..16 (got {list(gate.shape)}, {bits})")
    g, u = _gate_rows(gate, up)
    t = table.to(device=gate.device).contiguous()
    n, h = g.shape
    q = torch.empty((limbs, n, h), dtype=torch.int8, device=g.device)
    m = torch.empty((n,), dtype=torch.int32, device=g.device)
    e = torch.empty((n,), dtype=torch.int32, device=g.device)
    if n:
        block = min(SWIGLU_QUANT_BLOCK, triton.next_power_of_2(h))
        _swiglu_quantize_kernel[(n,)](g, u, t, q, m, e, h, g.stride(0), u.stride(0), q.stride(0), q.stride(1),
                                      TABLE_LAST=t.numel() - 1, QMAX=(1 << (bits - 1)) - 1, LIMBS=limbs, BLOCK=block,
                                      ONE_PASS=h <= block, num_warps=_warps(block))
    return q, m, e


def residual_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return ``spec.ops.residual_add(x, y)`` (int64, the broadcast shape)."""
    x, y = torch.broadcast_tensors(x, y)
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty(x.shape, dtype=torch.int64, device=x.device)
    if x.numel():
        _residual_add_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, y, out, x.numel(), BLOCK=BLOCK)
    return out


def embed(tokens: torch.Tensor, weight: torch.Tensor, mul: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Return ``spec.ops.embed(tokens, weight, mul, shift)`` (int64 [T, H]) for tokens [T]."""
    if tokens.dim() != 1:
        from spec.ops import embed as spec_embed

        return spec_embed(tokens, weight, mul, shift)
    v, h = weight.shape
    w = _rows(weight)
    out = torch.empty((tokens.numel(), h), dtype=torch.int64, device=weight.device)
    if tokens.numel() and h:
        block = min(1024, triton.next_power_of_2(h))
        _embed_kernel[(tokens.numel(), triton.cdiv(h, block))](tokens.to(weight.device).contiguous(), w, mul, shift, out,
                                                              h, w.stride(0), BLOCK_H=block)
    return out
