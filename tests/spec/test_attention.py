"""Paged attention: page placement, chunking, decode vs prefill, windows and anchors are exact."""
import pytest
import torch
from hypothesis import given, strategies as st

from spec.attention import KVPool, mix_values, pack_rows, unpack_rows
from spec.quant import dequantize_rows
from spec.constants import PAGE_TOKENS
from spec.model import AnchorRef, SequenceChunk, forward
from numeric_models import pair

MODEL = pair("llama", 2, False, "default")[1]
CFG = MODEL.config


def _tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (n,), generator=torch.Generator().manual_seed(seed))


def _pool(pages: int) -> KVPool:
    return KVPool.allocate(CFG, MODEL.profile, pages)


def _prefill(tokens, block_table, pool, start=0, anchors=None, window=None):
    return forward(MODEL, pool, [SequenceChunk(tokens, start, block_table, anchors, window)])[0]


def _blocks(n_tokens: int) -> int:
    return -(-n_tokens // PAGE_TOKENS)


@given(st.integers(1, 50), st.integers(0, 2**31), st.integers(0, 5))
def test_any_page_placement_gives_same_logits_and_pages(n, seed, extra):
    toks, nb = _tokens(n, seed), _blocks(n)
    base_pool = _pool(nb)
    base = _prefill(toks, torch.arange(nb), base_pool)
    perm = torch.randperm(nb + extra, generator=torch.Generator().manual_seed(seed))[:nb]
    pool = _pool(nb + extra)
    assert torch.equal(_prefill(toks, perm, pool), base)
    for b in range(nb):
        assert pool.page_bytes(int(perm[b])) == base_pool.page_bytes(b)


@st.composite
def _schedule(draw):
    """Two sequences split into chunks; a random interleaving; some steps batch both sequences."""
    lens = [draw(st.integers(1, 40)), draw(st.integers(1, 40))]
    cuts = [sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=4)))) if n > 1 else [] for n in lens]
    chunks = [[(a, b) for a, b in zip([0] + c, c + [n])] for c, n in zip(cuts, lens)]
    order, left = [], [list(c) for c in chunks]
    while left[0] or left[1]:
        live = [i for i in (0, 1) if left[i]]
        both = len(live) == 2 and draw(st.booleans())
        pick = live if both else [draw(st.sampled_from(live))]
        order.append([(i, left[i].pop(0)) for i in pick])
    return lens, order


@given(_schedule(), st.integers(0, 2**31))
def test_any_chunking_and_batching_gives_same_logits_and_pages(schedule, seed):
    lens, order = schedule
    toks = [_tokens(lens[0], seed), _tokens(lens[1], seed + 1)]
    tables = [torch.arange(_blocks(lens[0])), torch.arange(_blocks(lens[1])) + _blocks(lens[0])]
    ref_pool = _pool(int(tables[1][-1]) + 1)
    ref = [_prefill(toks[i], tables[i], ref_pool) for i in (0, 1)]
    pool, got = _pool(int(tables[1][-1]) + 1), [[], []]
    for step in order:
        chunks = [SequenceChunk(toks[i][a:b], a, tables[i]) for i, (a, b) in step]
        for (i, _), out in zip(step, forward(MODEL, pool, chunks)):
            got[i].append(out)
    for i in (0, 1):
        assert torch.equal(torch.cat(got[i]), ref[i])
    assert torch.equal(pool.data, ref_pool.data)


@given(_schedule(), st.integers(0, 2**31), st.integers(1, 20), st.one_of(st.none(), st.integers(1, 20)))
def test_chunking_with_anchors_and_window(schedule, seed, a, window):
    """Chunk invariance also holds with shared anchor pages and a sliding window."""
    lens, order = schedule
    toks = [_tokens(lens[0], seed), _tokens(lens[1], seed + 1)]
    nb = [_blocks(n) for n in lens]
    tables = [torch.arange(nb[0]), torch.arange(nb[1]) + nb[0]]
    anchor_table = torch.arange(_blocks(a)) + nb[0] + nb[1]
    pools = [_pool(nb[0] + nb[1] + _blocks(a)) for _ in range(2)]
    for pool in pools:
        _prefill(_tokens(a, seed + 2), anchor_table, pool)
    anchors = AnchorRef(anchor_table, a)
    ref = [_prefill(toks[i], tables[i], pools[0], anchors=anchors, window=window) for i in (0, 1)]
    got = [[], []]
    for step in order:
        chunks = [SequenceChunk(toks[i][x:y], x, tables[i], anchors, window) for i, (x, y) in step]
        for (i, _), out in zip(step, forward(MODEL, pools[1], chunks)):
            got[i].append(out)
    for i in (0, 1):
        assert torch.equal(torch.cat(got[i]), ref[i])
    assert torch.equal(pools[1].data, pools[0].data)


def test_token_by_token_decode_equals_prefill():
    toks = _tokens(20, 7)
    ref_pool = _pool(2)
    ref = _prefill(toks, torch.arange(2), ref_pool)
    pool = _pool(2)
    out = torch.cat([_prefill(toks[i : i + 1], torch.arange(2), pool, start=i) for i in range(20)])
    assert torch.equal(out, ref) and torch.equal(pool.data, ref_pool.data)


