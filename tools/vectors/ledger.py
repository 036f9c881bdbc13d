"""Ledger vectors: a worked example and tampered copies of it, written from `spec`.

    ledger/worked-example/key.json          the fixed test key (seed stated below)
    ledger/worked-example/records.json      each record: JSON form, canonical hex, leaf hash
    ledger/worked-example/checkpoints.json  each checkpoint: size, root, signed note
    ledger/worked-example/ledger-file.json  the whole ledger file, hex
    ledger/tamper/<case>.json               a broken ledger file and the verdict it must get

The test key's Ed25519 seed is BLAKE3("fieldprint/test-key/0"); Ed25519 signatures are
deterministic (RFC 8032), so every byte here is reproducible.

    python -m tools.gen_vectors --area ledger
    python -m tools.vectors.ledger --markdown   # the worked example as Markdown, for docs
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import blake3

from spec.checkpoint import Checkpoint, checkpoint_hash, ledger_origin, sign_checkpoint
from spec.commits import page_digest, prompt_commitment
from spec.keys import SigningKey
from spec.ledger import (
    SPEC_VERSION,
    ZERO_DIGEST,
    Commit,
    CommitPolicy,
    End,
    EngineIdentity,
    Genesis,
    KVPage,
    ReplayInputs,
    Rollback,
    SamplingRecord,
    TokenStep,
    Validation,
    encode_record,
    hasher_for,
    record_to_json,
)
from spec.ledger_file import HEADER_SIZE, build_ledger_bytes, verify_ledger_structure
from spec.merkle import CompactRange, merkle_root

TEST_KEY_NAME = "fieldprint.test/ledger-key"
TEST_KEY_SEED_TEXT = b"fieldprint/test-key/0"
OTHER_KEY_SEED_TEXT = b"fieldprint/test-key/1"
EXAMPLE_PROMPT = (1, 15043, 29892, 3186, 29991)  # five prompt token ids
EXAMPLE_LAYERS = 2  # layer digests per example KV page


def b3(text: bytes) -> bytes:
    """Return BLAKE3(text): how every fixed example value here is derived."""
    return blake3.blake3(text).digest()


def fixed_key(seed_text: bytes = TEST_KEY_SEED_TEXT, name: str = TEST_KEY_NAME) -> SigningKey:
    """Return the fixed test key: Ed25519 seed BLAKE3(seed_text)."""
    return SigningKey(name, b3(seed_text))


def example_kv_page(seq: int, kind: str, block: int, used: int, name: bytes,
                    layers: int = EXAMPLE_LAYERS) -> KVPage:
    """Return a kv_page record whose layer ``i`` digest is BLAKE3(name || " / layer i")."""
    digests = tuple(b3(name + b" / layer %d" % i) for i in range(layers))
    return KVPage(seq=seq, kind=kind, block=block, used=used, digest=page_digest(digests), layer_digests=digests)


def example_records(key: SigningKey, nonce: bytes = b3(b"fieldprint/worked-example/nonce"),
                    hash_profile: str = "blake3") -> list:
    """Return the worked example: prefill, two tokens, a failed validation, a rollback,
    three tokens of a second attempt, and the end. Checkpoints follow every commit and the end."""
    prompt = EXAMPLE_PROMPT
    g = Genesis(
        seq=0, spec_version=SPEC_VERSION, hash_profile=hash_profile, nonce=nonce, sequence=0,
        model_commitment=b3(b"example model"), anchor_commitment=ZERO_DIGEST,
        prompt_commitment=prompt_commitment(prompt), prompt_length=len(prompt), page_tokens=16,
        sampling=SamplingRecord(temperature_num=7, temperature_den=10, top_k=40, top_p_num=9, top_p_den=10,
                                seed=42, max_new_tokens=3),
        commit_policy=CommitPolicy(every_n_tokens=2, on_end_of_turn=True, end_of_turn_tokens=(2,),
                                   on_stop_sequence=True, stop_sequences=((13, 10),), on_page_full=True),
        inputs=ReplayInputs(prompt_tokens=prompt, anchor_tokens=(), window=0, model_window=0, eos_token_ids=(2,),
                            stop_strings=("\n\n",)),
        engine=EngineIdentity(name="fieldprint_ref", version="0.1.0", build="example"),
        key_name=key.name, public_key=key.public_key)
    hasher = hasher_for(g)
    names = [b"page 0 after prefill", b"page 0 after step 1", b"page 0 after step 1, attempt 1",
             b"page 0 after step 2, attempt 1"]
    kv = [lambda seq, used, n=n: example_kv_page(seq, "context", 0, used, n) for n in names]
    page = [kv[k](0, 1).digest for k in range(len(names))]
    logits = [b3(f"logits {i}".encode()) for i in range(5)]
    r = [g,
         kv[0](1, 5),
         Commit(seq=2, commit=0, reason="prefill", first_step=0, end_step=0, tokens=(), page_count=1,
                pages_root=merkle_root([page[0]], hasher), live_state=merkle_root([page[0]], hasher)),
         TokenStep(seq=3, step=0, attempt=0, token=450, logits_digest=logits[0]),
         TokenStep(seq=4, step=1, attempt=0, token=1017, logits_digest=logits[1]),
         kv[1](5, 7),
         Commit(seq=6, commit=1, reason="every_n_tokens", first_step=0, end_step=2, tokens=(450, 1017), page_count=1,
                pages_root=merkle_root([page[1]], hasher), live_state=merkle_root([page[1]], hasher)),
         Validation(seq=7, commit=1, validator="example/no-digits", passed=False, detail="token 1017 is a digit"),
         Rollback(seq=8, to_commit=0, to_step=0, attempt=1, reason="validation failed",
                  live_state=merkle_root([page[0]], hasher)),
         TokenStep(seq=9, step=0, attempt=1, token=450, logits_digest=logits[2]),
         TokenStep(seq=10, step=1, attempt=1, token=373, logits_digest=logits[3]),
         kv[2](11, 7),
         Commit(seq=12, commit=2, reason="every_n_tokens", first_step=0, end_step=2, tokens=(450, 373), page_count=1,
                pages_root=merkle_root([page[2]], hasher), live_state=merkle_root([page[2]], hasher)),
         TokenStep(seq=13, step=2, attempt=1, token=2, logits_digest=logits[4]),
         kv[3](14, 8),
         Commit(seq=15, commit=3, reason="end_of_generation", first_step=2, end_step=3, tokens=(2,), page_count=1,
                pages_root=merkle_root([page[3]], hasher), live_state=merkle_root([page[3]], hasher)),
         End(seq=16, reason="end_of_turn", num_tokens=3, live_state=merkle_root([page[3]], hasher))]
    return r


def checkpoint_indices(records: list) -> list[int]:
    """Return the indices after which the example writes a checkpoint: genesis, every commit, the end."""
    return [i for i, x in enumerate(records) if isinstance(x, (Genesis, Commit, End))]


def split_frames(data: bytes) -> list[bytes]:
    """Return the frames of a well-formed ledger file (header excluded), as raw bytes."""
    out, pos = [], HEADER_SIZE
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "little")
        end = pos + 12 + length + 8
        out.append(data[pos:end])
        pos = end
    return out


def _tamper_cases(key: SigningKey) -> dict[str, tuple[str, bytes, str, str]]:
    """Return {case: (desc, file bytes, want status, want reason)}."""
    records = example_records(key)
    cps = checkpoint_indices(records)
    good = build_ledger_bytes(records, key, cps)
    frames = split_frames(good)
    header = good[:HEADER_SIZE]
    other_key = fixed_key(OTHER_KEY_SEED_TEXT, "fieldprint.test/other-key")
    other = build_ledger_bytes(example_records(key, nonce=b3(b"another ledger")), key,
                               checkpoint_indices(records))
    other_frames = split_frames(other)
    flip = bytearray(good)
    flip[HEADER_SIZE + 12 + 40] ^= 0x04  # inside the genesis record's payload
    swapped = list(frames)
    # frames: 0 genesis, 1 checkpoint, 2 kv_page, 3 commit 0, 4 checkpoint, 5 step 0, 6 step 1, ...
    swapped[5], swapped[6] = swapped[6], swapped[5]
    dropped = frames[:5] + frames[6:]
    dup = frames[:6] + [frames[5]] + frames[6:]
    spliced = list(frames)
    spliced[4] = other_frames[4]  # the checkpoint after commit 0, taken from another ledger
    return {
        "happy-path": ("the worked example, untouched", good, "complete", ""),
        "bit-flip-in-genesis": ("one bit of the genesis record flipped", bytes(flip), "corrupt", "frame-checksum"),
        "torn-tail": ("the last frame cut short by 5 bytes", good[:-5], "truncated", "truncated-frame"),
        "unsealed": ("the final checkpoint missing", header + b"".join(frames[:-1]), "truncated", "not-sealed"),
        "records-swapped": ("two token steps swapped", header + b"".join(swapped), "invalid", "record-seq"),
        "record-deleted": ("a token step deleted", header + b"".join(dropped), "invalid", "record-seq"),
        "record-duplicated": ("a token step written twice", header + b"".join(dup), "invalid", "record-seq"),
        "checkpoint-from-other-ledger": ("a checkpoint spliced in from another ledger by the same key",
                                         header + b"".join(spliced), "invalid", "checkpoint-origin"),
        "resigned-other-key": ("every checkpoint re-signed by another key",
                               build_ledger_bytes(records, other_key, cps), "invalid", "checkpoint-untrusted-key"),
        "regenerated-other-key": ("the whole ledger rebuilt around another key",
                                  build_ledger_bytes(example_records(other_key), other_key, cps), "invalid",
                                  "key-mismatch"),
    }


def _worked_example(key: SigningKey) -> dict[str, object]:
    records = example_records(key)
    hasher = hasher_for(records[0])
    tree = CompactRange(hasher)
    rec_out, cp_out, prev = [], [], ZERO_DIGEST
    origin = ledger_origin(records[0])
    for i, r in enumerate(records):
        enc = encode_record(r)
        h = tree.append(enc)
        rec_out.append({"index": i, "json": json.loads(record_to_json(r)), "canonical_hex": enc.hex(),
                        "leaf_hash": h.hex(), "root_after": tree.root().hex()})
        if i in checkpoint_indices(records):
            cp = Checkpoint(origin, i + 1, tree.root(), prev)
            note = sign_checkpoint(cp, key)
            cp_out.append({"size": cp.size, "root": cp.root.hex(), "prev": prev.hex(), "note": note.decode()})
            prev = checkpoint_hash(cp.body(), hasher)
    data = build_ledger_bytes(records, key, checkpoint_indices(records))
    return {
        "key.json": {"_comment": "Ed25519 seed = BLAKE3(seed_text); key ID per c2sp.org/signed-note",
                     "seed_text": TEST_KEY_SEED_TEXT.decode(), "seed": key.seed.hex(), "name": key.name,
                     "public_key": key.public_key.hex(), "signer": key.to_string(),
                     "verifier": key.verifier.to_string()},
        "records.json": {"hash_profile": records[0].hash_profile, "origin": origin, "records": rec_out},
        "checkpoints.json": {"checkpoints": cp_out},
        "ledger-file.json": {"_comment": "header, then a frame per record and per checkpoint",
                             "size": len(data), "hex": data.hex()},
    }


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def generate(out_dir: Path) -> None:
    """Write ledger/worked-example/*.json and ledger/tamper/*.json under ``out_dir``."""
    key = fixed_key()
    base = Path(out_dir) / "ledger"
    for name, obj in _worked_example(key).items():
        _dump(base / "worked-example" / name, obj)
    for name, (desc, data, status, reason) in _tamper_cases(key).items():
        report = verify_ledger_structure(data, key.verifier)
        assert (report.status, report.reason) == (status, reason), (name, report.status, report.reason, report.error)
        _dump(base / "tamper" / f"{name}.json", {"desc": desc, "trusted_key": key.verifier.to_string(),
                                                  "want_status": status, "want_reason": reason,
                                                  "want_err": status != "complete", "file_hex": data.hex()})


def markdown() -> str:
    """Return the worked example as Markdown tables (pasted into docs/spec/ledger.md)."""
    ex = _worked_example(fixed_key())
    key, recs, cps = ex["key.json"], ex["records.json"], ex["checkpoints.json"]
    lines = [f"Test key `{key['name']}`, seed `BLAKE3(\"{key['seed_text']}\")` = `{key['seed']}`.", "",
             f"Verifier string: `{key['verifier']}`", "", f"Origin: `{recs['origin']}`", "",
             "| # | type | canonical encoding (hex) | leaf hash | root after |", "|---|---|---|---|---|"]
    for r in recs["records"]:
        enc = r["canonical_hex"]
        short = enc if len(enc) <= 48 else f"{enc[:40]}…({len(enc) // 2} bytes)"
        lines.append(f"| {r['index']} | {r['json']['type']} | `{short}` | `{r['leaf_hash'][:16]}…` "
                     f"| `{r['root_after'][:16]}…` |")
    lines += ["", "The first token step in full:", "", "```json", json.dumps(recs["records"][3]["json"], indent=2),
              "```", "", f"encodes to `{recs['records'][3]['canonical_hex']}`,", "",
              f"leaf hash `{recs['records'][3]['leaf_hash']}`.", "", "The final checkpoint:", "", "```",
              cps["checkpoints"][-1]["note"].rstrip("\n"), "```", "",
              f"The ledger file is {ex['ledger-file.json']['size']} bytes; its first 64 bytes:", "", "```",
              ex["ledger-file.json"]["hex"][:128], "```"]
    return "\n".join(lines) + "\n"


def layouts_markdown() -> str:
    """Return the byte layout of every record and nested structure as Markdown tables."""
    from spec.ledger import RECORD_TAGS, CommitPolicy, EngineIdentity, Struct, _layout

    sizes = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "bool (u8 0/1)": 1, "bytes[32]": 32}
    out = []
    for cls in [*RECORD_TAGS, SamplingRecord, CommitPolicy, ReplayInputs, EngineIdentity]:
        tag = RECORD_TAGS.get(cls)
        title = f"{cls.model_fields['type'].default} (tag {tag})" if tag else f"{cls.__name__} (nested)"
        out += [f"#### {title}", "", "| offset | field | wire type |", "|---|---|---|"]
        offset = 0
        if tag:
            out += ["| 0 | version | u8 = 1 |", f"| 1 | type tag | u8 = {tag} |"]
            offset = 2
        for name, codec in _layout(cls):
            desc = codec.describe()
            if desc.startswith("u8 enum"):
                size = 1
            elif isinstance(codec, Struct):
                desc = f"{codec.model.__name__} (below)"
                size = None
            else:
                size = sizes.get(desc)
            out.append(f"| {offset if offset is not None else '…'} | `{name}` | {desc} |")
            offset = None if offset is None or size is None else offset + size
        out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        print(markdown(), end="")
    elif "--layouts" in sys.argv:
        print(layouts_markdown(), end="")
    else:
        generate(Path(__file__).resolve().parents[2] / "tests" / "vectors")
