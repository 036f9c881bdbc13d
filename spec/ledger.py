"""Ledger records: their typed JSON form and their canonical binary encoding.

A Fieldprint ledger is an append-only Merkle tree (``spec.merkle``) whose leaves are the
canonical encodings of *records*, one record per leaf, in the order they happened:

========== === ======================================================================
record     tag meaning
========== === ======================================================================
genesis      1 what runs: spec version, commitments, sampling, commit policy, replay inputs, engine, key
token_step   2 one generated token (step, attempt, token id, digest of its logits row)
kv_page      3 the digests of one KV-cache page as written (per layer, and their root)
commit       4 a commit point: new tokens, pages written since the last commit, live state
validation   5 the result of validating a commit
rollback     6 the live state went back to an earlier commit
end          7 end of generation
kv_evict     8 context blocks the sliding window freed (their pages stop being live)
========== === ======================================================================

Canonical encoding (what is hashed): ``ENCODING_VERSION`` (u8), the record's tag (u8),
then every field in declaration order, ``seq`` (u64, the record's leaf index) first.
Integers are fixed-width little-endian; digests are 32 raw bytes; strings are a u32
length followed by that many bytes of UTF-8; lists are a u32 count followed by the items;
booleans are one byte, 0 or 1; enumerations are one byte (their code); nested structures
are their fields in order. Nothing is optional and nothing is implicit, so every record
has exactly one encoding, ``decode_record(encode_record(r)) == r``, and a byte string
that decodes at all re-encodes to itself.

The JSON form (what a person reads) is the pydantic model dump: digests and keys as
lowercase hex, enumerations by name, a ``type`` field naming the record.
"""
from __future__ import annotations

import functools
import struct
from fractions import Fraction
from math import gcd
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from spec.merkle import BLAKE3, HASHERS, Hasher, leaf_hash

ENCODING_VERSION = 1  # first byte of every canonical record encoding
SPEC_VERSION = "fieldprint-ledger/2"  # the ledger spec version a genesis names
DIGEST_SIZE = 32  # bytes of every digest and commitment (= 256 bits)
PUBLIC_KEY_SIZE = 32  # bytes of an Ed25519 public key (RFC 8032)
MAX_STRING_BYTES = 2**16  # (= 65,536) longest UTF-8 string a record may hold
MAX_LIST_ITEMS = 2**20  # (= 1,048,576) most items a list field may hold
ZERO_DIGEST = bytes(DIGEST_SIZE)  # stands for "absent" in digest fields that say so


# ---------------------------------------------------------------------------------------
# Errors. Every failure while reading, decoding or verifying a ledger is a LedgerError.
# ---------------------------------------------------------------------------------------


class LedgerError(Exception):
    """A ledger could not be read or does not verify; ``reason`` is a stable short code."""

    def __init__(self, reason: str, message: str, *, offset: int | None = None,
                 index: int | None = None):
        self.reason = reason
        self.message = message
        self.offset = offset  # byte offset in the ledger file, where known
        self.index = index  # record (leaf) index, where known
        where = []
        if index is not None:
            where.append(f"record {index}")
        if offset is not None:
            where.append(f"offset {offset}")
        suffix = f" (at {', '.join(where)})" if where else ""
        super().__init__(f"{reason}: {message}{suffix}")

    def at(self, *, offset: int | None = None, index: int | None = None) -> "LedgerError":
        """Return a copy of this error located at ``offset`` / ``index``."""
        return type(self)(self.reason, self.message,
                          offset=self.offset if offset is None else offset,
                          index=self.index if index is None else index)


class EncodingError(LedgerError):
    """A byte string is not the canonical encoding of any record."""


class SequenceError(LedgerError):
    """Records are individually valid but do not form a valid ledger sequence."""


# ---------------------------------------------------------------------------------------
# Wire codecs. Each codec writes one field; `Wire(codec)` in a field's Annotated metadata
# says how that field is encoded. Field order in the class is byte order.
# ---------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise EncodingError("record-short",
                                f"{what} needs {n} bytes, only {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


