"""Greedy generation equals a plain step-by-step argmax loop over `spec.model.forward`."""
from __future__ import annotations

import torch

from fieldprint_ref.engine import RefEngine
from spec.attention import KVPool
from spec.model import SequenceChunk, forward


def argmax_loop(model, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """The simplest possible decoder: pages 0.. in order, whole prompt, then one token at a time."""
    pool = KVPool.allocate(model.config, model.profile, 8)
    table = torch.arange(8, dtype=torch.int64)
    logits = forward(model, pool, [SequenceChunk(torch.tensor(prompt), 0, table)])[0][-1]
    out, all_logits = [], []
    for i in range(n):
        tok = int(torch.argmax(logits))  # first maximum = lowest token id on ties
        out.append(tok)
        all_logits.append(logits)
        if i + 1 < n:
            start = len(prompt) + i
            logits = forward(model, pool, [SequenceChunk(torch.tensor([tok]), start, table)])[0][-1]
    return out, all_logits


def test_greedy_generate_equals_argmax_loop(model):
    prompt = [11, 7, 42, 3, 3, 90, 15, 8, 0, 61, 27, 5, 5, 19, 33, 2, 70]  # 17 tokens: crosses a page
    want, want_logits = argmax_loop(model, prompt, 12)
    got = RefEngine(model, num_pages=16, page_seed=9).generate(prompt, max_new_tokens=12, chunk_size=5)
    assert got.tokens == want
    assert all(torch.equal(r.logits, lg) for r, lg in zip(got.steps, want_logits))
    assert got.finish_reason == "length"


def test_prefill_then_decode_is_generate(model):
    prompt = [4, 8, 15, 16, 23, 42]
    want = RefEngine(model, num_pages=8).generate(prompt, max_new_tokens=4).tokens
    e = RefEngine(model, num_pages=8)
    h = e.add_sequence(prompt, max_new_tokens=4)
    toks = [e.prefill([h])[h].token]
    while e.result(h).finish_reason is None:
        toks.append(e.decode([h])[h].token)
    assert toks == want
