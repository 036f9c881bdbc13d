"""spec.keys and spec.checkpoint: key formats, the signed-note checkpoint format and its strict parser."""
import base64

import pytest
from hypothesis import given, strategies as st

from spec.checkpoint import (
    Checkpoint,
    CheckpointError,
    parse_signed_checkpoint,
    sign_checkpoint,
    verify_signed_checkpoint,
)
from spec.keys import (
    KeyFormatError,
    SigningKey,
    Verifier,
    generate_signing_key,
    key_id,
    load_signing_key,
    parse_signer,
    parse_verifier,
)
from tools.vectors.ledger import b3, fixed_key

KEY = fixed_key()
CP = Checkpoint("fieldprint/ledger/blake3/" + "ab" * 32, 17, b3(b"root"), b3(b"prev"))


def test_key_id_follows_signed_note():
    # c2sp.org/signed-note: key ID = SHA-256(name || 0x0A || 0x01 || public key)[:4], big-endian.
    import hashlib

    want = int.from_bytes(hashlib.sha256(KEY.name.encode() + b"\n\x01" + KEY.public_key).digest()[:4], "big")
    assert key_id(KEY.name, KEY.public_key) == want == KEY.verifier.key_id


def test_key_strings_round_trip():
    v = parse_verifier(KEY.verifier.to_string())
    assert v == KEY.verifier
    assert parse_signer(KEY.to_string()) == KEY
    assert load_signing_key(KEY.to_string().encode() + b"\n") == KEY
    assert load_signing_key(KEY.to_pem(), name=KEY.name) == KEY
    assert load_signing_key(KEY.seed, name=KEY.name) == KEY
    fresh = generate_signing_key("example.com/fresh")
    assert fresh.seed != KEY.seed and parse_verifier(fresh.verifier.to_string()) == fresh.verifier


@given(st.binary(min_size=32, max_size=32))
def test_any_seed_round_trips_through_key_strings(seed):
    key = SigningKey("example.com/k", seed)  # base64 bodies often contain "+"
    assert parse_signer(key.to_string()) == key
    assert parse_verifier(key.verifier.to_string()) == key.verifier


def test_key_strings_rejected():
    s = KEY.verifier.to_string()
    name, kid, body = s.split("+", 2)
    bad = [
        f"{name}+{int(kid, 16) ^ 1:08x}+{body}",  # wrong key ID
        f"{name}+{kid.upper()}+{body}",
        f"{name}+{kid}",
        f"other+{kid}+{body}",  # the key ID no longer matches the name
        f"{name}+{kid}+" + base64.b64encode(b"\x02" + KEY.public_key).decode(),  # not Ed25519
        f"{name}+{kid}+{body[:-2]}",
        f"na me+{kid}+{body}",
    ]
    for text in bad:
        with pytest.raises(KeyFormatError):
            parse_verifier(text)
    with pytest.raises(KeyFormatError):
        load_signing_key(KEY.to_pem())  # PEM carries no name
    with pytest.raises(KeyFormatError):
        load_signing_key(KEY.to_string().encode(), name="someone-else")
    with pytest.raises(KeyFormatError):
        load_signing_key(b"garbage", name="x")
    with pytest.raises(KeyFormatError):
        SigningKey("a+b", bytes(32))


def test_checkpoint_note_layout():
    note = sign_checkpoint(CP, KEY)
    text = note.decode()
    body, sig = text.split("\n\n")
    assert body.split("\n") == [CP.origin, "17", base64.b64encode(CP.root).decode(),
                                "prev " + base64.b64encode(CP.prev).decode()]
    assert sig.startswith("\u2014 " + KEY.name + " ") and sig.endswith("\n")
    raw = base64.b64decode(sig.split(" ")[2])
    assert int.from_bytes(raw[:4], "big") == KEY.verifier.key_id and len(raw) == 68
    assert KEY.verifier.verify(CP.body(), raw[4:])
    assert verify_signed_checkpoint(note, KEY.verifier) == (CP, CP.body())