class UInt:
    """Unsigned little-endian integer of ``size`` bytes."""

    def __init__(self, size: int):
        self.size = size
        self.fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[size]

    def encode(self, value: int) -> bytes:
        return struct.pack(self.fmt, value)

    def decode(self, r: _Reader, what: str) -> int:
        return struct.unpack(self.fmt, r.take(self.size, what))[0]

    def describe(self) -> str:
        return f"u{8 * self.size}"


class Bool:
    """One byte, 0x00 (false) or 0x01 (true); any other value is not canonical."""

    def encode(self, value: bool) -> bytes:
        return b"\x01" if value else b"\x00"

    def decode(self, r: _Reader, what: str) -> bool:
        b = r.take(1, what)[0]
        if b > 1:
            raise EncodingError("record-bool", f"{what} is boolean byte {b:#04x}, not 0 or 1")
        return b == 1

    def describe(self) -> str:
        return "bool (u8 0/1)"


class FixedBytes:
    """Exactly ``size`` raw bytes."""

    def __init__(self, size: int):
        self.size = size

    def encode(self, value: bytes) -> bytes:
        return bytes(value)

    def decode(self, r: _Reader, what: str) -> bytes:
        return bytes(r.take(self.size, what))

    def describe(self) -> str:
        return f"bytes[{self.size}]"


class Utf8:
    """A u32 byte length, then that many bytes of strict UTF-8."""

    def encode(self, value: str) -> bytes:
        raw = value.encode("utf-8")
        return struct.pack("<I", len(raw)) + raw

    def decode(self, r: _Reader, what: str) -> str:
        n = struct.unpack("<I", r.take(4, what + " length"))[0]
        if n > MAX_STRING_BYTES:
            raise EncodingError("record-field", f"{what} length {n} exceeds {MAX_STRING_BYTES}")
        raw = r.take(n, what)
        try:
            return raw.decode("utf-8", errors="strict")
        except UnicodeDecodeError as e:
            raise EncodingError("record-utf8", f"{what} is not valid UTF-8: {e.reason}") from None

    def describe(self) -> str:
        return "string (u32 length + UTF-8)"


class Enum8:
    """One byte holding the code of a named value."""

    def __init__(self, names: dict[str, int]):
        self.codes = dict(names)
        self.names = {v: k for k, v in names.items()}

    def encode(self, value: str) -> bytes:
        return bytes([self.codes[value]])

    def decode(self, r: _Reader, what: str) -> str:
        b = r.take(1, what)[0]
        if b not in self.names:
            raise EncodingError("record-field", f"{what} has unknown code {b}")
        return self.names[b]

    def describe(self) -> str:
        return "u8 enum: " + ", ".join(f"{v}={k}" for k, v in self.codes.items())


class ListOf:
    """A u32 item count, then the items; ``min_item`` bounds the count by the bytes left."""

    def __init__(self, item: Any, min_item: int):
        self.item = item
        self.min_item = min_item

    def encode(self, value) -> bytes:
        return struct.pack("<I", len(value)) + b"".join(self.item.encode(v) for v in value)

    def decode(self, r: _Reader, what: str) -> tuple:
        n = struct.unpack("<I", r.take(4, what + " count"))[0]
        if n > MAX_LIST_ITEMS or n * self.min_item > len(r.data) - r.pos:
            raise EncodingError("record-field", f"{what} claims {n} items, more than fit")
        return tuple(self.item.decode(r, f"{what}[{i}]") for i in range(n))

    def describe(self) -> str:
        return f"list (u32 count + items of {self.item.describe()})"


class Struct:
    """The fields of a nested model, in declaration order."""

    def __init__(self, model: type["_Wired"]):
        self.model = model

    def encode(self, value) -> bytes:
        return _encode_fields(value)

    def decode(self, r: _Reader, what: str):
        return _decode_fields(self.model, r, what)

    def describe(self) -> str:
        return f"struct {self.model.__name__}"


