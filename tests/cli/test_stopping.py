"""Stopping rules with a real tokenizer: EOS ids, stop strings, max_new_tokens."""
from __future__ import annotations

from fieldprint.engine import load_engine


def test_stop_string_eos_and_length(artifact):
    e = load_engine("ref", artifact, num_pages=16)
    free = e.generate("once upon a time", max_new_tokens=8, eos_token_ids=())
    assert free.finish_reason == "length" and len(free.tokens) == 8
    words = free.text.split()
    assert len(words) >= 4
    # a stop string: generation ends at the token that completes it, and the text is cut before it
    stop = words[3]
    k = next(i for i in range(1, 9) if stop in e.detokenize(free.tokens[:i]))
    res = e.generate("once upon a time", max_new_tokens=8, eos_token_ids=(), stop=[stop])
    assert res.finish_reason == "stop" and res.tokens == free.tokens[:k]
    assert stop not in res.text and free.text.startswith(res.text.rstrip())
    # an EOS id: generation ends at (and keeps) the first token in the set
    eos = free.tokens[2]
    res = e.generate("once upon a time", max_new_tokens=8, eos_token_ids=[eos])
    first = free.tokens.index(eos)
    assert res.finish_reason == "eos" and res.tokens == free.tokens[: first + 1]
    # the artifact's EOS (<|endoftext|> = 0) is the engine default
    assert e.eos_token_ids == frozenset({0})
