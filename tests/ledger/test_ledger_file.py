"""spec.ledger_file: a small real ledger (synthetic records, a fresh Ed25519 key) against
bit flips, truncation, reordering, deletion, duplication, re-signing, splicing and fuzzing."""
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from spec.checkpoint import Checkpoint, checkpoint_hash, ledger_origin, sign_checkpoint
from spec.keys import generate_signing_key
from spec.ledger import (
    ZERO_DIGEST,
    Commit,
    End,
    KVEvict,
    KVPage,
    LedgerError,
    Rollback,
    TokenStep,
    Validation,
    encode_record,
    hasher_for,
)
from spec.ledger_file import (
    FRAME_CHECKPOINT,
    FRAME_RECORD,
    HEADER_SIZE,
    LedgerWriter,
    build_ledger_bytes,
    encode_frame,
    encode_header,
    parse_ledger_bytes,
    read_ledger,
    verify_ledger_structure,
)
from spec.merkle import CompactRange, merkle_root
from tools.vectors.ledger import b3, checkpoint_indices, example_kv_page, example_records, split_frames

KEY = generate_signing_key("test.example/fresh-key")
OTHER = generate_signing_key("test.example/other-key")


def small_records(key=KEY, nonce=b3(b"small"), profile="blake3"):
    """Genesis, prefill page + commit, two tokens, a commit, the end (7 records)."""
    full = example_records(key, nonce=nonce, hash_profile=profile)
    g = full[0]
    h = hasher_for(g)
    page = example_kv_page(4, "context", 0, 6, b"p1")
    p = page.digest
    return [g, full[1], full[2],
            TokenStep(seq=3, step=0, attempt=0, token=7, logits_digest=b3(b"l0")),
            page,
            Commit(seq=5, commit=1, reason="end_of_generation", first_step=0, end_step=1, tokens=(7,),
                   page_count=1, pages_root=merkle_root([p], h), live_state=merkle_root([p], h)),
            End(seq=6, reason="eos", num_tokens=1, live_state=merkle_root([p], h))]


SMALL = small_records()
SMALL_FILE = build_ledger_bytes(SMALL, KEY, checkpoint_indices(SMALL))
FULL = example_records(KEY)
FULL_FILE = build_ledger_bytes(FULL, KEY, checkpoint_indices(FULL))


def verdict(data, trusted=KEY.verifier):
    r = verify_ledger_structure(data, trusted)
    return r.status, r.reason


def test_honest_ledgers_verify():
    for records, data in ((SMALL, SMALL_FILE), (FULL, FULL_FILE)):
        report = verify_ledger_structure(data, KEY.verifier)
        assert (report.status, report.error, report.key_source) == ("complete", None, "trusted")
        assert report.records == records and report.verified_size == len(records)
        assert parse_ledger_bytes(data).status == "complete"
    assert verify_ledger_structure(FULL_FILE).key_source == "genesis"


def test_sha256_profile_ledger_verifies():
    records = example_records(KEY, hash_profile="sha256")
    data = build_ledger_bytes(records, KEY, checkpoint_indices(records), hash_profile="sha256")
    assert verdict(data) == ("complete", "")
    # a BLAKE3 header over SHA-256 records is caught
    assert verdict(encode_header("blake3") + data[HEADER_SIZE:]) == ("invalid", "profile-mismatch")


def tiny_ledger():
    """The smallest sealed ledger: genesis, prefill commit, end; a checkpoint after each commit and the end."""
    g, _, c0 = SMALL[:3]
    g = g.model_copy(update={"engine": g.engine.model_copy(update={"build": ""})})
    c0 = c0.model_copy(update={"seq": 1, "page_count": 0, "pages_root": merkle_root([])})
    records = [g, c0, End(seq=2, reason="eos", num_tokens=0, live_state=ZERO_DIGEST)]
    return build_ledger_bytes(records, KEY, [1, 2])


def test_every_single_bit_flip_is_caught():
    data = tiny_ledger()
    assert verdict(data) == ("complete", "")
    seen = set()
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            status, reason = verdict(bytes(bad))
            # header and frame checksums catch every flip before anything is interpreted
            assert status == "corrupt" and reason, (i, bit, status)
            seen.add(reason)
    assert {"frame-checksum", "frame-header-checksum", "header-checksum", "bad-magic"} <= seen


