"""Merkle proof vectors: `merkle/<proof kind>/<n>/<mutation>.json`, one case per file.

Each case `n` is one honest proof (`happy-path.json`) and the same proof broken in one
named way; every broken file has `want_err: true`. The kinds of breakage follow
transparency-dev/merkle's proof test vectors (wrong index, wrong size, wrong root,
trailing/preceding garbage, one flipped bit, removed/inserted component, ...); the values
are computed here from `spec`. Hashes are lowercase hex; `hasher` names the profile.

    python -m tools.gen_vectors --area merkle
"""
from __future__ import annotations

import json
from pathlib import Path

from spec.merkle import HASHERS, leaf_hash, root_from_leaf_hashes
from spec.proofs import ProofError, consistency_proof, inclusion_proof, verify_consistency, verify_inclusion

# Leaf data of the RFC 6962 test tree (transparency-dev/merkle testonly/constants.go).
RFC_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
# A hash that is no root of any of these trees (transparency-dev/merkle proof/verify_test.go).
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

# (hasher, leaves, leaf index, tree size): SHA-256 cases are the known proofs of the RFC
# test tree; BLAKE3 cases run over d[i] = bytes([i % 256]) and cover the edge shapes:
# a single leaf, power-of-two sizes, the last leaf, a left leaf of an unbalanced tree.
INCLUSION_CASES = [
    ("sha256", "rfc", 0, 8), ("sha256", "rfc", 5, 8), ("sha256", "rfc", 2, 3), ("sha256", "rfc", 1, 5),
    ("blake3", "seq", 0, 1), ("blake3", "seq", 0, 2), ("blake3", "seq", 5, 8), ("blake3", "seq", 2, 3),
    ("blake3", "seq", 12, 13), ("blake3", "seq", 6, 7), ("blake3", "seq", 123, 300), ("blake3", "seq", 299, 300),
]
# (hasher, leaves, size1, size2)
CONSISTENCY_CASES = [
    ("sha256", "rfc", 1, 8), ("sha256", "rfc", 6, 8), ("sha256", "rfc", 2, 5), ("sha256", "rfc", 6, 7),
    ("blake3", "seq", 1, 2), ("blake3", "seq", 3, 7), ("blake3", "seq", 4, 8), ("blake3", "seq", 5, 13),
    ("blake3", "seq", 7, 8), ("blake3", "seq", 128, 300), ("blake3", "seq", 13, 300), ("blake3", "seq", 299, 300),
]


def _leaves(kind: str, n: int) -> list[bytes]:
    return RFC_LEAVES[:n] if kind == "rfc" else [bytes([i % 256]) for i in range(n)]


