"""Inclusion and consistency proofs for the RFC 9162 tree of ``spec.merkle``: build and verify.

Building follows the recursive definitions PATH (RFC 9162 section 2.1.3.1) and
SUBPROOF (section 2.1.4.1) literally; verifying follows the iterative algorithms of
sections 2.1.3.2 and 2.1.4.2. Proofs are lists of 32-byte hashes, lowest level first.
Every failure raises a ``ProofError`` whose ``reason`` says what was wrong.
"""
from __future__ import annotations

from typing import Sequence

from spec.ledger import LedgerError
from spec.merkle import BLAKE3, HASH_SIZE, Hasher, empty_root, node_hash, root_from_leaf_hashes, split_point


class ProofError(LedgerError):
    """A proof is malformed or does not verify."""


class RootMismatchError(ProofError):
    """A proof is well formed but leads to a different root; carries both roots."""

    def __init__(self, expected: bytes, calculated: bytes, what: str = "root"):
        self.expected = expected
        self.calculated = calculated
        super().__init__("root-mismatch",
                         f"{what}: calculated {calculated.hex()}, expected {expected.hex()}")


# -- building --------------------------------------------------------------------------


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes], hasher: Hasher = BLAKE3) -> list[bytes]:
    """Return PATH(index, D[n]) for the tree with these leaf hashes. Requires 0 <= index < n."""
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise ProofError("index-out-of-range", f"leaf index {index} not in a tree of size {n}")
    if n == 1:
        return []
    k = split_point(n)
    if index < k:  # PATH(m, D[0:k]) : MTH(D[k:n])
        return inclusion_proof(index, leaf_hashes[:k], hasher) + [root_from_leaf_hashes(leaf_hashes[k:], hasher)]
    # PATH(m - k, D[k:n]) : MTH(D[0:k])
    return inclusion_proof(index - k, leaf_hashes[k:], hasher) + [root_from_leaf_hashes(leaf_hashes[:k], hasher)]


def _subproof(m: int, leaf_hashes: Sequence[bytes], complete: bool, hasher: Hasher) -> list[bytes]:
    # RFC 9162 section 2.1.4.1, SUBPROOF(m, D[n], b)
    n = len(leaf_hashes)
    if m == n:
        return [] if complete else [root_from_leaf_hashes(leaf_hashes, hasher)]
    k = split_point(n)
    if m <= k:
        return _subproof(m, leaf_hashes[:k], complete, hasher) + [root_from_leaf_hashes(leaf_hashes[k:], hasher)]
    return _subproof(m - k, leaf_hashes[k:], False, hasher) + [root_from_leaf_hashes(leaf_hashes[:k], hasher)]


def consistency_proof(size1: int, leaf_hashes: Sequence[bytes], hasher: Hasher = BLAKE3) -> list[bytes]:
    """Return PROOF(size1, D[n]) between the first ``size1`` leaves and all ``n``. Requires 0 <= size1 <= n."""
    n = len(leaf_hashes)
    if not 0 <= size1 <= n:
        raise ProofError("sizes", f"size1 {size1} not in [0, {n}]")
    if size1 == 0 or size1 == n:
        return []
    return _subproof(size1, leaf_hashes, True, hasher)


# -- expected lengths (so a wrong-length proof is reported as such) ----------------------


def inclusion_proof_length(index: int, size: int) -> int:
    """Return the number of hashes in PATH(index, D[size]). Requires 0 <= index < size."""
    inner = (index ^ (size - 1)).bit_length()  # levels below where the paths of index and size-1 part
    border = bin(index >> inner).count("1")  # levels above, where a left sibling exists
    return inner + border


def consistency_proof_length(size1: int, size2: int) -> int:
    """Return the number of hashes in PROOF(size1, D[size2]). Requires 0 <= size1 <= size2."""
    if size1 == 0 or size1 == size2:
        return 0
    count, m, n, complete = 0, size1, size2, True
    while m != n:
        k = split_point(n)
        count += 1
        if m <= k:
            n = k
        else:
            m, n, complete = m - k, n - k, False
    return count + (0 if complete else 1)


