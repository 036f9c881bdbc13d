"""Parity of the paged decode attention kernels (fieldprint_fast.kernels.attention_decode) with
`spec.attention.paged_attention`, by `torch.equal`.

Random batches of sequences of different lengths (page tables placed at random, evicted blocks
before the window), anchors of 0, partial and full pages, windows, GQA ratios 1/2/4, head dims,
splits of the context at random boundaries, value magnitudes spread up to 2**31 and queries from
flat to saturated (one-hot softmax). Both paths are drawn: the one-launch fused path (one
program per sequence and head group, or a few shares whose last arrival divides; 1 to 8 pages
per step) and the split path (scores, then mix, whose last split divides); and launch
capacities above the rows' pages, at the threshold between the paths (`decode_path`). On a CPU
this runs under TRITON_INTERPRET=1 at small sizes; `pytest -m gpu` runs the same properties on
CUDA at real sizes.
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

from fieldprint_fast.kernels.attention_decode import FUSED_PAGES, decode_attention  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"
EXAMPLES = int(os.environ.get("FP_ATTENTION_EXAMPLES", "12"))


def _run(p: dict, split, **launch) -> list[torch.Tensor]:
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
                           split=split, **launch)
    assert torch.equal(p["pool"], before)  # attention reads pages, never writes them
    return [out[b : b + 1] for b in range(len(seqs))]


def _capacity(p: dict, extra: int | str) -> int:
    """The launch capacity (virtual pages) of problem p: its rows' most pages plus ``extra``, or
    the pages at the threshold of the two paths ("at": FUSED_PAGES, the last fused; "past": the
    first split)."""
    a = -(-p["anchor_len"] // 16)
    lo = [0 if s["window"] is None else max(0, s["start"] - s["window"] + 1) for s in p["seqs"]]
    need = max(a + s["start"] // 16 - l // 16 + 1 for s, l in zip(p["seqs"], lo))
    return need + extra if isinstance(extra, int) else max(need, FUSED_PAGES + (extra == "past"))


@settings(max_examples=EXAMPLES)
@given(problems(decode=True, max_ctx=80, max_anchor=40), st.sampled_from([None, 1, 2, 3]), st.sampled_from([1, 2, 5]),
       st.booleans())
def test_decode_equals_spec(p, pages, mix_pages, prefetch):
    """The split path (scores, mix; the last mix split divides) at split boundaries drawn, the mix
    with or without its one-page-ahead loads."""
    want = spec_outputs(p)
    split = None if pages is None else (16 * pages, 16 * mix_pages)  # split boundaries at page multiples
    got = _run(to_device(p, DEVICE), split, path="split", prefetch=prefetch)
    for w, g in zip(want, got):
        assert torch.equal(g.cpu(), w)


@settings(max_examples=EXAMPLES)
@given(problems(decode=True, max_ctx=80, max_anchor=40), st.sampled_from([None, "all", "all", 1, 2, 3]),
       st.sampled_from([None, 1, 2, 4, 8]), st.sampled_from([0, 0, 3]))
def test_fused_decode_equals_spec(p, pages, step, extra):
    """The one-launch path: one program per sequence and head group ("all" pages), shares of
    ``pages`` pages whose last arrival divides, or the default (`fused_splits`: 8 shares at these
    batches); ``step`` pages per step; a capacity above the rows' pages (the graph's case)."""
    want = spec_outputs(p)
    cap = _capacity(p, extra)
    split = None if pages is None else (16 * (cap if pages == "all" else pages), 16)
    got = _run(to_device(p, DEVICE), split, path="fused", step_pages=step, capacity=cap)
    for w, g in zip(want, got):
        assert torch.equal(g.cpu(), w)


@settings(max_examples=max(2, EXAMPLES // 3))
@given(problems(decode=True, max_ctx=80, max_anchor=40, heads=(4,), kv=(2,), dims=(16, 64)),
       st.sampled_from(["at", "past"]))
def test_decode_path_threshold(p, where):
    """The default path at the capacities on either side of the threshold (`decode_path`: at
    FUSED_PAGES fused when the batch fills the machine, split one page past it)."""
    want = spec_outputs(p)
    got = _run(to_device(p, DEVICE), None, capacity=_capacity(p, where))
    for w, g in zip(want, got):
        assert torch.equal(g.cpu(), w)


@pytest.mark.gpu
@settings(max_examples=int(os.environ.get("FP_ATTENTION_GPU_EXAMPLES", "60")), deadline=None)
@given(problems(decode=True, max_ctx=3000, max_anchor=600, heads=(1, 4, 8), kv=(1, 2, 8), dims=(64, 128)),
       st.sampled_from([None, 1, 2, 5, 16, 64]), st.sampled_from([1, 4, 32]), st.sampled_from([None, "fused", "split"]),
       st.sampled_from([None, 2, 8]), st.sampled_from([0, 0, 40, "at", "past"]), st.booleans())
def test_decode_equals_spec_real_sizes(p, pages, mix_pages, path, step, extra, prefetch):
    """Both paths at real sizes (GQA up to 8, up to 64 query heads), split sizes, steps and
    capacities drawn (on the fused path ``pages`` is the pages of a share, or None)."""
    want = spec_outputs(p)
    split = None if pages is None else (16 * pages, 16 * mix_pages)
    if path == "fused" and pages is not None and pages > 16:
        split = None
    got = _run(to_device(p, "cuda"), split, path=path, step_pages=step, capacity=_capacity(p, extra), prefetch=prefetch)
    for w, g in zip(want, got):
        assert torch.equal(g.cpu(), w)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 8, 64])
@pytest.mark.parametrize("path", [None, "fused", "split"])
@pytest.mark.parametrize("d", [64, 128])
def test_decode_loop_shapes(batch, path, d):
    """The end-to-end loop's launch: GQA 32/8, 520-650 keys a row, a 64-page capacity (the
    width bucket of 512-token prompts), the default knobs of each path; random spread rows."""
    from spec.attention import pack_rows

    from attention_cases import random_rows

    gen = torch.Generator().manual_seed(batch * 1000 + d)
    starts = torch.randint(520, 650, (batch,), generator=gen).tolist()
    need = [s // 16 + 1 for s in starts]
    pool = pack_rows(random_rows((sum(need) + 1, 2, 2, 16, 8, d), gen, 12)).contiguous()
    perm, used, seqs = torch.randperm(sum(need) + 1, generator=gen), 0, []
    for s, n in zip(starts, need):
        seqs.append(dict(start=s, window=None, t=1, table=perm[used:used + n].clone(),
                         q=random_rows((1, 32, d), gen, 2, 20)))
        used += n
    p = dict(pool=pool, layer=1, seqs=seqs, anchor_table=torch.zeros(0, dtype=torch.int64), anchor_len=0, q_bits=12,
             prob_bits=15)
    want = spec_outputs(p)
    got = _run(to_device(p, "cuda"), None, path=path, capacity=64)
    for w, g in zip(want, got):
        assert torch.equal(g.cpu(), w)
