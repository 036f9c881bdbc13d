"""The exported ledger file: one appendable, crash-safe file of records and checkpoints.

Layout (all integers little-endian)::

    header (16 bytes)
      0  magic         8  89 46 50 4c 0d 0a 1a 0a   ("\\x89FPL\\r\\n\\x1a\\n")
      8  version       2  u16 = 1
     10  hash_profile  1  u8: 1 = blake3, 2 = sha256 (must match the genesis record)
     11  reserved      1  0
     12  check         4  BLAKE3(bytes 0..11)[:4]
    frames, back to back, until the end of the file
      0  length        4  u32 payload length, at most MAX_FRAME_PAYLOAD (see "Frame sizes")
      4  kind          1  u8: 1 = record, 2 = checkpoint
      5  reserved      3  0
      8  header_check  4  BLAKE3(frame bytes 0..7)[:4]
     12  payload       length   record: canonical record encoding; checkpoint: signed note
     12+length check   8  BLAKE3(frame bytes 0..11 || payload)[:8]

A writer appends whole frames and may fsync after each. A crash can only leave a *torn
tail*: a last frame (or header) cut short. A reader therefore reports, besides the
entries it could read:

* ``complete``  - every byte belongs to a valid frame and the ledger is sealed: its last
  record is ``end`` and its last frame a checkpoint covering all records;
* ``truncated`` - the file stops inside a frame (torn tail) or, at a frame boundary,
  before the ledger is sealed; ``offset`` is where the valid prefix ends;
* ``corrupt``   - bytes at ``offset`` are not a valid frame (bad checksum, bad header,
  undecodable record or checkpoint); entries before it are still returned.

``read_ledger`` never raises anything but ``LedgerError``; ``verify_ledger_structure``
then checks what the frames say (sequence, signatures, roots, chain, consistency).

Frame sizes: the first frame (the genesis) holds at most ``MAX_FRAME_PAYLOAD`` bytes; a
checkpoint frame at most ``MAX_NOTE_BYTES``; every later record frame at most
``record_size_limit(genesis)``, the largest encoding a record of that ledger can have (a
``kv_page`` of ``MAX_PAGE_LAYERS`` layers, a validation with two longest strings, a commit of
``max_new_tokens`` tokens, an eviction of every block). A longer frame is corrupt
(``frame-too-large``) and is rejected from its header, before its payload is read: a reader
streams the file and holds only decoded records, never the file.
The per-frame checksums only detect accidents; authenticity comes from the signed
checkpoints over the Merkle tree of the records.
"""
from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, Sequence

import blake3 as _blake3

from spec.checkpoint import (
    MAX_NOTE_BYTES,
    Checkpoint,
    CheckpointError,
    checkpoint_hash,
    ledger_origin,
    parse_signed_checkpoint,
    sign_checkpoint,
    verify_signed_checkpoint,
)
from spec.commits import anchor_commitment, anchor_pages, anchor_slots, page_digest, pages_root, prompt_commitment
from spec.keys import SigningKey, Verifier, check_key_name
from spec.ledger import (
    DIGEST_SIZE,
    HASH_PROFILES,
    MAX_LIST_ITEMS,
    MAX_STRING_BYTES,
    SPEC_VERSION,
    ZERO_DIGEST,
    Commit,
    End,
    Genesis,
    KVEvict,
    KVPage,
    LedgerError,
    Rollback,
    SequenceError,
    TokenStep,
    Validation,
    decode_record,
    encode_record,
    hasher_for,
)
from spec.merkle import HASHERS, CompactRange, Hasher, leaf_hash
from spec.proofs import MerkleTree, ProofError, verify_consistency

