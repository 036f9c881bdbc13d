"""Known answers for spec.merkle: the SHA-256 profile against RFC 6962/9162 values, and the
BLAKE3 profile against the definition."""
import hashlib

import blake3
from hypothesis import given, strategies as st

from spec.merkle import BLAKE3, SHA256, empty_root, leaf_hash, merkle_root, node_hash, split_point

# Leaf inputs of the 8-leaf test tree used throughout transparency-dev/merkle
# (testonly/constants.go, LeafInputs), originally from the certificate-transparency test suite.
RFC_LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]

# Roots of the trees of sizes 0..8 over RFC_LEAVES, SHA-256 profile.
# Source: transparency-dev/merkle testonly/constants.go, RootHashes().
RFC_ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]

# Leaf hashes of RFC_LEAVES, SHA-256 profile.
# Source: transparency-dev/merkle testonly/constants.go, NodeHashes()[0].
RFC_LEAF_HASHES = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
)]


def test_sha256_empty_root():
    # echo -n | sha256sum  (transparency-dev/merkle rfc6962/rfc6962_test.go, "RFC6962 Empty")
    assert empty_root(SHA256).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert merkle_root([], SHA256) == empty_root(SHA256)


def test_sha256_leaf_and_node_known_answers():
    # echo -n 00 | xxd -r -p | sha256sum  (rfc6962_test.go, "RFC6962 Empty Leaf")
    assert leaf_hash(b"", SHA256).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    # echo -n 004C313233343536 | xxd -r -p | sha256sum  (rfc6962_test.go, "RFC6962 Leaf")
    assert leaf_hash(b"L123456", SHA256).hex() == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    # echo -n 014E3132334E343536 | xxd -r -p | sha256sum  (rfc6962_test.go, "RFC6962 Node")
    assert node_hash(b"N123", b"N456", SHA256).hex() == "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"


def test_sha256_eight_leaf_tree():
    assert [leaf_hash(d, SHA256) for d in RFC_LEAVES] == RFC_LEAF_HASHES
    for n in range(0, 9):
        assert merkle_root(RFC_LEAVES[:n], SHA256) == RFC_ROOTS[n], n


def test_blake3_profile_matches_definition():
    # b3sum of the empty string, and of 0x00 / 0x01||l||r, computed with the blake3 package.
    assert empty_root().hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert leaf_hash(b"abc") == blake3.blake3(b"\x00abc").digest()
    assert node_hash(b"l" * 32, b"r" * 32) == blake3.blake3(b"\x01" + b"l" * 32 + b"r" * 32).digest()
    a, b, c = (leaf_hash(x) for x in (b"a", b"b", b"c"))
    assert merkle_root([b"a", b"b", b"c"]) == node_hash(node_hash(a, b), c)
    assert merkle_root([b"a"]) == a


def test_split_point():
    assert [split_point(n) for n in range(2, 10)] == [1, 2, 2, 4, 4, 4, 4, 8]


def _is_valid_subtree(start: int, end: int) -> bool:
    # draft-ietf-plants-merkle-tree-certs: [start, end) is a subtree when start == 0 or start
    # is a multiple of the smallest power of two >= end - start.
    size = end - start
    ceil = 1 << (size - 1).bit_length()
    return start == 0 or start % ceil == 0


def test_sha256_subtree_hash_rolling_digest():
    # Rolling SHA-256 over "[start, end) <hex MTH(d[start:end])>\n" for every valid subtree of
    # the tree d[i] = bytes([i]), i < 130. Expected value published in the "Subtree Test
    # Vectors" appendix of draft-ietf-plants-merkle-tree-certs, as reproduced by
    # transparency-dev/merkle testonly/vectors_test.go (TestSubtreeHashVectors).
    d = [bytes([i]) for i in range(130)]
    leaf_hashes = [leaf_hash(x, SHA256) for x in d]
    from spec.merkle import root_from_leaf_hashes

    h = hashlib.sha256()
    for end in range(1, 131):
        for start in range(end):
            if _is_valid_subtree(start, end):
                root = root_from_leaf_hashes(leaf_hashes[start:end], SHA256)
                h.update(f"[{start}, {end}) {root.hex()}\n".encode())
    assert h.hexdigest() == "94a95384a8c69acea9b50d035a58285b3a777cb7a724005faa5e1f1e1190007f"


@given(st.lists(st.binary(max_size=8), max_size=20), st.sampled_from([BLAKE3, SHA256]))
def test_root_is_recursive_definition(leaves, hasher):
    def mth(d):
        if not d:
            return hasher(b"")
        if len(d) == 1:
            return hasher(b"\x00" + d[0])
        k = 1
        while k * 2 < len(d):
            k *= 2
        return hasher(b"\x01" + mth(d[:k]) + mth(d[k:]))

    assert merkle_root(leaves, hasher) == mth(leaves)
