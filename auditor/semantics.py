"""What a ledger's digests mean: the definitions the runtime writes and the auditor checks.

``spec.ledger`` fixes the records and their bytes; this module fixes how the runtime fills
the fields that hold digests of *engine state*, so that a verifier can recompute them:

========================= ==============================================================
field                     definition
========================= ==============================================================
``kv_page.digest``        ``page_digest(page bytes)``: BLAKE3 over ``KVPool.page_bytes``
``token_step.logits_d..`` ``logits_digest(row)``: BLAKE3 over the int64 LE logits row
``genesis.prompt_comm..`` ``prompt_commitment(tokens)``
``genesis.anchor_comm..`` ``anchor_commitment(tokens, page digests)`` (ZERO without anchors)
``commit.live_state``     ``live_state(anchor digests, context digests)``
``commit.reason``         ``commit_reason(policy, ...)``: where the policy demands a commit
========================= ==============================================================

It also holds the *inputs* a replay needs but the genesis only commits to (prompt and anchor
token ids; window, EOS ids and stop strings), written next to the ledger as
``<ledger>.inputs.json``, and two small engine adapters (``set_attempt``, ``finish_reason``).
These definitions belong in ``spec/`` (see docs/auditor.md, "Open points"); they live here
so that the runtime and the auditor share one copy. Imports: ``spec`` only.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from typing import Sequence

import blake3 as _blake3

from spec import ledger as _ledger
from spec.ledger import ZERO_DIGEST, CommitPolicy, LedgerError
from spec.merkle import BLAKE3, Hasher, merkle_root

PROMPT_DOMAIN = b"fieldprint/prompt/v1"  # domain tag of the prompt commitment
ANCHOR_DOMAIN = b"fieldprint/anchors/v1"  # domain tag of the anchor-token leaf
INPUTS_SUFFIX = ".inputs.json"  # sidecar file next to a ledger
INPUTS_VERSION = 1


# ---------------------------------------------------------------------------------------
# Content digests (always BLAKE3, whatever the ledger's hash profile).
# ---------------------------------------------------------------------------------------


def digest(data: bytes) -> bytes:
    """Return BLAKE3(data), 32 bytes (``spec.ledger.content_digest``)."""
    return _blake3.blake3(data).digest()


def page_digest(page_bytes: bytes) -> bytes:
    """Return the digest of one KV page: BLAKE3 over its canonical bytes."""
    return digest(page_bytes)


def logits_digest(logits_bytes: bytes) -> bytes:
    """Return the digest of one logits row: BLAKE3 over its int64 little-endian bytes."""
    return digest(logits_bytes)


def token_bytes(tokens: Sequence[int]) -> bytes:
    """Return ``u32 count || u32 token ...`` (little-endian)."""
    return struct.pack(f"<I{len(tokens)}I", len(tokens), *[int(t) for t in tokens])


def prompt_commitment(tokens: Sequence[int]) -> bytes:
    """Return BLAKE3(PROMPT_DOMAIN || token_bytes(prompt tokens))."""
    return digest(PROMPT_DOMAIN + token_bytes(tokens))


def anchor_commitment(tokens: Sequence[int], page_digests: Sequence[bytes], hasher: Hasher = BLAKE3) -> bytes:
    """Return ZERO_DIGEST without anchors, else the Merkle root (profile hash) over the leaves
    ``ANCHOR_DOMAIN || token_bytes(anchor tokens)`` followed by the anchor pages' digests."""
    if not tokens:
        return ZERO_DIGEST
    return merkle_root([ANCHOR_DOMAIN + token_bytes(tokens)] + [bytes(d) for d in page_digests], hasher)


def live_state(anchor_digests: Sequence[bytes], context_digests: dict[int, bytes], hasher: Hasher = BLAKE3) -> bytes:
    """Return the Merkle root (profile hash) over the digests of every live page in logical
    order: anchor pages, then the context blocks still in the pool, by block index."""
    return _ledger.live_state([bytes(d) for d in anchor_digests],
                              [bytes(context_digests[b]) for b in sorted(context_digests)], hasher)


def filled_slots(block: int, cached: int, page_tokens: int) -> int:
    """Return how many slots of context block ``block`` hold tokens when ``cached`` are cached."""
    return max(0, min(page_tokens, cached - block * page_tokens))


# ---------------------------------------------------------------------------------------
# Commit policy.
# ---------------------------------------------------------------------------------------


def make_policy(every_n_tokens: int = 8, *, end_of_turn_tokens: Sequence[int] = (),
                stop_sequences: Sequence[Sequence[int]] = (), page_full: bool = False) -> CommitPolicy:
    """Return a ``CommitPolicy``; a trigger is on when its argument is non-empty / true."""
    return CommitPolicy(every_n_tokens=int(every_n_tokens), on_end_of_turn=bool(end_of_turn_tokens),
                        end_of_turn_tokens=tuple(int(t) for t in end_of_turn_tokens),
                        on_stop_sequence=bool(stop_sequences),
                        stop_sequences=tuple(tuple(int(t) for t in s) for s in stop_sequences),
                        on_page_full=bool(page_full))


