"""Parity of the paged decode attention kernel (fieldprint_fast.kernels.attention_decode) with
`spec.attention.paged_attention`, by `torch.equal`.

Random batches of sequences of different lengths (page tables placed at random, evicted blocks
before the window), anchors of 0, partial and full pages, windows, GQA ratios 1/2/4, head dims,
splits of the context at random boundaries, value magnitudes spread up to 2**31 and queries from
flat to saturated (one-hot softmax). On a CPU this runs under TRITON_INTERPRET=1 at small sizes;
`pytest -m gpu` runs the same properties on CUDA at real sizes.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from attention_cases import EXP, problems, spec_outputs, to_device

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or TRITON_INTERPRET=1")

from fieldprint_fast.kernels.attention_decode import decode_attention  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"
EXAMPLES = int(os.environ.get("FP_ATTENTION_EXAMPLES", "12"))


def _run(p: dict, split) -> list[torch.Tensor]:
    seqs = p["seqs"]
    nb = max(s["table"].numel() for s in seqs)
    tables = torch.full((len(seqs), nb), -1, dtype=torch.int64, device=p["pool"].device)
    for b, s in enumerate(seqs):
        tables[b, : s["table"].numel()] = s["table"]
    anchors = p["anchor_table"][None].expand(len(seqs), -1) if p["anchor_len"] else None
    before = p["pool"].clone()
    out = decode_attention(torch.stack([s["q"][0] for s in seqs]), p["pool"], p["layer"], tables,
                           [s["start"] for s in seqs], [s["window"] for s in seqs], anchors,
                           [p["anchor_len"]] * len(seqs), p["q_bits"], p["prob_bits"], EXP.to(p["pool"].device),
                           split=split)
    assert torch.equal(p["pool"], before)  # attention reads pages, never writes them
    return [out[b : b + 1] for b in range(len(seqs))]


@settings(max_examples=EXAMPLES)
@given(problems(decode=True, max_ctx=80, max_anchor=40), st.sampled_from([None, 1, 2, 3]), st.sampled_from([1, 2, 5]))
def test_decode_equals_spec(p, pages, mix_pages):
    want = spec_outputs(p)
    split = None if pages is None else (16 * pages, 16 * mix_pages)  # split boundaries at page multiples
    got = _run(to_device(p, DEVICE), split)
    for w, g in zip(want, got):
        assert torch.equal(g.cpu(), w)


@pytest.mark.gpu
@settings(max_examples=int(os.environ.get("FP_ATTENTION_GPU_EXAMPLES", "60")), deadline=None)
@given(problems(decode=True, max_ctx=3000, max_anchor=600, heads=(1, 4, 8), kv=(1, 2, 8), dims=(64, 128)),
       st.sampled_from([None, 1, 2, 5, 16, 64]), st.sampled_from([1, 4, 32]))
def test_decode_equals_spec_real_sizes(p, pages, mix_pages):
    want = spec_outputs(p)
    split = None if pages is None else (16 * pages, 16 * mix_pages)
    got = _run(to_device(p, "cuda"), split)
    for w, g in zip(want, got):
        assert torch.equal(g.cpu(), w)