# -- verifying -------------------------------------------------------------------------


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        size = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise ProofError("hash-size", f"{what} must be {HASH_SIZE} bytes, got {size}")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes],
                              hasher: Hasher = BLAKE3) -> bytes:
    """Return the root implied by an inclusion proof (RFC 9162 section 2.1.3.2, steps 1-5)."""
    if not 0 <= index < size:
        raise ProofError("index-out-of-range", f"leaf index {index} not in a tree of size {size}")
    _check_hash(leaf, "leaf hash")
    want = inclusion_proof_length(index, size)
    if len(proof) != want:
        raise ProofError("proof-length", f"inclusion proof has {len(proof)} hashes, expected {want}")
    fn, sn, r = index, size - 1, bytes(leaf)
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]")
        if fn & 1 or fn == sn:
            r = node_hash(p, r, hasher)
            while fn & 1 == 0 and fn != 0:  # shift until a right child (or the left edge)
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p, hasher)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:  # unreachable given the length check; kept from the RFC algorithm
        raise ProofError("proof-length", "inclusion proof too short for the tree size")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes,
                     hasher: Hasher = BLAKE3) -> None:
    """Check that ``leaf`` (a leaf hash) is at ``index`` in the tree of ``size`` with ``root``."""
    _check_hash(root, "root")
    calculated = root_from_inclusion_proof(index, size, leaf, proof, hasher)
    if calculated != bytes(root):
        raise RootMismatchError(bytes(root), calculated)


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes,
                       hasher: Hasher = BLAKE3) -> None:
    """Check that the tree of ``size2`` with ``root2`` extends the tree of ``size1`` with ``root1``."""
    _check_hash(root1, "root1")
    _check_hash(root2, "root2")
    if not 0 <= size1 <= size2:
        raise ProofError("sizes", f"size1 {size1} must be in [0, size2 = {size2}]")
    want = consistency_proof_length(size1, size2)
    if len(proof) != want:
        raise ProofError("proof-length", f"consistency proof has {len(proof)} hashes, expected {want}")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof[{i}]")
    if size1 == 0:
        if bytes(root1) != empty_root(hasher):
            raise RootMismatchError(empty_root(hasher), bytes(root1), "root1 of the empty tree")
        return
    if size1 == size2:
        if bytes(root1) != bytes(root2):
            raise RootMismatchError(bytes(root2), bytes(root1), "equal sizes need equal roots")
        return
    fr, sr = _consistency_roots(size1, size2, list(proof), bytes(root1), hasher)
    if fr != bytes(root1):
        raise RootMismatchError(bytes(root1), fr, "root1")
    if sr != bytes(root2):
        raise RootMismatchError(bytes(root2), sr, "root2")


def _consistency_roots(size1: int, size2: int, path: list[bytes], root1: bytes,
                       hasher: Hasher) -> tuple[bytes, bytes]:
    # RFC 9162 section 2.1.4.2, steps 2-6; returns (first root, second root) as computed.
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root is the first node
        path = [root1] + path
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("proof-length", "consistency proof too long for the sizes")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr, hasher), node_hash(c, sr, hasher)
            while fn & 1 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c, hasher)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("proof-length", "consistency proof too short for the sizes")
    return fr, sr


# -- a stored tree for runtimes and verifiers (not normative) ----------------------------


class MerkleTree:
    """All leaf hashes plus every perfect subtree's hash, for O(log n) roots and proofs.

    Not normative: ``tests/ledger/test_ledger_proofs.py`` checks it against the recursive
    definitions above (``merkle_root``, ``inclusion_proof``, ``consistency_proof``) for every
    index and size up to 70. ``levels[k][j]`` is the hash of leaves ``[j * 2^k, (j+1) * 2^k)``."""

    def __init__(self, hasher: Hasher = BLAKE3):
        self.hasher = hasher
        self.levels: list[list[bytes]] = [[]]

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append_leaf_hash(self, h: bytes) -> None:
        """Append a leaf given its leaf hash."""
        self.levels[0].append(bytes(h))
        k = 0
        while len(self.levels[k]) % 2 == 0:  # a new perfect subtree one level up is complete
            if len(self.levels) == k + 1:
                self.levels.append([])
            self.levels[k + 1].append(node_hash(self.levels[k][-2], self.levels[k][-1], self.hasher))
            k += 1

    def _range(self, start: int, end: int) -> bytes:
        # MTH(D[start:end]) of a subtree whose start is a multiple of bit_ceil(end - start):
        # its perfect subtrees, largest first, folded right to left.
        nodes, pos = [], start
        for k in reversed(range((end - start).bit_length())):
            if (end - start) >> k & 1:
                nodes.append(self.levels[k][pos >> k])
                pos += 1 << k
        r = nodes[-1]
        for h in reversed(nodes[:-1]):
            r = node_hash(h, r, self.hasher)
        return r

    def root(self, size: int | None = None) -> bytes:
        """Return MTH of the first ``size`` leaves (default: all). Requires 0 <= size <= self.size."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ProofError("sizes", f"size {size} not in [0, {self.size}]")
        return empty_root(self.hasher) if size == 0 else self._range(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return PATH(index, D[size]). Requires 0 <= index < size <= self.size."""
        size = self.size if size is None else size
        if not 0 <= index < size <= self.size:
            raise ProofError("index-out-of-range", f"leaf index {index} not in a tree of size {size}")
        outer, lo, m, n = [], 0, index, size
        while n > 1:
            k = split_point(n)
            if m < k:
                outer.append(self._range(lo + k, lo + n))
                n = k
            else:
                outer.append(self._range(lo, lo + k))
                lo, m, n = lo + k, m - k, n - k
        return outer[::-1]

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """Return PROOF(size1, D[size2]). Requires 0 <= size1 <= size2 <= self.size."""
        size2 = self.size if size2 is None else size2
        if not 0 <= size1 <= size2 <= self.size:
            raise ProofError("sizes", f"sizes {size1}, {size2} not ordered within [0, {self.size}]")
        if size1 == 0 or size1 == size2:
            return []
        outer, lo, m, n, complete = [], 0, size1, size2, True
        while m != n:
            k = split_point(n)
            if m <= k:
                outer.append(self._range(lo + k, lo + n))
                n = k
            else:
                outer.append(self._range(lo, lo + k))
                lo, m, n, complete = lo + k, m - k, n - k, False
        return ([] if complete else [self._range(lo, lo + n)]) + outer[::-1]
