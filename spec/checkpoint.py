"""Signed checkpoints: a ledger's tree head as a C2SP signed note.

A checkpoint states that the ledger's first ``size`` records have Merkle root ``root``,
and names the previous checkpoint by hash, so the checkpoints of one ledger form a
chain. Its note text follows c2sp.org/tlog-checkpoint::

    <origin>\\n                      fieldprint/ledger/<profile>/<genesis leaf hash, hex>
    <size>\\n                        decimal, no leading zeros
    <base64 root>\\n                 standard base64 of the 32-byte root
    prev <base64 previous hash>\\n   extension line: checkpoint_hash of the previous
                                    checkpoint's note text, 32 zero bytes for the first

followed by a blank line and one signature line per signer (c2sp.org/signed-note):
``— <key name> <base64(key ID (4 bytes, big-endian) || Ed25519 signature)>``, where the
signature is over the note text (the four lines above, final newline included).

Deviations from tlog-checkpoint, all deliberate: the origin names the ledger, not the
key, so the key name differs from the origin (a SHOULD there); the ``prev`` extension line
is always present; in the BLAKE3 profile ``root`` is a BLAKE3 tree, which standard tlog
tooling cannot check; the SHA-256 profile's roots are ordinary RFC 6962 roots.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from spec.keys import KeyFormatError, SigningKey, Verifier, b64decode_canonical, b64encode
from spec.ledger import DIGEST_SIZE, ZERO_DIGEST, Genesis, LedgerError, hasher_for, record_leaf_hash
from spec.merkle import Hasher

ORIGIN_PREFIX = "fieldprint/ledger/"
PREV_KEYWORD = "prev"
SIGNATURE_DASH = "\u2014"  # em dash opening every signature line
MAX_NOTE_BYTES = 2**16  # (= 65,536) largest signed checkpoint accepted
_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")  # control characters other than newline
MAX_SIGNATURES = 64  # most signature lines accepted (signed-note asks for at least 16)


class CheckpointError(LedgerError):
    """A checkpoint is malformed, unsigned by the trusted key, or badly signed."""


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: ``size`` records with Merkle root ``root``, after checkpoint ``prev``."""

    origin: str
    size: int
    root: bytes
    prev: bytes = ZERO_DIGEST

    def body(self) -> bytes:
        """Return the note text: origin, size, base64 root, prev line, each ending in newline."""
        return (f"{self.origin}\n{self.size}\n{b64encode(self.root)}\n"
                f"{PREV_KEYWORD} {b64encode(self.prev)}\n").encode("utf-8")


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, key ID and the raw signature bytes."""

    name: str
    key_id: int
    signature: bytes


def ledger_origin(genesis: Genesis) -> str:
    """Return the origin line of a ledger: its hash profile and its genesis leaf hash."""
    return f"{ORIGIN_PREFIX}{genesis.hash_profile}/{record_leaf_hash(genesis, hasher_for(genesis)).hex()}"


def checkpoint_hash(body: bytes, hasher: Hasher) -> bytes:
    """Return H(note text), the value the next checkpoint's ``prev`` line carries."""
    return hasher(body)


def sign_note(text: bytes, key: SigningKey) -> bytes:
    """Return a signed note: ``text`` (ending in a newline), a blank line, one signature line by ``key``."""
    sig = key_id_bytes(key.verifier) + key.sign(text)
    return text + f"\n{SIGNATURE_DASH} {key.name} {b64encode(sig)}\n".encode("utf-8")


def sign_checkpoint(checkpoint: Checkpoint, key: SigningKey) -> bytes:
    """Return the signed checkpoint: its note text, a blank line, one signature line by ``key``."""
    return sign_note(checkpoint.body(), key)


def key_id_bytes(verifier: Verifier) -> bytes:
    """Return a key's ID as the 4 big-endian bytes that open its signatures."""
    return verifier.key_id.to_bytes(4, "big")


def _fail(reason: str, message: str) -> CheckpointError:
    return CheckpointError(reason, message)


