"""Hypothesis strategies for adversarial integer tensors (extremes, zeros, spikes, random)."""
from __future__ import annotations

import torch
from hypothesis import strategies as st

from spec.constants import ACT_MAX

EXTREMES = [0, 1, -1, ACT_MAX, -ACT_MAX, ACT_MAX - 1, 2**16, -(2**16), 2**30, -(2**30)]


@st.composite
def int_tensor(draw, shape, lo=-ACT_MAX, hi=ACT_MAX):
    """Return an int64 tensor of `shape` whose values are drawn from one of several regimes."""
    n = 1
    for s in shape:
        n *= s
    regime = draw(st.sampled_from(["extreme", "const", "random", "spike", "small"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    ext = [v for v in EXTREMES if lo <= v <= hi]
    if regime == "extreme":
        idx = torch.randint(0, len(ext), (n,), generator=g)
        t = torch.tensor(ext)[idx]
    elif regime == "const":
        t = torch.full((n,), draw(st.sampled_from(ext + [lo, hi])))
    elif regime == "spike":
        t = torch.zeros(n, dtype=torch.int64)
        t[draw(st.integers(0, n - 1))] = draw(st.sampled_from([lo, hi]))
    elif regime == "small":
        t = torch.randint(max(lo, -4), min(hi, 4) + 1, (n,), generator=g)
    else:
        t = torch.randint(lo, hi + 1, (n,), generator=g)
    return t.reshape(shape).to(torch.int64)