def test_every_truncation_is_a_valid_prefix():
    data = FULL_FILE
    for n in range(len(data)):
        report = verify_ledger_structure(data[:n], KEY.verifier)
        assert report.status == "truncated", (n, report.status, report.reason)
        assert report.reason in ("truncated-header", "truncated-frame", "not-sealed"), n
        assert report.records == FULL[:len(report.records)]
        assert report.verified_size <= len(report.records)
    assert verdict(data) == ("complete", "")


def _rebuild(frames):
    return encode_header("blake3") + b"".join(frames)


def test_reordered_deleted_duplicated_records():
    frames = split_frames(FULL_FILE)  # 0 genesis, 1 cp, 2 page, 3 commit, 4 cp, 5 step, 6 step, ...
    swapped = list(frames)
    swapped[5], swapped[6] = swapped[6], swapped[5]
    assert verdict(_rebuild(swapped)) == ("invalid", "record-seq")
    assert verdict(_rebuild(frames[:5] + frames[6:])) == ("invalid", "record-seq")
    assert verdict(_rebuild(frames[:6] + [frames[5]] + frames[6:])) == ("invalid", "record-seq")
    assert verdict(_rebuild(frames[1:])) == ("invalid", "checkpoint-before-genesis")
    assert verdict(_rebuild(frames[2:])) == ("invalid", "record-seq")
    # a checkpoint moved before the record it covers
    moved = frames[:3] + [frames[4], frames[3]] + frames[5:]
    assert verdict(_rebuild(moved)) == ("invalid", "checkpoint-size")
    # a checkpoint deleted: the next one's prev no longer matches
    assert verdict(_rebuild(frames[:4] + frames[5:])) == ("invalid", "checkpoint-missing")
    # a checkpoint duplicated
    assert verdict(_rebuild(frames[:5] + [frames[4]] + frames[5:])) == ("invalid", "checkpoint-prev")


def test_rewritten_record_fails_on_the_signed_root():
    # An attacker rewrites a token step's content and recomputes its frame checksum: the
    # record sequence is still fine, but the signed root no longer matches.
    recs = list(FULL)
    recs[3] = recs[3].model_copy(update={"logits_digest": b3(b"forged")})
    honest = split_frames(FULL_FILE)
    frames = [encode_frame(FRAME_RECORD, encode_record(r)) for r in recs]
    mixed, k = [], 0
    for f in honest:  # keep the honest checkpoints, replace the records
        if f[4] == FRAME_RECORD:
            mixed.append(frames[k])
            k += 1
        else:
            mixed.append(f)
    report = verify_ledger_structure(_rebuild(mixed), KEY.verifier)
    assert (report.status, report.reason) == ("invalid", "checkpoint-root")
    assert report.error.index == 7  # the first checkpoint after the change: after commit 1 (7 records)
    assert report.records == recs[:7] and report.verified_size == 3


def test_resigned_and_spliced():
    assert verdict(build_ledger_bytes(FULL, OTHER, checkpoint_indices(FULL))) == ("invalid", "checkpoint-untrusted-key")
    rebuilt = example_records(OTHER)
    assert verdict(build_ledger_bytes(rebuilt, OTHER, checkpoint_indices(rebuilt))) == ("invalid", "key-mismatch")
    # a checkpoint by the right key but from another ledger of the same engine
    other = example_records(KEY, nonce=b3(b"another"))
    other_frames = split_frames(build_ledger_bytes(other, KEY, checkpoint_indices(other)))
    frames = split_frames(FULL_FILE)
    frames[4] = other_frames[4]
    report = verify_ledger_structure(_rebuild(frames), KEY.verifier)
    assert (report.status, report.reason, report.error.index) == ("invalid", "checkpoint-origin", 3)


def _signed(records, cp):
    frames = [encode_frame(FRAME_RECORD, encode_record(r)) for r in records]
    return encode_header("blake3") + b"".join(frames) + encode_frame(FRAME_CHECKPOINT, sign_checkpoint(cp, KEY))