def _parse_body(body: str) -> Checkpoint:
    lines = body[:-1].split("\n")
    if len(lines) != 4:
        raise _fail("checkpoint-format", f"note text has {len(lines)} lines, expected 4 (origin, size, root, prev)")
    origin, size_text, root_text, prev_line = lines
    if not origin or len(origin.split()) != 1 or origin.split()[0] != origin:
        raise _fail("checkpoint-format", "origin line is empty or contains a space")
    if not size_text.isdigit() or not size_text.isascii() or (size_text != "0" and size_text[0] == "0"):
        raise _fail("checkpoint-format", f"size line {size_text!r} is not a decimal without leading zeros")
    if len(size_text) > len(str(2**64 - 1)):  # before int(): Python refuses to parse over 4,300 digits
        raise _fail("checkpoint-format", f"size line has {len(size_text)} digits: it does not fit in 64 bits")
    size = int(size_text)
    if size >= 2**64:
        raise _fail("checkpoint-format", "size does not fit in 64 bits")
    try:
        root = b64decode_canonical(root_text, "root line")
        if not prev_line.startswith(PREV_KEYWORD + " "):
            raise _fail("checkpoint-format", f"fourth line must be '{PREV_KEYWORD} <base64 hash>'")
        prev = b64decode_canonical(prev_line[len(PREV_KEYWORD) + 1:], "prev line")
    except KeyFormatError as e:
        raise _fail("checkpoint-format", e.message) from None
    if len(root) != DIGEST_SIZE or len(prev) != DIGEST_SIZE:
        raise _fail("checkpoint-format", f"root and prev must be {DIGEST_SIZE}-byte hashes")
    return Checkpoint(origin, size, root, prev)


def _parse_signature_line(line: str) -> NoteSignature:
    prefix = SIGNATURE_DASH + " "
    if not line.startswith(prefix):
        raise _fail("checkpoint-format", "signature line must start with an em dash and a space")
    parts = line[len(prefix):].split(" ")
    if len(parts) != 2 or not parts[0]:
        raise _fail("checkpoint-format", "signature line must be '— <key name> <base64 signature>'")
    try:
        raw = b64decode_canonical(parts[1], "signature")
    except KeyFormatError as e:
        raise _fail("checkpoint-format", e.message) from None
    if len(raw) < 5:
        raise _fail("checkpoint-format", "signature shorter than a key ID plus one byte")
    return NoteSignature(parts[0], int.from_bytes(raw[:4], "big"), raw[4:])


def parse_note(note: bytes) -> tuple[bytes, list[NoteSignature]]:
    """Split a signed note strictly into (note text, signatures); signatures are not checked."""
    note = bytes(note)
    if len(note) > MAX_NOTE_BYTES:
        raise _fail("checkpoint-format", f"signed note is {len(note)} bytes, more than {MAX_NOTE_BYTES}")
    try:
        text = note.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise _fail("checkpoint-format", "signed note is not valid UTF-8") from None
    if _CONTROL.search(note):
        raise _fail("checkpoint-format", "signed note contains a control character")
    split = text.rfind("\n\n")
    if split < 0 or not text.endswith("\n"):
        raise _fail("checkpoint-format", "signed note needs text, a blank line and signature lines")
    body, sig_block = text[:split + 1], text[split + 2:]
    sig_lines = sig_block[:-1].split("\n") if sig_block else []
    if not sig_lines or len(sig_lines) > MAX_SIGNATURES:
        raise _fail("checkpoint-format", f"signed note has {len(sig_lines)} signature lines")
    return body.encode("utf-8"), [_parse_signature_line(line) for line in sig_lines]


def open_note(note: bytes, verifier: Verifier) -> bytes:
    """Return the text of ``note`` if it carries a valid signature by ``verifier``.

    As signed-note requires, lines by other keys (other name or key ID) are ignored; a line
    by the trusted key that fails to verify rejects the note."""
    body, sigs = parse_note(note)
    mine = [s for s in sigs if s.name == verifier.name and s.key_id == verifier.key_id]
    if not mine:
        names = ", ".join(f"{s.name}/{s.key_id:08x}" for s in sigs)
        raise _fail("checkpoint-untrusted-key",
                    f"no signature by {verifier.name}/{verifier.key_id:08x} (signed by {names})")
    for s in mine:
        if not verifier.verify(body, s.signature):
            raise _fail("checkpoint-signature", f"signature by {verifier.name} does not verify")
    return body


def parse_signed_checkpoint(note: bytes) -> tuple[Checkpoint, bytes, list[NoteSignature]]:
    """Parse a signed checkpoint strictly; return (checkpoint, note text, signatures).

    Signatures are not checked here; use ``verify_signed_checkpoint``."""
    body, sigs = parse_note(note)
    return _parse_body(body.decode("utf-8")), body, sigs


def verify_signed_checkpoint(note: bytes, verifier: Verifier) -> tuple[Checkpoint, bytes]:
    """Check ``note`` is a checkpoint validly signed by ``verifier``; return (checkpoint, note text)."""
    body = open_note(note, verifier)
    return _parse_body(body.decode("utf-8")), body