def test_unknown_signatures_are_ignored_bad_known_ones_reject():
    note = sign_checkpoint(CP, KEY)
    other = generate_signing_key("example.com/witness")
    cosigned = note + sign_checkpoint(CP, other).split(b"\n\n")[1]
    assert verify_signed_checkpoint(cosigned, KEY.verifier)[0] == CP
    assert verify_signed_checkpoint(cosigned, other.verifier)[0] == CP
    with pytest.raises(CheckpointError) as e:
        verify_signed_checkpoint(sign_checkpoint(CP, other), KEY.verifier)
    assert e.value.reason == "checkpoint-untrusted-key"
    forged = Verifier(KEY.name, other.public_key)  # same name, other key: other key ID, so ignored
    with pytest.raises(CheckpointError):
        verify_signed_checkpoint(note, forged)


def test_wrong_signature_by_trusted_key():
    note = sign_checkpoint(CP, KEY)
    changed = note.replace(b"\n17\n", b"\n18\n")
    with pytest.raises(CheckpointError) as e:
        verify_signed_checkpoint(changed, KEY.verifier)
    assert e.value.reason == "checkpoint-signature"


def test_strict_parsing():
    note = sign_checkpoint(CP, KEY)
    root_b64 = base64.b64encode(CP.root).decode()
    # the root's last base64 character carries 2 padding bits; setting them keeps the bytes
    last = root_b64[-2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    sloppy = root_b64[:-2] + alphabet[alphabet.index(last) ^ 1] + "="
    assert base64.b64decode(sloppy) == CP.root
    bad = [
        note.replace(b"\n17\n", b"\n017\n"),
        note.replace(b"\n17\n", b"\n+17\n"),
        note.replace(root_b64.encode(), sloppy.encode()),
        note.replace(b"prev ", b"prev  "),
        note.replace(b"prev ", b"next "),
        note[:-1],
        note + b"\n",
        note.replace(b"\n\n", b"\n\x01\n"),
        note.replace(b"\n\n", b"\nextra\n\n"),
        note.replace("\u2014".encode(), b"-"),
        b"\xff" + note,
        note.split(b"\n\n")[0] + b"\n\n",
    ]
    for text in bad:
        with pytest.raises(CheckpointError):
            verify_signed_checkpoint(text, KEY.verifier)


@given(st.binary(max_size=400))
def test_parser_only_raises_checkpoint_error(data):
    try:
        parse_signed_checkpoint(data)
    except CheckpointError:
        pass


# The signed-note example of golang.org/x/mod/sumdb/note (package documentation, "Example";
# also ExampleSign in its example_test.go): a key whose signer string's base64 contains "+",
# and the signature Go's implementation produces. Ed25519 is deterministic (RFC 8032), so
# signing the same text with the same key must give the same line byte for byte.
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = b"If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n".encode()


def test_interoperates_with_go_sumdb_note():
    from spec.checkpoint import open_note, sign_note

    signer, verifier = parse_signer(GO_SIGNER), parse_verifier(GO_VERIFIER)
    assert signer.verifier == verifier and f"{verifier.key_id:08x}" == "c74f20a3"
    assert signer.to_string() == GO_SIGNER and verifier.to_string() == GO_VERIFIER
    assert sign_note(GO_TEXT, signer) == GO_NOTE
    assert open_note(GO_NOTE, verifier) == GO_TEXT
    with pytest.raises(CheckpointError):
        open_note(GO_NOTE.replace(b"cryptography", b"cryptographY"), verifier)


def test_key_files(tmp_path):
    import os
    import stat

    from spec.keys import read_private_key_file, read_public_key_file, write_private_key_file, write_public_key_file

    key = generate_signing_key("example.com/engine-1")
    write_private_key_file(tmp_path / "k.key", key)
    write_private_key_file(tmp_path / "k.pem", key, fmt="pem")
    write_public_key_file(tmp_path / "k.pub", key.verifier)
    assert stat.S_IMODE(os.stat(tmp_path / "k.key").st_mode) == 0o600
    assert read_private_key_file(tmp_path / "k.key") == key
    assert read_private_key_file(tmp_path / "k.pem", name=key.name) == key
    assert read_public_key_file(tmp_path / "k.pub") == key.verifier
    with pytest.raises(KeyFormatError):
        write_private_key_file(tmp_path / "k.key", key)  # never overwrites
    with pytest.raises(KeyFormatError):
        read_public_key_file(tmp_path / "missing.pub")
