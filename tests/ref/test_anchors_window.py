"""Anchors (pinned, shared, computed once) and sliding-window eviction."""
from __future__ import annotations

import torch

from fieldprint_ref.engine import RefEngine
from fieldprint_ref.paging import EVICTED
from spec.sampling import SamplingParams

ANCHORS = [5, 17, 3, 88, 41, 9, 60, 2, 33, 71, 12, 54, 6, 29, 90, 44, 8, 1, 77, 23]  # 20 tokens: 2 pages


def test_anchor_pages_are_pinned_shared_and_outlive_their_users(model):
    e = RefEngine(model, num_pages=32, page_seed=1)
    info = e.set_anchors(ANCHORS)
    assert info.length == 20 and len(info.pages) == 2
    assert all(e.allocator.pinned[p] for p in info.pages)
    h1, h2 = e.add_sequence([1, 2, 3]), e.add_sequence([4, 5])
    e.prefill([h1, h2])
    assert all(e.allocator.refcount[p] == 3 for p in info.pages)  # the set + two sequences
    assert not set(info.pages) & set(e.block_table(h1) + e.block_table(h2))  # anchors are not context
    e.check_pages()
    before = [e.page_bytes(p) for p in info.pages]
    e.release(h1)
    e.release(h2)
    assert all(not e.allocator.is_free(p) for p in info.pages)  # pinned: kept for the next sequence
    e.check_pages()
    h3 = e.add_sequence([7])
    e.prefill([h3])
    e.set_anchors(None)  # unpinned, but h3 still holds them
    assert all(not e.allocator.is_free(p) for p in info.pages)
    assert [e.page_bytes(p) for p in info.pages] == before  # never rewritten
    e.release(h3)
    assert all(e.allocator.is_free(p) for p in info.pages)
    e.check_pages()
    assert e.allocator.num_free == 32


def test_anchor_kv_is_identical_computed_once_or_recomputed(model):
    a = RefEngine(model, num_pages=16)
    b = RefEngine(model, num_pages=16, page_seed=5)
    x = a.set_anchors(ANCHORS)
    y = a.add_anchors(ANCHORS)  # recomputed, into other pages of the same pool
    z = b.set_anchors(ANCHORS)
    assert x.pages != y.pages
    for p, q, r in zip(x.pages, y.pages, z.pages):
        assert a.page_bytes(p) == a.page_bytes(q) == b.page_bytes(r)
    # sequences see the same thing whichever copy they use
    ra = a.generate([3, 1, 4, 1, 5], max_new_tokens=4, anchors=x)
    rb = a.generate([3, 1, 4, 1, 5], max_new_tokens=4, anchors=y)
    assert ra.tokens == rb.tokens
    assert all(torch.equal(s.logits, t.logits) for s, t in zip(ra.steps, rb.steps))


def test_anchors_equal_the_same_tokens_as_a_prompt_prefix(model):
    """Anchor j has position j and context i has A + i: the same as a prompt prefixed by them."""
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    e = RefEngine(model, num_pages=32)
    with_anchors = e.generate(prompt, max_new_tokens=5, anchors=e.add_anchors(ANCHORS))
    prefixed = e.generate(ANCHORS + prompt, max_new_tokens=5, anchors=None)
    assert with_anchors.tokens == prefixed.tokens
    assert all(torch.equal(s.logits, t.logits) for s, t in zip(with_anchors.steps, prefixed.steps))


def test_window_eviction_frees_pages_and_matches_no_eviction(model):
    prompt = list(range(44))
    kw = dict(max_new_tokens=24, window=20, sampling=SamplingParams(temperature=1, seed=3))
    e = RefEngine(model, num_pages=12, page_seed=2)
    e.set_anchors(ANCHORS)
    live = []
    res = e.generate(prompt, release=False, on_step=lambda i, r: live.append(e.allocator.num_free), **kw)
    evicted = [p for r in res.steps for p in r.evicted]
    assert len(evicted) >= 2 and len(set(evicted)) == len(evicted)
    assert res.block_table[:2] == [EVICTED, EVICTED]
    assert sum(p != EVICTED for p in res.block_table) <= 20 // 16 + 2  # only the window stays live
    e.check_pages()
    # anchors are never evicted
    assert all(e.allocator.pinned[p] and not e.allocator.is_free(p) for p in e.anchors.pages)
    # eviction only frees what the window hides: the same run without eviction is identical
    f = RefEngine(model, num_pages=24)
    f.evict = False
    f.set_anchors(ANCHORS)
    ref = f.generate(prompt, **kw)
    assert res.tokens == ref.tokens
    assert all(torch.equal(s.logits, t.logits) for s, t in zip(res.steps, ref.steps))
    # with a window the pool can be smaller than the context: 20 anchors + 70 context > 4 pages
    assert len(prompt) + len(res.tokens) > 16 * 4


def test_window_larger_than_context_changes_nothing(model):
    e = RefEngine(model, num_pages=16)
    a = e.generate(list(range(20)), max_new_tokens=4)
    b = e.generate(list(range(20)), max_new_tokens=4, window=1000)
    assert a.tokens == b.tokens and all(not r.evicted for r in b.steps)


def test_fork_shares_pages_copy_on_write(model):
    prompt = list(range(21))  # 2 blocks, the second one partly filled: the first write into it copies
    hot = SamplingParams(temperature=1, seed=11)
    e = RefEngine(model, num_pages=16, page_seed=4)
    h = e.add_sequence(prompt, max_new_tokens=6, sampling=hot, sequence=0)
    e.prefill([h])
    f = e.fork(h, sequence=1)
    assert e.block_table(f) == e.block_table(h)
    assert all(e.allocator.refcount[p] == 2 for p in e.block_table(h))
    e.check_pages()
    while e.result(h).finish_reason is None or e.result(f).finish_reason is None:
        e.decode([x for x in (h, f) if e.result(x).finish_reason is None])
        e.check_pages()
    assert e.block_table(f)[0] == e.block_table(h)[0]  # the full first page is still shared
    assert e.block_table(f)[1] != e.block_table(h)[1]  # the partial one was copied before writing
    alone = RefEngine(model, num_pages=16).generate(prompt, max_new_tokens=6, sampling=hot, sequences=[0])
    assert e.result(h).tokens == alone.tokens  # the fork changed nothing for the parent
    assert e.result(f).tokens[0] == alone.tokens[0]  # token 0 was sampled before the fork
    e.release(h)
    e.release(f)
    e.check_pages()
    assert e.allocator.num_free == 16
