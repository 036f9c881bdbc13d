"""The verifying session: drive one sequence through an Engine and write its signed ledger.

Per generated token the engine thread does three cheap things and wakes no thread: append the
step's record builders to the segment's list (a ``token_step`` with the engine's logits digest,
or the row, hashed later on the writer thread), copy the slots the step wrote into the runtime's
own copy of each block it wrote (a device copy of one slot; a block's copy joins the segment's
pages to hash when it fills), and ask the commit policy whether to commit. Digests are thus of
the bytes the engine wrote, as it wrote them: a fault that later changes a live page (or the
copy-on-write copy of a committed one) makes it differ from its recorded digest. Before a step
whose sliding window frees pages, it copies them for the next commit's re-hash.

At a commit it copies the partial last page, keeps a copy-on-write fork of the sequence
(``engine.fork``: the block table is copied, pages are shared and reference-counted; the engine
copies a shared page before it writes to it) and queues, for the workers, the segment's pages
(one hashing job), its records with the ``commit`` record and a checkpoint (one writer item: the
writer waits for the digests and signs) and the commit's validation. The queue is handed over
(`_kick`, one put to the hand-over thread) right before the next step, or from inside it
through the engine's wait hook, where the engine blocks on the device; with the hook the
workers also run Python only in the engine's device waits (`fieldprint.runtime.turns`). Then it
records the results of the previous commit's validation, waiting only if it is not done yet
(normally it finished while the segment was being generated): at most one commit is ever
unvalidated past the next commit's boundary. The prefill commit does not wait for its own
validation: its validation records and a writer gate are queued behind it, and if it fails the
writer drops what the engine queued meanwhile (`_abandon_gated`), so the ledger is the one of a
runtime that waited. The final commit is validated before the ledger is sealed.

If a validation failed, the runtime rolls back to the last commit whose validation passed:
it releases the live sequence and the forks of the abandoned commits, forks the target's
snapshot again, re-hashes the restored pages, repairs any page that no longer matches its
recorded digest (a corrupted page is shared with the snapshot) by recomputing it - anchors
with ``add_anchors``, context pages with a scratch prefill of the committed tokens - and
resumes under RNG attempt ``max attempt + 1``. The abandoned records stay in the ledger.

Cost of a rollback: O(blocks) reference-count updates; a recomputation (one prefill of
the committed context) only when pages were corrupted. Cost of keeping snapshots: one
page copy per commit (the partial last page, copied on the next write) and pages a
sliding window would have freed stay alive until the snapshot is released; snapshots
older than the last validated commit are released.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Sequence

import torch

from fieldprint.runtime.faults import FaultPlan
from fieldprint.runtime.hasher import PageHasher, done, page_digests
from fieldprint.runtime.turns import Turns
from fieldprint.runtime.validate import CommitView, PageCheck, ValidationRunner
from fieldprint.runtime.writer import LedgerSink
from fieldprint_ref.paging import dead_blocks
from spec import commits
from spec.commitment import model_commitment as artifact_commitment
from spec.keys import SigningKey
from spec.ledger import (
    SPEC_VERSION,
    Commit,
    CommitPolicy,
    End,
    EngineIdentity,
    Genesis,
    KVEvict,
    KVPage,
    ReplayInputs,
    Rollback,
    TokenStep,
    Validation,
    sampling_record,
)
from spec.commits import logits_digest
from spec.merkle import HASHERS

MODEL_WINDOW = object()  # VerifyingSession(window=...) default: the model's own sliding window

EVICTED = -1
# While a session runs, Python's GIL switch interval is lowered to this (seconds; restored after).
# The engine thread spends most of a GPU decode step waiting for the device with the GIL released,
# and the hasher, writer and validation threads use those waits. When the step ends while one of
# them is running Python code, the engine thread waits for the GIL until the switch interval
# expires: 5 ms by default, more than a whole decode step. 0.1 ms bounds that wait.
SWITCH_INTERVAL = 1e-4
DETAIL_MAX = 1000  # characters of a validation detail kept in the ledger
HASH_BATCH = 8  # full pages of a segment held for one hashing job, at most (a long segment hashes in batches)


# %%
# Record builders: called on the writer thread with the record's leaf index, in queue order.
# The engine thread only puts ``partial(builder, ...)`` into the segment's list.


def _token_step(rec, seq: int) -> TokenStep:
    digest = rec.logits_digest if rec.logits_digest is not None else logits_digest(rec.logits_bytes())
    return TokenStep(seq=seq, step=rec.step, attempt=rec.attempt, token=rec.token, logits_digest=digest)


def _kv_evict(blocks, seq: int) -> KVEvict:
    return KVEvict(seq=seq, blocks=blocks)


def _kv_page(kind: str, block: int, used: int, fut: Future, seq: int) -> KVPage:
    d = fut.result()
    return KVPage(seq=seq, kind=kind, block=block, used=used, digest=d.root, layer_digests=d.layers)


def _commit_record(c, pages, hasher, seq: int) -> Commit:
    return Commit(seq=seq, commit=c.number, reason=c.reason, first_step=c.first_step, end_step=c.end_step,
                  tokens=c.tokens, page_count=len(pages),
                  pages_root=commits.pages_root([f.result().root for f in pages], hasher), live_state=c.live_state())


def _validation_record(c, k: int, seq: int) -> Validation:
    name, passed, detail = c.validation.result()[k]
    return Validation(seq=seq, commit=c.number, validator=name, passed=passed, detail=detail[:DETAIL_MAX])


def _validation_passed(c) -> bool:
    return all(p for _, p, _ in c.validation.result())


class _Handover:
    """The thread that makes the engine thread's hand-overs (`VerifyingSession._kick`): lists of
    submissions, run in order, after a worker turn. An error is kept for the engine thread."""

    def __init__(self, turn):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._turn = turn
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fieldprint-handover", daemon=True)
        self._thread.start()

    def put(self, fns) -> None:
        self._q.put(fns)

    def drain(self) -> None:
        """Wait until everything put so far has run; raise its error."""
        ev = threading.Event()
        self._q.put(ev)
        ev.wait()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            self._turn()
            for fn in item:  # each one, even after an error: a validation's Future must resolve
                try:
                    fn()
                except BaseException as e:  # noqa: BLE001 - raised on the engine thread
                    if self.error is None:
                        self.error = e


class _Checks:
    """A commit's validation input, made on the validation thread: the pages to re-hash (anchors,
    the snapshot's live context pages, the pages the window freed during the segment) and the
    validators' view (detokenizing is not the engine thread's work)."""

    def __init__(self, anchor_pages, anchor_digests, snap_table, live, evicting, detokenize, c, generated):
        self.args = (anchor_pages, anchor_digests, snap_table, live, evicting, detokenize, c, generated)

    def __call__(self):
        anchor_pages, anchor_digests, snap_table, live, evicting, detok, c, generated = self.args
        checks = [PageCheck("anchor", k, p, done(d)) for k, (p, d) in enumerate(zip(anchor_pages, anchor_digests))]
        checks += [PageCheck("context", b, snap_table[b], f) for b, f in sorted(live.items())]
        checks += evicting  # pages freed by the window since the last commit
        detok = detok or (lambda t: None)
        view = CommitView(c.number, c.reason, c.first_step, c.end_step, c.tokens, detok(list(c.tokens)), generated,
                          detok(list(generated)))
        return checks, view


@dataclass
class _Commit:
    """What the runtime keeps about one commit of the live branch."""

    number: int
    reason: str
    first_step: int
    end_step: int
    tokens: tuple[int, ...]
    digests: dict[int, Future]  # live context block -> digest
    anchor_digests: list  # PageDigest per anchor page
    hasher: object
    snapshot: int | None = None  # engine handle of the copy-on-write fork
    validation: Future | None = None
    passed: bool | None = None
    gated: bool = False  # validation records queued with a writer gate (`VerifyingSession._gate`)
    failure: str = ""
    _live: bytes | None = None

    def live_state(self) -> bytes:
        if self._live is None:
            self._live = commits.live_state([d.root for d in self.anchor_digests],
                                            {b: f.result().root for b, f in self.digests.items()},
                                        self.hasher)
        return self._live


@dataclass
class RollbackInfo:
    failed_commit: int
    to_commit: int
    to_step: int
    attempt: int
    reason: str
    repaired_anchor_pages: list[int] = field(default_factory=list)
    repaired_blocks: list[int] = field(default_factory=list)


@dataclass
class SessionResult:
    """The outcome of a verified generation: the live branch and what the ledger holds."""

    ledger: str
    tokens: list[int]
    text: str | None
    finish_reason: str | None
    end_reason: str
    commits: int
    rollbacks: list[RollbackInfo]
    records: int
    checkpoints: int
    seconds: float
    validations: list[tuple[int, str, bool, str]]
    generation: object = None  # the engine's GenerationResult of the live branch
    error: str | None = None  # why the generation ended with reason ``error`` (None otherwise)
    # seconds of the engine thread: in engine.step, recording tokens (between steps; of which
    # handover_s: handing queued work to the workers, `_kick`), making commits (of which
    # validation_wait_s: waiting for validations); ``tokens``: len(tokens)
    timings: dict = field(default_factory=dict)


def engine_identity(engine) -> EngineIdentity:
    """Return the engine's name, the fieldprint version and its build (torch, device)."""
    import torch

    try:
        from importlib.metadata import version

        v = version("fieldprint")
    except Exception:  # not installed: running from a checkout
        v = "0+checkout"
    device = getattr(engine, "device", "cpu")
    return EngineIdentity(name=str(getattr(engine, "name", type(engine).__name__)), version=v,
                          build=f"torch {torch.__version__}; device {device}")


