"""Page allocator properties: random alloc/free/fork/evict/pin sequences keep every invariant."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldprint_ref.errors import OutOfPagesError, PagingError
from fieldprint_ref.paging import EVICTED, BlockTable, PageAllocator, blocks_for, dead_blocks

OPS = st.lists(
    st.tuples(st.sampled_from(["grow", "release", "fork", "evict", "anchor", "unanchor", "cow"]),
              st.integers(0, 50), st.integers(0, 50)),
    max_size=60,
)


@given(num_pages=st.integers(1, 24), seed=st.integers(0, 2**32 - 1), ops=OPS)
def test_random_operations_keep_invariants(num_pages, seed, ops):
    alloc = PageAllocator(num_pages, seed=seed)
    tables: list[BlockTable] = []
    anchor_sets: list[list[int]] = []  # pinned pages, each held once by its set (emptied on release)
    holds: list[tuple[int, list[int]]] = []  # (table index, anchor pages): a sequence's hold on anchors

    def held() -> list[list[int]]:
        return [t.pages for t in tables] + anchor_sets + [pages for _, pages in holds]

    for op, a, b in ops:
        if op == "grow":
            if a % 3 == 0 or not tables:
                tables.append(BlockTable())
            i = a % len(tables)
            taken = {p for h in held() for p in h if p != EVICTED}
            try:
                new = alloc.alloc(b % 4 + 1)
            except OutOfPagesError:
                assert alloc.num_free < b % 4 + 1
                new = []
            assert not taken & set(new), "a page was handed out while still owned"
            tables[i].pages += new
            live_sets = [s for s in anchor_sets if s]
            if live_sets and b % 2:
                pages = live_sets[b % len(live_sets)]
                for p in pages:
                    alloc.incref(p)
                holds.append((i, list(pages)))
        elif op == "release" and tables:
            i = a % len(tables)
            alloc.release(tables[i])
            for h in [h for h in holds if h[0] == i]:
                for p in h[1]:
                    alloc.decref(p)
                holds.remove(h)
        elif op == "fork" and tables:
            tables.append(alloc.fork(tables[a % len(tables)]))
        elif op == "evict" and tables:
            t = tables[a % len(tables)]
            alloc.evict(t, range(min(b % 5, len(t))))
        elif op == "anchor":
            try:
                pages = alloc.alloc(a % 3 + 1)
            except OutOfPagesError:
                continue
            for p in pages:
                alloc.pin(p)
            anchor_sets.append(pages)
        elif op == "unanchor" and anchor_sets:
            k = a % len(anchor_sets)
            for p in anchor_sets[k]:
                alloc.unpin(p)
                alloc.decref(p)
            anchor_sets[k] = []
        elif op == "cow" and tables:
            t = tables[a % len(tables)]
            live = [blk for blk, p in enumerate(t.pages) if p != EVICTED]
            if live:
                try:
                    alloc.make_writable(t, live[b % len(live)], lambda s, d: None)
                except OutOfPagesError:
                    pass
        alloc.check(held())  # free list, refcounts == holders, pins never on the free list
        pinned = {p for s in anchor_sets for p in s}
        assert {p for p in range(num_pages) if alloc.pinned[p]} == pinned
        for pages in [s for s in anchor_sets] + [h for _, h in holds]:
            assert not any(alloc.is_free(p) for p in pages), "an anchor page was freed while referenced"


def test_refcounts_match_holders_exactly():
    alloc = PageAllocator(8)
    t = BlockTable(alloc.alloc(3))
    u = alloc.fork(t)
    anchor = alloc.alloc(2)
    for p in anchor:
        alloc.pin(p)
    alloc.check([t.pages, u.pages, anchor])
    alloc.evict(t, [0])
    first = u.pages[0]
    assert t.pages[0] == EVICTED and not alloc.is_free(first)  # u still holds it
    alloc.check([t.pages, u.pages, anchor])
    assert alloc.release(u) == [first]  # the pages t shares stay live
    alloc.check([t.pages, anchor])
    assert alloc.num_free == 8 - 2 - 2


def test_pinned_page_is_never_freed_while_referenced():
    alloc = PageAllocator(4)
    (p,) = alloc.alloc(1)
    alloc.pin(p)
    alloc.incref(p)  # a sequence uses the anchor page
    assert not alloc.unpin(p)  # the anchor set lets go of its pin ...
    assert not alloc.decref(p)  # ... and of its reference: the sequence still holds it
    assert not alloc.is_free(p)
    assert alloc.decref(p)  # the sequence is released: now it is free
    assert alloc.is_free(p)


def test_pinned_page_cannot_be_evicted():
    alloc = PageAllocator(4)
    t = BlockTable(alloc.alloc(1))
    alloc.pin(t.pages[0])
    with pytest.raises(PagingError, match="pinned"):
        alloc.evict(t, [0])


def test_errors_name_the_problem():
    alloc = PageAllocator(2)
    with pytest.raises(OutOfPagesError, match="need 3, 2 free of 2"):
        alloc.alloc(3)
    (p,) = alloc.alloc(1)
    assert alloc.decref(p)
    with pytest.raises(PagingError, match="double free"):
        alloc.decref(p)
    with pytest.raises(PagingError, match="outside the pool"):
        alloc.incref(7)


def test_free_list_order_is_a_parameter():
    assert PageAllocator(5, order=[3, 1, 4, 0, 2]).alloc(5) == [3, 1, 4, 0, 2]
    assert PageAllocator(5).alloc(5) == [0, 1, 2, 3, 4]
    with pytest.raises(PagingError):
        PageAllocator(3, order=[0, 0, 1])


@given(start=st.integers(0, 300), window=st.integers(1, 100))
def test_dead_blocks_are_invisible_to_every_later_query(start, window):
    dead = dead_blocks(start, window, 16)
    for b in dead:
        assert (b + 1) * 16 - 1 < start - window + 1  # last key of the block is left of the window
    nxt = len(dead)
    assert (nxt + 1) * 16 - 1 >= start - window + 1  # the first kept block is still visible
    assert blocks_for(0, 16) == 0 and blocks_for(16, 16) == 1 and blocks_for(17, 16) == 2
