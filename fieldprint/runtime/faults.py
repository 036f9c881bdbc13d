"""Fault injection for tests and demos: flip a bit in a KV or anchor page, reject a commit.

A ``FaultPlan`` is given to ``VerifyingSession(faults=...)``:

* ``FlipKV(step, block, byte, bit)``: right after token ``step`` is recorded (its pages
  already snapshotted for hashing), flip one bit of the physical page that holds context
  block ``block`` - memory corruption of committed state;
* ``FlipAnchor(step, page, byte, bit)``: the same in the ``page``-th anchor page;
* ``reject_commits={m, ...}``: a policy validator named ``fault-injection`` that rejects
  commit number ``m`` (commit numbers are never reused, so a retry is not rejected again).

Each flip fires once, the first time its step is reached (a retry after a rollback passes
the same step again without a new fault). Before flipping, the plan waits until every
validation already submitted has finished, so the commit that detects a fault is always the
first commit after it, whatever the thread timing: real faults have no such courtesy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fieldprint.runtime.validate import CommitView, Validator


@dataclass(frozen=True)
class FlipKV:
    step: int
    block: int = 0
    byte: int = 0
    bit: int = 0


@dataclass(frozen=True)
class FlipAnchor:
    step: int
    page: int = 0
    byte: int = 0
    bit: int = 0


class FaultError(ValueError):
    """A planned fault cannot fire (its block is evicted or does not exist, its byte is outside the page)."""

    def __init__(self, message: str, flip=None):
        super().__init__(message)
        self.flip = flip


def flip_bit(page: torch.Tensor, byte: int, bit: int) -> None:
    """Flip bit ``bit`` (0 = least significant) of byte ``byte`` of a page, in place."""
    flat = page.view(torch.uint8).view(-1)
    if not 0 <= byte < flat.numel() or not 0 <= bit < 8:
        raise FaultError(f"byte {byte} / bit {bit} outside a page of {flat.numel()} bytes")
    flat[byte] ^= 1 << bit


@dataclass
class FaultPlan:
    flips: list = field(default_factory=list)
    reject_commits: set[int] = field(default_factory=set)
    applied: list = field(default_factory=list)  # (flip, physical page) in firing order

    def validators(self) -> list[Validator]:
        """Return the rejecting validator (none when no commit is to be rejected)."""
        if not self.reject_commits:
            return []

        def reject(view: CommitView):
            if view.commit in self.reject_commits:
                return False, f"fault injection rejects commit {view.commit}"
            return True, "ok"

        return [Validator("fault-injection", reject)]

    def after_step(self, step: int, engine, handle: int, anchor_pages, wait_validations) -> None:
        """Fire the flips planned for ``step`` that have not fired yet."""
        due = [f for f in self.flips if f.step == step and f not in [a for a, _ in self.applied]]
        if not due:
            return
        wait_validations()
        for f in due:
            if isinstance(f, FlipKV):
                table = engine.block_table(handle)
                if not 0 <= f.block < len(table):
                    raise FaultError(f"context block {f.block} does not exist after step {step} (blocks 0 .. "
                                     f"{len(table) - 1})", f)
                page = table[f.block]
                if page < 0:
                    raise FaultError(f"context block {f.block} was evicted by the sliding window before step {step}", f)
            else:
                if not 0 <= f.page < len(anchor_pages):
                    raise FaultError(f"anchor page {f.page} does not exist ({len(anchor_pages)} anchor pages)", f)
                page = anchor_pages[f.page]
            try:
                flip_bit(engine.page_tensor(page), f.byte, f.bit)
            except FaultError as e:
                raise FaultError(str(e), f) from None
            self.applied.append((f, page))
