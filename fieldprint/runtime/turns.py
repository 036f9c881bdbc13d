"""Worker turns: the runtime's threads run Python only while the engine thread waits for the device.

CPython runs one thread's Python at a time. When a worker thread (hasher, writer, validation)
is in the middle of Python code as the engine thread's device wait returns, the engine thread
waits for the GIL (up to the switch interval), and while both want it they alternate every
interval: the engine's host work between two steps, on the critical path, runs at half speed.
A decode step leaves the host idle for most of its duration (about 1.5 ms of 1.9 on the H200 for
Llama-3.2-1B at batch 1), which is ample for the workers' per-commit work if they use it.

`Turns` makes them use it. An engine that offers a wait hook (``calls_wait_hook``) calls
``engine.wait_hook`` right before it blocks on the device; the runtime's hook calls `open`,
which starts a *window* of ``budget_s``. Workers call `turn` between units of work (one record,
one checkpoint, one hashing job, one validator): inside a window it returns at once, outside one
it waits for the next window. So worker Python runs in the engine's device waits, not in its host
work. Progress is guaranteed: while the engine thread itself waits for a worker (a validation
result, a flush) everything runs ungated (`free`), and a worker never waits more than
``patience_s`` for a window (an engine that stops stepping does not stop the workers).

Without a wait hook (``enabled`` False) `turn` returns at once: the workers run as threads do.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager


class Turns:
    """Windows opened by the engine thread (`open`), waited for by workers (`turn`)."""

    def __init__(self, *, budget_s: float = 1e-3, patience_s: float = 5e-3, enabled: bool = False):
        self.budget_s = budget_s
        self.patience_s = patience_s
        self.enabled = enabled
        self._cond = threading.Condition()
        self._window = 0  # windows opened so far
        self._opened = float("-inf")  # perf_counter() when the last window opened
        self._free = 0  # > 0: the engine thread waits for the workers; no gating
        self.waits = 0  # turns that had to wait (for reports and tests)

    # -- engine thread -------------------------------------------------------------------
    def open(self) -> None:
        """A window starts: the engine thread is about to block on the device."""
        with self._cond:
            self._window += 1
            self._opened = time.perf_counter()
            self._cond.notify_all()

    @contextmanager
    def free(self):
        """While the engine thread waits for a worker: every turn is granted."""
        with self._cond:
            self._free += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._free -= 1

    def stop(self) -> None:
        """No more gating (the session is closing)."""
        with self._cond:
            self.enabled = False
            self._cond.notify_all()

    # -- workers -------------------------------------------------------------------------
    def turn(self) -> None:
        """Return when a worker may run Python: now inside a window (or ungated), else at the
        next window, or after ``patience_s`` at most."""
        if not self.enabled or self._free:
            return
        with self._cond:
            if not self.enabled or self._free or time.perf_counter() - self._opened < self.budget_s:
                return
            self.waits += 1
            seen = self._window
            self._cond.wait_for(lambda: self._window != seen or self._free or not self.enabled, self.patience_s)
