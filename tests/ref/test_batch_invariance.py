"""Batch invariance: a sequence's tokens, logits and KV page bytes do not depend on its company.

A target sequence is generated alone (pages in pool order, one-shot prefill) and again batched
with other sequences, with its pages scattered by a shuffled free list and its prefill chunked
differently.  After every step, the bytes of each of its logical blocks must be equal, and so
must every logit and token.  The page map is rebuilt from the StepRecords alone, so this also
checks that the records name every page written and every page evicted.
"""
from __future__ import annotations

from fractions import Fraction

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fieldprint_ref.engine import RefEngine
from spec.sampling import SamplingParams

VOCAB = 96
prompts = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=24)
# each example runs ~10-30 forwards of the tiny model: keep the count a fraction of the profile's
FEW = max(4, settings.default.max_examples // 3)
samplings = st.one_of(
    st.just(SamplingParams()),
    st.builds(SamplingParams, temperature=st.sampled_from([Fraction(1, 2), Fraction(1), Fraction(3, 2)]),
              top_k=st.sampled_from([None, 5]), top_p=st.sampled_from([None, Fraction(9, 10)]),
              seed=st.integers(0, 2**32)),
)


def run(engine, batch, target, *, sequences, sampling, chunk_size, window, max_new_tokens, anchors=None):
    """Generate ``batch``; return the target's result and its per-step {block: page bytes}."""
    snaps, tables = [], {}

    def on_step(i, rec):
        # the writes tile exactly the fed context range, in order
        covered = [w.block * 16 + k for w in rec.writes for k in range(w.slot_start, w.slot_end)]
        assert covered == list(range(rec.fed_start, rec.fed_end)) and len(rec.fed_tokens) == len(covered)
        if i != target:
            return
        for w in rec.writes:
            tables[w.block] = w.page
        for b in rec.evicted_blocks:
            tables.pop(b)
        snaps.append({b: engine.page_bytes(p) for b, p in sorted(tables.items())})

    if anchors is not None:
        engine.set_anchors(anchors)
    params = [sampling if i == target else SamplingParams(temperature=1, seed=i) for i in range(len(batch))]
    results = engine.generate(batch, sampling=params, sequences=sequences, chunk_size=chunk_size,
                              window=window, max_new_tokens=max_new_tokens, on_step=on_step)
    engine.check_pages()
    return results[target], snaps


@settings(max_examples=FEW)
# boundaries: a prompt of exactly one page, and one page + 1 with a window of one page
@example(target=list(range(16)), others=[[5] * 17], where=1, sampling=SamplingParams(), seed_alone=None,
         seed_batched=3, chunk_alone=None, chunk_batched=16, window=None, max_new_tokens=2)
@example(target=list(range(17)), others=[[1], [2] * 15], where=0, sampling=SamplingParams(), seed_alone=7,
         seed_batched=8, chunk_alone=3, chunk_batched=None, window=16, max_new_tokens=4)
# a window that hides block 0 before a chunked prefill ends: evictions wait for the step (issue 7)
@example(target=list(range(24)), others=[], where=0, sampling=SamplingParams(), seed_alone=None,
         seed_batched=5, chunk_alone=None, chunk_batched=3, window=2, max_new_tokens=3)
@given(
    target=prompts,
    others=st.lists(prompts, max_size=3),
    where=st.integers(0, 3),
    sampling=samplings,
    seed_alone=st.one_of(st.none(), st.integers(0, 2**16)),
    seed_batched=st.integers(0, 2**16),
    chunk_alone=st.one_of(st.none(), st.integers(3, 17)),
    chunk_batched=st.one_of(st.none(), st.integers(3, 17)),
    window=st.one_of(st.none(), st.integers(1, 30)),
    max_new_tokens=st.integers(1, 4),
)
def test_alone_equals_batched(model, target, others, where, sampling, seed_alone, seed_batched,
                              chunk_alone, chunk_batched, window, max_new_tokens):
    where = min(where, len(others))
    batch = others[:where] + [target] + others[where:]
    sequences = [100 + i for i in range(len(batch))]
    sequences[where] = 7
    kw = dict(sampling=sampling, window=window, max_new_tokens=max_new_tokens)
    alone, snaps_alone = run(RefEngine(model, num_pages=24, page_seed=seed_alone), [target], 0,
                             sequences=[7], chunk_size=chunk_alone, **kw)
    batched, snaps_batched = run(RefEngine(model, num_pages=48, page_seed=seed_batched), batch, where,
                                 sequences=sequences, chunk_size=chunk_batched, **kw)
    assert batched.tokens == alone.tokens
    assert len(batched.steps) == len(alone.steps)
    for a, b in zip(alone.steps, batched.steps):
        assert torch.equal(a.logits, b.logits), f"logits differ at step {a.step}"
        assert (a.fed_start, a.fed_end, a.fed_tokens) == (b.fed_start, b.fed_end, b.fed_tokens)
        assert a.evicted_blocks == b.evicted_blocks
    assert len(snaps_alone) == len(snaps_batched)
    for step, (x, y) in enumerate(zip(snaps_alone, snaps_batched)):
        assert x.keys() == y.keys(), f"step {step}: live blocks {sorted(x)} vs {sorted(y)}"
        for blk in x:
            assert x[blk] == y[blk], f"step {step}: KV bytes of logical block {blk} differ"


@settings(max_examples=max(2, FEW // 3))
@given(
    target=prompts,
    other=prompts,
    anchors=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20),
    seed_batched=st.integers(0, 2**16),
    chunk=st.one_of(st.none(), st.integers(3, 9)),
)
def test_alone_equals_batched_with_anchors(model, target, other, anchors, seed_batched, chunk):
    kw = dict(sampling=SamplingParams(), window=None, max_new_tokens=3, anchors=anchors)
    alone, snaps_alone = run(RefEngine(model, num_pages=24), [target], 0, sequences=[0], chunk_size=None, **kw)
    batched, snaps_batched = run(RefEngine(model, num_pages=48, page_seed=seed_batched), [other, target], 1,
                                 sequences=[1, 0], chunk_size=chunk, **kw)
    assert batched.tokens == alone.tokens
    assert all(torch.equal(a.logits, b.logits) for a, b in zip(alone.steps, batched.steps))
    assert snaps_alone == snaps_batched
