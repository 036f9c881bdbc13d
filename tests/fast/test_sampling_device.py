"""Batched device sampling (fieldprint_fast.sampling) equals `spec.sampling.sample` row by row.

Fresh random logits with ties and plateaus, every mix of greedy / temperature / top_k / top_p
rows in one batch, the 128-bit draw against Python integers. On the CPU (the ops are plain
torch, the same on every device); the GPU variant runs them on CUDA.
"""
from __future__ import annotations

import os
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldprint_fast.sampling import SamplingRows, _draw, greedy_rows, sample_rows
from spec.sampling import SamplingParams, sample
from spec.tables import exp2_table

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

fractions = st.builds(Fraction, st.integers(1, 2**16), st.integers(1, 2**16))
params = st.builds(
    SamplingParams,
    temperature=st.one_of(st.just(Fraction(0)), fractions),
    top_k=st.one_of(st.none(), st.integers(1, 80)),
    top_p=st.one_of(st.none(), st.builds(Fraction, st.integers(1, 64), st.just(64))),
    seed=st.integers(0, 2**64 - 1),
)


@settings(deadline=None)
@given(u=st.integers(0, 2**128 - 1), total=st.integers(0, 2**48 - 1))
def test_draw_is_the_128_bit_product(u, total):
    limbs = torch.tensor([[(u >> (16 * i)) & 0xFFFF for i in range(8)]], dtype=torch.int64)
    assert int(_draw(limbs, torch.tensor([total]))[0]) == (u * total) >> 128


@settings(max_examples=max(10, settings.default.max_examples), deadline=None)
@given(rows=st.lists(params, min_size=1, max_size=6), vocab=st.integers(2, 64), spread=st.integers(0, 24),
       seed=st.integers(0, 2**32), step=st.integers(0, 2**20), attempt=st.integers(0, 3))
def test_batch_equals_spec(rows, vocab, spread, seed, step, attempt):
    g = torch.Generator().manual_seed(seed)
    # logits on a coarse grid (2**spread apart) make ties; a wide spread makes near-one-hot rows
    lg = torch.randint(-40, 40, (len(rows), vocab), generator=g, dtype=torch.int64) << spread
    for dev in DEVICES:
        host = [SamplingRows.host_row(p, vocab, 5 + i, step, attempt) for i, p in enumerate(rows)]
        got = sample_rows(lg.to(dev), SamplingRows.from_tensor(torch.tensor(host, device=dev)), exp2_table().to(dev))
        want = [sample(lg[i], p, 5 + i, step, attempt) for i, p in enumerate(rows)]
        assert got.cpu().tolist() == want


@pytest.mark.parametrize("dev", DEVICES)
def test_full_vocabulary_rows(dev):
    """Llama-3 vocabulary size (W close to 2**47): top_p threshold and draw stay exact."""
    g = torch.Generator().manual_seed(1)
    lg = torch.randint(-3, 3, (3, 128256), generator=g, dtype=torch.int64)  # nearly flat: W ~ V * 2**30
    ps = [SamplingParams(temperature=1, seed=3), SamplingParams(temperature="65536/1", top_p="65535/65536", seed=4),
          SamplingParams(temperature="1/65536", top_k=50, top_p="1/2", seed=5)]
    host = [SamplingRows.host_row(p, 128256, i, 7, 0) for i, p in enumerate(ps)]
    got = sample_rows(lg.to(dev), SamplingRows.from_tensor(torch.tensor(host, device=dev)), exp2_table().to(dev))
    assert got.cpu().tolist() == [sample(lg[i], p, i, 7, 0) for i, p in enumerate(ps)]


def test_sampling_makes_no_host_copy(monkeypatch):
    """Inside a captured decode step every operation should be a kernel, with no tensor built from
    host data (torch.tensor / as_tensor of Python values: a host-to-device copy in the graph).
    Device sampling, run here on the CPU, makes none."""
    import torch as t

    from fieldprint_fast.sampling import SamplingRows, sample_rows
    from spec.sampling import SamplingParams
    from spec.tables import exp2_table

    real_tensor, real_as_tensor = t.tensor, t.as_tensor

    def no_host_data(real):
        def guarded(data, *a, **k):
            if not isinstance(data, t.Tensor):
                raise AssertionError(f"host data made into a tensor inside sampling: {data!r}")
            return real(data, *a, **k)
        return guarded

    g = t.Generator().manual_seed(3)
    logits = t.randint(-2**20, 2**20, (3, 97), generator=g, dtype=t.int64)
    params = [SamplingParams(temperature="4/5", seed=7, top_k=20, top_p="9/10"), SamplingParams(),
              SamplingParams(temperature="3/2", seed=1)]
    rows = SamplingRows.from_tensor(t.tensor([SamplingRows.host_row(p, 97, 0, 5, 0) for p in params]))
    table = exp2_table()
    monkeypatch.setattr(t, "tensor", no_host_data(real_tensor))
    monkeypatch.setattr(t, "as_tensor", no_host_data(real_as_tensor))
    sample_rows(logits, rows, table)


@pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="needs CUDA or TRITON_INTERPRET=1")
@settings(max_examples=max(6, settings.default.max_examples // 3), deadline=None)
@given(rows=st.integers(1, 5), vocab=st.sampled_from([1, 2, 31, 64, 65, 1023, 1025, 3000]),
       spread=st.sampled_from([0, 3, 40, 62]), block=st.sampled_from([32, 128]), seed=st.integers(0, 2**32))
def test_greedy_kernel_equals_spec(rows, vocab, spread, block, seed):
    """The one-launch greedy kernel: `spec.sampling.greedy` of every row, ties (coarse grids,
    constant rows, rows of the int64 minimum) at every split and block boundary."""
    from fieldprint_fast.kernels.argmax import greedy as greedy_kernel
    from spec.sampling import greedy

    g = torch.Generator().manual_seed(seed)
    lg = torch.randint(-3, 4, (rows, vocab), generator=g, dtype=torch.int64) << spread
    lg[0, :] = -2**63 if spread == 62 else lg[0, :]  # a row of nothing but the minimum
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    got = greedy_kernel(lg.to(dev), block=block).cpu().tolist()
    assert got == [greedy(lg[i]) for i in range(rows)]
    assert got == greedy_rows(lg, kernel=False).tolist()