MAGIC = b"\x89FPL\r\n\x1a\n"  # like PNG's: catches text-mode and 7-bit transfers
FILE_VERSION = 1
HEADER_SIZE = 16  # magic 8 + version 2 + profile 1 + reserved 1 + check 4
FRAME_HEADER_SIZE = 12  # length 4 + kind 1 + reserved 3 + header check 4
FRAME_CHECK_SIZE = 8  # truncated BLAKE3 of frame header and payload
MAX_FRAME_PAYLOAD = 2**24  # (= 16,777,216) bytes; longer frames are corrupt
MAX_PAGE_LAYERS = 2**12  # (= 4,096) most layer digests a kv_page may carry
FRAME_RECORD = 1
FRAME_CHECKPOINT = 2
PROFILE_NAMES = {code: name for name, code in HASH_PROFILES.items()}

Status = Literal["complete", "truncated", "corrupt"]


class FrameError(LedgerError):
    """Bytes of the ledger file are not a valid header or frame."""


def _check(data: bytes, size: int) -> bytes:
    return _blake3.blake3(data).digest()[:size]


# ---------------------------------------------------------------------------------------
# Encoding frames.
# ---------------------------------------------------------------------------------------


def encode_header(hash_profile: str) -> bytes:
    """Return the 16-byte file header for a hash profile ("blake3" or "sha256")."""
    head = MAGIC + struct.pack("<HBB", FILE_VERSION, HASH_PROFILES[hash_profile], 0)
    return head + _check(head, 4)


def encode_frame(kind: int, payload: bytes) -> bytes:
    """Return one frame: header (length, kind, reserved, header check), payload, check."""
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise FrameError("frame-too-large", f"payload of {len(payload)} bytes exceeds {MAX_FRAME_PAYLOAD}")
    head = struct.pack("<IB3x", len(payload), kind)
    head += _check(head, 4)
    return head + payload + _check(head + payload, FRAME_CHECK_SIZE)