def test_checkpoint_rules():
    recs = SMALL[:3]
    tree = CompactRange()
    for r in recs:
        tree.append(encode_record(r))
    origin = ledger_origin(recs[0])
    assert verdict(_signed(recs, Checkpoint(origin, 3, tree.root()))) == ("truncated", "not-sealed")
    assert verdict(_signed(recs, Checkpoint(origin, 2, tree.root()))) == ("invalid", "checkpoint-size")
    assert verdict(_signed(recs, Checkpoint(origin, 3, b3(b"x")))) == ("invalid", "checkpoint-root")
    assert verdict(_signed(recs, Checkpoint(origin, 3, tree.root(), b3(b"x")))) == ("invalid", "checkpoint-prev")
    assert verdict(_signed(recs, Checkpoint(origin + "x", 3, tree.root()))) == ("invalid", "checkpoint-origin")
    cp = Checkpoint(origin, 3, tree.root())
    assert checkpoint_hash(cp.body(), hasher_for(recs[0])) != ZERO_DIGEST


def _with(records, index, record):
    out = list(records)
    out[index] = record
    return out


def _seq_verdict(records):
    return verdict(build_ledger_bytes(records, KEY, checkpoint_indices(records)))


def _anchored(g):
    """Return a genesis with 20 anchor tokens (two anchor pages: 16 + 4 slots) and its two pages."""
    from spec.commits import anchor_commitment

    tokens = tuple(range(40, 60))
    pages = [example_kv_page(1, "anchor", 0, 16, b"anchor page 0"), example_kv_page(2, "anchor", 1, 4, b"anchor page 1")]
    g = g.model_copy(update={"inputs": g.inputs.model_copy(update={"anchor_tokens": tokens}),
                             "anchor_commitment": anchor_commitment(tokens, [p.digest for p in pages], hasher_for(g))})
    return [g] + pages


def test_sequence_rules():
    g, page, c0, step, page1, c1, end = SMALL
    cases = {
        "genesis-not-first": [step.model_copy(update={"seq": 0})],
        "duplicate-genesis": [g, g.model_copy(update={"seq": 1})],
        "spec-version": [g.model_copy(update={"spec_version": "fieldprint-ledger/1"})],
        "genesis-key": [g.model_copy(update={"key_name": "has space"})],
        "step-order": _with(SMALL, 3, step.model_copy(update={"step": 1})),
        "step-attempt": _with(SMALL, 3, step.model_copy(update={"attempt": 1})),
        "page-used": _with(SMALL, 4, page1.model_copy(update={"used": 17})),
        "commit-index": _with(SMALL, 5, c1.model_copy(update={"commit": 2})),
        "commit-range": _with(SMALL, 5, c1.model_copy(update={"end_step": 2})),
        "commit-tokens": _with(SMALL, 5, c1.model_copy(update={"tokens": (8,)})),
        "commit-pages": _with(SMALL, 5, c1.model_copy(update={"page_count": 0})),
        "end-count": _with(SMALL, 6, end.model_copy(update={"num_tokens": 2})),
        "end-uncommitted": SMALL[:5] + [end.model_copy(update={"seq": 5})],
        "record-after-end": SMALL + [step.model_copy(update={"seq": 7, "step": 1})],
        "evict-blocks": SMALL[:3] + [KVEvict(seq=3, blocks=(2, 1))],
        "validation-commit": SMALL[:3] + [Validation(seq=3, commit=1, validator="v", passed=True, detail="")],
        "rollback-target": SMALL[:3] + [Rollback(seq=3, to_commit=1, to_step=0, attempt=1, reason="",
                                                 live_state=ZERO_DIGEST)],
        "rollback-attempt": SMALL[:3] + [Rollback(seq=3, to_commit=0, to_step=0, attempt=0, reason="",
                                                  live_state=ZERO_DIGEST)],
        "rollback-uncommitted": SMALL[:4] + [Rollback(seq=4, to_commit=0, to_step=0, attempt=1, reason="",
                                                      live_state=ZERO_DIGEST)],
    }
    inputs = g.inputs
    anchored = _anchored(g)
    cases.update({
        "page-tokens": [g.model_copy(update={"page_tokens": 0})],
        "prompt-commitment": [g.model_copy(update={"inputs": inputs.model_copy(update={"prompt_tokens": (1, 2)})})],
        "anchor-commitment": [g.model_copy(update={"inputs": inputs.model_copy(update={"anchor_tokens": (5,)})})]
        + [example_kv_page(1, "anchor", 0, 1, b"a")],
        "anchor-page": [anchored[0], anchored[2].model_copy(update={"seq": 1})],  # page 1 first
    })
    assert _seq_verdict(anchored + [SMALL[1].model_copy(update={"seq": 3})]) == ("truncated", "not-sealed")
    forged = anchored[:2] + [example_kv_page(2, "anchor", 1, 4, b"another anchor page")]
    assert _seq_verdict(forged) == ("invalid", "anchor-commitment")
    # a page's digest is the root of its layer digests; every page has the same number of layers
    assert _seq_verdict(anchored[:2] + [anchored[2].model_copy(update={"digest": b3(b"x")})]) == (
        "invalid", "page-digest")
    assert _seq_verdict(anchored[:2] + [example_kv_page(2, "anchor", 1, 4, b"anchor page 1", layers=3)]) == (
        "invalid", "page-layers")
    empty = anchored[2].model_copy(update={"layer_digests": ()})
    assert _seq_verdict(anchored[:2] + [empty]) == ("invalid", "page-layers")
    for i, bad in enumerate([anchored[2].model_copy(update={"block": 0}),  # page 1 out of order
                             anchored[2].model_copy(update={"used": 3}),  # the anchors fill 4 slots of page 1
                             SMALL[1].model_copy(update={"seq": 2})]):  # a context page before the anchors end
        assert _seq_verdict(anchored[:2] + [bad]) == ("invalid", "anchor-page"), i
    late = SMALL[:3] + [example_kv_page(3, "anchor", 0, 1, b"a")]
    assert _seq_verdict(late) == ("invalid", "anchor-page")  # anchor pages only right after the genesis
    for reason, records in cases.items():
        assert _seq_verdict(records) == ("invalid", reason), reason
    # a commit that is not followed by its checkpoint
    data = build_ledger_bytes(SMALL, KEY, [0, 6])
    assert verdict(data) == ("invalid", "checkpoint-missing")


