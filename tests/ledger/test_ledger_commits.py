"""spec.commits: commitments and live state against independent one-liners, the commit
policy decision table, slots used, end reasons."""
from __future__ import annotations

import struct

import blake3
import pytest

from spec import commits as sem
from spec.ledger import ZERO_DIGEST


def b3(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def leaf(d: bytes) -> bytes:  # RFC 9162 leaf hash, BLAKE3 profile
    return b3(b"\x00" + d)


def node(left: bytes, right: bytes) -> bytes:
    return b3(b"\x01" + left + right)


def test_prompt_commitment_known_answer():
    # python -c "import blake3,struct; print(blake3.blake3(b'fieldprint/prompt/v1'+struct.pack('<4I',3,1,2,3)).hexdigest())"
    assert sem.prompt_commitment([1, 2, 3]).hex() == "3cd27cd0442e3332078ba250c912c5e0e020f9c228051d2459ee1cc6365011e0"
    assert sem.prompt_commitment([1, 2, 3]) == b3(b"fieldprint/prompt/v1" + struct.pack("<4I", 3, 1, 2, 3))


def test_anchor_commitment_and_live_state_are_rfc9162_roots():
    d0, d1, d9 = bytes(32), b"\x01" * 32, b"\x09" * 32
    tokens = sem.ANCHOR_DOMAIN + struct.pack("<3I", 2, 5, 6)
    want = node(node(leaf(tokens), leaf(d0)), leaf(d1))  # 3 leaves: split at 2
    assert sem.anchor_commitment([5, 6], [d0, d1]) == want
    assert want.hex() == "7e8ef6f6b0ccf9d8dc005ea9930fe650f0186bff3439ecb53dbe1a666bffbead"
    assert sem.anchor_commitment([], []) == ZERO_DIGEST
    # live state: anchor pages first, then context blocks by index (block 3 after block 0)
    assert sem.live_state([d0], {3: d9, 0: d1}) == node(node(leaf(d0), leaf(d1)), leaf(d9))


@pytest.mark.parametrize("kw, step, generated, full, finished, want", [
    ({}, 0, [5], True, False, "prefill"),
    ({}, 0, [5], False, True, "end_of_generation"),
    ({}, 7, [1] * 8, False, False, "every_n_tokens"),
    ({}, 6, [1] * 7, False, False, None),
    (dict(page_full=True), 5, [1] * 6, True, False, "page_full"),
    (dict(page_full=True, end_of_turn_tokens=[9]), 5, [1] * 5 + [9], True, False, "end_of_turn"),
    (dict(end_of_turn_tokens=[9], stop_sequences=[[4, 9]]), 5, [1] * 4 + [4, 9], False, False, "stop_sequence"),
    (dict(stop_sequences=[[4, 9]]), 5, [1] * 5 + [9], False, False, None),
])
def test_commit_reason_table(kw, step, generated, full, finished, want):
    pol = sem.make_policy(kw.pop("every", 8), **kw)
    assert sem.commit_reason(pol, step=step, generated=generated, filled_page=full, finished=finished) == want


@pytest.mark.parametrize("block, cached, want", [(0, 0, 0), (0, 5, 5), (0, 16, 16), (0, 40, 16), (1, 16, 0),
                                                  (1, 17, 1), (2, 40, 8), (3, 40, 0)])
def test_filled_slots(block, cached, want):
    assert sem.filled_slots(block, cached, 16) == want


def test_anchor_pages_and_partial_commit_pages():
    assert [sem.anchor_pages(n, 16) for n in (0, 1, 16, 17, 32, 33)] == [0, 1, 1, 2, 2, 3]
    assert [sem.anchor_slots(k, 20, 16) for k in range(2)] == [16, 4]
    assert sem.commit_partial_pages({3, 1}, 40, 16) == [(1, 16), (3, 0)]
    assert sem.commit_partial_pages([2, 2], 40, 16) == [(2, 8)]


def test_end_reasons():
    assert sem.end_reason("length") == "max_tokens" and sem.end_reason(None) == "error"
    assert sem.end_reason("eos") == "eos" and sem.end_reason("stop") == "stop_sequence"
    assert sem.end_reason("max_position") == "max_tokens" and sem.end_reason("bogus") == "error"


def test_digest_helpers():
    from spec.merkle import SHA256, merkle_root

    pages = [sem.content_digest(b"page %d" % i) for i in range(3)]
    assert pages[0] == b3(b"page 0")
    assert sem.pages_root([]) == merkle_root([])
    assert sem.pages_root(pages, SHA256) == merkle_root(pages, SHA256)
    assert sem.live_state(pages[:1], {5: pages[2], 1: pages[1]}) == merkle_root(pages)


def test_page_digest_is_a_blake3_root_over_layer_digests():
    import torch

    g = torch.Generator().manual_seed(3)
    page = torch.randint(-128, 128, (3, 2, 16, 1, 20), dtype=torch.int8, generator=g)  # [layers, K|V, slot, head, row]
    slices = sem.page_layer_bytes(page)
    assert slices == [page[i].numpy().tobytes() for i in range(3)] and b"".join(slices) == page.numpy().tobytes()
    layers = sem.layer_digests(slices)
    assert layers == [b3(x) for x in slices]
    assert sem.page_digest(layers) == node(node(leaf(layers[0]), leaf(layers[1])), leaf(layers[2]))
    assert sem.page_digest(layers[:1]) == leaf(layers[0])
    with pytest.raises(ValueError):
        sem.page_digest([])
    # python -c "import blake3; d=blake3.blake3(bytes(640)).digest(); l=blake3.blake3(b'\0'+d).digest();
    #            print(blake3.blake3(b'\1'+l+l).hexdigest())"
    zero = sem.layer_digests(sem.page_layer_bytes(torch.zeros(2, 2, 16, 1, 20, dtype=torch.int8)))
    assert sem.page_digest(zero).hex() == "33bb4cc507cabfebc17c1e90e30f05f2c6a7b552663bdc0e4b6ff054d603c97b"


def test_first_layer_difference():
    a = [b3(b"%d" % i) for i in range(4)]
    assert sem.first_layer_difference(a, list(a)) is None
    assert sem.first_layer_difference(a, a[:2] + [b"x" * 32] + a[3:]) == 2
    assert sem.first_layer_difference(a, a[:3]) == 3 and sem.first_layer_difference(a[:1], a) == 1
