"""`Engine.teacher_force`: the recorded tokens fed as prefill give what a token-by-token run gives.

A sequence is generated step by step (`generate`) and then replayed on a fresh engine by feeding
the generated tokens through `teacher_force` (in as few forwards as it takes). Every record must
be the same (step, attempt, fed range, page writes, evictions, logits, sampled token), and after
every call the KV bytes of every live block must equal the step-by-step run's at that step.
"""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fieldprint_ref.engine import RefEngine
from fieldprint_ref.errors import EngineError
from spec.sampling import SamplingParams

VOCAB = 96
FEW = max(4, settings.default.max_examples // 3)
prompts = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=40)
samplings = st.one_of(
    st.just(SamplingParams()),
    st.builds(SamplingParams, temperature=st.sampled_from([Fraction(1, 2), Fraction(1), Fraction(3, 2)]),
              top_k=st.sampled_from([None, 7]), seed=st.integers(0, 2**32)),
)


def _write_key(rec):
    """A record without physical page ids (which page holds a block is not part of the result)."""
    return (rec.step, rec.attempt, rec.fed_start, rec.fed_end, rec.fed_tokens, rec.evicted_blocks,
            [(w.block, w.slot_start, w.slot_end, w.full) for w in rec.writes], rec.token)


def _pages_at(engine, handle, upto_step, by_step):
    """Return {block: bytes} of the live blocks, and check it against the step-by-step run."""
    got = engine.sequence_pages(handle)
    assert got == by_step[upto_step], f"KV bytes after step {upto_step} differ"


@settings(max_examples=FEW, deadline=None)
@example(prompt=list(range(16)), sampling=SamplingParams(), window=None, max_new=20, eos=False, anchors=False,
         max_tokens=None, seed=0)
@example(prompt=list(range(1, 20)), sampling=SamplingParams(temperature=1, seed=3), window=5, max_new=40, eos=False,
         anchors=True, max_tokens=7, seed=1)
@given(prompt=prompts, sampling=samplings, window=st.one_of(st.none(), st.integers(1, 40)), max_new=st.integers(1, 40),
       eos=st.booleans(), anchors=st.booleans(), max_tokens=st.one_of(st.none(), st.integers(1, 9)),
       seed=st.integers(0, 2**16))
def test_forced_run_equals_token_by_token(model, prompt, sampling, window, max_new, eos, anchors, max_tokens, seed):
    anchor_tokens = [7, 19, 33, 2, 61, 5, 88, 40, 11, 3, 27, 70, 9, 14, 50, 31, 8, 66] if anchors else None
    eos_ids = (prompt[0],) if eos else ()
    ref = RefEngine(model, num_pages=64, eos_token_ids=eos_ids)
    if anchor_tokens:
        ref.set_anchors(anchor_tokens)
    hr = ref.add_sequence(prompt, sampling=sampling, max_new_tokens=max_new, window=window, sequence=seed)
    by_step = {}  # step -> {block: bytes} right after the step-by-step run sampled it
    while ref.finish_reason(hr) is None:
        for _, rec in ref.step([hr]):
            by_step[rec.step] = ref.sequence_pages(hr)
    want = ref.result(hr)
    eng = RefEngine(model, num_pages=64, page_seed=seed, eos_token_ids=eos_ids)
    if anchor_tokens:
        eng.set_anchors(anchor_tokens)
    h = eng.add_sequence(prompt, sampling=sampling, max_new_tokens=max_new, window=window, sequence=seed)
    got, calls = [], 0
    while eng.finish_reason(h) is None:
        recs = eng.teacher_force(h, want.tokens[len(got):], max_tokens=max_tokens)
        assert recs, "teacher_force consumed nothing"
        calls += 1
        got += recs
        _pages_at(eng, h, got[-1].step, by_step)
        for r in recs[1:]:
            assert not r.evicted_blocks  # a sliding window frees blocks only before a forward
    assert [_write_key(r) for r in got] == [_write_key(r) for r in want.steps]
    assert all(torch.equal(a.logits, b.logits) for a, b in zip(got, want.steps))
    assert eng.finish_reason(h) == want.finish_reason and eng.result(h).tokens == want.tokens
    if window is None and max_tokens is None:
        assert calls <= 2  # the prompt's step, then everything else in one forward (or all at once)
    eng.release(h)
    eng.check_pages()


@settings(max_examples=FEW, deadline=None)
@given(prompt=prompts, forced=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=30),
       window=st.one_of(st.none(), st.integers(1, 40)))
