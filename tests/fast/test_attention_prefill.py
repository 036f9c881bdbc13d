"""Parity of the paged prefill attention kernel (fieldprint_fast.kernels.attention_prefill) with
`spec.attention.paged_attention`, by `torch.equal`.

Random chunks (prefill from 0 and chunked prefill from any start), causal masks across page
and tile boundaries, anchors of 0, partial and full pages, windows (evicted blocks before
them), GQA ratios, head dims, value magnitudes spread up to 2**31 and queries from flat to
saturated. On a CPU this runs under TRITON_INTERPRET=1 at small sizes; `pytest -m gpu` runs the
same properties on CUDA at real sizes.
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

from fieldprint_fast.kernels.attention_prefill import prefill_attention  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"
EXAMPLES = int(os.environ.get("FP_ATTENTION_EXAMPLES", "8"))


def _run(p: dict, block_m: int, block_n: int, chunks: int | None = None) -> torch.Tensor:
    s = p["seqs"][0]
    before = p["pool"].clone()
    out = prefill_attention(s["q"], p["pool"], p["layer"], s["table"], s["start"], s["window"],
                            p["anchor_table"] if p["anchor_len"] else None, p["anchor_len"],
                            p["q_bits"], p["prob_bits"], EXP.to(p["pool"].device), block_m=block_m, block_n=block_n,
                            **({} if chunks is None else {"chunk": chunks * block_n}))
    assert torch.equal(p["pool"], before)  # attention reads pages, never writes them
    return out


@settings(max_examples=EXAMPLES)
@given(problems(decode=False, max_ctx=48, max_anchor=40), st.sampled_from([16, 32]), st.sampled_from([32, 64]),
       st.sampled_from([None, 1, 2]))
def test_prefill_equals_spec(p, block_m, block_n, chunks):
    """chunks: add the int32 limb accumulators into int64 every `chunks` key blocks (the path of
    rows that see more than MAX_SPLIT_KEYS keys), or only at the end (None)."""
    want = spec_outputs(p)[0]
    assert torch.equal(_run(to_device(p, DEVICE), block_m, block_n, chunks).cpu(), want)


@pytest.mark.gpu
@settings(max_examples=int(os.environ.get("FP_ATTENTION_GPU_EXAMPLES", "40")), deadline=None)
@given(problems(decode=False, max_ctx=800, max_anchor=200, heads=(1, 4, 8), kv=(1, 2, 8), dims=(64, 128)),
       st.sampled_from([32, 64]), st.sampled_from([32, 64]), st.sampled_from([None, 3]))
def test_prefill_equals_spec_real_sizes(p, block_m, block_n, chunks):
    want = spec_outputs(p)[0]
    assert torch.equal(_run(to_device(p, "cuda"), block_m, block_n, chunks).cpu(), want)
