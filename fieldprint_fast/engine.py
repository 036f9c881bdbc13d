"""The fast engine: the reference engine loop run over `fieldprint_fast.ops`.

The loop (scheduling, paging, anchors, eviction, sampling, records) is shared with
`fieldprint_ref.engine.RefEngine`; only the ops differ, so fast and ref agree bit for bit
wherever the fast ops do.
"""
from __future__ import annotations

import fieldprint_fast.ops as fast_ops
from fieldprint_ref.engine import RefEngine


class FastEngine(RefEngine):
    """The `fieldprint.engine.Engine` contract over `fieldprint_fast.ops`."""

    name = "fast"
    ops = fast_ops
    # the Triton linear kernels read the integer weights: no float64 copies (8 bytes a parameter)
    cache_weights = False