class Wire:
    """Annotated marker: the codec that writes a field."""

    def __init__(self, codec):
        self.codec = codec


def _from_hex(value):
    if isinstance(value, str):
        if len(value) % 2 or value.strip("0123456789abcdef"):
            raise ValueError("expected lowercase hex")
        return bytes.fromhex(value)
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value


def _hex_bytes(size: int, description: str):
    return Annotated[
        bytes,
        BeforeValidator(_from_hex),
        Field(min_length=size, max_length=size, description=description),
        PlainSerializer(lambda b: b.hex(), return_type=str, when_used="json"),
        WithJsonSchema({"type": "string", "pattern": f"^[0-9a-f]{{{2 * size}}}$",
                        "description": description}),
        Wire(FixedBytes(size)),
    ]


def _no_surrogates(value):
    if isinstance(value, str):
        value.encode("utf-8")  # raises on lone surrogates, which have no UTF-8 encoding
        if len(value.encode("utf-8")) > MAX_STRING_BYTES:
            raise ValueError(f"string longer than {MAX_STRING_BYTES} UTF-8 bytes")
    return value


U8 = Annotated[int, Field(ge=0, lt=2**8, strict=True), Wire(UInt(1))]
U32 = Annotated[int, Field(ge=0, lt=2**32, strict=True), Wire(UInt(4))]
U64 = Annotated[int, Field(ge=0, lt=2**64, strict=True), Wire(UInt(8))]
Flag = Annotated[bool, Field(strict=True), Wire(Bool())]
Text = Annotated[str, Field(strict=True), BeforeValidator(_no_surrogates), Wire(Utf8())]
Digest = _hex_bytes(DIGEST_SIZE, "32-byte digest, lowercase hex")
PublicKey = _hex_bytes(PUBLIC_KEY_SIZE, "32-byte Ed25519 public key (RFC 8032), lowercase hex")
LayerDigests = Annotated[tuple[Digest, ...], Wire(ListOf(FixedBytes(DIGEST_SIZE), DIGEST_SIZE))]
TokenIds = Annotated[tuple[Annotated[int, Field(ge=0, lt=2**32, strict=True)], ...],
                     Wire(ListOf(UInt(4), 4))]
BlockIds = Annotated[tuple[Annotated[int, Field(ge=0, lt=2**32, strict=True)], ...],
                     Wire(ListOf(UInt(4), 4))]
StopStrings = Annotated[
    tuple[Annotated[str, Field(strict=True), BeforeValidator(_no_surrogates)], ...],
    Wire(ListOf(Utf8(), 4))]
TokenSequences = Annotated[
    tuple[tuple[Annotated[int, Field(ge=0, lt=2**32, strict=True)], ...], ...],
    Wire(ListOf(ListOf(UInt(4), 4), 4))]


def _enum(names: dict[str, int]):
    return Annotated[Literal[tuple(names)], Wire(Enum8(names))]  # type: ignore[misc]


HASH_PROFILES = {"blake3": 1, "sha256": 2}
COMMIT_REASONS = {"prefill": 0, "every_n_tokens": 1, "end_of_turn": 2, "stop_sequence": 3,
                  "page_full": 4, "end_of_generation": 5, "explicit": 6}
END_REASONS = {"eos": 0, "max_tokens": 1, "stop_sequence": 2, "end_of_turn": 3,
               "cancelled": 4, "error": 5, "max_position": 6}
PAGE_KINDS = {"context": 0, "anchor": 1}


class _Wired(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _codec(model: type[_Wired], name: str):
    info = model.model_fields[name]
    for m in info.metadata:
        if isinstance(m, Wire):
            return m.codec
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, _Wired):
        return Struct(annotation)
    raise TypeError(f"{model.__name__}.{name} has no wire codec")  # a bug in this module


