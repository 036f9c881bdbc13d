"""The fast engine's op surface: the same names and signatures as `fieldprint_ref.ops`.

Complete from day one (the TFLite ``optimized_ops.h`` pattern): every op without a Triton
kernel yet is re-exported from the reference.  When a kernel lands in
`fieldprint_fast/kernels/`, its launcher replaces the re-export here under the same name, and
tests/ref/test_fast_parity.py keeps checking fast == ref with ``torch.equal``.
"""
from __future__ import annotations

# Unoptimized reference ops (no kernel yet):
from fieldprint_ref.ops import (  # noqa: F401
    PAGE_TOKENS,
    AnchorRef,
    KVPool,
    SamplingParams,
    SequenceChunk,
    allocate_pool,
    copy_page,
    page_bytes,
    sample,
    zero_pages,
)
from fieldprint_ref.ops import __all__ as _ref_all  # forward: defined below, over the kernels

__all__ = list(_ref_all)

# -- Triton kernels under the spec's signatures ------------------------------------------------
# Stage ops of `spec.ops` (not engine-loop names, so not in __all__). CUDA tensors, and CPU
# tensors under TRITON_INTERPRET=1, run the kernels; other CPU tensors run the spec itself.
import os as _os

import torch as _torch

from spec import ops as _spec_ops

_INTERPRET = _os.environ.get("TRITON_INTERPRET") == "1"


def _use_kernels(x: _torch.Tensor) -> bool:
    return x.is_cuda or _INTERPRET


def linear(x, act_bits, weight, mul, shift, bias=None):
    """``spec.ops.linear``: row quantization, exact int8-limb matmul, fused requantization."""
    if not _use_kernels(x):
        return _spec_ops.linear(x, act_bits, weight, mul, shift, bias)
    from fieldprint_fast.kernels.linear import linear as _linear

    return _linear(x, act_bits, weight, mul, shift, bias)


def lm_head(x, act_bits, weight, mul, shift):
    """``spec.ops.lm_head``: a `linear` with no bias."""
    return linear(x, act_bits, weight, mul, shift)


def paged_attention(q, pool, layer, block_table, start, anchors, window, q_bits, prob_bits, exp_table):
    """``spec.attention.paged_attention``: the decode kernel for one query token, the prefill
    kernel for a chunk (``fieldprint_fast.kernels.attention_decode`` / ``attention_prefill``).
    Profiles the kernels do not cover (q_bits > 15, prob_bits > 20) run the spec."""
    from spec.attention import MAX_KEYS, _slots, paged_attention as _spec_attention

    if not _use_kernels(q) or q_bits > 15 or prob_bits > 20:
        return _spec_attention(q, pool, layer, block_table, start, anchors, window, q_bits, prob_bits, exp_table)
    t = q.shape[0]
    lo = 0 if window is None else max(0, start - window + 1)
    a = 0 if anchors is None else anchors.length
    if a + start + t - lo >= MAX_KEYS:
        raise ValueError(f"attention over {a + start + t - lo} keys: at most {MAX_KEYS - 1} (Z < 2**48)")
    # the spec's refusals: a visible block evicted or beyond the table (checked on the host copy)
    _slots(block_table.cpu(), _torch.arange(lo, start + t))
    a_table = None if not a else anchors.block_table
    if a:
        _slots(a_table.cpu(), _torch.arange(0, a))
    if t == 1:
        from fieldprint_fast.kernels.attention_decode import decode_attention

        return decode_attention(q, pool.data, layer, block_table[None], [start], [window],
                                None if a_table is None else a_table[None], [a], q_bits, prob_bits, exp_table)
    from fieldprint_fast.kernels.attention_prefill import prefill_attention

    return prefill_attention(q, pool.data, layer, block_table, start, window, a_table, a, q_bits, prob_bits, exp_table)


def forward(model, pool, chunks):
    """``spec.model.forward`` with this module's kernels (`linear`, `lm_head`, `paged_attention`)."""
    import sys

    from spec.model import forward as _spec_forward

    return _spec_forward(model, pool, chunks, kernels=sys.modules[__name__])


def rms_norm(x, gamma, eps_q48):
    """``spec.ops.rms_norm``: one program per row, the row in registers."""
    if not _use_kernels(x):
        return _spec_ops.rms_norm(x, gamma, eps_q48)
    from fieldprint_fast.kernels.rowops import rms_norm as _rms_norm

    return _rms_norm(x, gamma, eps_q48)


def swiglu(gate, up, table):
    """``spec.ops.swiglu``: sigmoid by table interpolation, two roundings."""
    if not _use_kernels(gate):
        return _spec_ops.swiglu(gate, up, table)
    from fieldprint_fast.kernels.rowops import swiglu as _swiglu

    return _swiglu(gate, up, table)


def residual_add(x, y):
    """``spec.ops.residual_add``: x + y, saturated."""
    if not _use_kernels(x):
        return _spec_ops.residual_add(x, y)
    from fieldprint_fast.kernels.rowops import residual_add as _residual_add

    return _residual_add(x, y)


def embed(tokens, weight, mul, shift):
    """``spec.ops.embed``: the rows of the tokens, scaled to Q16."""
    if not _use_kernels(weight):
        return _spec_ops.embed(tokens, weight, mul, shift)
    from fieldprint_fast.kernels.rowops import embed as _embed

    return _embed(tokens, weight, mul, shift)


def rope(x, pos, cos, sin):
    """``spec.ops.rope``: one program per token, the rotate-half pairs in int64."""
    if not _use_kernels(x):
        return _spec_ops.rope(x, pos, cos, sin)
    from fieldprint_fast.kernels.rowops import rope as _rope

    return _rope(x, pos, cos, sin)


def write_kv(pool, layer, block_table, start, k, v):
    """``spec.attention.write_kv``: K and V rows [T, G, d] packed into the page format on the
    device (the linear kernels' 8-bit row quantization) and scattered to their slots in one
    write, with no value read back (the engine hands over only tables that cover the chunk)."""
    if not _use_kernels(k):
        from spec.attention import write_kv as _spec_write_kv

        return _spec_write_kv(pool, layer, block_table, start, k, v)
    from fieldprint_fast.loop import _pack_rows
    from spec.constants import PAGE_TOKENS

    t, g, d = k.shape
    idx = _torch.arange(start, start + t, device=k.device)
    pages = block_table.to(device=k.device, dtype=_torch.int64)[idx // PAGE_TOKENS]
    rows = _pack_rows(_torch.stack([k, v], dim=1).reshape(-1, d)).view(t, 2, g, d + 4)
    pool.data[pages, layer, :, idx % PAGE_TOKENS] = rows
