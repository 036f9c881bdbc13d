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
