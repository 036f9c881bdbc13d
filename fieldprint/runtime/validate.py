"""Validation at each commit, asynchronous: page re-hash and pluggable policy validators.

When commit ``c`` is written the runtime submits one validation job to a worker thread and
keeps generating. The job runs, in order:

1. ``kv-rehash``: re-hash every page of the commit's state - the anchor pages and every live
   context page of the commit's copy-on-write snapshot - and compare each with the digest
   the ledger recorded for it; also the copies of the pages the sliding window freed since the
   last commit, taken just before the engine freed them. A recorded digest is that of the bytes
   the engine wrote (the runtime assembles its own copy of each block from the slots every step
   wrote, right after the step, and hashes that copy), and the snapshot shares the live pages,
   so any difference is corruption of the live state since the engine wrote it: a flipped bit
   in memory (in a copy-on-write copy of a committed page too), a buggy kernel writing out of
   bounds, a page freed and reused too early. Every slot of every live page is covered; what is
   not seen is a change to a slot just before the engine overwrites the whole slot (the state is
   then the computed one) or while it writes it (the auditor's replay sees that).
2. each policy validator, a user function over the commit's new text (``CommitView``),
   returning ``True``/``False`` or ``(passed, detail)``; an exception counts as a failure.

The job's result is a list of ``(validator name, passed, detail)``; the runtime records it in
the ledger at the next commit boundary (at once for the prefill and the final commit).
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

from fieldprint.runtime.hasher import layer_digest_rows, page_digests
from spec.commits import REHASH_VALIDATOR, first_layer_difference, rehash_failure_detail

REHASH = REHASH_VALIDATOR  # name of the page re-hash validator in validation records (spec.commits)


@dataclass(frozen=True)
class CommitView:
    """What a policy validator sees of a commit."""

    commit: int
    reason: str
    first_step: int
    end_step: int
    tokens: tuple[int, ...]  # the commit's new tokens
    text: str | None  # their text (None without a tokenizer)
    generated: tuple[int, ...]  # every token of the live branch so far
    full_text: str | None


class Validator:
    """A named policy validator: ``fn(view) -> bool | (bool, str)``."""

    def __init__(self, name: str, fn: Callable[[CommitView], object]):
        self.name = name
        self.fn = fn

    def __call__(self, view: CommitView) -> tuple[bool, str]:
        try:
            out = self.fn(view)
        except Exception as e:  # a crashing validator rejects the commit
            return False, f"validator raised {type(e).__name__}: {e}"
        if isinstance(out, tuple):
            return bool(out[0]), str(out[1])
        return bool(out), "ok" if out else "rejected"


def as_validator(v) -> Validator:
    """Return ``v`` as a Validator (plain functions are named after themselves)."""
    return v if isinstance(v, Validator) else Validator(getattr(v, "__name__", "policy"), v)


@dataclass(frozen=True)
class PageCheck:
    """One page to re-hash: where it is, which block it holds, the recorded digest."""

    kind: str  # "anchor" | "context"
    block: int
    page: int  # physical page id
    expected: Future  # Future[PageDigest] of the recorded digests
    snapshot: object = None  # a copy of the page taken before the engine freed it (else the page itself)


def rehash(engine, checks: Sequence[PageCheck]) -> tuple[bool, str]:
    """Re-hash every page and compare with its recorded digests; name the first mismatch and layer."""
    pages = [engine.page_tensor(c.page) if c.snapshot is None else c.snapshot for c in checks]
    # equal layer digests give equal roots: compare those bytes, make roots only for a mismatch
    rows = layer_digest_rows(pages)
    bad = [k for k, (c, r) in enumerate(zip(checks, rows)) if r != b"".join(c.expected.result().layers)]
    if not bad:
        return True, f"{len(checks)} pages match their recorded digests"
    c, actual = checks[bad[0]], page_digests([pages[bad[0]]])[0]
    want = c.expected.result()
    layer = first_layer_difference(want.layers, actual.layers)
    # the auditor reads this detail back (spec.commits.parse_rehash_failure): keep its format
    return False, rehash_failure_detail(len(bad), len(checks), c.kind, c.block, c.page, layer, actual.root, want.root)


class ValidationRunner:
    """One worker thread running validation jobs in commit order."""

    def __init__(self, engine, validators: Sequence = (), *, turn=None):
        self.engine = engine
        self._turn = turn or (lambda: None)  # `fieldprint.runtime.turns.Turns.turn`: before each step of a job
        self.validators = [as_validator(v) for v in validators]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fieldprint-validate")

    def names(self) -> list[str]:
        return [REHASH] + [v.name for v in self.validators]

    def _job(self, checks, view) -> list[tuple[str, bool, str]]:
        self._turn()
        out = [(REHASH, *rehash(self.engine, checks))]
        for v in self.validators:
            self._turn()
            out.append((v.name, *v(view)))
        return out

    def submit(self, checks: Sequence[PageCheck], view: CommitView) -> Future:
        """Queue the validation of one commit; return a Future of its results."""
        return self._pool.submit(self._job, list(checks), view)

    def submit_lazy(self, make, into: Future | None = None) -> Future:
        """Queue the validation of one commit whose ``(checks, view)`` ``make()`` returns, called
        on the validation thread (the runtime's engine thread does not build them); return the
        Future of its results (``into``, when given, is resolved with them)."""
        def job():
            self._turn()
            return self._job(*make())

        f = self._pool.submit(job)
        if into is None:
            return f

        def copy(done: Future) -> None:
            e = done.exception()
            if e is not None:
                into.set_exception(e)
            else:
                into.set_result(done.result())

        f.add_done_callback(copy)
        return into

    def close(self) -> None:
        self._pool.shutdown(wait=True)
