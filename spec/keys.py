"""Ed25519 keys for signing checkpoints, in the formats of C2SP signed-note.

* A key has a *name* (non-empty; no whitespace, no ``+``; a schema-less URL is
  recommended) and a 32-byte Ed25519 public key (RFC 8032).
* Its *key ID* is ``SHA-256(name || 0x0A || 0x01 || public key)[:4]`` read as a
  big-endian u32 (c2sp.org/signed-note, "Ed25519 signatures"; 0x01 = Ed25519).
* Public key file (``fieldprint keygen``): one line, the note *verifier string*
  ``<name>+<key ID as 8 hex digits>+<base64(0x01 || public key)>``.
* Private key file: either the note *signer string*
  ``PRIVATE+KEY+<name>+<key ID hex>+<base64(0x01 || 32-byte seed)>``, or a PKCS#8 PEM
  (``-----BEGIN PRIVATE KEY-----``, which carries no name: the name is given separately),
  or the raw 32-byte seed.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from spec.ledger import LedgerError

ED25519_ALGORITHM = 0x01  # signed-note signature type byte for Ed25519
SEED_SIZE = 32  # bytes of an Ed25519 private key seed (RFC 8032)
PUBLIC_KEY_SIZE = 32  # bytes of an Ed25519 public key
SIGNATURE_SIZE = 64  # bytes of an Ed25519 signature
SIGNER_PREFIX = "PRIVATE+KEY+"


class KeyFormatError(LedgerError):
    """A key, key file or key name is malformed."""


def b64encode(data: bytes) -> str:
    """Return the standard base64 (RFC 4648 section 4) encoding of ``data``."""
    return base64.b64encode(data).decode("ascii")


def b64decode_canonical(text: str, what: str) -> bytes:
    """Decode standard base64, rejecting any text that is not the canonical encoding."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise KeyFormatError("base64", f"{what} is not valid base64") from None
    if b64encode(raw) != text:  # e.g. non-zero padding bits: same bytes, different text
        raise KeyFormatError("base64", f"{what} is not canonical base64")
    return raw


def check_key_name(name: str) -> str:
    """Return ``name`` if it is a valid note key name; raise KeyFormatError otherwise."""
    if not isinstance(name, str) or not name:
        raise KeyFormatError("key-name", "key name must be a non-empty string")
    if "+" in name or any(c.isspace() for c in name) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise KeyFormatError("key-name", f"key name {name!r} contains '+', a space or a control character")
    return name


def key_id(name: str, public_key: bytes) -> int:
    """Return the signed-note key ID of an Ed25519 key: SHA-256(name \\n 0x01 key)[:4], big-endian."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ED25519_ALGORITHM]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class Verifier:
    """A named Ed25519 public key that verifies note signatures."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> int:
        return key_id(self.name, self.public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Return whether ``signature`` is this key's Ed25519 signature of ``message``."""
        if len(signature) != SIGNATURE_SIZE:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
            return True
        except (InvalidSignature, ValueError):  # ValueError: not a valid Ed25519 public key
            return False

    def to_string(self) -> str:
        """Return the note verifier string ``name+keyid+base64(0x01||key)``."""
        return f"{self.name}+{self.key_id:08x}+{b64encode(bytes([ED25519_ALGORITHM]) + self.public_key)}"


@dataclass(frozen=True)
class SigningKey:
    """A named Ed25519 private key (held as its 32-byte seed)."""

    name: str
    seed: bytes

    def __post_init__(self):
        check_key_name(self.name)
        if len(self.seed) != SEED_SIZE:
            raise KeyFormatError("key-seed", f"Ed25519 seed must be {SEED_SIZE} bytes, got {len(self.seed)}")

    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public_key(self) -> bytes:
        return self._private().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.public_key)

    def sign(self, message: bytes) -> bytes:
        """Return the Ed25519 signature (64 bytes, deterministic per RFC 8032) of ``message``."""
        return self._private().sign(message)

    def to_string(self) -> str:
        """Return the note signer string ``PRIVATE+KEY+name+keyid+base64(0x01||seed)``."""
        kid = key_id(self.name, self.public_key)
        return f"{SIGNER_PREFIX}{self.name}+{kid:08x}+{b64encode(bytes([ED25519_ALGORITHM]) + self.seed)}"

    def to_pem(self) -> bytes:
        """Return the private key as unencrypted PKCS#8 PEM (the name is not included)."""
        return self._private().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())


def generate_signing_key(name: str) -> SigningKey:
    """Return a fresh random Ed25519 key named ``name``."""
    seed = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                      serialization.NoEncryption())
    return SigningKey(check_key_name(name), seed)