class RuntimeFailure(RuntimeError):
    """The runtime could not restore a good state (the ledger ends with reason ``error``)."""


class VerifyingSession:
    """Generate one sequence with ``engine`` and write its ledger to ``ledger_path``.

    ``policy`` is a ``spec.ledger.CommitPolicy`` (``fieldprint.runtime.policy``);
    ``validators`` are policy validators (functions over a ``CommitView``); ``faults`` a
    ``FaultPlan``. ``model_commitment`` defaults to ``spec.commitment.model_commitment``.
    The replay inputs (prompt and anchor token ids, window, EOS ids, stop strings) go into the
    genesis record, so the ledger alone replays. ``window`` defaults to the model's own
    (``config.sliding_window``); any other value (``None`` = full attention) is an override, and
    the genesis records both the window used and the model's."""

    def __init__(self, engine, *, key: SigningKey, ledger_path, policy: CommitPolicy | None = None,
                 sampling=None, max_new_tokens: int = 16, sequence: int = 0, window=MODEL_WINDOW,
                 stop: Sequence[str] = (), eos_token_ids=None, chunk_size: int | None = None,
                 validators: Sequence = (), faults: FaultPlan | None = None, model_commitment: bytes | None = None,
                 hash_profile: str = "blake3", fsync: str = "checkpoint", max_rollbacks: int = 8,
                 nonce: bytes | None = None, on_step=None, switch_interval: float | None = SWITCH_INTERVAL):
        from spec.sampling import SamplingParams

        self.engine = engine
        self.key = key
        self.ledger_path = os.fspath(ledger_path)
        self.policy = policy if policy is not None else commits.make_policy(8)
        self.sampling = sampling if sampling is not None else SamplingParams()
        self.max_new_tokens = max_new_tokens
        self.sequence = sequence
        self.model_window = engine.model.config.sliding_window
        self.window = self.model_window if window is MODEL_WINDOW else window
        self.stop = list(stop)
        self.eos_token_ids = None if eos_token_ids is None else [int(t) for t in eos_token_ids]
        self.chunk_size = chunk_size
        self.faults = faults or FaultPlan()
        self.validators = list(validators) + self.faults.validators()
        self.model_commitment = model_commitment
        self.hash_profile = hash_profile
        self.hasher_fn = HASHERS[hash_profile]
        self.fsync = fsync
        if isinstance(max_rollbacks, bool) or not isinstance(max_rollbacks, int) or max_rollbacks < 0:
            raise ValueError(f"max_rollbacks must be an integer >= 0, got {max_rollbacks!r}")
        self.max_rollbacks = max_rollbacks
        self.nonce = nonce
        self.on_step = on_step
        if switch_interval is not None and not switch_interval > 0:
            raise ValueError(f"switch_interval must be > 0 seconds or None, got {switch_interval!r}")
        self.switch_interval = switch_interval

    # ----------------------------------------------------------------------------- records
    def _page(self, kind: str, block: int, used: int, fut: Future) -> None:
        self._seg_pages.append(fut)
        if kind == "context":
            self._digests[block] = fut
        self._seg_records.append(partial(_kv_page, kind, block, used, fut))

    def _hash_later(self, kind: str, block: int, used: int, snap: torch.Tensor) -> None:
        """Record a page whose digest is that of ``snap`` (a private copy), hashed on the hasher
        thread with the rest of the segment's pages (one batch)."""
        fut: Future = Future()
        self._seg_snaps.append((snap, fut))
        self._page(kind, block, used, fut)
        if len(self._seg_snaps) >= HASH_BATCH:  # a long segment: do not hold many page copies
            self._later.append(partial(self.hasher.submit_batch, self._seg_snaps))
            self._seg_snaps = []

    def _token(self, rec) -> None:
        # the engine thread only appends to lists here; the records are built and written on the
        # writer thread once the commit hands the segment over (an engine that hashed the logits
        # row where it lives, the fast engine on the device, hands over its digest; otherwise the
        # writer thread hashes the row)
        self._seg_records.append(partial(_token_step, rec))
        self._generated.append(rec.token)
        self._seg_tokens.append(rec.token)
        if rec.evicted_blocks:
            blocks = tuple(sorted(rec.evicted_blocks))
            self._seg_records.append(partial(_kv_evict, blocks))
            for b in rec.evicted_blocks:  # freed by the sliding window: no longer live state
                self._digests.pop(b, None)
                self._dirty.discard(b)
                self._written.pop(b, None)
        if rec.writes:
            self._take_writes(rec)

    def _take_writes(self, rec) -> None:
        """Copy the slots the step wrote into the runtime's own copy of each block it wrote.

        ``self._written[b]`` holds exactly the bytes the engine wrote to block ``b`` (zeros where
        it wrote nothing), assembled slot range by slot range right after each step. A page's
        digest is that copy's, never the live page's at some later time: corruption of the live
        page (its copy-on-write copy included) between two writes then makes the live page differ
        from its recorded digest, which the next commit's re-hash sees."""
        eng = self.engine
        table = eng.block_table(self._handle)
        writes = rec.writes
        if len(writes) == 1:  # a decode step: one slot of one block, no merging
            w = writes[0]
            spans = ((w.block, w.slot_start, w.slot_end, w.full, w.page),)
        else:
            merged: dict[int, list] = {}
            for w in writes:
                if table[w.block] != w.page:
                    self._stale(rec, w.block, w.page)
                span = merged.setdefault(w.block, [w.slot_start, w.slot_end, False, w.page])
                span[:] = min(span[0], w.slot_start), max(span[1], w.slot_end), span[2] or w.full, w.page
            spans = tuple((b, lo, hi, full, page) for b, (lo, hi, full, page) in sorted(merged.items()))
        for b, lo, hi, full, page in spans:
            if table[b] != page:
                self._stale(rec, b, page)
            live = self._views.get(page)
            if live is None:  # a physical page's view of the pool never changes: make it once
                live = self._views[page] = eng.page_tensor(page)
            mine = self._written.get(b)
            if mine is None and full and lo == 0 and hi == self.page_tokens:  # the step wrote the whole page
                mine = live.clone()  # (a prompt page: one copy, not zeros and a copy)
            else:
                if mine is None:  # a fresh block: the engine zeroed its page when it allocated it
                    mine = self._written[b] = torch.zeros_like(live)
                # [layers, K|V, slot, head, row]: narrow + copy_ is a third of indexing's host time
                mine.narrow(2, lo, hi - lo).copy_(live.narrow(2, lo, hi - lo))
            if full:  # final bytes: hashed with the segment's pages (off the critical path)
                self._written.pop(b, None)
                self._dirty.discard(b)
                self._hash_later("context", b, self.page_tokens, mine)
            else:
                self._dirty.add(b)

    @staticmethod
    def _stale(rec, block: int, page: int):
        raise RuntimeFailure(f"step {rec.step} wrote context block {block} into physical page {page}, which the "
                             f"block no longer holds: the page was freed and reused before the runtime could hash it")

    def _check_before_eviction(self) -> None:
        """Snapshot the pages the next step's eviction will free, to be re-hashed at the next
        commit: a fault in a page the window frees before the commit is seen all the same."""
        if not self._generated or self.window is None:
            return
        table = self.engine.block_table(self._handle)
        first_query = self._prompt_len + len(self._generated) - 1  # the next step feeds the last token
        for b in dead_blocks(first_query, self.window, self.page_tokens):
            if b < len(table) and table[b] != EVICTED and b not in self._eviction_checked and b in self._digests:
                self._eviction_checked.add(b)
                self._seg_evicting.append(PageCheck("context", b, table[b], self._digests[b],
                                                    snapshot=self.hasher.snapshot(self.engine.page_tensor(table[b]))))

    def _commit(self, reason: str, step: int) -> _Commit:
        eng, h = self.engine, self._handle
        table = eng.block_table(h)
        cached = self._prompt_len + step  # tokens fed: the prompt and tokens 0 .. step-1
        for b, used in commits.commit_partial_pages(self._dirty, cached, self.page_tokens):
            self._hash_later("context", b, used, self._written[b].clone())
        self._dirty.clear()
        later = self._later
        later.append(partial(self.hasher.submit_batch, self._seg_snaps))  # the segment's pages: one job
        live = {b: self._digests[b] for b, p in enumerate(table) if p != EVICTED}
        c = _Commit(self._next_commit, reason, self._seg_first, step + 1, tuple(self._seg_tokens), live,
                    self._anchor_digests, self.hasher_fn)
        self._next_commit += 1
        self._seg_records.append(partial(_commit_record, c, self._seg_pages, self.hasher_fn))
        later.append(partial(self.sink.extend, self._seg_records, checkpoint=True))  # one item per commit
        c.snapshot = eng.fork(h, sequence=self.sequence)
        # the validation job builds its page list and view on its own thread (`_Checks`)
        c.validation = Future()  # resolved by the validation thread once the hand-over submitted it
        later.append(partial(self._submit_validation, c, _Checks(
            self._anchor_pages, self._anchor_digests, eng.block_table(c.snapshot), live, self._seg_evicting,
            getattr(eng, "detokenize", None), c, tuple(self._generated))))
        self._commits.append(c)
        self._pending.append(c)
        self._new_segment(step + 1)
        return c

    def _new_segment(self, first: int) -> None:
        """Start the segment after a commit (or the run's first, or the one after a rollback's
        target) at step ``first``: its tokens, its pages' futures, the pages the window frees in
        it, its record builders and its page copies to hash, all empty."""
        self._seg_first, self._seg_tokens, self._seg_pages, self._seg_evicting = first, [], [], []
        self._seg_records, self._seg_snaps = [], []

    def _submit_validation(self, c: _Commit, checks) -> None:
        self.validation.submit_lazy(checks, into=c.validation)

    def _kick(self) -> None:
        """Hand the workers what the engine thread queued for them (`_later`), in order.

        The engine thread calls it right before ``engine.step``, or, for an engine that offers
        the hook (``calls_wait_hook``: it calls ``engine.wait_hook`` right before it blocks on the
        device), from inside the step, just before the wait: the hasher, writer and validation
        threads then start their Python work while the engine waits (GIL released), not while it
        makes the commit or prepares the step (GIL held), and each wakes once. The engine thread
        itself only puts the list into the hand-over thread's queue (`_Handover`, one C-level
        put): the submissions to the workers are made there."""
        if self._handover.error is not None:
            raise self._handover.error
        if self._later:
            later, self._later = self._later, []
            self._handover.put(later)

    def _drain(self) -> None:
        """Kick, and wait until the hand-over thread has made every submission (the engine thread
        then writes to the sink itself, in order after them)."""
        self._kick()
        with self.turns.free():
            self._handover.drain()

    def _record_validations(self, due: list[_Commit]) -> _Commit | None:
        """Record the results of ``due`` in commit order; return the first failed commit."""
        for c in due:
            t = time.perf_counter()
            if not c.validation.done():
                self._kick()  # (it may still be in `_later`)
                with self.turns.free():
                    c.validation.exception()
            results = c.validation.result()  # normally done long ago: it ran during the segment
            self.timings["validation_wait_s"] += time.perf_counter() - t
            if not c.gated:  # a gated commit's validation records are queued already (`_gate`)
                self._later.append(partial(self.sink.extend, [partial(_validation_record, c, k)
                                                              for k in range(len(results))]))
            self.validations += [(c.number, name, passed, detail) for name, passed, detail in results]
            self._pending.remove(c)
            c.passed = all(p for _, p, _ in results)
            if not c.passed:
                c.failure = "; ".join(f"{n}: {d}" for n, p, d in results if not p)
                return c
            self._release_before(c)
        return None

    def _gate(self, c: _Commit) -> None:
        """Go on past commit ``c`` before its validation is known, keeping the ledger's bytes.

        Its validation records go into the writer's queue now (the writer waits for the results),
        then a gate: should the validation fail, the writer drops what the engine queues after it
        until `_abandon_gated` resumes it, and the file holds exactly what the runtime writes when
        it waits for the validation before going on."""
        c.gated = True
        self._later.append(partial(self.sink.extend, [partial(_validation_record, c, k)
                                                      for k in range(len(self.validation.names()))]))
        self._later.append(partial(self.sink.gate, partial(_validation_passed, c)))

    def _abandon_gated(self, c: _Commit) -> None:
        """Gated commit ``c`` failed its validation: undo what the engine did past it (the writer
        dropped its records), so that the runtime stands where it stood at ``c``."""
        eng = self.engine
        self._wait_validations()  # validation jobs read snapshot pages: let them finish first
        idx = self._commits.index(c)
        for x in self._commits[idx + 1:]:
            eng.release(x.snapshot)
        self._commits = self._commits[:idx + 1]
        self._pending = [x for x in self._pending if x.number <= c.number]
        self._next_commit = c.number + 1
        eng.release(self._handle)
        self._handle = eng.fork(c.snapshot, sequence=self.sequence)
        self._generated = self._generated[:c.end_step]
        self._new_segment(c.end_step)
        c.gated = False
        self.sink.resume()

    def _release_before(self, good: _Commit) -> None:
        """Release snapshots older than ``good``: they can no longer be rollback targets."""
        keep = []
        for c in self._commits:
            if c.number < good.number and c.snapshot is not None:
                self.engine.release(c.snapshot)
                c.snapshot = None
            else:
                keep.append(c)
        self._commits = keep

    def _wait_validations(self) -> None:
        self._drain()
        with self.turns.free():
            for c in self._commits:
                if c.validation is not None:
                    c.validation.exception()  # wait; results are read later

    # ----------------------------------------------------------------------------- rollback
    def _rollback(self, failed: _Commit) -> None:
        with self.turns.free():  # the engine thread waits for digests and validations here
            self._rollback_to_good(failed)

    def _rollback_to_good(self, failed: _Commit) -> None:
        eng = self.engine
        idx = self._commits.index(failed)
        if idx == 0 or self._commits[idx - 1].passed is not True:
            if failed.gated:
                self._abandon_gated(failed)
            raise RuntimeFailure(f"validation of commit {failed.number} failed and no earlier commit is known "
                                 f"good: {failed.failure}")
        if len(self.rollbacks) >= self.max_rollbacks:
            raise RuntimeFailure(f"giving up after {len(self.rollbacks)} rollbacks: {failed.failure}")
        target = self._commits[idx - 1]
        self._wait_validations()  # validation jobs read snapshot pages: let them finish first
        eng.release(self._handle)
        for c in self._commits[idx:]:
            eng.release(c.snapshot)
        self._commits = self._commits[:idx]
        self._pending = []
        self._attempt += 1
        new = eng.fork(target.snapshot, sequence=self.sequence)
        eng.set_attempt(new, self._attempt)
        self._handle = new
        info = RollbackInfo(failed.number, target.number, target.end_step, self._attempt,
                            f"validation of commit {failed.number} failed: {failed.failure}")
        self._repair(target, info)
        reason = info.reason
        if info.repaired_anchor_pages or info.repaired_blocks:
            reason += (f"; recomputed anchor pages {info.repaired_anchor_pages} and context blocks "
                       f"{info.repaired_blocks}")
        self.sink.append(lambda seq, t=target, a=self._attempt, r=reason[:DETAIL_MAX]: Rollback(
            seq=seq, to_commit=t.number, to_step=t.end_step, attempt=a, reason=r, live_state=t.live_state()))
        self.rollbacks.append(info)
        self._generated = self._generated[:target.end_step]
        self._new_segment(target.end_step)
        self._dirty, self._eviction_checked = set(), set()
        self._digests = dict(target.digests)
        # the runtime's copy of the partial last block: the restored page, which matches its digest
        self._written = {}
        b, used = divmod(self._prompt_len + target.end_step - 1, self.page_tokens)
        if used:
            self._written[b] = self.hasher.snapshot(eng.page_tensor(eng.block_table(self._handle)[b]))

    def _mismatches(self, target: _Commit) -> tuple[list[int], list[int]]:
        eng = self.engine
        anchor = page_digests([eng.page_tensor(p) for p in self._anchor_pages])
        bad_anchor = [k for k, (a, d) in enumerate(zip(anchor, self._anchor_digests)) if a != d]
        table = eng.block_table(self._handle)
        blocks = sorted(target.digests.items())
        ctx = page_digests([eng.page_tensor(table[b]) for b, _ in blocks])
        bad_ctx = [b for (b, f), a in zip(blocks, ctx) if a != f.result()]
        return bad_anchor, bad_ctx

    def _repair(self, target: _Commit, info: RollbackInfo) -> None:
        """Recompute every restored page that differs from its recorded digest."""
        eng = self.engine
        bad_anchor, bad_ctx = self._mismatches(target)
        if bad_anchor:
            scratch = eng.add_anchors(list(self._anchor_info.tokens))
            for k in bad_anchor:
                eng.page_tensor(self._anchor_pages[k]).copy_(eng.page_tensor(scratch.pages[k]))
            eng.release_anchors(scratch)
            info.repaired_anchor_pages = bad_anchor
        if bad_ctx:
            context = self._prompt_tokens + self._generated[:target.end_step - 1]
            s = eng.add_sequence(context, max_new_tokens=1, sequence=self.sequence, anchors=self._anchor_info,
                                 window=self.window, eos_token_ids=())
            eng.prefill([s])
            src, dst = eng.block_table(s), eng.block_table(self._handle)
            for b in bad_ctx:
                eng.page_tensor(dst[b]).copy_(eng.page_tensor(src[b]))
            eng.release(s)
            info.repaired_blocks = bad_ctx
        if any(self._mismatches(target)):
            raise RuntimeFailure(f"restored state of commit {target.number} still differs after recomputation")

    # ----------------------------------------------------------------------------- run
    def _start(self, prompt) -> None:
        eng = self.engine
        kw = dict(sampling=self.sampling, max_new_tokens=self.max_new_tokens, sequence=self.sequence,
                  window=self.window, stop=self.stop)
        if self.eos_token_ids is not None:
            kw["eos_token_ids"] = self.eos_token_ids
        self._handle = eng.add_sequence(prompt, **kw)  # bad input raises here, before any file exists
        first = eng.result(self._handle)
        self._prompt_tokens = list(first.prompt_tokens)
        self._prompt_len = len(self._prompt_tokens)
        self._anchor_info = first.anchors
        self.page_tokens = int(getattr(eng, "page_tokens", 16))
        anchors = list(first.anchors.tokens) if first.anchors is not None else []
        self._anchor_pages = list(first.anchors.pages) if first.anchors is not None else []
        self._anchor_digests = [self.hasher.page_digest_now(eng.page_tensor(p)) for p in self._anchor_pages]
        eos = self.eos_token_ids if self.eos_token_ids is not None else sorted(getattr(eng, "eos_token_ids", ()))
        inputs = ReplayInputs(prompt_tokens=tuple(self._prompt_tokens), anchor_tokens=tuple(anchors),
                              window=self.window or 0, model_window=self.model_window or 0,
                              eos_token_ids=tuple(int(t) for t in eos),
                              stop_strings=tuple(self.stop))
        commitment = self.model_commitment if self.model_commitment is not None else artifact_commitment(eng.model)
        genesis = Genesis(
            seq=0, spec_version=SPEC_VERSION, hash_profile=self.hash_profile, nonce=self.nonce or os.urandom(32),
            sequence=self.sequence, model_commitment=commitment,
            anchor_commitment=commits.anchor_commitment(anchors, [d.root for d in self._anchor_digests], self.hasher_fn),
            prompt_commitment=commits.prompt_commitment(self._prompt_tokens), prompt_length=self._prompt_len,
            page_tokens=self.page_tokens, sampling=sampling_record(self.sampling, self.max_new_tokens),
            commit_policy=self.policy, inputs=inputs, engine=engine_identity(eng), key_name=self.key.name,
            public_key=self.key.public_key)
        self.sink = LedgerSink(self.ledger_path, self.key, hash_profile=self.hash_profile, fsync=self.fsync,
                               turn=self.turns.turn)
        self.sink.append(lambda seq: genesis)
        for k, d in enumerate(self._anchor_digests):
            self._page("anchor", k, commits.anchor_slots(k, len(anchors), self.page_tokens), done(d))

    def run(self, prompt) -> SessionResult:
        """Generate for ``prompt`` (text or token ids); return the live branch and ledger facts."""
        t0 = time.perf_counter()
        eng = self.engine
        if os.path.exists(self.ledger_path):
            raise FileExistsError(f"ledger {self.ledger_path} exists (ledgers are never overwritten)")
        # worker Python in the engine's device waits, when the engine offers a wait hook (turns.py)
        self.turns = Turns(enabled=bool(getattr(eng, "calls_wait_hook", False)))
        self._handover = _Handover(self.turns.turn)
        self.hasher = PageHasher(turn=self.turns.turn)
        self.sink = None
        self.validation = ValidationRunner(eng, self.validators, turn=self.turns.turn)
        self._generated = []
        self._new_segment(0)
        self._views = {}  # physical page -> engine.page_tensor(page)
        self._hook_error = None  # what the wait hook's hand-over raised (re-raised after the step)
        self._later = []  # hand-overs to the workers, made right before the next engine step (`_kick`)
        self.timings = dict.fromkeys(("step_s", "record_s", "handover_s", "commit_s", "validation_wait_s"), 0.0)
        self._next_commit, self._attempt = 0, 0
        self._dirty, self._digests, self._written = set(), {}, {}
        self._eviction_checked = set()
        self._commits, self._pending = [], []
        self.error = None
        self.rollbacks, self.validations = [], []
        self._handle = None
        self.generation = None
        finish, end = None, "error"
        interval = sys.getswitchinterval()
        if self.switch_interval is not None:
            sys.setswitchinterval(min(interval, self.switch_interval))
        try:
            try:
                self._start(prompt)
                try:
                    finish, end = self._generate()
                except RuntimeFailure as e:  # no good state to go on from: the ledger ends in error
                    finish, end, self.error = None, "error", str(e)
            finally:
                if self.sink is not None:
                    self._close(end, finish)
                else:
                    self.turns.stop()
                    self._handover.close()
                    self.validation.close()
                    self.hasher.close()
                    if self._handle is not None:
                        eng.release(self._handle)
        finally:
            sys.setswitchinterval(interval)
        return SessionResult(
            ledger=self.ledger_path, tokens=list(self._generated),
            text=getattr(eng, "detokenize", lambda t: None)(list(self._generated)), finish_reason=finish,
            end_reason=end, commits=self._next_commit, rollbacks=self.rollbacks, records=len(self.sink.records),
            checkpoints=self.sink.checkpoints, seconds=time.perf_counter() - t0, validations=self.validations,
            generation=self.generation, error=self.error, timings=dict(self.timings, tokens=len(self._generated)))

    def _generate(self) -> tuple[str | None, str]:
        """Run steps, commits, validations and rollbacks to the end; return (finish, end reason).
        Raises ``RuntimeFailure`` when no good state is left to go on from."""
        eng, tm, clock = self.engine, self.timings, time.perf_counter
        hooked = bool(getattr(eng, "calls_wait_hook", False))
        if hooked:  # the engine calls us right before it blocks on the device: hand work over there
            eng.wait_hook = self._kick_from_hook
        try:
            return self._loop(eng, tm, clock, hooked)
        finally:
            if hooked:
                eng.wait_hook = None

    def _kick_from_hook(self) -> None:
        """The engine's wait hook: runs inside ``engine.step``, so it never raises into it (an
        error is raised on the engine thread once the step has returned)."""
        if self._later and self._hook_error is None:
            t = time.perf_counter()
            try:
                self._kick()
            except BaseException as e:  # noqa: BLE001 - re-raised after the step
                self._hook_error = e
            self.timings["handover_s"] += time.perf_counter() - t
        # the window opens after the hand-over: a worker the hand-over woke waits in its first
        # turn (GIL released) instead of taking the GIL from the rest of the hand-over
        self.turns.open()

    def _loop(self, eng, tm, clock, hooked: bool) -> tuple[str | None, str]:
        while True:
            t0 = clock()
            self._check_before_eviction()
            if self._later and not hooked:
                tk = clock()
                self._kick()
                tm["handover_s"] += clock() - tk
            t1 = clock()
            out = eng.step([self._handle], chunk_size=self.chunk_size)
            t2 = clock()
            if self._hook_error is not None:
                raise self._hook_error
            tm["step_s"] += t2 - t1
            if not out:
                if eng.finish_reason(self._handle) is not None:
                    raise RuntimeFailure("the engine finished the sequence without a final step")
                continue  # a prefill chunk that did not reach the last prompt token
            rec = out[0][1]
            self._token(rec)
            if self.on_step is not None:
                self.on_step(rec)
            self.faults.after_step(rec.step, eng, self._handle, self._anchor_pages, self._wait_validations)
            finish = eng.finish_reason(self._handle)
            reason = commits.commit_reason(self.policy, step=rec.step, generated=self._generated,
                                           filled_page=any(w.full for w in rec.writes), finished=finish is not None)
            t3 = clock()
            tm["record_s"] += (t1 - t0) + (t3 - t2)  # handover_s is part of it (or of step_s, hooked)
            if reason is None:
                continue
            c = self._commit(reason, rec.step)
            due = [x for x in self._pending if x is not c]
            if reason == "end_of_generation":
                due.append(c)  # validated before the ledger is sealed
            elif reason == "prefill":
                self._gate(c)  # no earlier commit to roll back to: the writer holds what follows
            failed = self._record_validations(due)
            tm["commit_s"] += clock() - t3  # validation_wait_s is part of it
            if failed is not None:
                self._rollback(failed)
                continue
            if finish is not None:
                return finish, commits.end_reason(finish)

    def _close(self, end: str, finish) -> None:
        self.turns.stop()  # from here on the engine thread waits for the workers: no gating
        try:
            self._wait_validations()  # (hands over what `_later` holds first)
            for c in [c for c in self._commits if c.gated]:  # a gated commit nobody looked at yet
                if not _validation_passed(c):
                    self._abandon_gated(c)
            if self._seg_records:  # ended between commits: what the segment recorded so far
                self.hasher.submit_batch(self._seg_snaps)
                self.sink.extend(self._seg_records)
                self._seg_records, self._seg_snaps = [], []
            if self._commits and not self._seg_tokens:  # at a commit boundary: seal the ledger
                last = self._commits[-1]
                n = len(self._generated)
                self.sink.append(lambda seq: End(seq=seq, reason=end, num_tokens=n, live_state=last.live_state()))
                self.sink.checkpoint()
            self.sink.flush()
        finally:
            self.generation = self.engine.result(self._handle)
            try:
                self._handover.close()
                self.sink.close()  # re-raises a writer error: release the engine's pages all the same
            finally:
                self.validation.close()
                self.hasher.close()
                for c in self._commits:
                    if c.snapshot is not None:
                        self.engine.release(c.snapshot)
                self.engine.release(self._handle)
