"""spec.proofs: known RFC 6962 proofs, random honest proofs, and every single-byte alteration."""
import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from spec.merkle import BLAKE3, SHA256, CompactRange, leaf_hash, merkle_root, root_from_leaf_hashes
from spec.proofs import (
    MerkleTree,
    ProofError,
    RootMismatchError,
    consistency_proof,
    consistency_proof_length,
    inclusion_proof,
    inclusion_proof_length,
    verify_consistency,
    verify_inclusion,
)
from test_ledger_merkle import RFC_LEAVES, RFC_ROOTS

H = bytes.fromhex
RFC_LEAF_HASHES = [leaf_hash(d, SHA256) for d in RFC_LEAVES]

# Known inclusion proofs in the RFC 6962 test tree, (leaf index, tree size, proof).
# Source: transparency-dev/merkle proof/verify_test.go, inclusionProofs (its leaf numbers
# are 1-based there; 0-based here).
RFC_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
# Known consistency proofs, (size1, size2, proof). Source: proof/verify_test.go, consistencyProofs.
RFC_CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


@pytest.mark.parametrize("index,size,proof", RFC_INCLUSION)
def test_rfc6962_known_inclusion_proofs(index, size, proof):
    lh = RFC_LEAF_HASHES[:size]
    assert inclusion_proof(index, lh, SHA256) == [H(p) for p in proof]
    verify_inclusion(index, size, lh[index], [H(p) for p in proof], RFC_ROOTS[size], SHA256)


@pytest.mark.parametrize("size1,size2,proof", RFC_CONSISTENCY)
def test_rfc6962_known_consistency_proofs(size1, size2, proof):
    lh = RFC_LEAF_HASHES[:size2]
    assert consistency_proof(size1, lh, SHA256) == [H(p) for p in proof]
    verify_consistency(size1, size2, [H(p) for p in proof], RFC_ROOTS[size1], RFC_ROOTS[size2], SHA256)


def _valid_subtree(start: int, end: int) -> bool:
    ceil = 1 << (end - start - 1).bit_length()
    return start == 0 or start % ceil == 0


def test_sha256_subtree_inclusion_rolling_digest():
    # Rolling SHA-256 over "<index> [<start>, <end>)( <hex proof hash>)*\n" for every index of
    # every valid subtree [start, end) of d[i] = bytes([i]), i < 130; a subtree is a tree of
    # its own, so its proof is PATH(index - start, d[start:end]). Expected value published in
    # the "Subtree Test Vectors" appendix of draft-ietf-plants-merkle-tree-certs, as
    # reproduced by transparency-dev/merkle testonly/vectors_test.go (TestSubtreeInclusionProofVectors).
    lh = [leaf_hash(bytes([i]), SHA256) for i in range(130)]
    h = hashlib.sha256()
    for end in range(1, 131):
        for start in range(end):
            if not _valid_subtree(start, end):
                continue
            sub = lh[start:end]
            for index in range(start, end):
                proof = inclusion_proof(index - start, sub, SHA256)
                h.update((f"{index} [{start}, {end})" + "".join(" " + p.hex() for p in proof) + "\n").encode())
    assert h.hexdigest() == "ac2a8f989e44d99e399db448050ff5f19757df53cfb716aa81015d3955d8163f"


# A regression pin over the BLAKE3 profile: every (index, size) inclusion proof and every
# (size1, size2) consistency proof for sizes up to 64 over d[i] = bytes([i]), folded into one
# BLAKE3 digest. Its value comes from this implementation, which the SHA-256 known answers
# above check; it exists so that any change to proofs or hashing in the BLAKE3 profile shows.
BLAKE3_SWEEP_MAX = 64
BLAKE3_SWEEP_DIGEST = "2a63fa7c48ab663d08fd22b8604e660f49784139e3a814b5fa05e1743bb8d1e4"


def _blake3_sweep() -> str:
    import blake3

    lh = [leaf_hash(bytes([i]), BLAKE3) for i in range(BLAKE3_SWEEP_MAX)]
    h = blake3.blake3()
    for size in range(1, BLAKE3_SWEEP_MAX + 1):
        for index in range(size):
            proof = inclusion_proof(index, lh[:size], BLAKE3)
            h.update((f"inclusion {index} {size}" + "".join(" " + p.hex() for p in proof) + "\n").encode())
        for size1 in range(size + 1):
            proof = consistency_proof(size1, lh[:size], BLAKE3)
            h.update((f"consistency {size1} {size}" + "".join(" " + p.hex() for p in proof) + "\n").encode())
    return h.hexdigest()


def test_blake3_rolling_digest_of_all_proofs():
    assert _blake3_sweep() == BLAKE3_SWEEP_DIGEST


