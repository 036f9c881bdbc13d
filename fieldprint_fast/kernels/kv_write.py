"""
RoPE, K/V into their page slots and the query's row quantization, in one launch
===============================================================================

After a decode step's fused q/k/v linear, row ``b`` of its output holds, side by side, ``H``
query heads, ``G`` key heads and ``G`` value heads of ``d`` Q16 values each. The spec then
computes (``spec.model``'s attention block, ``spec.attention.write_kv`` and
``spec.attention.scores``):

1. ``q, k = spec.ops.rope(q, pos), spec.ops.rope(k, pos)``;
2. ``pack_rows(k)``, ``pack_rows(v)`` (``spec.attention.pack_rows``: the 8-bit
   ``quantize_rows`` of each head row and its 4 scale bytes) into
   ``data[page, layer, 0 | 1, slot, head]``;
3. ``quantize_rows(q, q_bits)`` per (token, head), the first step of the scores.

``rope_write_kv`` does all three in one launch, one program per (row, head): a head's ``d``
values are read once, rotated and quantized in registers, and written either as the query
limbs that ``kernels.attention_decode`` reads (the layout ``kernels.linear.quantize_rows``
returns) or as a page row. At batch 1 this replaces ~9 launches per layer (RoPE, the K|V
stack, the K/V quantization, the scale-byte arithmetic, the concatenation, the scatter, the
query quantization) by one: a decode step that small is bound by launches, not bytes.

Arithmetic, bounds, roundings (each the spec's, at the spec's place)
--------------------------------------------------------------------
* *RoPE* (``rowops._rope_pair``): ``x1 c - x2 s`` and ``x2 c + x1 s`` in int64, with
  ``|x| <= ACT_MAX < 2**31`` and ``|c| + |s| < 2**32`` (Q30 tables), so below ``2**63``; one
  rounding, half away from zero at ``2**-30`` (``spec.quant.round_shift``), then saturation to
  ``ACT_MAX`` (``spec.quant.saturate``). V heads are not rotated.
* *Row scale* (``linear._row_scale``, ``spec.quant.row_scale``): ``amax = max(max |x|, 1)``
  over the rotated head row, ``e = bitlen(amax) - bitlen(qmax) + 1 - SCALE_MANT_BITS``, ``m`` the
  ceiling quotient; int64 scalars per program. ``qmax`` is ``qmax(q_bits)`` for query heads,
  127 for K/V (the page format stores int8).
* *Quotient* (``linear._quantize_block``, ``spec.quant.div_round``): ``q = div_round(x << left,
  m << right)`` per element: a float64 product with the row's reciprocal, then one integer
  correction step (``linear._floor_div``); every operand is below
  ``2 * 2**31 * 2**SCALE_MANT_BITS + 2**15 < 2**47``, so float64 holds it.
  ``|q| <= qmax``: a K/V value is one int8, a query value ``Q_LIMBS`` 7-bit limbs.
* *Page row* (``spec.attention.KVPool``): ``d`` int8 values, then ``m & 255``, ``m >> 8``
  (``2**12 < m <= 2**14``), ``e`` (``-19 <= e <= 11`` for 8 bits) and a zero byte, each stored
  as the int8 of its low 8 bits; nothing else in the pool is written.

Rows that share a (page, slot) (the padding rows of a batch bucket, all pointed at the scratch
page) carry identical inputs, so whichever program writes last writes the same bytes.
No value is read back and every allocation depends on shapes only: the launch can be captured
in a CUDA graph.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fieldprint_fast.kernels.linear import _num_limbs, _quantize_block, _row_scale
from fieldprint_fast.kernels.rowops import _rope_pair
from spec.constants import KV_SCALE_BYTES
from spec.quant import qmax


@triton.jit
def _rope_write_kv_kernel(
    # pointers
    x_ptr, pos_ptr, page_ptr, slot_ptr, cos_ptr, sin_ptr,  # x [B, (H + 2G) D]; pos, page, slot [B] int64
    q_ptr, m_ptr, e_ptr,  # q [Q_LIMBS, B H, D] int8; m, e [B H] int32
    pool_ptr,  # int8 [pages, layers, 2, PAGE_TOKENS, G, D + 4]
    # dimensions and strides
    layer, stride_xn, stride_tab, stride_ql, stride_qn,
    stride_pp, stride_pl, stride_pkv, stride_ps, stride_ph,
    # meta-parameters
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr, Q_QMAX: tl.constexpr, Q_LIMBS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    """Program (row, head), head in [0, H + 2G): query heads, then key heads, then value heads.
    RoPE on q and k; then q -> quantize_rows(., q_bits) limbs, k and v -> pack_rows page rows."""
    row = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    HALF: tl.constexpr = D // 2
    i = tl.arange(0, BLOCK_HALF)
    inside = i < HALF
    # -- the head's rotate-half pairs (x1, x2) = (x[i], x[i + d/2]) ----------------------
    src = x_ptr + row * stride_xn + head * D + i
    x1 = tl.load(src, mask=inside, other=0).to(tl.int64)
    x2 = tl.load(src + HALF, mask=inside, other=0).to(tl.int64)
    # -- 1. RoPE (q and k heads): spec.ops.rope -----------------------------------------
    if head < H + G:
        p = tl.load(pos_ptr + row)
        c = tl.load(cos_ptr + p * stride_tab + i, mask=inside, other=0).to(tl.int64)
        s = tl.load(sin_ptr + p * stride_tab + i, mask=inside, other=0).to(tl.int64)
        x1, x2 = _rope_pair(x1, x2, c, s)
    # masked lanes are 0 (and rotate to 0): they do not change the absmax
    amax = tl.maximum(tl.max(tl.maximum(tl.abs(x1), tl.abs(x2)), axis=0), 1)  # a zero row: amax = 1
    if head < H:
        # -- 2. query head: quantize_rows(q, q_bits), the row (token, head) of [B H, D] --
        m, e, left, d, rcp = _row_scale(amax, Q_QMAX)
        qrow = row * H + head
        q_row = q_ptr + qrow * stride_qn + i
        _quantize_block(x1, inside, q_row, stride_ql, left, d, rcp, Q_LIMBS)
        _quantize_block(x2, inside, q_row + HALF, stride_ql, left, d, rcp, Q_LIMBS)
        tl.store(m_ptr + qrow, m.to(tl.int32))
        tl.store(e_ptr + qrow, e.to(tl.int32))
    else:
        # -- 3. key or value head: pack_rows into data[page, layer, kv, slot, kv head] -----
        kv = (head - H) // G  # 0 = K, 1 = V
        kv_head = (head - H) % G
        page = tl.load(page_ptr + row).to(tl.int64)
        slot = tl.load(slot_ptr + row).to(tl.int64)
        dst = (pool_ptr + page * stride_pp + layer * stride_pl + kv * stride_pkv + slot * stride_ps
               + kv_head * stride_ph)  # the page row (a scalar pointer; the query branch's is a block)
        m, e, left, d, rcp = _row_scale(amax, 127)
        _quantize_block(x1, inside, dst + i, 0, left, d, rcp, 1)
        _quantize_block(x2, inside, dst + HALF + i, 0, left, d, rcp, 1)
        # the 4 scale bytes: m as uint16 little-endian, e, 0 (each the int8 of its low 8 bits)
        b = tl.arange(0, 4)
        scale = tl.where(b == 0, m & 255, tl.where(b == 1, m >> 8, tl.where(b == 2, e, 0)))
        tl.store(dst + D + b, scale.to(tl.int8))


def rope_write_kv(qkv: torch.Tensor, pos: torch.Tensor, page: torch.Tensor, slot: torch.Tensor, data: torch.Tensor,
                  layer: int, cos: torch.Tensor, sin: torch.Tensor, heads: int, q_bits: int):
    """Rotate, pack and scatter one q/k/v row per token; return the query's quantized rows.

    qkv: int32/int64 ``[B, (heads + 2 G) d]`` (Q16, |x| <= ACT_MAX); pos, page, slot: int64 ``[B]``
    (RoPE position, page and slot of the row's K/V; ``pos`` below the tables' length); data: the
    pool ``[pages, layers, 2, PAGE_TOKENS, G, d + 4]`` int8; cos, sin: ``[max_position, d/2]``.
    Writes ``spec.attention.pack_rows(rope(k))`` and ``pack_rows(v)`` at ``data[page, layer, 0 | 1,
    slot]`` and returns ``kernels.linear.quantize_rows(rope(q).reshape(-1, d), q_bits)``: int8 limbs
    ``[L, B heads, d]`` and int32 (m, e) ``[B heads]``.
    """
    # -- (1) checks -------------------------------------------------------------------------
    b, width = qkv.shape
    g, d = (data.shape[4], data.shape[5] - KV_SCALE_BYTES) if data.dim() == 6 else (0, 0)
    limbs = _num_limbs(q_bits)
    if data.dtype != torch.int8 or d < 2 or d % 2:
        raise ValueError(f"rope_write_kv: pool must be int8 [pages, layers, 2, 16, G, d + 4], d even, got "
                         f"{data.dtype} {list(data.shape)}")
    if width != (heads + 2 * g) * d or qkv.dtype not in (torch.int32, torch.int64) or qkv.stride(-1) != 1:
        raise ValueError(f"rope_write_kv: qkv must be int32/int64 [B, {(heads + 2 * g) * d}] rows, got "
                         f"{qkv.dtype} {list(qkv.shape)}")
    if not (2 <= q_bits and limbs) or not 0 <= layer < data.shape[1]:
        raise ValueError(f"rope_write_kv: q_bits must be 2..16 and layer < {data.shape[1]} (got {q_bits}, {layer})")
    if any(t.shape != (b,) or t.dtype != torch.int64 or t.stride(0) != 1 for t in (pos, page, slot)):
        raise ValueError("rope_write_kv: pos, page, slot must be contiguous int64 [B]")
    if cos.shape != sin.shape or cos.shape[1] != d // 2 or cos.stride(1) != 1 or sin.stride() != cos.stride():
        raise ValueError(f"rope_write_kv: cos and sin must be [max_position, {d // 2}] with rows contiguous")
    # -- (2) outputs ------------------------------------------------------------------------
    q = torch.empty((limbs, b * heads, d), dtype=torch.int8, device=qkv.device)
    m = torch.empty((b * heads,), dtype=torch.int32, device=qkv.device)
    e = torch.empty((b * heads,), dtype=torch.int32, device=qkv.device)
    # -- (3) launch -------------------------------------------------------------------------
    if b:
        block = triton.next_power_of_2(d // 2)
        _rope_write_kv_kernel[(b, heads + 2 * g)](
            qkv, pos, page, slot, cos, sin, q, m, e, data,
            layer, qkv.stride(0), cos.stride(0), q.stride(0), q.stride(1), *data.stride()[:5],
            H=heads, G=g, D=d, Q_QMAX=qmax(q_bits), Q_LIMBS=limbs, BLOCK_HALF=block,
            num_warps=max(1, min(4, block // 64)))
    return q, m, e


def bench(batch: int = 1, heads: int = 32, kv_heads: int = 8, d: int = 128, q_bits: int = 12, layers: int = 16):
    """Print the time of one layer's RoPE + K/V write + q quantization on the GPU, fused (this
    kernel) and as the decode loop composed it before (``rowops.rope``, ``loop._pack_rows`` and
    its scatter, ``linear.quantize_rows``), each captured in a CUDA graph of ``layers`` copies."""
    import triton.testing

    from fieldprint_fast.kernels.linear import quantize_rows
    from fieldprint_fast.kernels.rowops import rope
    from fieldprint_fast.loop import _pack_rows
    from spec.tables import rope_tables

    dev = "cuda"
    cos, sin = (t.to(dev) for t in rope_tables(d, 10000.0, 4096))
    gen = torch.Generator().manual_seed(0)
    qkv = (torch.randint(-2**31 + 1, 2**31, (batch, (heads + 2 * kv_heads) * d), generator=gen) >> 8).to(dev)
    pos = torch.randint(0, 4096, (batch,), generator=gen).to(dev)
    page = torch.randint(0, 64, (batch,), generator=gen).to(dev)
    slot = torch.randint(0, 16, (batch,), generator=gen).to(dev)
    data = torch.zeros(64, layers, 2, 16, kv_heads, d + KV_SCALE_BYTES, dtype=torch.int8, device=dev)
    h, g = heads, kv_heads

    def fused():
        for n in range(layers):
            rope_write_kv(qkv, pos, page, slot, data, n, cos, sin, h, q_bits)

    def composed():
        for n in range(layers):
            qk = rope(qkv[:, :(h + g) * d].reshape(-1, h + g, d), pos, cos, sin)
            kv = torch.stack([qk[:, h:], qkv[:, (h + g) * d:].reshape(-1, g, d)], dim=1)
            data[page, n, :, slot] = _pack_rows(kv.reshape(-1, d)).view(-1, 2, g, d + KV_SCALE_BYTES)
            quantize_rows(qk[:, :h].reshape(-1, d), q_bits)

    for name, fn in (("fused", fused), ("composed", composed)):
        ms = triton.testing.do_bench_cudagraph(fn)
        print(f"{name:9s} batch {batch}: {1000 * ms / layers:7.2f} us per layer")


if __name__ == "__main__":
    bench()
