"""What a ledger's digest fields mean, and where the commit policy puts commits.

``spec.ledger`` fixes the records and their bytes; this module fixes how a runtime fills the
fields that hold digests of *engine state* and when it must commit, so that a verifier can
recompute every one of them from the model and the ledger alone:

============================= =================================================================
field                         definition
============================= =================================================================
``kv_page.layer_digests``     ``layer_digests(page_layer_bytes(page))``: BLAKE3 per layer slice
``kv_page.digest``            ``page_digest(layer digests)``: their BLAKE3 Merkle root
``token_step.logits_digest``  ``logits_digest(row bytes)``: BLAKE3 of the int64 LE row
``genesis.prompt_commitment`` ``prompt_commitment(prompt tokens)``
``genesis.anchor_commitment`` ``anchor_commitment(anchor tokens, anchor page digests)``
``commit.pages_root``         ``pages_root(digests of the commit's kv_page records)``
``commit.live_state``         ``live_state(anchor digests, live context digests)``
``commit.reason``             ``commit_reason(policy, ...)``
``kv_page.used``              ``filled_slots`` / ``anchor_slots``
``end.reason``                ``end_reason(engine finish reason)``
``validation.detail``         of a failed ``kv-rehash``: ``rehash_failure_detail(...)``
============================= =================================================================

Content digests (layer and page digests, logits rows, prompt) are BLAKE3 in every hash
profile: engines compute them where the data lives. Merkle roots (anchor commitment,
``pages_root``, ``live_state``) use the ledger's hash profile.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Mapping, Sequence

import blake3 as _blake3

from spec.ledger import ZERO_DIGEST, CommitPolicy
from spec.merkle import BLAKE3, Hasher, merkle_root

PROMPT_DOMAIN = b"fieldprint/prompt/v1"  # domain tag of the prompt commitment
ANCHOR_DOMAIN = b"fieldprint/anchors/v1"  # domain tag of the anchor-token leaf


# ---------------------------------------------------------------------------------------
# Content digests (BLAKE3 in every hash profile).
# ---------------------------------------------------------------------------------------


def content_digest(data: bytes) -> bytes:
    """Return BLAKE3(data), 32 bytes."""
    return _blake3.blake3(bytes(data)).digest()


def page_layer_bytes(page) -> list[bytes]:
    """Return the bytes of each layer's slice of a KV page: ``page[i]`` in C order, where
    ``page`` is ``KVPool.data[p]`` (shape [layers, 2, PAGE_TOKENS, kv_heads, head_dim + 4];
    int8, so no byte order). These are exactly the bytes the engine computed and attends over."""
    return [page[i].detach().contiguous().cpu().numpy().tobytes() for i in range(page.shape[0])]


def layer_digests(layer_slices: Sequence[bytes]) -> list[bytes]:
    """Return ``kv_page.layer_digests``: BLAKE3 of each layer slice's bytes, in layer order."""
    return [content_digest(s) for s in layer_slices]


def page_digest(layer_digests: Sequence[bytes]) -> bytes:
    """Return ``kv_page.digest``: MTH with BLAKE3 (in every hash profile) over the page's layer
    digests as leaf data, in layer order. Requires at least one layer."""
    if not layer_digests:
        raise ValueError("a page has at least one layer")
    return merkle_root([bytes(d) for d in layer_digests], BLAKE3)


def first_layer_difference(a: Sequence[bytes], b: Sequence[bytes]) -> int | None:
    """Return the first layer whose digests differ in ``a`` and ``b`` (a missing one counts as
    different), or None when both lists are equal."""
    for i in range(max(len(a), len(b))):
        if i >= len(a) or i >= len(b) or bytes(a[i]) != bytes(b[i]):
            return i
    return None


def logits_digest(row_bytes: bytes) -> bytes:
    """Return a logits row's digest: BLAKE3 over its int64 little-endian bytes."""
    return content_digest(row_bytes)


def token_bytes(tokens: Sequence[int]) -> bytes:
    """Return ``u32 count || u32 token ...``, little-endian."""
    return struct.pack(f"<I{len(tokens)}I", len(tokens), *[int(t) for t in tokens])


def prompt_commitment(tokens: Sequence[int]) -> bytes:
    """Return BLAKE3(PROMPT_DOMAIN || token_bytes(prompt tokens))."""
    return content_digest(PROMPT_DOMAIN + token_bytes(tokens))


# ---------------------------------------------------------------------------------------
# Merkle roots over page digests (the ledger's hash profile).
# ---------------------------------------------------------------------------------------


