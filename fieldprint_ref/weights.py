"""Cached exact views of a model's matmul weights: speed only, never part of the spec.

`spec.quant.int_matmul` evaluates an integer matmul as a float64 matmul whenever its bound allows
(every partial sum below 2**53), and to do so it converts the weight operand to float64 and
takes max|w| on every call: for a decode step that conversion costs more than the matmul. The
engine instead converts each weight once, here, and attaches the result to the weight tensor it
runs with (`spec.quant.ExactView` under `spec.quant.EXACT_VIEW`); `int_matmul` then reads it.

Nothing about the arithmetic changes: the view holds the same integers (int8 and int16 values
are exact in float64), `int_matmul` still checks its bound on every call with the cached
max|w| and falls back to int64 when the bound reaches 2**53 or FLOAT64_MATMUL is off, and the
matmul it runs is the very call it ran before (same operands, same layout). The caller's model
is not touched: the engine gets a shallow copy whose weight tensors are new tensor objects over
the same storage, carrying the views. Memory: 8 bytes per weight parameter (the float64 copy).
"""
from __future__ import annotations

import copy
import weakref

import torch

from spec.quant import EXACT_VIEW, ExactView


def matmul_weight_names(model) -> list[str]:
    """Return the names of the tensors `spec.model.forward` passes to `int_matmul` as weights:
    ``X.weight`` of every linear ``X`` (the tensors with an ``X.mul``), and for a tied lm_head
    the embedding it reads."""
    t = model.tensors
    out = []
    for name in sorted(t):
        if name.endswith(".mul") and name != "embed.mul":
            base = name[: -len(".mul")]
            out.append(f"{base}.weight" if f"{base}.weight" in t else "embed.weight")
    return out


def exact_view(w: torch.Tensor) -> ExactView:
    """Return the ExactView of integer weight ``w``: max|w| and w as float64."""
    if w.is_floating_point() or w.is_complex():
        raise TypeError(f"exact views are for integer weights, got {w.dtype}")
    # max |w| from the extremes in w's own dtype: exact (Python ints), and no abs() that overflows
    # at the dtype's minimum (-128 for int8)
    top = max(int(w.max()), -int(w.min())) if w.numel() else 0
    return ExactView(absmax=top, float64=w.to(torch.float64))


_VIEWED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its copy with views


def with_exact_views(model):
    """Return a shallow copy of ``model`` whose matmul weights carry their ExactView (made once
    per model object while it lives: engines over the same model share the copies)."""
    try:
        out = _VIEWED.get(model)
    except TypeError:
        out = None
    if out is not None and _same_tensors(out, model):
        return out
    out = _with_exact_views(model)
    try:
        _VIEWED[model] = out
    except TypeError:  # not weak-referenceable: no sharing
        pass
    return out


def _same_tensors(viewed, model) -> bool:
    """Return whether ``viewed`` still stands for ``model`` (whose tensors dict may have been
    replaced or edited since; a weight's bytes are never changed in place)."""
    a, b = viewed.tensors, model.tensors
    return a.keys() == b.keys() and all(
        a[k] is b[k] or (a[k].data_ptr() == b[k].data_ptr() and a[k].shape == b[k].shape and a[k].dtype == b[k].dtype)
        for k in b) and viewed.config == model.config and viewed.profile == model.profile


def _with_exact_views(model):
    out = copy.copy(model)
    out.tensors = dict(model.tensors)
    for name in matmul_weight_names(model):
        w = model.tensors[name].detach()  # a new tensor object over the same storage
        setattr(w, EXACT_VIEW, exact_view(w))
        out.tensors[name] = w
    return out


def has_exact_views(model) -> bool:
    """Return whether every matmul weight of ``model`` carries an ExactView."""
    return all(getattr(model.tensors[n], EXACT_VIEW, None) is not None for n in matmul_weight_names(model))
