"""Errors raised by the engines for inputs a user can get wrong.

``fieldprint_ref`` may import only ``spec`` (see tests/test_architecture.py), so these do not
derive from ``fieldprint.errors.FieldprintError``; the CLI catches both families. Every message
names the field or value at fault.
"""
from __future__ import annotations


class EngineError(ValueError):
    """Base class of every engine error a user can cause."""


class PagingError(EngineError):
    """A page-bookkeeping rule was broken (double free, unpinning an unpinned page, ...)."""


class OutOfPagesError(PagingError):
    """The KV pool has no free page left for a requested allocation."""


class ContextTooLongError(EngineError):
    """Anchors plus prompt do not fit the model's positions ``[0, max_position)``."""


class SamplingParamError(EngineError):
    """A sampling option (temperature, top_k, top_p, seed, max_new_tokens) is out of range."""
