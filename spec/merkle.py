"""Merkle tree hashing in the RFC 9162 shape, with the hash function as a parameter.

The tree is the one of RFC 9162 section 2.1.1 (identical to RFC 6962 section 2.1):

* the hash of an empty list is ``H()`` (the hash of the empty string);
* a leaf holding ``data`` hashes to ``H(0x00 || data)``;
* a list of ``n > 1`` leaves is split at ``k``, the largest power of two strictly less than
  ``n``; its hash is ``H(0x01 || MTH(D[0:k]) || MTH(D[k:n]))``.

Fieldprint uses BLAKE3 (32-byte output) as ``H`` by default: the *BLAKE3 profile*. The
*SHA-256 profile* (``hasher=SHA256``) is exactly RFC 6962/9162, so its roots can be
published to standard C2SP tlog tooling. The only deviation of the BLAKE3 profile from
RFC 9162 is the hash function itself; prefixes, split rule and proof shapes are unchanged.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import blake3 as _blake3

LEAF_PREFIX = 0x00  # RFC 9162 section 2.1.1: domain prefix of a leaf hash
NODE_PREFIX = 0x01  # RFC 9162 section 2.1.1: domain prefix of an interior node hash
HASH_SIZE = 32  # bytes of every hash output in both profiles (= 256 bits)


@dataclass(frozen=True)
class Hasher:
    """A named hash function with a fixed 32-byte output, used as ``H`` in the tree."""

    name: str
    digest: Callable[[bytes], bytes]

    def __call__(self, data: bytes) -> bytes:
        return self.digest(data)

    def __repr__(self) -> str:
        return f"Hasher({self.name!r})"


BLAKE3 = Hasher("blake3", lambda data: _blake3.blake3(data).digest())
SHA256 = Hasher("sha256", lambda data: hashlib.sha256(data).digest())
HASHERS: dict[str, Hasher] = {BLAKE3.name: BLAKE3, SHA256.name: SHA256}


def empty_root(hasher: Hasher = BLAKE3) -> bytes:
    """Return the hash of the empty tree, ``H()`` (RFC 9162 section 2.1.1)."""
    return hasher(b"")


def leaf_hash(data: bytes, hasher: Hasher = BLAKE3) -> bytes:
    """Return ``H(0x00 || data)``, the hash of a leaf holding ``data``."""
    return hasher(bytes([LEAF_PREFIX]) + bytes(data))


def node_hash(left: bytes, right: bytes, hasher: Hasher = BLAKE3) -> bytes:
    """Return ``H(0x01 || left || right)``, the hash of an interior node."""
    return hasher(bytes([NODE_PREFIX]) + bytes(left) + bytes(right))


def split_point(n: int) -> int:
    """Return the largest power of two strictly less than ``n``. Requires n >= 2."""
    if n < 2:
        raise ValueError(f"split_point needs n >= 2, got {n}")
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes], hasher: Hasher = BLAKE3) -> bytes:
    """Return MTH over leaves whose leaf hashes are already computed."""
    n = len(hashes)
    if n == 0:
        return empty_root(hasher)
    if n == 1:
        return bytes(hashes[0])
    k = split_point(n)
    left = root_from_leaf_hashes(hashes[:k], hasher)
    right = root_from_leaf_hashes(hashes[k:], hasher)
    return node_hash(left, right, hasher)


def merkle_root(leaves: Sequence[bytes], hasher: Hasher = BLAKE3) -> bytes:
    """Return the RFC 9162 Merkle Tree Hash MTH(D) of the raw leaf data ``leaves``."""
    return root_from_leaf_hashes([leaf_hash(d, hasher) for d in leaves], hasher)


class CompactRange:
    """An append-only tree that keeps only the roots of its perfect subtrees (the frontier).

    Appending a leaf and computing the root take O(log n) hashes; the root always equals
    ``merkle_root`` over the leaves appended so far. Not normative: a helper for writers
    and verifiers."""

    def __init__(self, hasher: Hasher = BLAKE3):
        self.hasher = hasher
        self.size = 0
        self.frontier: list[bytes] = []  # roots of perfect subtrees, largest (leftmost) first

    def append_leaf_hash(self, h: bytes) -> None:
        """Append a leaf given its leaf hash."""
        self.frontier.append(bytes(h))
        self.size += 1
        n = self.size
        while n & 1 == 0:  # each trailing zero bit of the new size merges two equal subtrees
            right = self.frontier.pop()
            left = self.frontier.pop()
            self.frontier.append(node_hash(left, right, self.hasher))
            n >>= 1

    def append(self, data: bytes) -> bytes:
        """Append a leaf holding ``data``; return its leaf hash."""
        h = leaf_hash(data, self.hasher)
        self.append_leaf_hash(h)
        return h

    def root(self) -> bytes:
        """Return MTH of the leaves so far (right-to-left fold of the frontier)."""
        if not self.frontier:
            return empty_root(self.hasher)
        r = self.frontier[-1]
        for h in reversed(self.frontier[:-1]):
            r = node_hash(h, r, self.hasher)
        return r
