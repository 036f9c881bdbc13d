"""Every bad input to the engine raises an EngineError naming the field at fault."""
from __future__ import annotations

import pytest
import torch

from fieldprint.engine import Engine, load_engine, select_engine
from fieldprint_ref.engine import RefEngine
from fieldprint_ref.errors import ContextTooLongError, EngineError, OutOfPagesError, SamplingParamError


def test_prompt_too_long_counts_the_anchors(model):
    e = RefEngine(model, num_pages=16)
    e.add_sequence(list(range(64)) + list(range(64)))  # exactly max_position: accepted
    e.set_anchors([1] * 10)
    with pytest.raises(ContextTooLongError, match=r"prompt too long: 120 prompt tokens \+ 10 anchor tokens"):
        e.add_sequence([2] * 120)
    e.add_sequence([2] * 118)
    with pytest.raises(ContextTooLongError, match="anchors: 128 tokens"):
        e.add_anchors([1] * 128)


def test_generation_stops_at_max_position(model):
    e = RefEngine(model, num_pages=16)
    r = e.generate([1] * 125, max_new_tokens=10)
    assert r.finish_reason == "max_position" and len(r.tokens) == 4  # positions 125..127 fed, one more sampled


def test_out_of_pages_is_a_clear_error(model):
    e = RefEngine(model, num_pages=2)  # a request that can never fit is refused before it runs
    with pytest.raises(OutOfPagesError, match=r"request needs at least 3 KV pages .*num_pages is 2"):
        e.generate(list(range(40)), max_new_tokens=1)
    e = RefEngine(model, num_pages=4)  # each fits alone, not both at once
    with pytest.raises(OutOfPagesError, match="KV pool out of pages: need 3, 1 free of 4"):
        e.generate([list(range(40)), list(range(40))], max_new_tokens=1)
    e = RefEngine(model, num_pages=2)  # fits with a window: pages are recycled
    assert len(e.generate(list(range(30)), max_new_tokens=20, window=8).tokens) == 20


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt=[]), "prompt: the prompt is empty"),
        (dict(prompt=[96]), "prompt: token id 96 is outside the vocabulary"),
        (dict(prompt=[-1]), "prompt: token id -1"),
        (dict(prompt="text"), "no tokenizer"),
        (dict(prompt=[1], max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
        (dict(prompt=[1], window=0), "window must be an integer >= 1"),
        (dict(prompt=[1], stop=[""]), "stop strings must be non-empty"),
        (dict(prompt=[1], sequence=-1), "sequence index must be an integer"),
        (dict(prompt=[1], sequence=2**64), "sequence index must be an integer"),
    ],
)
def test_bad_sequence_arguments(model, kwargs, match):
    e = RefEngine(model, num_pages=4)
    prompt = kwargs.pop("prompt")
    with pytest.raises(EngineError, match=match):
        e.add_sequence(prompt, **kwargs)


def test_bad_chunk_size_sampling_list_and_handles(model):
    e = RefEngine(model, num_pages=4)
    with pytest.raises(EngineError, match="chunk_size"):
        e.generate([1, 2], chunk_size=0)
    with pytest.raises(SamplingParamError, match="2 sampling params for 1 prompts"):
        e.generate([[1, 2]], sampling=[None, None])
    with pytest.raises(SamplingParamError, match="1 sequence indices for 2 prompts"):
        e.generate([[1, 2], [3]], sequences=[0])
    with pytest.raises(EngineError, match="unknown sequence handle 99"):
        e.decode([99])
    h = e.add_sequence([1])
    with pytest.raises(EngineError, match="has not been prefilled"):
        e.decode([h])
    e.release(h)
    with pytest.raises(EngineError, match="was released"):
        e.prefill([h])
    info = e.add_anchors([1, 2])
    e.release_anchors(info)
    with pytest.raises(EngineError, match="anchor set 0 was released"):
        e.add_sequence([1], anchors=info)
    e.check_pages()
    assert e.allocator.num_free == 4


def test_select_engine_swaps_with_one_flag(model):
    assert select_engine("ref") is RefEngine
    assert select_engine("fast").name == "fast"
    with pytest.raises(EngineError, match="unknown engine 'turbo'"):
        select_engine("turbo")
    for name in ("ref", "fast"):
        e = load_engine(name, model, num_pages=4)
        assert isinstance(e, Engine) and e.name == name


def test_out_of_pages_mid_round_leaves_consistent_records(model):
    e = RefEngine(model, num_pages=3)
    h1, h2 = e.add_sequence(list(range(20))), e.add_sequence(list(range(20, 40)))
    with pytest.raises(OutOfPagesError):
        e.step([h1, h2])  # h1 gets 2 pages, h2 finds 1
    e.release(h2)
    rec = e.prefill([h1])[h1]
    assert [(w.block, w.slot_start, w.slot_end) for w in rec.writes] == [(0, 0, 16), (1, 0, 4)]
    want = RefEngine(model, num_pages=3).generate(list(range(20)), max_new_tokens=1)
    assert rec.token == want.tokens[0]
    e.check_pages()


def test_set_attempt_changes_the_rng_counter_only(model):
    from spec.sampling import SamplingParams

    hot = SamplingParams(temperature=2, seed=5)
    e = RefEngine(model, num_pages=8)
    runs = []
    for attempt in (0, 0, 1):
        h = e.add_sequence([1, 2, 3], sampling=hot, max_new_tokens=6, sequence=0)
        e.set_attempt(h, attempt)
        e.prefill([h])
        while e.finish_reason(h) is None:
            e.decode([h])
        assert e.finish_reason(h) == "length"
        runs.append(([r.attempt for r in e.result(h).steps], e.result(h).tokens))
        e.release(h)
    assert runs[0] == runs[1] and runs[2][0] == [1] * 6 and runs[2][1] != runs[0][1]
    with pytest.raises(SamplingParamError, match="attempt"):
        e.set_attempt(e.add_sequence([1]), -1)


def test_keep_logits_false_drops_stored_logits_only(model):
    seen = []
    e = RefEngine(model, num_pages=8, keep_logits=False)
    res = e.generate([1, 2, 3], max_new_tokens=3, on_step=lambda i, r: seen.append(r.logits))
    assert all(r.logits is None for r in res.steps) and all(lg is not None for lg in seen)
    full = RefEngine(model, num_pages=8).generate([1, 2, 3], max_new_tokens=3)
    assert res.tokens == full.tokens
    assert all(torch.equal(a, b.logits) for a, b in zip(seen, full.steps))