def _wire_fields(model: type[_Wired]) -> list[str]:
    return [n for n in model.model_fields if n != "type"]


@functools.cache
def _layout(model: type[_Wired]) -> tuple:
    # (field, codec) pairs in byte order; cached because models never change at run time
    return tuple((n, _codec(model, n)) for n in _wire_fields(model))


def _encode_fields(value: _Wired) -> bytes:
    return b"".join(codec.encode(getattr(value, n)) for n, codec in _layout(type(value)))


def _decode_fields(model: type[_Wired], r: _Reader, what: str) -> _Wired:
    fields = {n: codec.decode(r, f"{what}.{n}") for n, codec in _layout(model)}
    try:
        return model(**fields)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise EncodingError("record-field", f"{what}.{loc}: {first['msg']}") from None


# ---------------------------------------------------------------------------------------
# Nested structures of the genesis record.
# ---------------------------------------------------------------------------------------


class SamplingRecord(_Wired):
    """The run's ``spec.sampling.SamplingParams`` as reduced fractions, plus the token budget.

    ``temperature_num / temperature_den`` (0/1 = greedy); ``top_k`` (0 = off);
    ``top_p_num / top_p_den`` (0/1 = off, else in (0, 1]); ``seed``; ``max_new_tokens``.
    Fractions must be in lowest terms, so equal parameters have one encoding."""

    temperature_num: U32
    temperature_den: U32
    top_k: U32
    top_p_num: U32
    top_p_den: U32
    seed: U64
    max_new_tokens: U32

    @model_validator(mode="after")
    def _check(self):
        for what, num, den in (("temperature", self.temperature_num, self.temperature_den),
                               ("top_p", self.top_p_num, self.top_p_den)):
            if den == 0 or gcd(num, den) != 1:
                raise ValueError(f"{what} must be a fraction in lowest terms with denominator >= 1")
        if self.top_p_num > self.top_p_den:
            raise ValueError("top_p must be <= 1")
        return self


def sampling_record(params, max_new_tokens: int) -> SamplingRecord:
    """Return the record form of a ``spec.sampling.SamplingParams``."""
    top_p = Fraction(0) if params.top_p is None else params.top_p
    return SamplingRecord(temperature_num=params.temperature.numerator,
                          temperature_den=params.temperature.denominator, top_k=params.top_k or 0,
                          top_p_num=top_p.numerator, top_p_den=top_p.denominator, seed=params.seed,
                          max_new_tokens=max_new_tokens)


def sampling_params(record: SamplingRecord):
    """Return the ``spec.sampling.SamplingParams`` a record states."""
    from spec.sampling import SamplingParams  # imported here: records do not need torch

    return SamplingParams(temperature=Fraction(record.temperature_num, record.temperature_den),
                          top_k=record.top_k or None,
                          top_p=None if record.top_p_num == 0 else Fraction(record.top_p_num, record.top_p_den),
                          seed=record.seed)


class CommitPolicy(_Wired):
    """When the runtime commits; every enabled trigger produces a ``commit`` record.

    ``every_n_tokens`` (0 = off) commits after each N generated tokens; ``on_end_of_turn``
    commits after a token in ``end_of_turn_tokens``; ``on_stop_sequence`` commits when the
    generated tokens end with one of ``stop_sequences``; ``on_page_full`` commits when a
    KV page becomes full. The end of generation always commits."""

    every_n_tokens: U32
    on_end_of_turn: Flag
    end_of_turn_tokens: TokenIds
    on_stop_sequence: Flag
    stop_sequences: TokenSequences
    on_page_full: Flag