def _split_key_string(text: str, parts: int, what: str) -> list[str]:
    fields = text.split("+", parts - 1)  # the base64 key may itself contain "+"
    if len(fields) != parts:
        raise KeyFormatError("key-format", f"{what} must have {parts} '+'-separated fields, has {len(fields)}")
    return fields


def _decode_key_body(name: str, kid_hex: str, body: str, what: str) -> bytes:
    check_key_name(name)
    if len(kid_hex) != 8 or any(c not in "0123456789abcdef" for c in kid_hex):
        raise KeyFormatError("key-format", f"{what} key ID {kid_hex!r} is not 8 lowercase hex digits")
    raw = b64decode_canonical(body, f"{what} key")
    if len(raw) != 1 + PUBLIC_KEY_SIZE or raw[0] != ED25519_ALGORITHM:
        raise KeyFormatError("key-algorithm", f"{what} is not an Ed25519 key (0x01 + 32 bytes)")
    return raw[1:]


def parse_verifier(text: str) -> Verifier:
    """Parse a note verifier string; raise KeyFormatError if malformed or its key ID is wrong."""
    text = text.strip()
    name, kid_hex, body = _split_key_string(text, 3, "verifier string")
    v = Verifier(name, _decode_key_body(name, kid_hex, body, "verifier string"))
    if f"{v.key_id:08x}" != kid_hex:
        raise KeyFormatError("key-id", f"verifier key ID {kid_hex} does not match its key ({v.key_id:08x})")
    return v


def parse_signer(text: str) -> SigningKey:
    """Parse a note signer string ``PRIVATE+KEY+...``; raise KeyFormatError if malformed."""
    text = text.strip()
    if not text.startswith(SIGNER_PREFIX):
        raise KeyFormatError("key-format", "signer string must start with PRIVATE+KEY+")
    name, kid_hex, body = _split_key_string(text[len(SIGNER_PREFIX):], 3, "signer string")
    key = SigningKey(name, _decode_key_body(name, kid_hex, body, "signer string"))
    if f"{key_id(name, key.public_key):08x}" != kid_hex:
        raise KeyFormatError("key-id", f"signer key ID {kid_hex} does not match its key")
    return key


def load_signing_key(data: bytes, name: str | None = None) -> SigningKey:
    """Read a private key file's bytes: signer string, PKCS#8 PEM or raw 32-byte seed.

    ``name`` is required for PEM and raw seeds (they carry none) and, when given for a
    signer string, must match the name inside it."""
    if data.startswith(SIGNER_PREFIX.encode()):
        try:
            key = parse_signer(data.decode("ascii"))
        except UnicodeDecodeError:
            raise KeyFormatError("key-format", "signer string is not ASCII") from None
        if name is not None and name != key.name:
            raise KeyFormatError("key-name", f"key file names {key.name!r}, expected {name!r}")
        return key
    if name is None:
        raise KeyFormatError("key-name", "a PEM or raw key file carries no name; give one")
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise KeyFormatError("key-format", f"unreadable PEM private key: {e}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFormatError("key-algorithm", "PEM key is not an Ed25519 private key")
        seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
        return SigningKey(check_key_name(name), seed)
    if len(data) == SEED_SIZE:
        return SigningKey(check_key_name(name), bytes(data))
    raise KeyFormatError("key-format", "key file is neither a signer string, a PEM key nor a 32-byte seed")


# -- key files (`fieldprint keygen` writes these; engines and auditors read them) ---------


def write_private_key_file(path, key: SigningKey, fmt: str = "note") -> None:
    """Write ``key`` to a new file readable only by its owner: ``note`` (signer string) or ``pem``."""
    if fmt not in ("note", "pem"):
        raise KeyFormatError("key-format", f"unknown private key format {fmt!r} (note or pem)")
    data = (key.to_string() + "\n").encode() if fmt == "note" else key.to_pem()
    _write_new(path, data, 0o600)


def write_public_key_file(path, verifier: Verifier) -> None:
    """Write the verifier string of a public key to a new file."""
    _write_new(path, (verifier.to_string() + "\n").encode(), 0o644)


def read_private_key_file(path, name: str | None = None) -> SigningKey:
    """Read a private key file (signer string, PKCS#8 PEM or raw seed; see ``load_signing_key``)."""
    return load_signing_key(_read(path), name)


def read_public_key_file(path) -> Verifier:
    """Read a public key file holding one verifier string."""
    try:
        return parse_verifier(_read(path).decode("ascii"))
    except UnicodeDecodeError:
        raise KeyFormatError("key-format", f"{os.fspath(path)} is not an ASCII verifier string") from None


def _write_new(path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as e:
        raise KeyFormatError("io", f"cannot create {os.fspath(path)}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read(path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise KeyFormatError("io", f"cannot read {os.fspath(path)}: {e.strerror}") from None
