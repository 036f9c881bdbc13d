"""What an engine reports: anchors, per-step records and generation results.

These records are the engine's side of the ledger: each ``StepRecord`` says which tokens were
fed, which KV pages were written (physical id, logical block, slots), which pages the sliding
window freed, the integer logits and the sampled token.  They are plain data so that a ledger
(or a test) can hash them without knowing how the engine works.  Both engines return these same
types; ``fieldprint.engine`` re-exports them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class PageWrite:
    """K/V of context slots ``[slot_start, slot_end)`` of one page, written in one forward pass.

    Every write covers all layers: ``pool.data[page]`` holds K and V (and scales) of every
    layer for its ``PAGE_TOKENS`` slots.  ``block`` is the sequence's logical block (slot ``s``
    of block ``b`` holds context token ``b * PAGE_TOKENS + s``); ``full`` is true when the page
    holds all ``PAGE_TOKENS`` tokens after this write, i.e. its bytes are final.
    """

    page: int
    block: int
    slot_start: int
    slot_end: int
    full: bool


@dataclass(frozen=True)
class AnchorInfo:
    """A set of anchor tokens whose K/V sit in pinned pages shared by every sequence using it.

    Anchor token ``j`` has RoPE position ``j``; ``pages[k]`` holds anchor tokens
    ``[k * PAGE_TOKENS, (k+1) * PAGE_TOKENS)``.  The pages are written once, when the anchors
    are set, and never change afterwards, so ``engine.page_bytes(p)`` for ``p in pages`` is the
    material an anchor commitment hashes.
    """

    handle: int
    tokens: tuple[int, ...]
    pages: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class StepRecord:
    """One sampled token of one sequence, with every cache change that led to it.

    Step ``s`` covers the forward pass(es) that fed context tokens ``[fed_start, fed_end)``
    (for step 0: the whole prompt, possibly in several chunks; later: the previous token),
    the pages they wrote (``writes``, in order), the pages the sliding window freed before
    them (``evicted``: physical ids, the block-table slots now -1 are ``evicted_blocks``),
    the integer logits of the last fed position and the token sampled from them with
    counter ``(seed, sequence, step, attempt)``.
    """

    sequence: int
    step: int
    attempt: int
    fed_start: int
    fed_end: int
    fed_tokens: tuple[int, ...]
    writes: tuple[PageWrite, ...]
    evicted: tuple[int, ...]
    evicted_blocks: tuple[int, ...]
    logits: torch.Tensor | None  # int64 [vocab]; None in stored results when keep_logits=False
    token: int
    # BLAKE3 of the logits row's int64 LE bytes (`spec.commits.logits_digest`) where the engine
    # computed it beside the logits (the fast engine, on the device); None = not computed
    logits_digest: bytes | None = None

    def logits_bytes(self) -> bytes:
        """Return the logits as little-endian int64 bytes (what a ledger hashes)."""
        return self.logits.to(torch.int64).cpu().contiguous().numpy().astype("<i8").tobytes()


@dataclass
class GenerationResult:
    """The outcome of one sequence: its tokens, text and the record of every step."""

    sequence: int
    prompt_tokens: list[int]
    anchors: AnchorInfo | None
    tokens: list[int] = field(default_factory=list)
    text: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    finish_reason: str | None = None  # "eos" | "length" | "stop" | "max_position"
    block_table: list[int] = field(default_factory=list)  # final logical block -> page (-1 evicted)