class ReplayInputs(_Wired):
    """What a replay needs besides the ledger and the model, carried in the genesis.

    ``prompt_tokens`` and ``anchor_tokens`` are the token ids the genesis commits to
    (``prompt_commitment``, ``anchor_commitment``; checked by ``verify_ledger_structure``);
    ``window`` is the sliding window the run used, in tokens (0 = none); ``model_window`` is
    the model's own window (its committed ``config.sliding_window``, 0 = none): the two differ
    exactly when the user overrode the model's window, and a verifier checks ``model_window``
    against the model and reports an override. ``eos_token_ids`` and ``stop_strings`` end
    generation. A wrong window, EOS id or stop string makes the replay's tokens, pages or end
    differ from the ledger's."""

    prompt_tokens: TokenIds
    anchor_tokens: TokenIds
    window: U32
    model_window: U32
    eos_token_ids: TokenIds
    stop_strings: StopStrings


class EngineIdentity(_Wired):
    """Which engine produced the ledger: name, version and free-form build details."""

    name: Text
    version: Text
    build: Text


# ---------------------------------------------------------------------------------------
# Records. `seq` is the record's leaf index: 0 for genesis, then +1 per record.
# ---------------------------------------------------------------------------------------


class Genesis(_Wired):
    """Leaf 0: everything a verifier needs to know about the run before any token.

    ``anchor_commitment`` is ``ZERO_DIGEST`` when the run has no anchors. ``nonce`` is
    chosen by the runtime (random) so that two ledgers never share an origin. ``inputs``
    carries the prompt and anchor token ids and the options that end generation, so the
    ledger alone (with the model and the key) is enough to replay it."""

    type: Literal["genesis"] = "genesis"
    seq: U64
    spec_version: Text
    hash_profile: _enum(HASH_PROFILES)
    nonce: Digest
    sequence: U32
    model_commitment: Digest
    anchor_commitment: Digest
    prompt_commitment: Digest
    prompt_length: U32
    page_tokens: U32
    sampling: SamplingRecord
    commit_policy: CommitPolicy
    inputs: ReplayInputs
    engine: EngineIdentity
    key_name: Text
    public_key: PublicKey


class TokenStep(_Wired):
    """One generated token: ``step`` counts generated tokens from 0, ``attempt`` is 0
    until a rollback starts a new attempt, ``logits_digest`` is BLAKE3 over the step's
    integer logits row (int64, little-endian)."""

    type: Literal["token_step"] = "token_step"
    seq: U64
    step: U64
    attempt: U32
    token: U32
    logits_digest: Digest


class KVPage(_Wired):
    """The digests of one KV page as written: logical ``block`` of the sequence (or of the
    anchors), ``used`` token slots filled (1..page_tokens), ``layer_digests`` (BLAKE3 of each
    layer's slice of the page, in layer order) and ``digest``, their BLAKE3 Merkle root
    (``spec.commits.page_digest``), which stands for the page in commits and live states."""

    type: Literal["kv_page"] = "kv_page"
    seq: U64
    kind: _enum(PAGE_KINDS)
    block: U32
    used: U32
    digest: Digest
    layer_digests: LayerDigests


class Commit(_Wired):
    """A commit point, numbered from 0 in ledger order (numbers are never reused, not even
    after a rollback). It covers the generated tokens ``[first_step, end_step)`` (listed
    in ``tokens``), the ``page_count`` kv_page records since the previous commit (their
    digests' Merkle root is ``pages_root``, ``spec.merkle.merkle_root`` over the 32-byte
    digests) and ``live_state``, the Merkle root over the digests of all live pages in
    logical order (anchor blocks, then context blocks)."""

    type: Literal["commit"] = "commit"
    seq: U64
    commit: U32
    reason: _enum(COMMIT_REASONS)
    first_step: U64
    end_step: U64
    tokens: TokenIds
    page_count: U32
    pages_root: Digest
    live_state: Digest


class Validation(_Wired):
    """The outcome of a validator run on commit ``commit`` (``detail``: why, for people)."""

    type: Literal["validation"] = "validation"
    seq: U64
    commit: U32
    validator: Text
    passed: Flag
    detail: Text