def _inclusion_case(hasher_name: str, kind: str, index: int, size: int) -> dict[str, dict]:
    hasher = HASHERS[hasher_name]
    lh = [leaf_hash(d, hasher) for d in _leaves(kind, size)]
    root, proof, leaf = root_from_leaf_hashes(lh, hasher), inclusion_proof(index, lh, hasher), lh[index]
    empty = hasher(b"")

    def case(desc, index=index, size=size, leaf=leaf, root=root, proof=proof, want_err=True):
        return dict(desc=desc, hasher=hasher_name, leaf_index=index, tree_size=size, leaf_hash=leaf.hex(),
                    root=root.hex(), proof=[p.hex() for p in proof], want_err=want_err)

    out = {
        "happy-path": case("honest proof", want_err=False),
        "leaf-index-minus-1": case("leaf index - 1", index=index - 1),
        "leaf-index-plus-1": case("leaf index + 1", index=index + 1),
        "leaf-index-xor-2": case("leaf index ^ 2", index=index ^ 2),
        "tree-size-times-2": case("tree size * 2", size=size * 2),
        "tree-size-div-2": case("tree size / 2", size=size // 2),
        "wrong-leaf": case("leaf hash of other data", leaf=leaf_hash(b"WrongLeaf", hasher)),
        "empty-root": case("root of the empty tree", root=empty),
        "random-root": case("a hash that is no root", root=SOME_HASH),
        "trailing-garbage": case("empty element appended to the proof", proof=proof + [b""]),
        "trailing-root": case("root appended to the proof", proof=proof + [root]),
        "preceding-garbage": case("empty element prepended to the proof", proof=[b""] + proof),
        "preceding-root": case("root prepended to the proof", proof=[root] + proof),
    }
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        out[f"modified-proof@{i}-bit-3"] = case(f"bit 3 of proof[{i}] flipped", proof=flipped)
    if proof:
        out["removed-component"] = case("last proof element removed", proof=proof[:-1])
    if len(proof) > 1:
        out["inserted-component"] = case("a hash inserted after proof[0]", proof=[proof[0], SOME_HASH] + proof[1:])
    return out


def _consistency_case(hasher_name: str, kind: str, size1: int, size2: int) -> dict[str, dict]:
    hasher = HASHERS[hasher_name]
    lh = [leaf_hash(d, hasher) for d in _leaves(kind, size2)]
    root1, root2 = root_from_leaf_hashes(lh[:size1], hasher), root_from_leaf_hashes(lh, hasher)
    proof = consistency_proof(size1, lh, hasher)
    wrong = hasher(b"WrongRoot")

    def case(desc, size1=size1, size2=size2, root1=root1, root2=root2, proof=proof, want_err=True):
        return dict(desc=desc, hasher=hasher_name, size1=size1, size2=size2, root1=root1.hex(), root2=root2.hex(),
                    proof=[p.hex() for p in proof], want_err=want_err)

    out = {
        "happy-path": case("honest proof", want_err=False),
        "size1-minus-1": case("size1 - 1", size1=size1 - 1),
        "size1-plus-1": case("size1 + 1", size1=size1 + 1),
        "size1-xor-2": case("size1 ^ 2", size1=size1 ^ 2),
        "size2-times-2": case("size2 * 2", size2=size2 * 2),
        "size2-div-2": case("size2 / 2", size2=size2 // 2),
        "wrong-root1": case("root1 replaced", root1=wrong),
        "wrong-root2": case("root2 replaced", root2=wrong),
        "swapped-roots": case("root1 and root2 swapped", root1=root2, root2=root1),
        "empty-proof": case("no proof at all", proof=[]),
        "trailing-garbage": case("empty element appended", proof=proof + [b""]),
        "trailing-root1": case("root1 appended", proof=proof + [root1]),
        "trailing-root2": case("root2 appended", proof=proof + [root2]),
        "preceding-garbage": case("empty element prepended", proof=[b""] + proof),
        "preceding-root1": case("root1 prepended", proof=[root1] + proof),
        "preceding-root2": case("root2 prepended", proof=[root2] + proof),
        "preceding-proof@0": case("proof[0] prepended", proof=[proof[0]] + proof),
        "truncated-proof": case("last proof element removed", proof=proof[:-1]),
    }
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        out[f"modified-proof@{i}-bit-4"] = case(f"bit 4 of proof[{i}] flipped", proof=flipped)
    return out


def check_inclusion_case(c: dict) -> bool:
    """Return whether spec.proofs accepts an inclusion vector (True = verified)."""
    try:
        verify_inclusion(c["leaf_index"], c["tree_size"], bytes.fromhex(c["leaf_hash"]),
                         [bytes.fromhex(p) for p in c["proof"]], bytes.fromhex(c["root"]), HASHERS[c["hasher"]])
        return True
    except ProofError:
        return False


def check_consistency_case(c: dict) -> bool:
    """Return whether spec.proofs accepts a consistency vector (True = verified)."""
    try:
        verify_consistency(c["size1"], c["size2"], [bytes.fromhex(p) for p in c["proof"]],
                           bytes.fromhex(c["root1"]), bytes.fromhex(c["root2"]), HASHERS[c["hasher"]])
        return True
    except ProofError:
        return False


def _write(path: Path, case: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(case, indent=2) + "\n")


def generate(out_dir: Path) -> None:
    """Write merkle/inclusion/<n>/*.json and merkle/consistency/<n>/*.json under ``out_dir``."""
    base = Path(out_dir) / "merkle"
    for n, args in enumerate(INCLUSION_CASES):
        for name, case in _inclusion_case(*args).items():
            assert check_inclusion_case(case) == (not case["want_err"]), (args, name)
            _write(base / "inclusion" / str(n) / f"{name}.json", case)
    for n, args in enumerate(CONSISTENCY_CASES):
        for name, case in _consistency_case(*args).items():
            assert check_consistency_case(case) == (not case["want_err"]), (args, name)
            _write(base / "consistency" / str(n) / f"{name}.json", case)