def commit_reason(policy: CommitPolicy, *, step: int, generated: Sequence[int], filled_page: bool,
                  finished: bool) -> str | None:
    """Return the reason of the commit the policy demands right after token ``step``, or None.

    ``generated`` is the live branch's tokens up to and including ``step``; ``filled_page``
    says the step's forward pass filled a KV page; ``finished`` says generation ends here.
    The first matching rule names the reason: end_of_generation, prefill (step 0),
    stop_sequence, end_of_turn, page_full, every_n_tokens (``(step + 1) % N == 0``)."""
    if finished:
        return "end_of_generation"
    if step == 0:
        return "prefill"
    if policy.on_stop_sequence and any(s and tuple(generated[-len(s):]) == tuple(s) for s in policy.stop_sequences):
        return "stop_sequence"
    if policy.on_end_of_turn and generated and generated[-1] in policy.end_of_turn_tokens:
        return "end_of_turn"
    if policy.on_page_full and filled_page:
        return "page_full"
    if policy.every_n_tokens and (step + 1) % policy.every_n_tokens == 0:
        return "every_n_tokens"
    return None


END_REASONS = {"eos": "eos", "length": "max_tokens", "stop": "stop_sequence", "max_position": "max_tokens"}


def end_reason(finish_reason: str | None) -> str:
    """Return the ``end.reason`` for an engine ``finish_reason``."""
    return END_REASONS.get(finish_reason or "", "error")


# ---------------------------------------------------------------------------------------
# Replay inputs (the sidecar file).
# ---------------------------------------------------------------------------------------


class InputsError(LedgerError):
    """The replay inputs are missing, malformed or do not match the genesis commitments."""


@dataclass
class ReplayInputs:
    """What a replay needs besides the ledger and the model: token ids of prompt and anchors
    (bound by the genesis commitments), and the engine options that end or shape generation
    (checked by the replay itself: a wrong value makes tokens or digests diverge)."""

    prompt_tokens: list[int]
    anchor_tokens: list[int] = field(default_factory=list)
    window: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    prompt_text: str | None = None
    anchor_text: str | None = None

    def to_json(self) -> str:
        return json.dumps({"version": INPUTS_VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ReplayInputs":
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.pop("version", None) != INPUTS_VERSION:
                raise ValueError(f"not a version-{INPUTS_VERSION} inputs object")
            out = cls(**d)
            ints = out.prompt_tokens + out.anchor_tokens + out.eos_token_ids
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**32 for t in ints):
                raise ValueError("token ids must be integers in [0, 2**32)")
            if out.window is not None and (not isinstance(out.window, int) or out.window < 1):
                raise ValueError("window must be an integer >= 1")
            return out
        except (ValueError, TypeError) as e:
            raise InputsError("inputs-format", f"replay inputs are malformed: {e}") from None


def inputs_path(ledger_path: str | os.PathLike) -> str:
    """Return the sidecar path ``<ledger>.inputs.json``."""
    return os.fspath(ledger_path) + INPUTS_SUFFIX


def read_inputs(path: str | os.PathLike) -> ReplayInputs:
    """Read a replay-inputs file; raise InputsError if it is unreadable."""
    try:
        with open(path, "rb") as f:
            return ReplayInputs.from_json(f.read())
    except OSError as e:
        raise InputsError("inputs-io", f"cannot read replay inputs {os.fspath(path)}: {e.strerror}") from None


# ---------------------------------------------------------------------------------------
# Engine adapters: what the runtime and the replay need beyond the Engine contract.
# ---------------------------------------------------------------------------------------


def set_attempt(engine, handle: int, attempt: int) -> None:
    """Make the sequence sample its next tokens under RNG ``attempt`` (``Engine.set_attempt``;
    engines older than that method get the reference engine's sequence state set directly)."""
    if hasattr(engine, "set_attempt"):
        engine.set_attempt(handle, attempt)
        return
    engine._seq(handle).attempt = int(attempt)


def finish_reason(engine, handle: int) -> str | None:
    """Return why the sequence finished (None while it runs): ``Engine.finish_reason``."""
    if hasattr(engine, "finish_reason"):
        return engine.finish_reason(handle)
    seqs = getattr(engine, "_sequences", None)
    if seqs is not None and handle in seqs:
        return seqs[handle].finish_reason
    return engine.result(handle).finish_reason


def model_commitment(model) -> bytes:
    """Return the model commitment of a QuantizedModel (``spec.commitment.model_commitment``)."""
    from spec.commitment import model_commitment as commit  # H2a's definition

    return commit(model)