def test_any_forced_tokens_give_the_prefill_logits(model, prompt, forced, window):
    """Tokens the sampler would not draw: each step's logits are those of the context fed whole."""
    eng = RefEngine(model, num_pages=64)
    h = eng.add_sequence(prompt, sampling=SamplingParams(temperature=1, seed=5), max_new_tokens=len(forced),
                         window=window)
    recs = []
    while eng.finish_reason(h) is None:
        recs += eng.teacher_force(h, forced[len(recs):])
    assert len(recs) == len(forced) and eng.result(h).tokens == forced  # the context follows the forced tokens
    whole = RefEngine(model, num_pages=64)
    w = whole.add_sequence(prompt + forced[:-1], max_new_tokens=1, window=window)
    whole.evict = False
    chunk, _ = whole._prepare_chunk(whole._seq(w), 0, len(prompt) + len(forced) - 1)
    logits = whole.ops.forward(whole.model, whole.pool, [chunk])[0]
    for i, r in enumerate(recs):
        assert torch.equal(r.logits, logits[len(prompt) - 1 + i]), f"step {i}"
        assert r.token == eng.ops.sample(r.logits, SamplingParams(temperature=1, seed=5), 0, i, 0)


def test_teacher_force_refuses_bad_input(model):
    eng = RefEngine(model, num_pages=16)
    h = eng.add_sequence([1, 2, 3], max_new_tokens=2)
    with pytest.raises(EngineError, match="outside the vocabulary"):
        eng.teacher_force(h, [VOCAB])
    with pytest.raises(EngineError, match="max_tokens"):
        eng.teacher_force(h, [1], max_tokens=0)
    assert eng.teacher_force(h, []) == []
    assert len(eng.teacher_force(h, [4, 5, 6])) == 2 and eng.finish_reason(h) == "length"
    with pytest.raises(EngineError, match="finished"):
        eng.teacher_force(h, [1])


def test_a_fork_at_an_earlier_step_goes_on_like_the_token_by_token_run(model):
    """`fork(step=k)` of a forced run (a commit's snapshot inside a replay's prefill run): its
    tokens, records and pages (less the slots later steps wrote) are the run's at step k, and it
    goes on exactly as the token-by-token run did after step k."""
    params = SamplingParams(temperature=1, seed=4)
    prompt = [int(t) for t in torch.randint(0, VOCAB, (19,), generator=torch.Generator().manual_seed(8))]
    ref = RefEngine(model, num_pages=64)
    hr = ref.add_sequence(prompt, sampling=params, max_new_tokens=30)
    by_step = {}
    while ref.finish_reason(hr) is None:
        for _, rec in ref.step([hr]):
            by_step[rec.step] = ref.sequence_pages(hr)
    want = ref.result(hr)
    eng = RefEngine(model, num_pages=64, page_seed=3)
    h = eng.add_sequence(prompt, sampling=params, max_new_tokens=30)
    assert len(eng.teacher_force(h, want.tokens)) == 30
    for k in (0, 7, 16, 29):
        f = eng.fork(h, step=k, sequence=0)  # the RNG counter of the same sequence
        assert eng.result(f).tokens == want.tokens[: k + 1] and eng.finish_reason(f) == (None if k < 29 else "length")
        cached = len(prompt) + k
        pages = {}
        for b, p in enumerate(eng.block_table(f)):
            t = eng.page_tensor(p).clone()
            t[:, :, max(0, min(16, cached - 16 * b)):] = 0
            pages[b] = t.contiguous().numpy().tobytes()
        assert pages == by_step[k], f"pages at step {k}"
        while eng.finish_reason(f) is None:
            for _, rec in eng.step([f]):
                assert rec.token == want.tokens[rec.step] and torch.equal(rec.logits, want.steps[rec.step].logits)
        assert eng.sequence_pages(f) == by_step[29]
        eng.release(f)
    with pytest.raises(EngineError, match="cannot fork"):
        eng.fork(h, step=30)
    w = RefEngine(model, num_pages=64)
    hw = w.add_sequence(prompt, sampling=params, max_new_tokens=40, window=4)
    recs = []
    while w.finish_reason(hw) is None:
        recs += w.teacher_force(hw, [1] * (40 - len(recs)))
    evicting = next(r.step for r in recs if r.evicted_blocks and r.step > 0)
    with pytest.raises(EngineError, match="cannot fork"):
        w.fork(hw, step=evicting - 1)  # a later step evicted: the fork would lack those blocks
    w.fork(hw, step=recs[-1].step)
