"""Commit boundaries: when the runtime commits, as recorded in the genesis ``CommitPolicy``.

The decision itself is ``spec.commits.commit_reason`` (one copy, shared with the auditor,
which checks every commit sits where the policy says). This module adds the command-line
syntax: a comma-separated list of triggers::

    every=8            commit after every 8th generated token ((step + 1) % 8 == 0); N >= 1
    page-full          commit when a KV page becomes full
    eot=2|7            commit after token 2 or 7 (end of turn)
    stop=5 6|9 9 9     commit when the generated tokens end with 5 6, or with 9 9 9

The prompt's prefill (step 0) and the end of generation always commit.
"""
from __future__ import annotations

from spec.commits import commit_reason, make_policy
from spec.ledger import CommitPolicy

__all__ = ["DEFAULT_POLICY", "commit_reason", "make_policy", "parse_policy", "describe_policy"]

DEFAULT_POLICY = "every=8"


class PolicyError(ValueError):
    """A commit-policy string is malformed."""


def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(t) for t in text.split()]
    except ValueError:
        raise PolicyError(f"{what}: expected token ids, got {text!r}") from None
    if not out or any(t < 0 or t >= 2**32 for t in out):
        raise PolicyError(f"{what}: token ids must be non-empty and in [0, 2**32)")
    return out


def parse_policy(text: str) -> CommitPolicy:
    """Return the ``CommitPolicy`` a policy string states (see the module docstring)."""
    every, eot, stops, full = 0, [], [], False
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = item.partition("=")
        if name == "every":
            try:
                every = int(value)
            except ValueError:
                raise PolicyError(f"every=N needs an integer, got {value!r}") from None
            if every < 1:
                raise PolicyError(f"every=N needs N >= 1, got {every} (leave every=N out to commit only at the "
                                  "prefill, the end and the other triggers)")
        elif name == "page-full" and not value:
            full = True
        elif name == "eot":
            eot += [t for part in value.split("|") for t in _ints(part, "eot")]
        elif name == "stop":
            stops += [_ints(part, "stop") for part in value.split("|")]
        else:
            raise PolicyError(f"unknown commit trigger {item!r} (every=N, page-full, eot=IDS, stop=IDS|IDS)")
    return make_policy(every, end_of_turn_tokens=eot, stop_sequences=stops, page_full=full)


def describe_policy(p: CommitPolicy) -> str:
    """Return the policy in the command-line syntax (prefill and end always commit)."""
    parts = []
    if p.every_n_tokens:
        parts.append(f"every={p.every_n_tokens}")
    if p.on_page_full:
        parts.append("page-full")
    if p.on_end_of_turn:
        parts.append("eot=" + "|".join(str(t) for t in p.end_of_turn_tokens))
    if p.on_stop_sequence:
        parts.append("stop=" + "|".join(" ".join(map(str, s)) for s in p.stop_sequences))
    return ",".join(parts) or "prefill+end only"
