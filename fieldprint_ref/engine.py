"""The reference engine: the `fieldprint.engine.Engine` contract over `spec.model.forward`.

Plain PyTorch, CPU by default (any torch device works).  The engine owns one KV pool and a
`PageAllocator`; each sequence has a block table.  Work happens in *rounds*: every active
sequence contributes one chunk (its next prefill chunk, or its last sampled token) to a single
`forward` call, then every sequence whose context is fully cached samples its next token.
Because the spec's forward is batch-invariant by construction, a sequence's tokens and KV bytes
do not depend on which other sequences share its rounds, on where its pages sit in the pool, or
on how its prefill is chunked; tests/ref/test_batch_invariance.py checks exactly that.

The loop calls only names from ``self.ops`` (``fieldprint_ref.ops`` here); the fast engine is
this same class over ``fieldprint_fast.ops``.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

import fieldprint_ref.ops as ref_ops
from fieldprint_ref.errors import ContextTooLongError, EngineError, OutOfPagesError, SamplingParamError
from fieldprint_ref.paging import EVICTED, BlockTable, PageAllocator, blocks_for, dead_blocks
from fieldprint_ref.records import AnchorInfo, GenerationResult, PageWrite, StepRecord
from fieldprint_ref.weights import has_exact_views, with_exact_views

DEFAULT = object()  # anchors: "the engine's current anchors" (None = no anchors); window: "the model's
# window", config.sliding_window (None = full attention, an override for a sliding-window model)
DEFAULT_POOL_BYTES = 256 * 2**20  # default KV pool budget when num_pages is not given (= 256 MiB)
DEFAULT_POOL_SEQUENCES = 8  # ... but never more pages than 8 full-length sequences need


@dataclass
class _Sequence:
    """Everything the engine tracks about one sequence (internal)."""

    handle: int
    sequence: int
    prompt_len: int
    context: list[int]
    params: object
    max_new_tokens: int
    anchors: AnchorInfo | None
    window: int | None
    stop: tuple[str, ...]
    eos: frozenset[int]
    table: BlockTable = field(default_factory=BlockTable)
    cached: int = 0
    pending_logits: torch.Tensor | None = None
    attempt: int = 0
    finish_reason: str | None = None
    records: list[StepRecord] = field(default_factory=list)
    # cache changes since the last StepRecord
    fed_start: int = 0
    writes: list[PageWrite] = field(default_factory=list)
    evicted: list[int] = field(default_factory=list)
    evicted_blocks: list[int] = field(default_factory=list)
    released: bool = False

    @property
    def generated(self) -> list[int]:
        return self.context[self.prompt_len :]


class RefEngine:
    """Reference implementation of the `fieldprint.engine.Engine` contract."""

    name = "ref"
    ops = ref_ops
    # keep a float64 copy of every matmul weight instead of converting it on every call (speed
    # only, results identical; costs 8 bytes per weight parameter): fieldprint_ref.weights
    cache_weights = True

    def __init__(
        self,
        model,
        *,
        tokenizer=None,
        num_pages: int | None = None,
        device: str | torch.device = "cpu",
        page_order: Sequence[int] | None = None,
        page_seed: int | None = None,
        eos_token_ids: Iterable[int] = (),
        keep_logits: bool = True,
    ):
        self.device = torch.device(device)
        self.model = _model_on(model, self.device)
        if self.cache_weights and not has_exact_views(self.model):
            self.model = with_exact_views(self.model)  # convert each weight once (fieldprint_ref.weights)
        self.config = model.config
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.page_tokens = int(self.ops.PAGE_TOKENS)
        self.default_pool = num_pages is None
        if num_pages is None:
            num_pages = self._default_num_pages()
        self.pool = self.ops.allocate_pool(self.config, model.profile, num_pages, device=self.device)
        self.allocator = PageAllocator(num_pages, order=page_order, seed=page_seed)
        self._sequences: dict[int, _Sequence] = {}
        self._anchor_sets: dict[int, AnchorInfo] = {}
        self._anchors: AnchorInfo | None = None
        self._next_handle = 0
        self._next_anchor = 0
        self.evict = True  # free pages a sliding window can no longer see (tests turn it off)
        # keep every step's logits in the sequence's records (results); when False, only the record
        # returned by `step` / passed to `on_step` carries them (long runs over large vocabularies)
        self.keep_logits = keep_logits

    def _default_num_pages(self) -> int:
        """Pages of the default pool: room for DEFAULT_POOL_SEQUENCES full-length sequences, but
        never more than DEFAULT_POOL_BYTES (a long-context model gets fewer pages; `add_sequence`
        refuses a request that cannot fit, naming num_pages)."""
        probe = self.ops.allocate_pool(self.config, self.model.profile, 1, device="cpu")
        page_size = max(1, probe.data[0].numel() * probe.data.element_size())
        per_seq = blocks_for(self.config.max_position, self.page_tokens)
        return max(1, min(DEFAULT_POOL_SEQUENCES * per_seq, DEFAULT_POOL_BYTES // page_size))

    def _check_room(self, prompt_len: int, max_new_tokens: int, anchor_len: int, window: int | None) -> None:
        """Refuse a request that cannot fit the pool even alone: its prompt's pages are all live
        until its first token, and then every context token (or, with a window, the window's
        blocks) stays cached. Anchor pages are shared and already allocated."""
        pt = self.page_tokens
        fed = min(prompt_len + max_new_tokens - 1, self.config.max_position - anchor_len)  # tokens that enter the cache
        need = blocks_for(fed, pt)
        if window is not None:
            need = min(need, blocks_for(window, pt) + 1)
        need = max(need, blocks_for(prompt_len, pt))
        anchors = sum(len(i.pages) for i in self._anchor_sets.values())
        room = self.allocator.num_pages - anchors
        if need > room:
            pool = (f"the default pool ({DEFAULT_POOL_BYTES >> 20} MiB) has {self.allocator.num_pages} pages"
                    if self.default_pool else f"num_pages is {self.allocator.num_pages}")
            raise OutOfPagesError(
                f"request needs at least {need} KV pages of {pt} tokens (prompt {prompt_len} + max_new_tokens "
                f"{max_new_tokens}{f', window {window}' if window is not None else ''}), {pool}"
                f"{f' ({anchors} hold anchors)' if anchors else ''}: pass a larger num_pages "
                f"(fieldprint generate --num-pages), or fewer tokens")

    # ---------------------------------------------------------------------------- text
    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Tokenize ``text`` with the model's tokenizer (special tokens such as BOS if ``special``)."""
        if self.tokenizer is None:
            raise EngineError("this engine has no tokenizer: pass token ids instead of text")
        return list(self.tokenizer.encode(text, add_special_tokens=special).ids)

    def detokenize(self, tokens: Sequence[int]) -> str | None:
        """Detokenize ``tokens`` (special tokens skipped); ``None`` without a tokenizer."""
        if self.tokenizer is None:
            return None
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    def _tokens(self, what: str, value, *, special: bool) -> list[int]:
        toks = self.tokenize(value, special=special) if isinstance(value, str) else [int(t) for t in value]
        bad = [t for t in toks if not 0 <= t < self.config.vocab_size]
        if bad:
            raise EngineError(f"{what}: token id {bad[0]} is outside the vocabulary [0, {self.config.vocab_size})")
        return toks

    # ---------------------------------------------------------------------------- anchors
    def set_anchors(self, anchors: str | Sequence[int] | None) -> AnchorInfo | None:
        """Make ``anchors`` the default anchor set of new sequences (``None``: no anchors).

        The previous default set is released: its pinned pages are freed once no sequence
        still uses them.
        """
        info = self.add_anchors(anchors) if anchors is not None else None
        old, self._anchors = self._anchors, info
        if old is not None:
            self.release_anchors(old)
        return info

    @property
    def anchors(self) -> AnchorInfo | None:
        """The current default anchor set."""
        return self._anchors

    def add_anchors(self, anchors: str | Sequence[int]) -> AnchorInfo:
        """Compute the K/V of ``anchors`` once, into freshly allocated pinned pages."""
        tokens = self._tokens("anchors", anchors, special=True)
        if not tokens:
            raise EngineError("anchors: empty anchor text/token list")
        if len(tokens) >= self.config.max_position:
            raise ContextTooLongError(
                f"anchors: {len(tokens)} tokens leave no room for a prompt "
                f"(model max_position is {self.config.max_position})"
            )
        pages = self.allocator.alloc(blocks_for(len(tokens), self.page_tokens))
        self.ops.zero_pages(self.pool, pages)
        for p in pages:
            self.allocator.pin(p)
        chunk = self.ops.SequenceChunk(
            tokens=torch.tensor(tokens, dtype=torch.int64, device=self.device),
            start=0,
            block_table=torch.tensor(pages, dtype=torch.int64, device=self.device),
        )
        self.ops.forward(self.model, self.pool, [chunk])
        info = AnchorInfo(handle=self._next_anchor, tokens=tuple(tokens), pages=tuple(pages))
        self._next_anchor += 1
        self._anchor_sets[info.handle] = info
        return info

    def release_anchors(self, info: AnchorInfo) -> None:
        """Unpin an anchor set; its pages are freed when the last sequence using them is released."""
        if self._anchor_sets.pop(info.handle, None) is None:
            raise EngineError(f"anchor set {info.handle} is not live in this engine")
        if self._anchors is not None and self._anchors.handle == info.handle:
            self._anchors = None
        for p in info.pages:
            self.allocator.unpin(p)
            self.allocator.decref(p)

    def _anchor_ref(self, info: AnchorInfo | None):
        if info is None:
            return None
        table = torch.tensor(info.pages, dtype=torch.int64, device=self.device)
        return self.ops.AnchorRef(block_table=table, length=info.length)

    # ---------------------------------------------------------------------------- sequences
    def add_sequence(
        self,
        prompt: str | Sequence[int],
        *,
        sampling=None,
        max_new_tokens: int = 16,
        sequence: int | None = None,
        anchors=DEFAULT,
        window=DEFAULT,
        stop: Sequence[str] = (),
        eos_token_ids: Iterable[int] | None = None,
    ) -> int:
        """Register a sequence (nothing runs yet); return its handle.

        ``window`` defaults to the model's own (``config.sliding_window``); an explicit value,
        ``None`` (full attention) included, overrides it."""
        anchors = self._anchors if anchors is DEFAULT else anchors
        window = self.config.sliding_window if window is DEFAULT else window
        if anchors is not None and anchors.handle not in self._anchor_sets:
            raise EngineError(f"anchor set {anchors.handle} was released")
        a = anchors.length if anchors is not None else 0
        tokens = self._tokens("prompt", prompt, special=anchors is None)
        if not tokens:
            raise EngineError("prompt: the prompt is empty (it must have at least one token)")
        if a + len(tokens) > self.config.max_position:
            raise ContextTooLongError(
                f"prompt too long: {len(tokens)} prompt tokens + {a} anchor tokens > model max_position "
                f"{self.config.max_position} (at most {self.config.max_position - a} prompt tokens)"
            )
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise SamplingParamError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise EngineError(f"window must be an integer >= 1, got {window!r}")
        if any(not isinstance(s, str) or not s for s in stop):
            raise SamplingParamError("stop strings must be non-empty strings")
        if sequence is not None and (isinstance(sequence, bool) or not isinstance(sequence, int)
                                     or not 0 <= sequence < 2**64):
            raise SamplingParamError(f"sequence index must be an integer in [0, 2**64), got {sequence!r}")
        if stop and self.tokenizer is None:
            raise EngineError("stop strings need a tokenizer (this engine has none)")
        self._check_room(len(tokens), max_new_tokens, a, window)
        handle = self._next_handle
        self._next_handle += 1
        if anchors is not None:
            for p in anchors.pages:
                self.allocator.incref(p)
        eos = self.eos_token_ids if eos_token_ids is None else frozenset(int(t) for t in eos_token_ids)
        self._sequences[handle] = _Sequence(
            handle=handle,
            sequence=handle if sequence is None else int(sequence),
            prompt_len=len(tokens),
            context=list(tokens),
            params=sampling if sampling is not None else self.ops.SamplingParams(),
            max_new_tokens=max_new_tokens,
            anchors=anchors,
            window=window,
            stop=tuple(stop),
            eos=eos,
        )
        return handle

    def _seq(self, handle: int) -> _Sequence:
        try:
            s = self._sequences[handle]
        except KeyError:
            raise EngineError(f"unknown sequence handle {handle}") from None
        if s.released:
            raise EngineError(f"sequence {handle} was released")
        return s

    def fork(self, handle: int, *, sequence: int | None = None, sampling=None, step: int | None = None) -> int:
        """Return a new sequence sharing ``handle``'s pages copy-on-write (same tokens so far).

        ``step``: fork the sequence as it stood right after it sampled token ``step`` (a replay
        whose `teacher_force` ran ahead): later tokens, records and blocks are left out. The
        slots of the last block past that point keep what the later steps wrote there; no query
        of the fork sees them (it overwrites each before attending to it), but a hash of the page
        must leave them out. Refused when a later step evicted blocks.
        """
        s = self._seq(handle)
        if step is not None:
            later = s.records[step + 1:] if isinstance(step, int) and 0 <= step < len(s.records) else None
            if later is None or any(r.evicted_blocks for r in later) or s.records[step].step != step:
                raise EngineError(f"fork: cannot fork sequence {handle} at step {step!r} (it has "
                                  f"{len(s.records)} steps; none after the fork point may evict)")
            if later:
                s = dataclasses.replace(s, context=s.context[: s.prompt_len + step + 1], cached=s.records[step].fed_end,
                                        records=s.records[: step + 1], pending_logits=None, finish_reason=None,
                                        fed_start=s.records[step].fed_end,
                                        table=BlockTable(s.table.pages[: blocks_for(s.records[step].fed_end,
                                                                                    self.page_tokens)]))
        new = self._next_handle
        self._next_handle += 1
        if s.anchors is not None:
            for p in s.anchors.pages:
                self.allocator.incref(p)
        self._sequences[new] = _Sequence(
            handle=new,
            sequence=new if sequence is None else int(sequence),
            prompt_len=s.prompt_len,
            context=list(s.context),
            params=s.params if sampling is None else sampling,
            max_new_tokens=s.max_new_tokens,
            anchors=s.anchors,
            window=s.window,
            stop=s.stop,
            eos=s.eos,
            table=self.allocator.fork(s.table),
            cached=s.cached,
            pending_logits=s.pending_logits,
            attempt=s.attempt,
            finish_reason=s.finish_reason,
            records=list(s.records),
            fed_start=s.fed_start,
        )
        return new

    def set_attempt(self, handle: int, attempt: int) -> None:
        """Sample the sequence's next tokens with RNG counter ``attempt`` (a rollback's retry)."""
        if isinstance(attempt, bool) or not isinstance(attempt, int) or not 0 <= attempt < 2**64:
            raise SamplingParamError(f"attempt must be an integer in [0, 2**64), got {attempt!r}")
        self._seq(handle).attempt = attempt

    def finish_reason(self, handle: int) -> str | None:
        """Return why the sequence finished ("eos", "stop", "length", "max_position"), or None."""
        if handle not in self._sequences:
            raise EngineError(f"unknown sequence handle {handle}")
        return self._sequences[handle].finish_reason

    def release(self, handle: int) -> list[int]:
        """Free a sequence's pages (and its hold on its anchors); return the pages freed."""
        s = self._seq(handle)
        freed = self.allocator.release(s.table)
        if s.anchors is not None:
            for p in s.anchors.pages:
                if self.allocator.decref(p):
                    freed.append(p)
        s.released = True
        return freed

    # ---------------------------------------------------------------------------- running
    def prefill(self, handles: Sequence[int], *, chunk_size: int | None = None) -> dict[int, StepRecord]:
        """Feed the prompts of ``handles`` (batched, in chunks) and sample each one's first token."""
        todo = [h for h in handles if not self._seq(h).records and self._seq(h).finish_reason is None]
        out: dict[int, StepRecord] = {}
        while todo:
            for h, rec in self.step(todo, chunk_size=chunk_size):
                out[h] = rec
            todo = [h for h in todo if h not in out]
        return out

    def decode(self, handles: Sequence[int]) -> dict[int, StepRecord]:
        """Feed each sequence's last sampled token in one batched forward; sample the next."""
        for h in handles:
            s = self._seq(h)
            if not s.records:
                raise EngineError(f"sequence {h} has not been prefilled")
        return dict(self.step(handles))

    def _plan_round(self, handles: Sequence[int], chunk_size: int | None):
        """A round's unfinished sequences (each once, in the order of ``handles``) and, in that
        order, ``(sequence, start, take)`` for each that feeds tokens: its next uncached tokens,
        at most ``chunk_size``. Pages are allocated in this order by every engine."""
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
            raise EngineError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        handles = list(dict.fromkeys(handles))  # a sequence joins a round once
        active = [s for s in (self._seq(h) for h in handles) if s.finish_reason is None]
        feeds = []
        for s in active:
            take = len(s.context) - s.cached
            if chunk_size is not None:
                take = min(take, chunk_size)
            if take:
                feeds.append((s, s.cached, take))
        return active, feeds

    def step(self, handles: Sequence[int], *, chunk_size: int | None = None) -> list[tuple[int, StepRecord]]:
        """Run one round: one forward over every unfinished sequence, then sample where due.

        Each unfinished sequence feeds its next uncached tokens (at most ``chunk_size``).
        Returns ``(handle, record)`` for every sequence that sampled a token this round.
        """
        active, feeds = self._plan_round(handles, chunk_size)
        chunks, fed = [], []
        for s, start, take in feeds:
            chunk, writes = self._prepare_chunk(s, start, take)
            chunks.append(chunk)
            fed.append((s, start, take, writes))
        if chunks:
            logits = self.ops.forward(self.model, self.pool, chunks)
            for (s, start, take, writes), lg in zip(fed, logits):
                s.writes += writes  # recorded only once the forward has written them
                s.cached = start + take
                if s.cached == len(s.context):
                    s.pending_logits = lg[-1]
        out = []
        for s in active:
            if s.pending_logits is not None and s.cached == len(s.context):
                out.append((s.handle, self._sample(s)))
        return out

    def teacher_force(self, handle: int, tokens: Sequence[int], *, max_tokens: int | None = None) -> list[StepRecord]:
        """Run the sequence as if its sampler had drawn ``tokens`` next, in one forward pass.

        Teacher forcing, for a replay that knows the tokens: the forward feeds the sequence's
        uncached context (its prompt, or its last sampled token), then ``tokens[:-1]``, and each
        position's logits make one step. Returns one ``StepRecord`` per token consumed, each the
        record `step` would have returned for that step had the sampler drawn the forced tokens
        (same step, attempt, fed range, page writes, evictions and logits: `spec.model.forward`
        does not depend on chunking), except that ``token`` is what the sampler draws from those
        logits; the context goes on with the forced token whatever it draws.

        Consumes tokens until the sequence finishes (the finish rules read the forced tokens),
        ``max_tokens`` are consumed, or the next step would free a block of a sliding window (the
        engine evicts only before a forward, for its first query, so that a step's pages are
        never freed before its record is read): call again with the rest.
        """
        s = self._seq(handle)
        if s.finish_reason is not None:
            raise EngineError(f"sequence {handle} has finished ({s.finish_reason})")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
            raise EngineError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        tokens = self._tokens("forced tokens", list(tokens), special=False)
        pt, start, n0 = self.page_tokens, s.cached, len(s.context)
        first = n0 - start  # positions the first step feeds (>= 1: the prompt, or the last token)
        limit = len(tokens) if max_tokens is None else min(len(tokens), max_tokens)
        dead = (lambda q: len(dead_blocks(q, s.window, pt))) if self.evict and s.window is not None else None
        finish, n = None, 0
        while n < limit and finish is None:
            if n and dead is not None and dead(start + first + n - 1) > dead(s.fed_start):
                break  # step n would evict: it starts the next forward
            s.context.append(tokens[n])
            finish = self._finish_reason(s, tokens[n])
            n += 1
        if n == 0:
            return []
        try:
            chunk, _ = self._prepare_chunk(s, start, first + n - 1)
            logits = self.ops.forward(self.model, self.pool, [chunk])[0]
        except BaseException:
            del s.context[n0:]
            raise
        out = []
        for i in range(n):
            end = start + first + i  # fed_end of step i
            lo = s.fed_start if i == 0 else end - 1
            row = logits[end - 1 - start]
            writes = _page_writes(s.table.pages, start if i == 0 else end - 1, end, pt)
            rec = StepRecord(
                sequence=s.sequence,
                step=n0 + i - s.prompt_len,
                attempt=s.attempt,
                fed_start=lo,
                fed_end=end,
                fed_tokens=tuple(s.context[lo:end]),
                writes=(tuple(s.writes) + writes) if i == 0 else writes,
                evicted=tuple(s.evicted) if i == 0 else (),
                evicted_blocks=tuple(s.evicted_blocks) if i == 0 else (),
                logits=row,
                token=int(self.ops.sample(row, s.params, s.sequence, n0 + i - s.prompt_len, s.attempt)),
            )
            s.records.append(rec if self.keep_logits else dataclasses.replace(rec, logits=None))
            out.append(rec)
        s.cached = s.fed_start = start + first + n - 1
        s.pending_logits = None
        s.writes, s.evicted, s.evicted_blocks = [], [], []
        s.finish_reason = finish
        return out

    def _prepare_chunk(self, s: _Sequence, start: int, take: int):
        """Evict dead blocks, allocate/unshare the blocks ``[start, start+take)`` touches; return
        the chunk and the page writes it will make."""
        writes = self._prepare_pages(s, start, take)
        chunk = self.ops.SequenceChunk(
            tokens=torch.tensor(s.context[start : start + take], dtype=torch.int64, device=self.device),
            start=start,
            block_table=torch.tensor(s.table.pages, dtype=torch.int64, device=self.device),
            anchors=self._anchor_ref(s.anchors),
            window=s.window,
        )
        return chunk, writes

    def _prepare_pages(self, s: _Sequence, start: int, take: int) -> list[PageWrite]:
        """Evict dead blocks, allocate/unshare the blocks ``[start, start+take)`` touches; return
        the page writes feeding them will make (the paging half of `_prepare_chunk`)."""
        pt = self.page_tokens
        table = s.table
        # Evict only what is dead for the step's first query (s.fed_start), never between the chunks
        # of a chunked prefill: evictions then do not depend on the chunk size (a replay cannot know
        # it), and no page is freed and reused before the step's record names what was written to it.
        dead = [b for b in dead_blocks(s.fed_start, s.window, pt) if b < len(table) and table.pages[b] != EVICTED]
        if dead and self.evict:
            s.evicted += self.allocator.evict(table, dead)
            s.evicted_blocks += dead
        first, end = start // pt, blocks_for(start + take, pt)
        for b in range(first, min(end, len(table))):
            self.allocator.make_writable(table, b, lambda src, dst: self.ops.copy_page(self.pool, src, dst))
        if end > len(table):
            fresh = self.allocator.alloc(end - len(table))
            self.ops.zero_pages(self.pool, fresh)
            table.pages += fresh
        return list(_page_writes(table.pages, start, start + take, pt))

    def _sample(self, s: _Sequence, token: int | None = None, logits_digest: bytes | None = None) -> StepRecord:
        """Sample (or take ``token``, which an engine drew from the same logits on its device) and
        record the step; ``logits_digest``: the logits row's digest, when the engine made it."""
        logits = s.pending_logits
        step = len(s.context) - s.prompt_len
        if token is None:
            token = int(self.ops.sample(logits, s.params, s.sequence, step, s.attempt))
        rec = StepRecord(
            sequence=s.sequence,
            step=step,
            attempt=s.attempt,
            fed_start=s.fed_start,
            fed_end=s.cached,
            fed_tokens=tuple(s.context[s.fed_start : s.cached]),
            writes=tuple(s.writes),
            evicted=tuple(s.evicted),
            evicted_blocks=tuple(s.evicted_blocks),
            logits=logits,
            token=token,
            logits_digest=logits_digest,
        )
        s.records.append(rec if self.keep_logits else dataclasses.replace(rec, logits=None))
        s.context.append(token)
        s.pending_logits = None
        s.fed_start = s.cached
        s.writes, s.evicted, s.evicted_blocks = [], [], []
        s.finish_reason = self._finish_reason(s, token)
        return rec

    def _finish_reason(self, s: _Sequence, token: int) -> str | None:
        if token in s.eos:
            return "eos"
        if s.stop and _stop_index(self.detokenize(s.generated), s.stop) is not None:
            return "stop"
        if len(s.generated) >= s.max_new_tokens:
            return "length"
        a = s.anchors.length if s.anchors is not None else 0
        if a + len(s.context) > self.config.max_position:
            return "max_position"  # the new token has no RoPE position left to be fed at
        return None

    def generate(
        self,
        prompts,
        *,
        sampling=None,
        max_new_tokens: int = 16,
        anchors=DEFAULT,
        window=DEFAULT,
        stop: Sequence[str] = (),
        eos_token_ids: Iterable[int] | None = None,
        chunk_size: int | None = None,
        sequences: Sequence[int] | None = None,
        on_step: Callable[[int, StepRecord], None] | None = None,
        release: bool = True,
    ):
        """Generate for one prompt (text or token ids) or a list of prompts, batched.

        ``sampling`` is one ``SamplingParams`` or one per prompt; ``sequences`` gives each
        prompt's sampling sequence index (default 0, 1, ...).  ``on_step(i, record)`` is called
        right after prompt ``i`` samples a token, while the pages it names hold exactly what
        the record describes.  Returns one ``GenerationResult`` (or a list, for a list).
        """
        single = isinstance(prompts, str) or (
            isinstance(prompts, (list, tuple)) and len(prompts) > 0 and isinstance(prompts[0], int)
        ) or isinstance(prompts, torch.Tensor)
        batch = [prompts] if single else list(prompts)
        params = sampling if isinstance(sampling, (list, tuple)) else [sampling] * len(batch)
        if len(params) != len(batch):
            raise SamplingParamError(f"got {len(params)} sampling params for {len(batch)} prompts")
        idx = list(sequences) if sequences is not None else list(range(len(batch)))
        if len(idx) != len(batch):
            raise SamplingParamError(f"got {len(idx)} sequence indices for {len(batch)} prompts")
        handles = []
        try:
            for i, p in enumerate(batch):
                p = p.tolist() if isinstance(p, torch.Tensor) else p
                handles.append(
                    self.add_sequence(
                        p, sampling=params[i], max_new_tokens=max_new_tokens, sequence=idx[i],
                        anchors=anchors, window=window, stop=stop, eos_token_ids=eos_token_ids,
                    )
                )
            pos = {h: i for i, h in enumerate(handles)}
            live = list(handles)
            while live:
                for h, rec in self.step(live, chunk_size=chunk_size):
                    if on_step is not None:
                        on_step(pos[h], rec)
                live = [h for h in live if self._sequences[h].finish_reason is None]
            results = [self.result(h) for h in handles]
        finally:
            if release:
                for h in handles:
                    if not self._sequences[h].released:
                        self.release(h)
        return results[0] if single else results

    def result(self, handle: int) -> GenerationResult:
        """Return what sequence ``handle`` has produced so far."""
        s = self._sequences[handle]
        tokens = list(s.generated)
        text = self.detokenize(tokens)
        if text is not None and s.finish_reason == "stop":
            text = text[: _stop_index(text, s.stop)]
        return GenerationResult(
            sequence=s.sequence,
            prompt_tokens=list(s.context[: s.prompt_len]),
            anchors=s.anchors,
            tokens=tokens,
            text=text,
            steps=list(s.records),
            finish_reason=s.finish_reason,
            block_table=list(s.table.pages),
        )

    # ---------------------------------------------------------------------------- page access
    def page_bytes(self, page: int) -> bytes:
        """Return the canonical bytes of physical page ``page`` (what a ledger hashes)."""
        return self.ops.page_bytes(self.pool, page)

    def page_tensor(self, page: int) -> torch.Tensor:
        """Return a view of physical page ``page`` of the pool (all layers, K, V, scales)."""
        return self.pool.data[page]

    def block_table(self, handle: int) -> list[int]:
        """Return the sequence's logical block -> physical page table (-1 = evicted)."""
        return list(self._sequences[handle].table.pages)

    def sequence_pages(self, handle: int) -> dict[int, bytes]:
        """Return ``{logical block: page bytes}`` for every block of the sequence still in the pool."""
        return {b: self.page_bytes(p) for b, p in self._sequences[handle].table.live()}

    def page_log(self, handle: int) -> list[tuple[int, PageWrite]]:
        """Return every page write of the sequence as ``(step, write)``, in order."""
        return [(r.step, w) for r in self._sequences[handle].records for w in r.writes]

    def check_pages(self) -> None:
        """Raise ``PagingError`` unless every refcount matches the live block tables and anchors."""
        holders = [s.table.pages for s in self._sequences.values() if not s.released]
        holders += [s.anchors.pages for s in self._sequences.values() if not s.released and s.anchors]
        holders += [a.pages for a in self._anchor_sets.values()]
        self.allocator.check(holders)


def _page_writes(pages: list[int], start: int, end: int, page_tokens: int) -> tuple[PageWrite, ...]:
    """Return the page writes that feeding context tokens ``[start, end)`` makes, block by block."""
    pt, out = page_tokens, []
    for b in range(start // pt, blocks_for(end, pt)):
        lo, hi = max(start, b * pt) - b * pt, min(end, (b + 1) * pt) - b * pt
        out.append(PageWrite(page=pages[b], block=b, slot_start=lo, slot_end=hi, full=hi == pt))
    return tuple(out)


def _stop_index(text: str | None, stops: Sequence[str]) -> int | None:
    """Return where the earliest stop string starts in ``text``, or None."""
    if not text:
        return None
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _model_on(model, device: torch.device):
    """Return ``model`` with its tensors on ``device`` (the same object when already there)."""
    if all(t.device == device for t in model.tensors.values()):
        return model
    moved = copy.copy(model)  # already validated: only the tensors move
    moved.tensors = {k: v.to(device) for k, v in model.tensors.items()}
    return moved
