"""The ledger writer thread: append records in order, sign a checkpoint after each commit.

The engine thread never waits for the ledger. It queues *builders* (``append(build)``, where
``build(seq)`` returns the record with that leaf index) and checkpoint requests; a single
thread evaluates them in queue order, so the ledger's order is the order of the calls and
does not depend on timing. A builder may block on digests still being computed by the
hasher; only the writer thread waits for them. The runtime hands over a whole commit at once
(``extend``: a segment's records, its commit record and the checkpoint in one queue item),
so the writer thread wakes once per commit, not once per token.

A *gate* (``gate(fn)``) lets the engine run ahead of a result it has not seen yet: the writer
calls ``fn()`` when it reaches the gate (it may block there); if it returns False, the writer
drops every item queued after the gate until ``resume()``. The runtime gates the prefill
commit on its validation: generation goes on at once, and when the validation fails, the
records of the tokens generated meanwhile never reach the file, which then holds exactly what
it would hold had the runtime waited.

Durability (``fsync``): ``"every"`` fsyncs each frame, ``"checkpoint"`` (default) fsyncs after
each signed checkpoint, ``"none"`` leaves it to the OS. Every frame is written with one
``write`` and flushed, so a process killed at any point leaves whole frames plus at most one
torn frame, which readers detect and cut off (``spec.ledger_file``).
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Callable

from spec.keys import SigningKey
from spec.ledger_file import LedgerWriter

_STOP = object()


class LedgerSink:
    """Queue records and checkpoints for one ledger file, written by a background thread."""

    def __init__(self, path, key: SigningKey, *, hash_profile: str = "blake3", fsync: str = "checkpoint",
                 turn: Callable[[], None] | None = None):
        if fsync not in ("every", "checkpoint", "none"):
            raise ValueError(f"fsync must be every, checkpoint or none, got {fsync!r}")
        self.key = key
        self.fsync = fsync
        self._turn = turn or (lambda: None)  # `fieldprint.runtime.turns.Turns.turn`: before each unit of work
        self._writer = LedgerWriter.create(path, hash_profile, fsync=fsync == "every")
        self.path = self._writer.path
        self.records: list = []  # records written, in order
        self.checkpoints = 0
        self._q: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._dropping = False  # a gate failed: drop items until "resume"
        self.dropped = 0  # records dropped after failed gates (for tests and reports)
        self._thread = threading.Thread(target=self._run, name="fieldprint-ledger", daemon=True)
        self._thread.start()

    # -- engine thread -------------------------------------------------------------------
    def append(self, build: Callable[[int], object]) -> None:
        """Queue a record: ``build(seq)`` is called on the writer thread, in order."""
        self._raise()
        self._q.put(("record", build))

    def checkpoint(self) -> None:
        """Queue a signed checkpoint over every record queued before it."""
        self._raise()
        self._q.put(("checkpoint", None))

    def extend(self, builds, *, checkpoint: bool = False) -> None:
        """Queue records (``append`` for each of ``builds``, in order) and, with ``checkpoint``,
        a signed checkpoint after them: one queue item, one wake-up of the writer thread."""
        self._raise()
        self._q.put(("batch", (list(builds), checkpoint)))

    def gate(self, passed: Callable[[], bool]) -> None:
        """Queue a gate: when ``passed()`` (called on the writer thread) returns False, items
        queued after the gate are dropped until ``resume()``."""
        self._raise()
        self._q.put(("gate", passed))

    def resume(self) -> None:
        """End the dropping a failed gate started: items queued from now on are written."""
        self._q.put(("resume", None))

    def flush(self) -> None:
        """Wait until everything queued so far is on disk; re-raise a writer error."""
        done = threading.Event()
        self._q.put(("flush", done))
        done.wait()
        self._raise()

    def close(self) -> None:
        """Write what is queued, stop the thread and close the file."""
        self._q.put((_STOP, None))
        self._thread.join()
        self._writer.close()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"ledger writer failed: {self._error}") from self._error

    # -- writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            kind, arg = self._q.get()
            if kind is _STOP:
                return
            if kind == "flush":
                arg.set()
                continue
            if kind == "resume":
                self._dropping = False
                continue
            if self._error is not None:
                continue  # keep draining; the engine thread sees the error on its next call
            if self._dropping:
                self.dropped += len(arg[0]) if kind == "batch" else kind == "record"
                continue
            try:
                if kind == "record":
                    self._record(arg)
                elif kind == "batch":
                    builds, checkpoint = arg
                    for build in builds:
                        self._record(build)
                    if checkpoint:
                        self._checkpoint()
                elif kind == "gate":
                    self._dropping = not arg()
                else:
                    self._checkpoint()
            except BaseException as e:  # noqa: BLE001 - reported to the engine thread
                self._error = e

    def _record(self, build) -> None:
        self._turn()
        record = build(self._writer.count)
        self._writer.append_record(record)
        self.records.append(record)

    def _checkpoint(self) -> None:
        self._turn()
        self._writer.checkpoint(self.key)
        self.checkpoints += 1
        if self.fsync == "checkpoint":
            os.fsync(self._writer._file.fileno())
