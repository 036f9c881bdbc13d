"""Where the replay's steps come from: token by token, or the recorded tokens fed as prefill.

A replay checks every ``token_step`` record against a step the engine computes
(``fieldprint_ref.records.StepRecord``: step, attempt, logits, the token the spec's sampler
draws, page writes, evictions). The checks are the same in both modes (``auditor.replay``);
only the source of the StepRecords differs:

``stepwise``
    the generation is re-run: each step feeds the token sampled at the previous step and
    samples the next, one forward per token (`Engine.step`).

``prefill`` (teacher forcing, the default)
    the tokens the ledger records are fed as prefill: the token steps of a branch (up to the
    rollback that abandons it, or the end), across its commits, go through
    `Engine.teacher_force` in as few forwards as the engine needs, at most PREFILL_TOKENS
    positions each, and each position's logits make one step, sampled with the same counter.

Why the two agree. Up to the first divergence every recorded token equals the token the
replay samples, so both modes feed the same tokens at the same positions; the spec's forward
does not depend on how a sequence is chunked (``spec.model.forward``), so every position's
logits, sampled token and K/V bytes are the same whether it was fed alone or in a prefill.
At and after the first divergence the stepwise replay stops checking the branch, and so does
the prefill replay (the steps it computed past it are never read). What a check reads in the
middle of a prefill run is taken as it stood at that step: a page (a ``kv_page`` record, a
commit's live state) is hashed with only the slots that step had filled (a slot's bytes depend
on its own token only, and a replay's unfilled slots are zero), blocks count only up to the
step's cached length, a commit's snapshot (the rollback target) is forked as of its step
(`Engine.fork(step=...)`), the engine evicts a sliding window's dead blocks only before a
forward (so a run ends before a step that evicts), and the sequence finishes only at the last
step of a run. ``tests/auditor/test_replay_modes.py`` replays the tamper suite's ledgers that
reach the replay both ways and compares verdicts, reasons, locations and values.
"""
from __future__ import annotations

from collections import deque

from spec.constants import PAGE_TOKENS
from spec.ledger import End, Genesis, Rollback, TokenStep

MODES = ("prefill", "stepwise")
DEFAULT_MODE = "prefill"
PREFILL_TOKENS = 256  # forced tokens per forward at most: bounds the attention scores' memory

RUN_ENDS = (Rollback, End, Genesis)  # a branch's commits, pages, evictions and validations do not end a run


def branch_tokens(records: list, i: int, limit: int | None = None) -> list[int]:
    """Return the tokens of the ``token_step`` records from ``records[i]`` to the end of its
    branch (the next rollback or end record), at most ``limit`` of them."""
    out = []
    for j in range(i, len(records)):
        r = records[j]
        if isinstance(r, RUN_ENDS) or (limit is not None and len(out) >= limit):
            break
        if isinstance(r, TokenStep):
            out.append(r.token)
    return out


class Stepwise:
    """Re-run the generation: one forward and one sampled token per step."""

    mode = "stepwise"
    # Each decode step reads every weight once: the reference engine's float64 copy of the
    # weights, made once, saves a conversion per step (``fieldprint_ref.weights``).
    weight_cache = True

    def next(self, engine, handle: int, records: list, i: int):
        """Return the StepRecord of the next step (None when the replay's sequence has finished)."""
        while engine.finish_reason(handle) is None:
            out = engine.step([handle])
            if out:
                return out[0][1]
        return None

    def finished(self, engine, handle: int) -> bool:
        """Return whether the replay's sequence finished at the step ``next`` returned last."""
        return engine.finish_reason(handle) is not None

    def reset(self) -> None:
        """Forget steps computed ahead (a rollback abandons the branch)."""

    def fork(self, engine, handle: int, sequence: int, step: int) -> int:
        """Return a snapshot of the sequence as it stood right after ``step`` (a commit's)."""
        return engine.fork(handle, sequence=sequence)

    @staticmethod
    def page_layers(page, used: int):
        """Return the page as the checks must see it at the current step (unchanged here)."""
        return page


class Prefill(Stepwise):
    """Feed the ledger's tokens: each branch in as few forwards as the engine needs."""

    mode = "prefill"
    # A prefill's matmuls convert their weights a cache-sized block at a time, for many rows at
    # once (``fieldprint_ref.fastint.linear``): a float64 copy of the whole model (8 bytes per
    # parameter, written once) would cost more than it saves.
    weight_cache = False

    def __init__(self, max_tokens: int = PREFILL_TOKENS):
        self.max_tokens = max_tokens
        self.ahead: deque = deque()  # steps computed and not yet checked
        self.forwards = 0

    def next(self, engine, handle: int, records: list, i: int):
        if not self.ahead:
            if engine.finish_reason(handle) is not None:
                return None
            tokens = branch_tokens(records, i, self.max_tokens)
            self.ahead.extend(engine.teacher_force(handle, tokens, max_tokens=self.max_tokens))
            self.forwards += 1
        return self.ahead.popleft()

    def finished(self, engine, handle: int) -> bool:
        # teacher_force stops at the step that finishes the sequence: only the last step of a run can
        return not self.ahead and engine.finish_reason(handle) is not None

    def reset(self) -> None:
        self.ahead.clear()

    def fork(self, engine, handle: int, sequence: int, step: int) -> int:
        return engine.fork(handle, sequence=sequence, step=step)  # the run may have gone further

    @staticmethod
    def page_layers(page, used: int):
        """Return ``page`` (a KV page tensor) with the slots from ``used`` on zeroed, as it stood
        when only ``used`` slots were filled (later steps of the run may have written them)."""
        if used >= PAGE_TOKENS:
            return page
        page = page.clone()
        page[:, :, used:] = 0
        return page


def source(mode: str):
    """Return a fresh step source for ``mode`` ("prefill" or "stepwise")."""
    if mode not in MODES:
        raise ValueError(f"replay mode must be one of {', '.join(MODES)}, got {mode!r}")
    return Prefill() if mode == "prefill" else Stepwise()
