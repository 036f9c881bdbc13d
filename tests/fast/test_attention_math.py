"""The 32-bit forms of the attention kernels' per-score steps (fieldprint_fast.kernels.attention_math)
equal the spec's int64 rules, element for element, over the edges of their ranges: score shifts
from left-saturating to past 58, exp_neg arguments up to and beyond the clamp (shifts of 31 and 32,
where a 32-bit shift would be undefined), weight shifts 24..62 with the largest products.

Runs under TRITON_INTERPRET=1 on a CPU (CI) and on CUDA (`pytest -m gpu` runs it too)."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or TRITON_INTERPRET=1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fieldprint_fast.kernels.attention_math import _exp_neg, _score, _weight, packed_exp_table  # noqa: E402
from spec.constants import SCORE_MAX  # noqa: E402
from spec.ops import exp_neg  # noqa: E402
from spec.quant import round_shift, saturate, shift_round  # noqa: E402
from spec.tables import exp2_table  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"
M, N = 16, 32
EXAMPLES = int(os.environ.get("FP_ATTENTION_EXAMPLES", "6"))


@triton.jit
def _steps_kernel(acc_ptr, mqk_ptr, sh_ptr, m_ptr, s_ptr, e_ptr, mv_ptr, wsh_ptr, tab_ptr,
                  score_out, exp_out, weight_out, M: tl.constexpr, N: tl.constexpr):
    off = tl.arange(0, M)[:, None] * N + tl.arange(0, N)[None, :]
    tl.store(score_out + off, _score(tl.load(acc_ptr + off), tl.load(mqk_ptr + off), tl.load(sh_ptr + off)))
    tl.store(exp_out + off, _exp_neg(tl.load(m_ptr + tl.arange(0, M)), tl.load(s_ptr + off), tab_ptr))
    tl.store(weight_out + off, _weight(tl.load(e_ptr + off), tl.load(mv_ptr + off), tl.load(wsh_ptr + off)))


def _draw(gen, lo, hi, edges):
    """M x N int64 values uniform in [lo, hi], a quarter of them replaced by edge values."""
    x = torch.randint(lo, hi + 1, (M, N), generator=gen, dtype=torch.int64)
    pick = torch.rand(M, N, generator=gen) < 0.25
    e = torch.tensor(edges, dtype=torch.int64)
    return torch.where(pick, e[torch.randint(0, len(edges), (M, N), generator=gen)], x)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.integers(0, 2**31))
def test_steps_equal_spec(seed):
    gen = torch.Generator().manual_seed(seed)
    big = 2**28 - 1
    acc = _draw(gen, -big, big, [0, 1, -1, big, -big, 2**27])
    mqk = _draw(gen, 1, 2**28, [1, 2**28, 2**26 + 1])
    sh = _draw(gen, -40, 70, [-32, -31, -30, -1, 0, 1, 2, 56, 57, 58, 59, 62, 63])
    m = torch.randint(-(2**31) + 1, 2**31, (M, 1), generator=gen, dtype=torch.int64)
    m[: M // 2] = torch.randint(-(2**20), 2**20, (M // 2, 1), generator=gen)
    m[0], m[1] = -(2**31) + 1, 2**31 - 1
    gap = _draw(gen, 0, 2**23, [0, 1, 2**21 - 1, 2**21, 2**21 + 1, 2**32 - 2, 31 * 45426, 32 * 45426])
    s = (m - gap).clamp(min=-(2**31) + 1)  # scores are within +-SCORE_MAX, m >= s
    e = _draw(gen, 0, 2**30, [0, 1, 2**30, 2**30 - 1, 2**29])
    mv = _draw(gen, 2**12 + 1, 2**14, [2**12 + 1, 2**14, 2**16 - 1])
    wsh = _draw(gen, 24, 62, [24, 25, 44, 45, 46, 47, 62])
    want_s = saturate(shift_round(acc * mqk, sh), SCORE_MAX)
    tab = exp2_table()
    want_e = exp_neg(m - s, tab)
    want_w = round_shift(e * mv, wsh)
    dev = DEVICE
    i32 = lambda x: x.to(torch.int32).to(dev).contiguous()  # noqa: E731
    outs = [torch.empty(M, N, dtype=torch.int32, device=dev) for _ in range(3)]
    _steps_kernel[(1,)](i32(acc), i32(mqk), i32(sh), i32(m[:, 0]), i32(s), i32(e), i32(mv), i32(wsh),
                        packed_exp_table(tab, dev), *outs, M=M, N=N)
    for got, want in zip(outs, (want_s, want_e, want_w)):
        assert torch.equal(got.cpu().to(torch.int64), want)