# ---------------------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One frame read back: a decoded record, or a checkpoint (parsed, not yet verified).

    ``size`` is the whole frame's length in bytes; ``payload`` is kept for checkpoints only
    (a record's payload is its canonical encoding, ``encode_record(record)``)."""

    offset: int
    kind: int
    payload: bytes
    record: object | None = None
    checkpoint: Checkpoint | None = None
    size: int = 0


@dataclass
class LedgerRead:
    """What ``read_ledger`` found: header profile, entries of the valid prefix, status."""

    hash_profile: str | None
    entries: list[Entry]
    status: Status
    offset: int  # end of the valid prefix (== file length when complete)
    reason: str = ""  # short code, "" when complete
    error: LedgerError | None = None  # the precise problem when truncated or corrupt

    @property
    def records(self) -> list:
        return [e.record for e in self.entries if e.record is not None]


def record_size_limit(genesis: Genesis) -> int:
    """Return the most payload bytes a record frame after ``genesis`` may hold: the longest
    encoding of any record of that ledger, plus 1 KiB for fixed fields."""
    steps = min(genesis.sampling.max_new_tokens, MAX_LIST_ITEMS)
    blocks = min(-(-(genesis.prompt_length + steps) // max(1, genesis.page_tokens)), MAX_LIST_ITEMS)
    return 1024 + max(DIGEST_SIZE * MAX_PAGE_LAYERS, 2 * MAX_STRING_BYTES, 4 * steps, 4 * blocks)


def _read_header(data: bytes) -> str:
    if len(data) < HEADER_SIZE:
        if MAGIC.startswith(data[:len(MAGIC)]):
            raise FrameError("truncated-header", f"file is {len(data)} bytes, header needs {HEADER_SIZE}")
        raise FrameError("bad-magic", "file does not start with the Fieldprint ledger magic")
    if data[:8] != MAGIC:
        raise FrameError("bad-magic", "file does not start with the Fieldprint ledger magic")
    if _check(data[:12], 4) != data[12:16]:
        raise FrameError("header-checksum", "file header checksum does not match")
    version, profile, reserved = struct.unpack("<HBB", data[8:12])
    if version != FILE_VERSION:
        raise FrameError("bad-version", f"file version {version}, expected {FILE_VERSION}")
    if profile not in PROFILE_NAMES or reserved != 0:
        raise FrameError("bad-profile", f"hash profile code {profile} / reserved {reserved} not valid")
    return PROFILE_NAMES[profile]


def _read_frame(f: BinaryIO, pos: int, record_limit: int) -> tuple[Entry, int] | None:
    """Return the entry at ``pos`` (the stream's position) and the offset after it, or None at the
    end of the stream; raise FrameError otherwise. Record frames over ``record_limit`` bytes are
    rejected from the header, before their payload is read."""
    head = f.read(FRAME_HEADER_SIZE)
    if not head:
        return None
    if len(head) < FRAME_HEADER_SIZE:
        raise FrameError("truncated-frame", f"{len(head)} bytes left, a frame header needs {FRAME_HEADER_SIZE}")
    if _check(head[:8], 4) != head[8:12]:
        raise FrameError("frame-header-checksum", "frame header checksum does not match")
    length, kind = struct.unpack("<IB", head[:5])
    if head[5:8] != b"\x00\x00\x00":
        raise FrameError("frame-reserved", "frame header reserved bytes are not zero")
    if kind not in (FRAME_RECORD, FRAME_CHECKPOINT):
        raise FrameError("frame-kind", f"unknown frame kind {kind}")
    limit = record_limit if kind == FRAME_RECORD else MAX_NOTE_BYTES
    if length > limit:
        what = ("this ledger's genesis allows" if limit < MAX_FRAME_PAYLOAD else "the format allows") \
            if kind == FRAME_RECORD else "a signed checkpoint may have"
        raise FrameError("frame-too-large", f"{'record' if kind == FRAME_RECORD else 'checkpoint'} frame claims "
                         f"{length} payload bytes, {what} at most {limit}")
    body = f.read(length + FRAME_CHECK_SIZE)
    if len(body) < length + FRAME_CHECK_SIZE:
        raise FrameError("truncated-frame", f"frame needs {FRAME_HEADER_SIZE + length + FRAME_CHECK_SIZE} bytes, "
                         f"only {FRAME_HEADER_SIZE + len(body)} left")
    payload, check = body[:length], body[length:]
    if _check(head + payload, FRAME_CHECK_SIZE) != check:
        raise FrameError("frame-checksum", "frame checksum does not match its contents")
    size = FRAME_HEADER_SIZE + length + FRAME_CHECK_SIZE
    if kind == FRAME_RECORD:
        return Entry(pos, kind, b"", record=decode_record(payload), size=size), pos + size
    return Entry(pos, kind, payload, checkpoint=parse_signed_checkpoint(payload)[0], size=size), pos + size


_TORN = ("truncated-header", "truncated-frame")


def _read_stream(f: BinaryIO) -> LedgerRead:
    """Read a ledger from a binary stream, frame by frame; see the module docstring."""
    try:
        profile = _read_header(f.read(HEADER_SIZE))
    except LedgerError as e:
        status: Status = "truncated" if e.reason in _TORN else "corrupt"
        return LedgerRead(None, [], status, 0, e.reason, e.at(offset=0))
    entries: list[Entry] = []
    pos, limit, n = HEADER_SIZE, MAX_FRAME_PAYLOAD, 0
    while True:
        try:
            got = _read_frame(f, pos, limit)
        except LedgerError as e:
            status = "truncated" if e.reason in _TORN else "corrupt"
            return LedgerRead(profile, entries, status, pos, e.reason, e.at(offset=pos, index=n))
        if got is None:
            break
        entry, pos = got
        entries.append(entry)
        if entry.record is not None:
            n += 1
            if n == 1 and isinstance(entry.record, Genesis):
                limit = record_size_limit(entry.record)
    sealed = _sealed(entries)
    if sealed is not None:
        return LedgerRead(profile, entries, "truncated", pos, sealed.reason, sealed.at(offset=pos, index=n))
    return LedgerRead(profile, entries, "complete", pos)


def parse_ledger_bytes(data: bytes) -> LedgerRead:
    """Read a whole ledger file's bytes; see the module docstring for the statuses."""
    return _read_stream(io.BytesIO(data))


def _sealed(entries: list[Entry]) -> LedgerError | None:
    records = [e.record for e in entries if e.record is not None]
    if len(entries) < 2 or entries[-1].checkpoint is None or entries[-2].record is None:
        return FrameError("not-sealed", "ledger does not end with an end record and a checkpoint")
    if not isinstance(entries[-2].record, End) or entries[-1].checkpoint.size != len(records):
        return FrameError("not-sealed", "ledger's last checkpoint does not follow an end record covering it")
    return None


def read_ledger(path: str | os.PathLike) -> LedgerRead:
    """Read a ledger file, streaming (it is never held whole); raise only ``LedgerError`` (also for I/O errors)."""
    try:
        with open(path, "rb") as f:
            return _read_stream(f)
    except OSError as e:
        raise LedgerError("io", f"cannot read {os.fspath(path)}: {e.strerror}") from None


# ---------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------


class LedgerWriter:
    """Append records and signed checkpoints to a ledger file, one whole frame per write.

    With ``fsync=True`` every frame is flushed to disk before ``append_*`` returns, so after a
    crash the file is a valid prefix plus at most one torn frame, which ``open`` cuts off."""

    def __init__(self, path: str | os.PathLike, hash_profile: str, *, fsync: bool = True, _resume=None):
        self.path = os.fspath(path)
        self.hash_profile = hash_profile
        self.hasher: Hasher = HASHERS[hash_profile]
        self.fsync = fsync
        self.tree = CompactRange(self.hasher)
        self.count = 0
        self.genesis: Genesis | None = None
        self.prev = ZERO_DIGEST
        if _resume is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self._file = os.fdopen(fd, "wb")
            self._write(encode_header(hash_profile))
            self._sync_dir()
        else:
            read, valid_end = _resume
            with open(self.path, "r+b") as f:
                f.truncate(valid_end)
            self._file = open(self.path, "ab")
            for e in read.entries:
                if e.record is not None:
                    self._track(e.record)
                else:
                    self.prev = checkpoint_hash(e.checkpoint.body(), self.hasher)

    @classmethod
    def create(cls, path, hash_profile: str = "blake3", *, fsync: bool = True) -> "LedgerWriter":
        """Create a new ledger file (it must not exist) holding just the header."""
        return cls(path, hash_profile, fsync=fsync)

    @classmethod
    def open(cls, path, *, fsync: bool = True) -> "LedgerWriter":
        """Reopen a ledger for appending; a torn tail is cut off, corruption is an error."""
        read = read_ledger(path)
        if read.status == "corrupt" or read.hash_profile is None:
            raise read.error or FrameError("corrupt", "ledger cannot be reopened")
        if read.status == "complete":
            raise FrameError("sealed", "ledger is sealed (ends with end + checkpoint); nothing can follow")
        return cls(path, read.hash_profile, fsync=fsync, _resume=(read, read.offset))

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def _sync_dir(self) -> None:
        if self.fsync:
            fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _track(self, record) -> None:
        if isinstance(record, Genesis):
            self.genesis = record
        self.tree.append(encode_record(record))
        self.count += 1

    def append_record(self, record) -> None:
        """Append one record; its ``seq`` must be the number of records so far."""
        if record.seq != self.count:
            raise SequenceError("record-seq", f"record seq {record.seq}, expected {self.count}")
        if isinstance(record, Genesis) and record.hash_profile != self.hash_profile:
            raise SequenceError("profile-mismatch", "genesis names another hash profile than the file")
        self._write(encode_frame(FRAME_RECORD, encode_record(record)))
        self._track(record)

    def checkpoint(self, key: SigningKey) -> bytes:
        """Sign a checkpoint over all records so far, append it, and return the signed note."""
        if self.genesis is None:
            raise SequenceError("checkpoint-before-genesis", "no genesis record yet")
        cp = Checkpoint(ledger_origin(self.genesis), self.count, self.tree.root(), self.prev)
        note = sign_checkpoint(cp, key)
        self._write(encode_frame(FRAME_CHECKPOINT, note))
        self.prev = checkpoint_hash(cp.body(), self.hasher)
        return note

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def build_ledger_bytes(records: Sequence, key: SigningKey, checkpoint_after: Sequence[int],
                       hash_profile: str = "blake3") -> bytes:
    """Return a ledger file's bytes: ``records`` with a checkpoint after each index listed."""
    hasher = HASHERS[hash_profile]
    out = [encode_header(hash_profile)]
    tree, prev, origin = CompactRange(hasher), ZERO_DIGEST, None
    for i, record in enumerate(records):
        out.append(encode_frame(FRAME_RECORD, encode_record(record)))
        tree.append(encode_record(record))
        if isinstance(record, Genesis):
            origin = ledger_origin(record)
        if i in checkpoint_after:
            cp = Checkpoint(origin, i + 1, tree.root(), prev)
            out.append(encode_frame(FRAME_CHECKPOINT, sign_checkpoint(cp, key)))
            prev = checkpoint_hash(cp.body(), hasher)
    return b"".join(out)


# ---------------------------------------------------------------------------------------
# Structural verification.
# ---------------------------------------------------------------------------------------


@dataclass
class LedgerReport:
    """The result of ``verify_ledger_structure``.

    ``status`` is ``complete`` (sealed and everything verified), ``truncated`` (a valid,
    verified prefix of an unfinished or torn ledger), ``corrupt`` (bytes are damaged) or
    ``invalid`` (well-formed frames that break a rule: sequence, signature, root, chain).
    ``error`` is the first divergence for ``corrupt`` / ``invalid``, located by record
    index and byte offset. ``verified_size`` is the number of records covered by the last
    checkpoint that verified; records past it are not signed yet."""

    status: Literal["complete", "truncated", "corrupt", "invalid"]
    records: list = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    verified_size: int = 0
    error: LedgerError | None = None
    reason: str = ""
    key_source: Literal["trusted", "genesis", "none"] = "none"

    @property
    def ok(self) -> bool:
        return self.status == "complete"


class _SequenceState:
    """The record-sequence rules, fed one record at a time (see ``docs/spec/ledger.md``)."""

    def __init__(self):
        self.genesis: Genesis | None = None
        self.next_step = 0
        self.attempt = 0
        self.max_attempt = 0
        self.num_commits = 0  # commit numbers are never reused, even after a rollback
        self.live: list[Commit] = []  # the commits of the current branch, oldest first
        self.steps_since_commit: list[int] = []
        self.pages_since_commit: list[bytes] = []
        self.num_anchor_pages = 0  # anchor kv_page records due right after the genesis
        self.anchor_digests: list[bytes] = []
        self.num_layers = 0  # layer digests per kv_page (the first page sets it)
        self.ended = False

    def feed(self, i: int, r) -> None:
        def fail(reason, message):
            raise SequenceError(reason, message, index=i)

        if r.seq != i:
            fail("record-seq", f"record claims seq {r.seq}, it is record {i}")
        if self.ended:
            fail("record-after-end", f"{r.type} record after the end record")
        if i == 0:
            if not isinstance(r, Genesis):
                fail("genesis-not-first", f"first record is {r.type}, not genesis")
            self._genesis(r, fail)
            return
        if isinstance(r, Genesis):
            fail("duplicate-genesis", "a second genesis record")
        if isinstance(r, KVPage):
            self._page_layers(r, fail)
        if isinstance(r, KVPage) and r.kind == "anchor" or len(self.anchor_digests) < self.num_anchor_pages:
            self._anchor_page(r, fail)
        if isinstance(r, TokenStep):
            if r.step != self.next_step:
                fail("step-order", f"token step {r.step}, expected step {self.next_step}")
            if r.attempt != self.attempt:
                fail("step-attempt", f"token step attempt {r.attempt}, expected {self.attempt}")
            self.steps_since_commit.append(r.token)
            self.next_step += 1
        elif isinstance(r, KVPage):
            if not 1 <= r.used <= self.genesis.page_tokens:
                fail("page-used", f"page uses {r.used} slots, page size is {self.genesis.page_tokens}")
            self.pages_since_commit.append(r.digest)
        elif isinstance(r, KVEvict):
            if not r.blocks or any(a >= b for a, b in zip(r.blocks, r.blocks[1:])):
                fail("evict-blocks", "evicted blocks must be a non-empty, strictly increasing list")
        elif isinstance(r, Commit):
            self._commit(r, fail)
        elif isinstance(r, Validation):
            if r.commit >= self.num_commits:
                fail("validation-commit", f"validation of commit {r.commit}, only {self.num_commits} commits so far")
        elif isinstance(r, Rollback):
            self._rollback(r, fail)
        elif isinstance(r, End):
            if r.num_tokens != self.next_step:
                fail("end-count", f"end says {r.num_tokens} tokens, ledger has {self.next_step}")
            if self.steps_since_commit or self.pages_since_commit:
                fail("end-uncommitted", "tokens or pages after the last commit")
            self.ended = True

    def _page_layers(self, r: KVPage, fail) -> None:
        """Every page has the same number (>= 1) of layer digests; ``digest`` is their root."""
        n = len(r.layer_digests)
        if n == 0 or n != (self.num_layers or n):
            fail("page-layers", f"page has {n} layer digests, " + (f"earlier pages {self.num_layers}"
                                                                   if n else "at least one is needed"))
        self.num_layers = n
        if page_digest(r.layer_digests) != r.digest:
            fail("page-digest", f"{r.kind} block {r.block}: digest is not the Merkle root of its layer digests")

    def _genesis(self, g: Genesis, fail) -> None:
        """Check the replay inputs against the genesis commitments (anchors: see _anchor_page)."""
        self.genesis = g
        if g.page_tokens == 0:
            fail("page-tokens", "genesis says pages hold 0 tokens")
        prompt = g.inputs.prompt_tokens
        if len(prompt) != g.prompt_length or prompt_commitment(prompt) != g.prompt_commitment:
            fail("prompt-commitment", f"the genesis inputs' {len(prompt)} prompt tokens are not the prompt of "
                 f"length {g.prompt_length} the genesis commits to")
        self.num_anchor_pages = anchor_pages(len(g.inputs.anchor_tokens), g.page_tokens)
        if self.num_anchor_pages == 0:
            self._check_anchor_commitment(fail)

    def _anchor_page(self, r, fail) -> None:
        """Records 1..n are the n anchor pages, in page order; none appears anywhere else."""
        k, n = len(self.anchor_digests), self.num_anchor_pages
        if k >= n or not isinstance(r, KVPage) or r.kind != "anchor" or r.block != k:
            fail("anchor-page", f"{r.type} record where anchor page {k} of {n} is due" if k < n else
                 f"anchor page record after the {n} anchor pages that follow the genesis")
        want = anchor_slots(k, len(self.genesis.inputs.anchor_tokens), self.genesis.page_tokens)
        if r.used != want:
            fail("anchor-page", f"anchor page {k} uses {r.used} slots, its anchor tokens fill {want}")
        self.anchor_digests.append(r.digest)
        if k + 1 == n:
            self._check_anchor_commitment(fail)

    def _check_anchor_commitment(self, fail) -> None:
        g = self.genesis
        want = anchor_commitment(g.inputs.anchor_tokens, self.anchor_digests, hasher_for(g))
        if want != g.anchor_commitment:
            fail("anchor-commitment", "the genesis inputs' anchor tokens and the anchor page records are not "
                 "the anchors the genesis commits to")

    def _commit(self, r: Commit, fail) -> None:
        if r.commit != self.num_commits:
            fail("commit-index", f"commit number {r.commit}, expected {self.num_commits}")
        first = self.live[-1].end_step if self.live else 0
        if r.first_step != first or r.end_step != self.next_step:
            fail("commit-range", f"commit covers steps [{r.first_step}, {r.end_step}), expected [{first}, {self.next_step})")
        if list(r.tokens) != self.steps_since_commit:
            fail("commit-tokens", "commit's tokens differ from the token steps since the last commit")
        if r.page_count != len(self.pages_since_commit) or r.pages_root != pages_root(
                self.pages_since_commit, hasher_for(self.genesis)):
            fail("commit-pages", f"commit's pages ({r.page_count}) differ from the {len(self.pages_since_commit)} "
                 "kv_page records since the last commit")
        self.num_commits += 1
        self.live.append(r)
        self.steps_since_commit, self.pages_since_commit = [], []

    def _rollback(self, r: Rollback, fail) -> None:
        target = [c for c in self.live if c.commit == r.to_commit]
        if not target:
            fail("rollback-target", f"rollback to commit {r.to_commit}, which is not on the live branch")
        if r.to_step != target[0].end_step:
            fail("rollback-target", f"rollback to step {r.to_step}, commit {r.to_commit} ends at {target[0].end_step}")
        if self.steps_since_commit or self.pages_since_commit:
            fail("rollback-uncommitted", "rollback with uncommitted tokens or pages")
        if r.attempt <= self.max_attempt:
            fail("rollback-attempt", f"rollback attempt {r.attempt}, must exceed {self.max_attempt}")
        self.live = self.live[:self.live.index(target[0]) + 1]
        self.next_step, self.attempt, self.max_attempt = r.to_step, r.attempt, r.attempt


def verify_ledger_structure(source: bytes | str | os.PathLike | LedgerRead, trusted: Verifier | None = None,
                            *, check_consistency: bool = True) -> LedgerReport:
    """Check a ledger file's frames, record sequence, checkpoint signatures, roots and chain.

    ``trusted`` is the engine's public key; without it the genesis key is used, which only
    shows the ledger is self-consistent (``key_source == "genesis"``). Never raises but
    ``LedgerError`` (for unreadable files); everything else is reported in the result."""
    if isinstance(source, LedgerRead):
        read = source
    else:
        read = parse_ledger_bytes(source) if isinstance(source, (bytes, bytearray)) else read_ledger(source)
    report = LedgerReport("truncated")
    try:
        _verify_entries(read, trusted, report, check_consistency)
    except LedgerError as e:
        report.status, report.error, report.reason = "invalid", e, e.reason
        return report
    if read.status == "corrupt":
        report.status, report.error, report.reason = "corrupt", read.error, read.reason
    elif read.status == "truncated":
        report.status, report.reason = "truncated", read.reason
        report.error = read.error
    else:
        report.status = "complete"
    return report


def _verify_entries(read: LedgerRead, trusted: Verifier | None, report: LedgerReport, check_consistency: bool) -> None:
    walk = _Walk(read, trusted, report, check_consistency)
    for n, e in enumerate(read.entries):
        if e.record is not None:
            walk.record(e, read.entries[n + 1] if n + 1 < len(read.entries) else None)
        else:
            walk.checkpoint(e)


class _Walk:
    """The state of one verification pass over a ledger's entries, in file order."""

    def __init__(self, read: LedgerRead, trusted: Verifier | None, report: LedgerReport, check_consistency: bool):
        self.read, self.trusted, self.report, self.check_consistency = read, trusted, report, check_consistency
        self.seq = _SequenceState()
        self.tree: MerkleTree | None = None
        self.verifier, self.origin, self.prev = trusted, None, ZERO_DIGEST
        self.last: Checkpoint | None = None

    def record(self, e: Entry, nxt: Entry | None) -> None:
        """Apply the sequence rules to one record and add it to the tree."""
        i = self.tree.size if self.tree is not None else 0
        if i == 0 and isinstance(e.record, Genesis):
            hasher, self.verifier, self.origin = _start(self.read, e, self.trusted, self.report)
            self.tree = MerkleTree(hasher)
        try:
            self.seq.feed(i, e.record)
        except LedgerError as err:
            raise err.at(offset=e.offset)
        self.tree.append_leaf_hash(leaf_hash(encode_record(e.record), self.tree.hasher))
        self.report.records.append(e.record)
        if isinstance(e.record, (Commit, End)) and nxt is not None and nxt.checkpoint is None:
            raise SequenceError("checkpoint-missing", f"{e.record.type} record not followed by a checkpoint",
                                index=i, offset=nxt.offset)

    def checkpoint(self, e: Entry) -> None:
        """Check one checkpoint: signature, origin, size, root, prev hash, consistency."""
        tree = self.tree
        where = dict(index=tree.size if tree is not None else 0, offset=e.offset)
        if tree is None:
            raise CheckpointError("checkpoint-before-genesis", "checkpoint before the genesis record", **where)
        try:
            cp, body = verify_signed_checkpoint(e.payload, self.verifier)
        except LedgerError as err:
            raise err.at(**where)

        def fail(reason, message):
            raise CheckpointError(reason, message, **where)

        if cp.origin != self.origin:
            fail("checkpoint-origin", f"checkpoint origin {cp.origin!r} is not this ledger's {self.origin!r}")
        if cp.size != tree.size:
            fail("checkpoint-size", f"checkpoint covers {cp.size} records, {tree.size} precede it")
        if cp.root != tree.root():
            fail("checkpoint-root", f"checkpoint root {cp.root.hex()} differs from the recomputed root "
                 f"{tree.root().hex()} of {cp.size} records")
        if cp.prev != self.prev:
            fail("checkpoint-prev", "checkpoint's prev hash is not the previous checkpoint's hash")
        if self.check_consistency and self.last is not None:
            try:
                proof = tree.consistency_proof(self.last.size, cp.size)
                verify_consistency(self.last.size, cp.size, proof, self.last.root, cp.root, tree.hasher)
            except ProofError as err:
                fail("checkpoint-consistency", err.message)
        self.prev, self.last = checkpoint_hash(body, tree.hasher), cp
        self.report.checkpoints.append(cp)
        self.report.verified_size = cp.size


def _start(read: LedgerRead, e: Entry, trusted: Verifier | None, report: LedgerReport):
    genesis: Genesis = e.record
    if genesis.spec_version != SPEC_VERSION:
        raise SequenceError("spec-version", f"genesis names spec {genesis.spec_version!r}, this verifier "
                            f"implements {SPEC_VERSION!r}", index=0, offset=e.offset)
    try:
        check_key_name(genesis.key_name)
    except LedgerError as err:
        raise SequenceError("genesis-key", err.message, index=0, offset=e.offset) from None
    if genesis.hash_profile != read.hash_profile:
        raise SequenceError("profile-mismatch", f"genesis names {genesis.hash_profile}, file header "
                            f"{read.hash_profile}", index=0, offset=e.offset)
    own = Verifier(genesis.key_name, genesis.public_key)
    if trusted is not None and (trusted.name, trusted.public_key) != (own.name, own.public_key):
        raise SequenceError("key-mismatch", f"genesis key {own.name}/{own.key_id:08x} is not the trusted key "
                            f"{trusted.name}/{trusted.key_id:08x}", index=0, offset=e.offset)
    report.key_source = "trusted" if trusted is not None else "genesis"
    return hasher_for(genesis), own, ledger_origin(genesis)
