"""Parity of the decode step's fused RoPE + K/V write + query quantization
(fieldprint_fast.kernels.kv_write.rope_write_kv) with the spec.

The reference is the spec's own composition: ``spec.ops.rope`` of q and k, ``spec.attention.
write_kv`` of each row's rotated k and its v at the row's (page, slot), and ``spec.quant.
quantize_rows`` of the rotated q per (token, head). ``torch.equal`` on the whole pool (filled
with random bytes first, so a byte written where the spec writes none shows), on the query's
values, m and e, and on its limbs against ``kernels.linear.quantize_rows``. Fresh random rows
at every magnitude (zero heads, heads at +-ACT_MAX), real RoPE tables at positions across the
table and extreme ones (|cos|, |sin| up to 2**31 - 1: the rotation saturates), GQA ratios 1, 2
and 4, q_bits of both profiles, several rows on one page, and padding rows that share the
scratch slot. CPU runs use ``TRITON_INTERPRET=1`` (small head counts); the GPU variant runs
real model shapes.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from spec.attention import KVPool, write_kv
from spec.constants import ACT_MAX, KV_SCALE_BYTES, PAGE_TOKENS
from spec.ops import rope
from spec.profiles import PROFILES
from spec.quant import quantize_rows
from spec.tables import rope_tables

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or TRITON_INTERPRET=1")

from fieldprint_fast.kernels.kv_write import rope_write_kv  # noqa: E402
from fieldprint_fast.kernels import linear as fast_linear  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"
EXAMPLES = settings.default.max_examples
Q_BITS = sorted({p.q_bits for p in PROFILES.values()})  # int8: 8, default: 12


def assert_equal(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    got, want = got.cpu(), want.cpu()
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        diff = (got.long() - want.long())[got != want]
        raise AssertionError(f"{what}: {bad.shape[0]} of {want.numel()} differ, first at {bad[0].tolist()}, "
                             f"difference {int(diff.min())}..{int(diff.max())}")


def head_rows(gen: torch.Generator, b: int, heads: int, d: int) -> torch.Tensor:
    """int64 [b, heads * d] Q16: each head at its own magnitude (0..31 bits); some heads zero,
    some at +-ACT_MAX, some at 2**31 - 2**k (just below saturation)."""
    mag = torch.randint(0, 32, (b, heads, 1), generator=gen)
    x = torch.randint(-ACT_MAX, ACT_MAX + 1, (b, heads, d), generator=gen, dtype=torch.int64) >> (31 - mag).clamp(min=0)
    kind = torch.randint(0, 8, (b, heads), generator=gen)
    sign = torch.where(torch.rand(b, heads, d, generator=gen) < 0.5, -1, 1)
    x[kind == 0] = 0
    x[kind == 1] = (sign * ACT_MAX)[kind == 1]
    x[kind == 2] = (sign * (ACT_MAX - torch.randint(0, 1 << 8, (b, heads, d), generator=gen)))[kind == 2]
    return x.reshape(b, heads * d)


def tables(gen: torch.Generator, d: int, positions: int, extreme: bool):
    """(cos, sin) int32 [positions, d/2]: spec.tables.rope_tables, or random |c|, |s| <= 2**31 - 1
    (|c| + |s| < 2**32, the spec's bound) where the rotation saturates."""
    if not extreme:
        return rope_tables(d, 10000.0, positions)
    shape = (positions, d // 2)
    return tuple(torch.randint(-ACT_MAX, ACT_MAX + 1, shape, generator=gen, dtype=torch.int64).to(torch.int32)
                 for _ in range(2))


def spec_step(qkv, pos, page, slot, data, layer, cos, sin, heads, g, d, q_bits):
    """The spec's composition; returns the pool after the writes and quantize_rows of rope(q)."""
    x = qkv.view(qkv.shape[0], heads + 2 * g, d)
    qk = rope(x[:, :heads + g], pos, cos, sin)
    pool = KVPool(data.clone())
    for r in range(qkv.shape[0]):  # row r is token `slot` of a one-block table [page]
        write_kv(pool, layer, page[r:r + 1], int(slot[r]), qk[r:r + 1, heads:], x[r:r + 1, heads + g:])
    rq = qk[:, :heads].reshape(-1, d)
    return pool.data, rq, quantize_rows(rq, q_bits)


def check(gen, b, g, ratio, d, q_bits, positions, extreme, pages, layers, padding):
    heads = g * ratio
    cos, sin = tables(gen, d, positions, extreme)
    qkv = head_rows(gen, b, heads + 2 * g, d)
    pos = torch.randint(0, positions, (b,), generator=gen, dtype=torch.int64)
    pos[0] = positions - 1  # the table's last row
    flat = torch.randperm(pages * PAGE_TOKENS, generator=gen)[:b]  # distinct (page, slot): several on one page
    page, slot = flat // PAGE_TOKENS, flat % PAGE_TOKENS
    if padding:  # rows past the batch: identical inputs, all at the scratch page's slot 0
        qkv = torch.cat([qkv, qkv[-1:].expand(padding, -1)])
        pos = torch.cat([pos, torch.zeros(padding, dtype=torch.int64)])
        page = torch.cat([page, torch.full((padding,), pages, dtype=torch.int64)])
        slot = torch.cat([slot, torch.zeros(padding, dtype=torch.int64)])
    data = torch.randint(-128, 128, (pages + 1, layers, 2, PAGE_TOKENS, g, d + KV_SCALE_BYTES), generator=gen,
                         dtype=torch.int64).to(torch.int8)
    layer = int(torch.randint(0, layers, (1,), generator=gen))
    want_pool, rq, (want_q, want_m, want_e) = spec_step(qkv, pos, page, slot, data, layer, cos, sin, heads, g, d,
                                                        q_bits)
    dev = [t.to(DEVICE) for t in (qkv, pos, page, slot, data, cos, sin)]
    limbs, m, e = rope_write_kv(*dev[:5], layer, dev[5], dev[6], heads, q_bits)
    assert limbs.dtype == torch.int8 and m.dtype == e.dtype == torch.int32
    assert_equal(dev[4], want_pool, "pool bytes")
    q = sum(limbs[i].cpu().long() << (7 * i) for i in range(limbs.shape[0]))
    assert_equal(q, want_q, "q")
    assert_equal(m.long(), want_m, "m")
    assert_equal(e.long(), want_e, "e")
    ref_limbs, _, _ = fast_linear.quantize_rows(rq.to(DEVICE), q_bits)  # the layout the attention reads
    assert_equal(limbs, ref_limbs, "q limbs")


@settings(max_examples=EXAMPLES, deadline=None)
@given(b=st.integers(1, 9), g=st.integers(1, 2), ratio=st.sampled_from([1, 2, 4]),
       d=st.sampled_from([16, 32, 64, 128, 48, 80]), q_bits=st.sampled_from(Q_BITS), positions=st.integers(1, 300),
       extreme=st.booleans(), pages=st.integers(1, 3), padding=st.integers(0, 2), seed=st.integers(0, 2**31))
def test_rope_write_kv_equals_spec(b, g, ratio, d, q_bits, positions, extreme, pages, padding, seed):
    gen = torch.Generator().manual_seed(seed)
    pages = max(pages, -(-b // PAGE_TOKENS))
    check(gen, b, g, ratio, d, q_bits, positions, extreme, pages, 2, padding)


def test_rope_write_kv_rejects_bad_shapes():
    data = torch.zeros(2, 1, 2, PAGE_TOKENS, 2, 16 + KV_SCALE_BYTES, dtype=torch.int8, device=DEVICE)
    cos, sin = (t.to(DEVICE) for t in rope_tables(16, 10000.0, 8))
    i = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    qkv = torch.zeros(1, 8 * 16, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="qkv"):
        rope_write_kv(qkv[:, :-1], i, i, i, data, 0, cos, sin, 4, 8)
    with pytest.raises(ValueError, match="q_bits"):
        rope_write_kv(qkv, i, i, i, data, 0, cos, sin, 4, 17)
    with pytest.raises(ValueError, match="layer"):
        rope_write_kv(qkv, i, i, i, data, 1, cos, sin, 4, 8)
    with pytest.raises(ValueError, match="cos"):
        rope_write_kv(qkv, i, i, i, data, 0, cos[:, :4], sin[:, :4], 4, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("heads,g,d", [(32, 8, 128), (32, 8, 64), (28, 4, 128), (32, 32, 128), (16, 8, 64)])
@pytest.mark.parametrize("q_bits", Q_BITS)
def test_rope_write_kv_real_sizes(heads, g, d, q_bits):
    """Llama-3-8B (GQA 4), Llama-3.2-1B (head_dim 64), Qwen2-7B (GQA 7), MHA, GQA 2; batch 1 to 64
    (64 rows over 4 pages), 8192 positions, 4 layers."""
    assert heads % g == 0
    for seed, b in enumerate((1, 3, 8, 64)):
        gen = torch.Generator().manual_seed(seed)
        for extreme in (False, True):
            check(gen, b, g, heads // g, d, q_bits, 8192, extreme, 4, 4, padding=2)
