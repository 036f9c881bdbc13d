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
    forward,
    page_bytes,
    sample,
    zero_pages,
)
from fieldprint_ref.ops import __all__ as _ref_all

__all__ = list(_ref_all)