def test_reader_statuses_and_io_error(tmp_path):
    assert parse_ledger_bytes(b"").status == "truncated"
    assert parse_ledger_bytes(b"hello world, not a ledger").reason == "bad-magic"
    r = parse_ledger_bytes(FULL_FILE[:-1])
    assert (r.status, r.reason) == ("truncated", "truncated-frame")
    assert r.offset == len(FULL_FILE) - len(split_frames(FULL_FILE)[-1])
    with pytest.raises(LedgerError) as e:
        read_ledger(tmp_path / "missing.fpl")
    assert e.value.reason == "io"


def test_writer_appends_fsyncs_and_recovers_a_torn_tail(tmp_path):
    path = tmp_path / "run.fpl"
    w = LedgerWriter.create(path)
    for i, r in enumerate(FULL[:10]):
        w.append_record(r)
        if i in checkpoint_indices(FULL):
            w.checkpoint(KEY)
    w.close()
    size = os.path.getsize(path)
    with open(path, "ab") as f:  # a crash in the middle of the next frame
        f.write(encode_frame(FRAME_RECORD, encode_record(FULL[10]))[:9])
    assert read_ledger(path).status == "truncated"
    w = LedgerWriter.open(path)
    assert os.path.getsize(path) == size and w.count == 10
    for i, r in enumerate(FULL[10:], start=10):
        w.append_record(r)
        if i in checkpoint_indices(FULL):
            w.checkpoint(KEY)
    w.close()
    assert open(path, "rb").read() == FULL_FILE
    assert verdict(str(path)) == ("complete", "")
    with pytest.raises(LedgerError) as e:
        LedgerWriter.open(path)
    assert e.value.reason == "sealed"
    with pytest.raises(LedgerError):
        LedgerWriter.create(tmp_path / "x.fpl").append_record(FULL[1])  # seq 1 first


# Seeds: every prefix of 1..8 records of the worked example (each with its checkpoints), and
# the small sealed ledger.
SEEDS = [SMALL_FILE] + [build_ledger_bytes(FULL[:k], KEY, checkpoint_indices(FULL[:k])) for k in range(1, 9)]


@st.composite
def mutated_ledgers(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "splice", "truncate"]))
        i = draw(st.integers(0, len(data)))
        if op == "set" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        elif op == "splice":
            src = draw(st.sampled_from(SEEDS))
            j = draw(st.integers(0, len(src)))
            data[i:i] = src[j:j + draw(st.integers(1, 64))]
        else:
            del data[i:]
    return bytes(data)


@given(st.one_of(st.binary(max_size=300), mutated_ledgers()))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_only_ledger_errors(data):
    try:
        report = verify_ledger_structure(data, KEY.verifier)
    except LedgerError:
        return
    if report.status == "complete":
        assert data in (SMALL_FILE,)  # only an untouched sealed seed can verify completely
    else:
        assert report.reason