class Rollback(_Wired):
    """The live state went back to the state of commit ``to_commit`` (a commit of the live
    branch); generation resumes at step ``to_step`` (that commit's ``end_step``) under
    ``attempt``, which exceeds every earlier attempt. Commits after ``to_commit`` are dropped
    from the live branch; ``live_state`` is the restored state's digest."""

    type: Literal["rollback"] = "rollback"
    seq: U64
    to_commit: U32
    to_step: U64
    attempt: U32
    reason: Text
    live_state: Digest


class End(_Wired):
    """End of generation after ``num_tokens`` generated tokens."""

    type: Literal["end"] = "end"
    seq: U64
    reason: _enum(END_REASONS)
    num_tokens: U64
    live_state: Digest


class KVEvict(_Wired):
    """Context ``blocks`` (strictly increasing) freed by the sliding window: their pages
    are no longer part of the live state."""

    type: Literal["kv_evict"] = "kv_evict"
    seq: U64
    blocks: BlockIds


RECORD_TYPES: dict[int, type[_Wired]] = {
    1: Genesis, 2: TokenStep, 3: KVPage, 4: Commit, 5: Validation, 6: Rollback, 7: End, 8: KVEvict,
}
RECORD_TAGS: dict[type[_Wired], int] = {cls: tag for tag, cls in RECORD_TYPES.items()}
Record = Annotated[Union[Genesis, TokenStep, KVPage, Commit, Validation, Rollback, End, KVEvict],
                   Field(discriminator="type")]
RECORD_ADAPTER: TypeAdapter = TypeAdapter(Record)


# ---------------------------------------------------------------------------------------
# Canonical encoding, JSON form, leaf hash.
# ---------------------------------------------------------------------------------------


def encode_record(record: _Wired) -> bytes:
    """Return the canonical encoding: version byte, type tag, then the fields in order."""
    return bytes([ENCODING_VERSION, RECORD_TAGS[type(record)]]) + _encode_fields(record)


def decode_record(data: bytes) -> _Wired:
    """Return the record whose canonical encoding is ``data``; raise EncodingError if none."""
    data = bytes(data)
    if len(data) < 2:
        raise EncodingError("record-short", f"record is {len(data)} bytes, less than 2")
    if data[0] != ENCODING_VERSION:
        raise EncodingError("record-version", f"encoding version {data[0]}, expected {ENCODING_VERSION}")
    cls = RECORD_TYPES.get(data[1])
    if cls is None:
        raise EncodingError("record-type", f"unknown record type tag {data[1]}")
    r = _Reader(data)
    r.pos = 2
    record = _decode_fields(cls, r, cls.__name__)
    if r.pos != len(data):
        raise EncodingError("record-trailing-bytes",
                            f"{len(data) - r.pos} bytes after the end of a {cls.__name__} record")
    return record


def record_to_json(record: _Wired) -> str:
    """Return the JSON form of ``record`` (compact, fields in declaration order)."""
    return record.model_dump_json()


def record_from_json(text: str | bytes) -> _Wired:
    """Parse the JSON form of a record; raise EncodingError if it is not one."""
    try:
        return RECORD_ADAPTER.validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise EncodingError("record-json", f"{loc}: {first['msg']}") from None


def record_leaf_hash(record: _Wired, hasher: Hasher = BLAKE3) -> bytes:
    """Return the Merkle leaf hash of a record: ``H(0x00 || encode_record(record))``."""
    return leaf_hash(encode_record(record), hasher)


def hasher_for(genesis: Genesis) -> Hasher:
    """Return the hash function named by a genesis record's ``hash_profile``."""
    return HASHERS[genesis.hash_profile]


def record_layout(cls: type[_Wired]) -> list[tuple[str, str]]:
    """Return ``(field, wire type)`` pairs of a record or structure, in byte order."""
    return [(n, _codec(cls, n).describe()) for n in _wire_fields(cls)]