def test_compact_range_matches_merkle_root():
    for hasher in (BLAKE3, SHA256):
        tree = CompactRange(hasher)
        data = [bytes([i, i >> 8]) for i in range(70)]
        assert tree.root() == merkle_root([], hasher)
        for i, d in enumerate(data):
            assert tree.append(d) == leaf_hash(d, hasher)
            assert tree.root() == merkle_root(data[:i + 1], hasher)


def test_stored_tree_matches_the_definitions():
    for hasher in (BLAKE3, SHA256):
        tree, lh = MerkleTree(hasher), []
        for i in range(70):
            lh.append(leaf_hash(bytes([i, 7]), hasher))
            tree.append_leaf_hash(lh[-1])
        for n in range(71):
            assert tree.root(n) == root_from_leaf_hashes(lh[:n], hasher)
            for i in range(n):
                assert tree.inclusion_proof(i, n) == inclusion_proof(i, lh[:n], hasher)
            for m in range(n + 1):
                assert tree.consistency_proof(m, n) == consistency_proof(m, lh[:n], hasher)


def test_proof_lengths_match_built_proofs():
    lh = [leaf_hash(bytes([i])) for i in range(40)]
    for n in range(1, 41):
        for i in range(n):
            assert len(inclusion_proof(i, lh[:n])) == inclusion_proof_length(i, n)
        for m in range(n + 1):
            assert len(consistency_proof(m, lh[:n])) == consistency_proof_length(m, n)


def test_edge_cases():
    empty = merkle_root([])
    one = leaf_hash(b"x")
    verify_consistency(0, 0, [], empty, empty)
    verify_consistency(0, 1, [], empty, one)
    verify_consistency(1, 1, [], one, one)
    with pytest.raises(ProofError):
        verify_consistency(1, 1, [], one, empty)  # equal sizes, different roots
    with pytest.raises(ProofError):
        verify_consistency(0, 0, [empty], empty, empty)  # a proof where none belongs
    with pytest.raises(ProofError):
        verify_consistency(2, 1, [], one, one)  # back in time
    with pytest.raises(ProofError):
        verify_inclusion(0, 0, one, [], one)  # no leaf in an empty tree
    with pytest.raises(ProofError):
        verify_inclusion(0, 1, one[:31], [], one)  # short leaf hash
    with pytest.raises(RootMismatchError) as e:
        verify_inclusion(0, 1, one, [], empty)
    assert e.value.expected == empty and e.value.calculated == one


def _flips(blob: bytes):
    """Yield ``blob`` with each byte altered in turn (xor 0x01 and xor 0x80 alternately)."""
    for i in range(len(blob)):
        yield blob[:i] + bytes([blob[i] ^ (0x01 if i % 2 else 0x80)]) + blob[i + 1:]


def _tree(size: int, hasher):
    lh = [leaf_hash(b"leaf %d" % i, hasher) for i in range(size)]
    return lh, root_from_leaf_hashes(lh, hasher)


@given(st.integers(1, 300), st.data(), st.sampled_from([BLAKE3, SHA256]))
@settings(max_examples=40)
def test_inclusion_random_and_every_byte_altered(size, data, hasher):
    index = data.draw(st.integers(0, size - 1))
    lh, root = _tree(size, hasher)
    proof = inclusion_proof(index, lh, hasher)
    verify_inclusion(index, size, lh[index], proof, root, hasher)
    for i in range(len(proof)):
        for bad in _flips(proof[i]):
            with pytest.raises(ProofError):
                verify_inclusion(index, size, lh[index], proof[:i] + [bad] + proof[i + 1:], root, hasher)
    for bad in _flips(root):
        with pytest.raises(ProofError):
            verify_inclusion(index, size, lh[index], proof, bad, hasher)
    for bad in _flips(lh[index]):
        with pytest.raises(ProofError):
            verify_inclusion(index, size, bad, proof, root, hasher)
    for wrong_index in {index - 1, index + 1, index ^ 1, size}:
        if wrong_index != index:
            with pytest.raises(ProofError):
                verify_inclusion(wrong_index, size, lh[index], proof, root, hasher)


@given(st.integers(1, 300), st.data(), st.sampled_from([BLAKE3, SHA256]))
@settings(max_examples=40)
def test_consistency_random_and_every_byte_altered(size2, data, hasher):
    size1 = data.draw(st.integers(1, size2))
    lh, root2 = _tree(size2, hasher)
    root1 = root_from_leaf_hashes(lh[:size1], hasher)
    proof = consistency_proof(size1, lh, hasher)
    verify_consistency(size1, size2, proof, root1, root2, hasher)
    for i in range(len(proof)):
        for bad in _flips(proof[i]):
            with pytest.raises(ProofError):
                verify_consistency(size1, size2, proof[:i] + [bad] + proof[i + 1:], root1, root2, hasher)
    for bad in _flips(root1):
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, proof, bad, root2, hasher)
    for bad in _flips(root2):
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, proof, root1, bad, hasher)
    if proof:
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, proof[:-1], root1, root2, hasher)
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, proof + [proof[0]], root1, root2, hasher)
