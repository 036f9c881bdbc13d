"""auditor.semantics: commitments and live state against independent one-liners, the commit
policy decision table, the replay-inputs file."""
from __future__ import annotations

import struct

import blake3
import pytest

from auditor import semantics as sem
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


def test_inputs_round_trip_and_refusals(tmp_path):
    inp = sem.ReplayInputs(prompt_tokens=[1, 2], anchor_tokens=[3], window=8, eos_token_ids=[0], stop=["x"])
    assert sem.ReplayInputs.from_json(inp.to_json()) == inp
    for bad in ('{"version": 2, "prompt_tokens": []}', '[]', '{"version": 1, "prompt_tokens": [-1]}',
                '{"version": 1, "prompt_tokens": [1], "window": 0}', '{"version": 1}', "not json"):
        with pytest.raises(sem.InputsError):
            sem.ReplayInputs.from_json(bad)
    with pytest.raises(sem.InputsError):
        sem.read_inputs(tmp_path / "missing.json")
    assert sem.inputs_path("a/b.fpl") == "a/b.fpl.inputs.json"
    assert sem.end_reason("length") == "max_tokens" and sem.end_reason(None) == "error"
