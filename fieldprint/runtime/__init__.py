"""The verifying runtime: drive any Engine, write a signed ledger, validate commits, roll back.

``VerifyingSession`` (session.py) is the entry point; the other modules are its parts:
policy.py (when to commit), hasher.py (page hashing off the critical path), writer.py (the
ledger writer thread), validate.py (page re-hash and policy validators, asynchronous),
turns.py (worker Python only while the engine waits for the device), faults.py (fault injection
for tests and demos), sleep_engine.py (a stand-in engine whose steps sleep, for measuring). Names are imported lazily so that importing
``fieldprint.runtime.policy`` does not pull in torch.
"""
from __future__ import annotations

__all__ = ["VerifyingSession", "SessionResult", "FaultPlan", "FlipKV", "FlipAnchor", "Validator", "make_policy"]


def __getattr__(name):
    if name in ("VerifyingSession", "SessionResult"):
        from fieldprint.runtime import session

        return getattr(session, name)
    if name in ("FaultPlan", "FlipKV", "FlipAnchor"):
        from fieldprint.runtime import faults

        return getattr(faults, name)
    if name == "Validator":
        from fieldprint.runtime.validate import Validator

        return Validator
    if name == "make_policy":
        from fieldprint.runtime.policy import make_policy

        return make_policy
    raise AttributeError(name)
