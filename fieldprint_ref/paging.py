"""Page bookkeeping for the paged KV cache: a free list, refcounts, pins and block tables.

The KV pool (``spec.attention.KVPool``) is one tensor whose first dimension is the physical
page.  This module never touches that tensor; it only decides *which* physical page holds
which logical block of which sequence:

* ``PageAllocator`` hands out free pages, counts references to each live page, and keeps
  *pinned* pages (anchor K/V) alive: a pinned page is never returned to the free list, and it
  is never freed while a reference to it exists.
* ``BlockTable`` maps a sequence's logical blocks (block ``b`` holds context tokens
  ``[b*PAGE, (b+1)*PAGE)``) to physical pages; ``-1`` marks a block evicted by a sliding window.

Invariants, checked by ``PageAllocator.check`` (and by the property tests):

1. every page is either free (refcount 0, unpinned, on the free list exactly once) or live
   (refcount >= 1, or pinned), never both;
2. a page's refcount equals the number of holders (block-table slots, anchor sets) naming it;
3. a pinned page is never on the free list.

The order of the free list is a parameter (``order=`` or ``seed=``) so tests can place a
sequence's pages anywhere in the pool and check that nothing depends on where they sit.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from fieldprint_ref.errors import OutOfPagesError, PagingError

EVICTED = -1  # block-table entry of a block dropped by the sliding window (or never written)


class PageAllocator:
    """Free list, refcounts and pins over the physical pages ``0 .. num_pages-1``."""

    def __init__(self, num_pages: int, *, order: Sequence[int] | None = None, seed: int | None = None):
        if num_pages < 1:
            raise PagingError(f"num_pages must be >= 1, got {num_pages}")
        if order is None:
            order = list(range(num_pages))
            if seed is not None:
                random.Random(seed).shuffle(order)
        order = list(order)
        if sorted(order) != list(range(num_pages)):
            raise PagingError("order must be a permutation of range(num_pages)")
        self.num_pages = num_pages
        self._free: list[int] = order[::-1]  # pop() takes from the end: order[0] comes out first
        self._is_free = [True] * num_pages
        self.refcount = [0] * num_pages
        self.pinned = [False] * num_pages

    # -- queries ---------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    def is_free(self, page: int) -> bool:
        return self._is_free[self._check_id(page)]

    def _check_id(self, page: int) -> int:
        if not 0 <= page < self.num_pages:
            raise PagingError(f"page {page} is outside the pool (0..{self.num_pages - 1})")
        return page

    # -- allocation ------------------------------------------------------------------------------
    def alloc(self, n: int = 1) -> list[int]:
        """Take ``n`` free pages (all or none), each with refcount 1."""
        if n > len(self._free):
            raise OutOfPagesError(
                f"KV pool out of pages: need {n}, {len(self._free)} free of {self.num_pages} "
                "(raise num_pages, shorten the prompt, or use a sliding window)"
            )
        pages = [self._free.pop() for _ in range(n)]
        for p in pages:
            self._is_free[p] = False
            self.refcount[p] = 1
        return pages

    def incref(self, page: int) -> None:
        """Add a holder to a live page."""
        if self._is_free[self._check_id(page)]:
            raise PagingError(f"incref of free page {page}")
        self.refcount[page] += 1

    def decref(self, page: int) -> bool:
        """Drop a holder; free the page when none is left and it is unpinned. Return whether freed."""
        if self._is_free[self._check_id(page)] or self.refcount[page] == 0:
            raise PagingError(f"decref of page {page}, which has no holder (double free?)")
        self.refcount[page] -= 1
        if self.refcount[page] == 0 and not self.pinned[page]:
            self._is_free[page] = True
            self._free.append(page)
            return True
        return False

    def pin(self, page: int) -> None:
        """Keep a live page allocated until ``unpin``, whatever its refcount."""
        if self._is_free[self._check_id(page)]:
            raise PagingError(f"cannot pin free page {page}")
        self.pinned[page] = True

    def unpin(self, page: int) -> bool:
        """Remove the pin; free the page if no holder is left. Return whether freed."""
        if not self.pinned[self._check_id(page)]:
            raise PagingError(f"page {page} is not pinned")
        self.pinned[page] = False
        if self.refcount[page] == 0:
            self._is_free[page] = True
            self._free.append(page)
            return True
        return False

    # -- block-table helpers ---------------------------------------------------------------------
    def fork(self, table: "BlockTable") -> "BlockTable":
        """Return a copy of ``table`` sharing its pages (each live page gains a holder)."""
        for p in table.pages:
            if p != EVICTED:
                self.incref(p)
        return BlockTable(list(table.pages))

    def release(self, table: "BlockTable") -> list[int]:
        """Drop every page of ``table`` (the sequence is finished); return the pages freed."""
        freed = [p for p in table.pages if p != EVICTED and self.decref(p)]
        table.pages = [EVICTED] * len(table.pages)
        return freed

    def evict(self, table: "BlockTable", blocks: Iterable[int]) -> list[int]:
        """Evict the given logical blocks of ``table`` (entry set to -1); return pages freed."""
        freed = []
        for b in blocks:
            p = table.pages[b]
            if p == EVICTED:
                continue
            if self.pinned[p]:
                raise PagingError(f"block {b} holds pinned page {p}; pinned pages are never evicted")
            table.pages[b] = EVICTED
            if self.decref(p):
                freed.append(p)
        return freed

    def make_writable(self, table: "BlockTable", block: int, copy_page: Callable[[int, int], None]) -> int:
        """Copy-on-write: give ``table`` a private page for ``block`` before it is written."""
        p = table.pages[block]
        if p == EVICTED:
            raise PagingError(f"block {block} is evicted and cannot be written")
        if self.refcount[p] == 1 and not self.pinned[p]:
            return p
        (q,) = self.alloc(1)
        copy_page(p, q)
        self.decref(p)
        table.pages[block] = q
        return q

    # -- invariants ------------------------------------------------------------------------------
    def check(self, holders: Iterable[Iterable[int]] = ()) -> None:
        """Raise ``PagingError`` unless the invariants in the module docstring hold.

        ``holders``: every page list that holds references (block tables, anchor sets); when
        given, each live page's refcount must equal the number of times it appears there.
        """
        on_list = Counter(self._free)
        for p in range(self.num_pages):
            free = self._is_free[p]
            if free != (on_list[p] == 1) or on_list[p] > 1:
                raise PagingError(f"page {p}: free flag {free} but on free list {on_list[p]} times")
            if free and (self.refcount[p] != 0 or self.pinned[p]):
                raise PagingError(f"free page {p} has refcount {self.refcount[p]} / pinned {self.pinned[p]}")
            if not free and self.refcount[p] == 0 and not self.pinned[p]:
                raise PagingError(f"live page {p} has no holder and no pin (leaked)")
        counts = Counter(p for h in holders for p in h if p != EVICTED)
        if holders != ():
            for p in range(self.num_pages):
                if counts[p] != self.refcount[p]:
                    raise PagingError(f"page {p}: refcount {self.refcount[p]} but {counts[p]} holders")


@dataclass
class BlockTable:
    """Logical block -> physical page for one sequence (``EVICTED`` = -1 for dropped blocks)."""

    pages: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pages)

    def live(self) -> list[tuple[int, int]]:
        """Return ``(logical block, physical page)`` for every block still in the pool."""
        return [(b, p) for b, p in enumerate(self.pages) if p != EVICTED]


def blocks_for(num_tokens: int, page_tokens: int) -> int:
    """Return how many pages ``num_tokens`` tokens occupy."""
    return -(-num_tokens // page_tokens)


def dead_blocks(query_start: int, window: int | None, page_tokens: int) -> range:
    """Return the logical blocks no query at context index >= ``query_start`` can still see.

    A query at context index ``i`` sees context keys ``[i - window + 1, i]`` (the anchors are
    always visible and never live in a sequence's block table).  Block ``b`` ends at key
    ``(b+1)*page_tokens - 1``; it is dead once that key is below ``query_start - window + 1``.
    """
    if window is None:
        return range(0)
    first_visible = query_start - window + 1
    return range(max(0, first_visible) // page_tokens)