@given(st.integers(1, 20), st.integers(1, 30), st.integers(0, 2**31))
def test_anchors_equal_a_shared_prefix(a, n, seed):
    """Without a window, anchors + context is the same computation as one sequence of both."""
    anchor_toks, ctx = _tokens(a, seed), _tokens(n, seed + 1)
    whole = _prefill(torch.cat([anchor_toks, ctx]), torch.arange(_blocks(a + n)), _pool(_blocks(a + n)))
    na, nc = _blocks(a), _blocks(n)
    pool = _pool(na + nc)
    _prefill(anchor_toks, torch.arange(na), pool)
    anchors = AnchorRef(torch.arange(na), a)
    got = _prefill(ctx, torch.arange(nc) + na, pool, anchors=anchors)
    assert torch.equal(got, whole[a:])


def _corrupt_slots(pool: KVPool, table: torch.Tensor, idx: range, seed: int) -> None:
    """Overwrite the K/V rows of logical tokens idx (all layers) with other valid rows."""
    g = torch.Generator().manual_seed(seed)
    for j in idx:
        page, off = int(table[j // PAGE_TOKENS]), j % PAGE_TOKENS
        shape = pool.data[page, :, :, off].shape[:-1] + (CFG.head_dim,)
        pool.data[page, :, :, off] = pack_rows(torch.randint(-(2**20), 2**20, shape, generator=g))


@given(st.integers(2, 45), st.integers(1, 20), st.integers(0, 2**31))
def test_tokens_outside_the_window_have_no_influence(n, window, seed):
    toks, nb = _tokens(n, seed), _blocks(n)
    pool = _pool(nb)
    table = torch.arange(nb)
    _prefill(toks[:-1], table, pool, window=window)
    ref = _prefill(toks[-1:], table, pool, start=n - 1, window=window)
    lo = max(0, n - window)  # the last query (index n-1) sees lo..n-1
    _corrupt_slots(pool, table, range(lo), seed)
    evicted = table.clone()
    evicted[: lo // PAGE_TOKENS] = -1  # blocks wholly before the window may be gone
    assert torch.equal(_prefill(toks[-1:], evicted, pool, start=n - 1, window=window), ref)


def test_tokens_inside_the_window_do_influence():
    toks, pool, table = _tokens(30, 3), _pool(2), torch.arange(2)
    _prefill(toks[:-1], table, pool)
    ref = _prefill(toks[-1:], table, pool, start=29)
    _corrupt_slots(pool, table, range(5), 3)
    assert not torch.equal(_prefill(toks[-1:], table, pool, start=29), ref)


def test_anchors_visible_through_any_window():
    anchor_toks, ctx = _tokens(10, 1), _tokens(20, 2)
    pool = _pool(3)
    _prefill(anchor_toks, torch.tensor([2]), pool)
    anchors = AnchorRef(torch.tensor([2]), 10)
    ref = _prefill(ctx, torch.tensor([0, 1]), pool, anchors=anchors, window=1)
    _corrupt_slots(pool, torch.tensor([2]), range(10), 5)
    got = _prefill(ctx, torch.tensor([0, 1]), pool, anchors=anchors, window=1)
    assert not torch.equal(got[-1], ref[-1])  # anchors changed -> the last query sees it


def test_evicted_visible_block_is_refused():
    toks, pool = _tokens(20, 1), _pool(2)
    _prefill(toks[:17], torch.arange(2), pool)
    with pytest.raises(ValueError, match="evicted"):
        _prefill(toks[17:18], torch.tensor([-1, 1]), pool, start=17)


def test_position_beyond_tables_is_refused():
    with pytest.raises(ValueError, match="max_position"):
        _prefill(_tokens(2, 1), torch.arange(20), _pool(20), start=CFG.max_position - 1)


@given(st.integers(-(2**31) + 1, 2**31 - 1), st.integers(0, 2**31))
def test_page_rows_round_trip(amax, seed):
    x = torch.randint(-abs(amax), abs(amax) + 1, (3, 2, 16), generator=torch.Generator().manual_seed(seed))
    rows = pack_rows(x)
    assert rows.dtype == torch.int8 and rows.shape == (3, 2, 20)
    q, m, e = unpack_rows(rows)
    assert int(q.abs().max()) <= 127 and bool((m > 2**12).all()) and bool((m <= 2**14).all())
    assert torch.equal(rows[..., -1], torch.zeros_like(rows[..., -1]))


def test_flat_softmax_over_many_keys_keeps_its_mass():
    """numerics/2: a flat softmax over more keys than 2**prob_bits returns the mean of the values.
    (numerics/1 floored each probability to 2**-15 and returned 0 here: 40,000 keys, p = 0.)"""
    n, d = 40_000, 8
    x = torch.randint(-(2**20), 2**20, (1, 1, d), generator=torch.Generator().manual_seed(3))
    rows = pack_rows(x).expand(n, 1, d + 4)  # every key has the same value row
    vis = torch.ones(1, 1, n, dtype=torch.bool)
    e = torch.full((2, 1, n), 2**30)  # 2 query heads over 1 kv head, equal scores
    out = mix_values(e, vis, rows, 15)
    want = dequantize_rows(*unpack_rows(rows[:1]))[0, 0]
    assert torch.equal(out[0, 0], want) and torch.equal(out[0, 1], want)
