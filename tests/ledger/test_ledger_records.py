"""spec.ledger records: canonical encoding round-trips, is injective and canonical; JSON round-trips."""
import json

import pytest
from hypothesis import given, settings, strategies as st

from ledger_helpers import RECORDS, model_strategy
from spec.ledger import (
    ENCODING_VERSION,
    RECORD_ADAPTER,
    RECORD_TYPES,
    EncodingError,
    Genesis,
    LedgerError,
    TokenStep,
    decode_record,
    encode_record,
    record_from_json,
    record_layout,
    record_leaf_hash,
    record_to_json,
)
from spec.merkle import SHA256, leaf_hash


@given(RECORDS)
@settings(max_examples=150)
def test_decode_inverts_encode(record):
    data = encode_record(record)
    assert data[0] == ENCODING_VERSION
    assert RECORD_TYPES[data[1]] is type(record)
    assert decode_record(data) == record


@given(RECORDS, RECORDS)
@settings(max_examples=200)
def test_encode_is_injective(a, b):
    assert (encode_record(a) == encode_record(b)) == (a == b)


@given(RECORDS, st.data())
@settings(max_examples=100)
def test_changing_any_field_changes_the_encoding(record, data):
    # Swap one field for another record's value of the same type: equal encodings only when equal records.
    other = data.draw(model_strategy(type(record)))
    name = data.draw(st.sampled_from([n for n in type(record).model_fields if n != "type"]))
    changed = record.model_copy(update={name: getattr(other, name)})
    changed = type(record).model_validate(changed.model_dump())
    assert (encode_record(changed) == encode_record(record)) == (changed == record)


@given(RECORDS, st.data())
@settings(max_examples=300)
def test_any_decodable_bytes_are_canonical(record, data):
    # Mutate a valid encoding (one byte changed, bytes cut or added); whatever still decodes
    # must re-encode to exactly the same bytes, so no record has two encodings.
    enc = bytearray(encode_record(record))
    kind = data.draw(st.sampled_from(["byte", "cut", "extend", "insert"]))
    if kind == "byte":
        i = data.draw(st.integers(0, len(enc) - 1))
        enc[i] = data.draw(st.integers(0, 255))
    elif kind == "cut":
        del enc[data.draw(st.integers(0, len(enc) - 1)):]
    elif kind == "extend":
        enc += data.draw(st.binary(min_size=1, max_size=8))
    else:
        i = data.draw(st.integers(0, len(enc)))
        enc[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    try:
        decoded = decode_record(bytes(enc))
    except LedgerError as e:
        assert isinstance(e, EncodingError) and e.reason.startswith("record-")
        return
    assert encode_record(decoded) == bytes(enc)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_encoding_error(data):
    try:
        record = decode_record(data)
    except EncodingError:
        return
    assert encode_record(record) == data


@given(RECORDS)
@settings(max_examples=200)
def test_json_round_trip(record):
    text = record_to_json(record)
    assert json.loads(text)["type"] == record.type
    assert record_from_json(text) == record


def test_json_rejects_malformed():
    good = TokenStep(seq=1, step=0, attempt=0, token=5, logits_digest=bytes(32))
    d = json.loads(record_to_json(good))
    for bad in ({**d, "token": -1}, {**d, "token": 2**32}, {**d, "logits_digest": "00"}, {**d, "extra": 1},
                {**d, "type": "nope"}, {**d, "token": "5"}, {**d, "logits_digest": "zz" * 32},
                {**d, "logits_digest": "AB" * 32}, {**d, "logits_digest": " " + "ab" * 31 + "a"}):
        with pytest.raises(EncodingError):
            record_from_json(json.dumps(bad))


def test_decode_reasons():
    enc = encode_record(TokenStep(seq=1, step=0, attempt=0, token=5, logits_digest=bytes(32)))
    cases = {
        b"": "record-short",
        bytes([2]) + enc[1:]: "record-version",
        enc[:1] + bytes([99]) + enc[2:]: "record-type",
        enc[:-1]: "record-short",
        enc + b"\x00": "record-trailing-bytes",
    }
    for data, reason in cases.items():
        with pytest.raises(EncodingError) as e:
            decode_record(data)
        assert e.value.reason == reason


def test_leaf_hash_is_leaf_of_encoding():
    r = TokenStep(seq=1, step=0, attempt=0, token=5, logits_digest=bytes(32))
    assert record_leaf_hash(r) == leaf_hash(encode_record(r))
    assert record_leaf_hash(r, SHA256) == leaf_hash(encode_record(r), SHA256)


def test_layout_lists_every_field_in_order():
    assert [n for n, _ in record_layout(TokenStep)] == ["seq", "step", "attempt", "token", "logits_digest"]
    assert dict(record_layout(Genesis))["hash_profile"] == "u8 enum: 1=blake3, 2=sha256"
    assert RECORD_ADAPTER.json_schema()["discriminator"]["propertyName"] == "type"