def anchor_commitment(tokens: Sequence[int], page_digests: Sequence[bytes], hasher: Hasher = BLAKE3) -> bytes:
    """Return ZERO_DIGEST without anchor tokens, else MTH over the leaves
    ``ANCHOR_DOMAIN || token_bytes(anchor tokens)``, then each anchor page's digest in page order."""
    if not tokens:
        return ZERO_DIGEST
    return merkle_root([ANCHOR_DOMAIN + token_bytes(tokens)] + [bytes(d) for d in page_digests], hasher)


def pages_root(page_digests: Sequence[bytes], hasher: Hasher = BLAKE3) -> bytes:
    """Return a commit's ``pages_root``: MTH over the digests of the kv_page records since the
    previous commit, in record order (``H()`` when there are none)."""
    return merkle_root([bytes(d) for d in page_digests], hasher)


def live_state(anchor_digests: Sequence[bytes], context_digests: Mapping[int, bytes],
               hasher: Hasher = BLAKE3) -> bytes:
    """Return a ``live_state``: MTH over the digests of every live page in logical order, the
    anchor pages first, then the context blocks not evicted, by block index."""
    ctx = [bytes(context_digests[b]) for b in sorted(context_digests)]
    return merkle_root([bytes(d) for d in anchor_digests] + ctx, hasher)


# ---------------------------------------------------------------------------------------
# Slots used.
# ---------------------------------------------------------------------------------------


def filled_slots(block: int, cached: int, page_tokens: int) -> int:
    """Return how many slots of context block ``block`` hold tokens once ``cached`` tokens
    (prompt and fed generated tokens) are in the cache."""
    return max(0, min(page_tokens, cached - block * page_tokens))


def anchor_slots(page: int, num_anchor_tokens: int, page_tokens: int) -> int:
    """Return how many slots of anchor page ``page`` hold anchor tokens."""
    return filled_slots(page, num_anchor_tokens, page_tokens)


def anchor_pages(num_anchor_tokens: int, page_tokens: int) -> int:
    """Return the number of anchor pages: ceil(num_anchor_tokens / page_tokens)."""
    return -(-num_anchor_tokens // page_tokens)


def commit_partial_pages(written: set[int] | Sequence[int], cached: int, page_tokens: int) -> list[tuple[int, int]]:
    """Return the ``(block, used)`` kv_page records written right before a commit: every context
    block written since the previous commit and not yet recorded full, by block index."""
    return [(b, filled_slots(b, cached, page_tokens)) for b in sorted(set(written))]


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
    says the forward pass that produced the step filled a KV page; ``finished`` says generation
    ends here. The first matching rule names the reason: end_of_generation, prefill
    (``step == 0``), stop_sequence, end_of_turn, page_full, every_n_tokens
    (``(step + 1) % N == 0``)."""
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


FINISH_TO_END = {"eos": "eos", "length": "max_tokens", "stop": "stop_sequence", "max_position": "max_tokens"}


def end_reason(finish_reason: str | None) -> str:
    """Return the ``end.reason`` for an engine's finish reason (``error`` for none or unknown)."""
    return FINISH_TO_END.get(finish_reason or "", "error")


# ---------------------------------------------------------------------------------------
# The page re-hash validator: its name and the detail of a failure.
# ---------------------------------------------------------------------------------------

REHASH_VALIDATOR = "kv-rehash"  # validator name of the runtime's page re-hash in validation records
_REHASH_CLAIM = re.compile(r"first: (anchor|context) block (\d+)\b.*?\bhashes to ([0-9a-f]{16,64}), "
                           r"recorded ([0-9a-f]{16,64})")


@dataclass(frozen=True)
class RehashClaim:
    """What a failed ``kv-rehash`` validation claims: page ``kind``/``block`` re-hashed to a
    digest starting with ``actual``, while the ledger recorded one starting with ``recorded``
    (lowercase hex prefixes of 16 to 64 digits)."""

    kind: str
    block: int
    actual: str
    recorded: str


def rehash_failure_detail(bad: int, total: int, kind: str, block: int, page: int, layer: int | None,
                          actual: bytes, recorded: bytes) -> str:
    """Return the ``detail`` of a failed ``kv-rehash`` validation: how many of the commit's pages
    differ from their recorded digests, then the first one (kind, logical block, physical page,
    first differing layer) with the first 16 hex digits of its re-hashed and recorded digests.
    ``parse_rehash_failure`` reads it back; the auditor checks the named page against the ledger."""
    return (f"{bad} of {total} pages differ from their recorded digests; first: {kind} block {block} "
            f"(physical page {page}) layer {layer} hashes to {actual.hex()[:16]}, recorded {recorded.hex()[:16]}")


def parse_rehash_failure(detail: str) -> RehashClaim | None:
    """Return the page a failed ``kv-rehash`` detail names (``rehash_failure_detail``), or None."""
    m = _REHASH_CLAIM.search(detail)
    if m is None:
        return None
    return RehashClaim(m.group(1), int(m.group(2)), m.group(3), m.group(4))
