"""Re-check the checked-in vectors under tests/vectors/merkle and tests/vectors/ledger with spec
(the freshness test, tests/test_vectors_current.py, checks they equal what the generators write)."""
import json
from pathlib import Path

import pytest

from spec.checkpoint import verify_signed_checkpoint
from spec.keys import parse_signer, parse_verifier
from spec.ledger import decode_record, encode_record, record_from_json
from spec.ledger_file import verify_ledger_structure
from spec.merkle import HASHERS, CompactRange
from spec.proofs import ProofError, verify_consistency, verify_inclusion

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
MERKLE = sorted((VECTORS / "merkle").glob("*/*/*.json"))
TAMPER = sorted((VECTORS / "ledger" / "tamper").glob("*.json"))
EXAMPLE = VECTORS / "ledger" / "worked-example"


def _hashes(items):
    return [bytes.fromhex(h) for h in items]


@pytest.mark.parametrize("path", MERKLE, ids=lambda p: "/".join(p.parts[-3:]))
def test_merkle_vector(path):
    c = json.loads(path.read_text())
    hasher = HASHERS[c["hasher"]]
    try:
        if path.parts[-3] == "inclusion":
            verify_inclusion(c["leaf_index"], c["tree_size"], bytes.fromhex(c["leaf_hash"]), _hashes(c["proof"]),
                             bytes.fromhex(c["root"]), hasher)
        else:
            verify_consistency(c["size1"], c["size2"], _hashes(c["proof"]), bytes.fromhex(c["root1"]),
                               bytes.fromhex(c["root2"]), hasher)
        verified = True
    except ProofError:
        verified = False
    assert verified == (not c["want_err"]), c["desc"]


def test_merkle_vector_layout():
    assert len(MERKLE) > 300
    assert {p.parts[-3] for p in MERKLE} == {"inclusion", "consistency"}
    assert all((p.parent / "happy-path.json").exists() for p in MERKLE)


def test_worked_example():
    key = json.loads((EXAMPLE / "key.json").read_text())
    signer = parse_signer(key["signer"])
    verifier = parse_verifier(key["verifier"])
    assert signer.seed.hex() == key["seed"] and signer.verifier == verifier
    import blake3

    assert blake3.blake3(key["seed_text"].encode()).hexdigest() == key["seed"]
    recs = json.loads((EXAMPLE / "records.json").read_text())
    tree = CompactRange(HASHERS[recs["hash_profile"]])
    roots = {}
    for r in recs["records"]:
        record = record_from_json(json.dumps(r["json"]))
        enc = encode_record(record)
        assert enc.hex() == r["canonical_hex"] and decode_record(enc) == record
        assert tree.append(enc).hex() == r["leaf_hash"]
        assert tree.root().hex() == r["root_after"]
        roots[tree.size] = r["root_after"]
    for cp in json.loads((EXAMPLE / "checkpoints.json").read_text())["checkpoints"]:
        checkpoint, _ = verify_signed_checkpoint(cp["note"].encode(), verifier)
        assert checkpoint.root.hex() == cp["root"] == roots[checkpoint.size]
        assert checkpoint.origin == recs["origin"]
    data = bytes.fromhex(json.loads((EXAMPLE / "ledger-file.json").read_text())["hex"])
    report = verify_ledger_structure(data, verifier)
    assert report.status == "complete" and len(report.records) == len(recs["records"])


@pytest.mark.parametrize("path", TAMPER, ids=lambda p: p.stem)
def test_tamper_vector(path):
    c = json.loads(path.read_text())
    report = verify_ledger_structure(bytes.fromhex(c["file_hex"]), parse_verifier(c["trusted_key"]))
    assert (report.status, report.reason) == (c["want_status"], c["want_reason"]), c["desc"]
    assert (report.status != "complete") == c["want_err"]
