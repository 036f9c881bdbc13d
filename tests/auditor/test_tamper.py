"""Tamper suite on real generated ledgers: every mutation is rejected with a precise reason,
none crashes the auditor, none is accepted.

Byte-level damage (flips, truncations, reordering, deletion, duplication) is caught before the
replay, so those cases run with ``replay=False``; forgeries that keep every frame, signature and
sequence rule intact (an engine that signs a lie with its own key) need the replay or the records
check. The issue-7 section holds the regressions of that issue's auditor holes (each was VALID or
a traceback on 2976e80)."""
from __future__ import annotations

import json
import os
import struct
import tracemalloc

import blake3
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fp_fixtures as fx
from auditor.report import render_text
from auditor.verify import verify_ledger
from fieldprint.runtime.faults import FaultPlan, FlipKV
from spec import commits
from spec.checkpoint import Checkpoint, sign_note
from spec.keys import SigningKey
from spec.ledger import Commit, End, Genesis, KVEvict, KVPage, Rollback, TokenStep, Validation
from spec.ledger_file import (
    FRAME_CHECK_SIZE,
    FRAME_CHECKPOINT,
    FRAME_RECORD,
    HEADER_SIZE,
    build_ledger_bytes,
    encode_frame,
    parse_ledger_bytes,
)

FLIP = FlipKV(step=5, block=0, byte=100, bit=3)  # block 0 is full after the prompt: snapshot and live share it
STRUCTURAL = {"frame-checksum", "frame-header-checksum", "frame-reserved", "frame-kind", "frame-too-large",
              "truncated-frame", "record-seq", "step-order", "commit-range", "commit-tokens", "commit-pages",
              "checkpoint-missing", "checkpoint-root", "checkpoint-size", "checkpoint-prev", "checkpoint-origin",
              "checkpoint-signature", "checkpoint-untrusted-key", "checkpoint-format", "checkpoint-consistency",
              "checkpoint-before-genesis", "genesis-not-first", "duplicate-genesis", "record-after-end",
              "validation-commit", "rollback-target", "rollback-uncommitted", "rollback-attempt", "end-count",
              "end-uncommitted", "step-attempt", "key-mismatch", "not-sealed", "commit-index"}


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory):
    d = tmp_path_factory.mktemp("tamper")
    clean = fx.generate(d / "clean.fpl")
    other = fx.generate(d / "other.fpl", nonce=b"\x08" * 32)  # same run, another origin
    rolled = fx.generate(d / "rolled.fpl", faults=FaultPlan(reject_commits={2}))
    flip = fx.generate(d / "flip.fpl", faults=FaultPlan(flips=[FLIP]))  # a KV fault, detected and rolled back
    window = fx.generate(d / "window.fpl", window=8, max_new_tokens=24)
    return {"clean": clean, "other": other, "rolled": rolled, "flip": flip, "window": window}


def frames(data: bytes) -> list[tuple[int, int, object]]:
    """Return (start, end, entry) for every frame of a ledger."""
    read = parse_ledger_bytes(data)
    return [(e.offset, e.offset + e.size, e) for e in read.entries]


def check(tmp_path, data: bytes, name="t.fpl", replay=False, **kw):
    """Verify ``data``; it must not be accepted and must say why."""
    p = tmp_path / name
    p.write_bytes(data)
    rep = verify_ledger(p, model=fx.artifact(), trusted_key=fx.key().verifier, replay=replay, **kw)
    assert rep.verdict != "valid", f"accepted: {rep.to_json()}"
    assert rep.reason != "auditor-error", rep.message  # a crash is a bug, never a verdict
    assert rep.reason and rep.message, rep.to_json()
    return rep


def rebuild(records, key: SigningKey, cps) -> bytes:
    return build_ledger_bytes(records, key, checkpoint_after=cps)


def layout(data: bytes):
    """Return (records, indices of records followed by a checkpoint)."""
    recs, cps = [], []
    for e in parse_ledger_bytes(data).entries:
        if e.record is not None:
            recs.append(e.record)
        else:
            cps.append(len(recs) - 1)
    return recs, cps


# -- bytes ---------------------------------------------------------------------------------------------


def test_rebuild_reproduces_the_file(ledgers):
    data = open(ledgers["clean"].ledger, "rb").read()
    recs, cps = layout(data)
    assert rebuild(recs, fx.key(), cps) == data


def test_every_header_bit_flip(tmp_path, ledgers):
    data = open(ledgers["clean"].ledger, "rb").read()
    for bit in range(HEADER_SIZE * 8):
        b = bytearray(data)
        b[bit // 8] ^= 1 << (bit % 8)
        rep = check(tmp_path, bytes(b))
        assert rep.reason in {"bad-magic", "header-checksum", "bad-version", "bad-profile"}, rep.reason


def test_a_bit_flip_in_every_byte_of_every_frame(tmp_path, ledgers):
    """One flip per byte after the header (bit = offset mod 8, so all 8 positions occur in every
    field): the report names the frame that holds the flipped byte."""
    data = open(ledgers["clean"].ledger, "rb").read()
    fr = frames(data)
    kinds = set()
    for start, end, entry in fr:
        kinds.add(type(entry.record).__name__ if entry.record is not None else "checkpoint")
        for i in range(start, end):
            b = bytearray(data)
            b[i] ^= 1 << (i % 8)
            rep = check(tmp_path, bytes(b))
            assert rep.verdict == "invalid" and rep.reason in STRUCTURAL, (i, rep.reason)
            assert rep.divergence["offset"] == start, (i, rep.divergence)
    assert kinds == {"Genesis", "TokenStep", "KVPage", "Commit", "Validation", "End", "checkpoint"}


def test_every_truncation_point(tmp_path, ledgers):
    data = open(ledgers["clean"].ledger, "rb").read()
    fr = frames(data)
    signed_at = {}  # file length -> records covered by the last checkpoint within it
    n, signed = 0, 0
    for start, end, entry in fr:
        if entry.record is not None:
            n += 1
        else:
            signed = entry.checkpoint.size
        signed_at[end] = signed
    for cut in range(len(data)):
        rep = check(tmp_path, data[:cut])
        if cut < HEADER_SIZE:
            assert rep.verdict == "unreadable" and rep.reason in ("truncated-header", "bad-magic")
            continue
        assert rep.verdict == "incomplete" and rep.exit_code == 3, (cut, rep.to_json())
        expect = max([v for e, v in signed_at.items() if e <= cut], default=0)
        assert rep.verified_records == expect, (cut, rep.verified_records, expect)


def test_truncated_at_each_checkpoint_replays_the_signed_prefix(tmp_path, ledgers):
    data = open(ledgers["clean"].ledger, "rb").read()
    cuts = [end for start, end, e in frames(data) if e.checkpoint is not None][:-1]
    for cut in cuts[::2]:
        rep = check(tmp_path, data[:cut], replay=True)
        assert rep.verdict == "incomplete" and rep.replay["steps"] > 0, rep.to_json()
        assert rep.unsigned_records == 0 and "did not finish" in rep.message


@pytest.mark.parametrize("op", ["delete", "duplicate", "swap"])
def test_record_and_checkpoint_frames_reordered_deleted_duplicated(tmp_path, ledgers, op):
    data = open(ledgers["rolled"].ledger, "rb").read()
    fr = frames(data)
    for k in range(len(fr) - (op == "swap")):
        parts = [data[s:e] for s, e, _ in fr]
        if op == "delete":
            del parts[k]
        elif op == "duplicate":
            parts.insert(k, parts[k])
        else:
            if parts[k] == parts[k + 1]:
                continue
            parts[k], parts[k + 1] = parts[k + 1], parts[k]
        rep = check(tmp_path, data[:HEADER_SIZE] + b"".join(parts))
        assert rep.reason in STRUCTURAL, (op, k, rep.reason)
        last_checkpoint = op == "delete" and k == len(fr) - 1
        assert rep.verdict == ("incomplete" if last_checkpoint else "invalid"), (op, k, rep.to_json())


def test_resigned_with_another_key(tmp_path, ledgers):
    data = open(ledgers["clean"].ledger, "rb").read()
    recs, cps = layout(data)
    mallory = SigningKey("mallory.example/engine", b"\x33" * 32)
    rep = check(tmp_path, rebuild(recs, mallory, cps))
    assert rep.reason == "checkpoint-untrusted-key" and rep.divergence["record"] == cps[0] + 1
    g = recs[0].model_copy(update=dict(key_name=mallory.name, public_key=mallory.public_key))
    rep = check(tmp_path, rebuild([g] + recs[1:], mallory, cps))
    assert rep.reason == "key-mismatch" and rep.divergence["record"] == 0


def test_checkpoint_from_another_generation_spliced_in(tmp_path, ledgers):
    a = open(ledgers["clean"].ledger, "rb").read()
    b = open(ledgers["other"].ledger, "rb").read()
    fa, fb = frames(a), frames(b)
    cpa = [i for i, (_, _, e) in enumerate(fa) if e.checkpoint is not None]
    cpb = [i for i, (_, _, e) in enumerate(fb) if e.checkpoint is not None]
    for i, j in zip(cpa, cpb):
        parts = [a[s:e] for s, e, _ in fa]
        parts[i] = b[fb[j][0]:fb[j][1]]
        rep = check(tmp_path, a[:HEADER_SIZE] + b"".join(parts))
        assert rep.reason == "checkpoint-origin" and rep.divergence["offset"] == fa[i][0]


# -- inputs ----------------------------------------------------------------------------------------------


def test_changed_model_artifact(tmp_path, ledgers):
    rep = verify_ledger(ledgers["clean"].ledger, model=fx.artifact(seed=1), trusted_key=fx.key().verifier)
    assert rep.verdict == "invalid" and rep.reason == "model-commitment"
    assert rep.divergence["field"] == "model_commitment" and rep.divergence["record"] == 0


@pytest.mark.parametrize("field, value, reasons", [
    ("anchor_tokens", tuple(fx.ANCHORS[:-1] + [3]), {"anchor-commitment"}),
    ("anchor_tokens", (), {"anchor-commitment"}),
    ("anchor_tokens", tuple(fx.ANCHORS + [3]), {"anchor-page"}),  # a third anchor page would be due
    ("prompt_tokens", tuple(fx.PROMPT[:-1]), {"prompt-commitment"}),
    ("prompt_tokens", tuple(fx.PROMPT[:-1] + [63]), {"prompt-commitment"}),
    ("window", 4, {"replay-token", "replay-logits", "replay-page", "evict-missing"}),
    ("eos_token_ids", "token 5", {"commit-missing", "commit-reason", "replay-finished"}),
    ("stop_strings", ("w31",), {"commit-missing", "commit-reason", "replay-finished"}),
])
def test_changed_inputs_in_the_genesis(tmp_path, ledgers, field, value, reasons):
    """The replay inputs travel in the genesis: changing one and re-signing the whole ledger with
    the engine's own key is caught by the commitments or by the replay."""
    clean = ledgers["clean"]
    if value == "token 5":
        value = (clean.tokens[5],)

    def edit(recs):
        inputs = recs[0].inputs.model_copy(update={field: value})
        return [recs[0].model_copy(update=dict(inputs=inputs))] + recs[1:]

    rep = check(tmp_path, _forge(clean, edit), replay=True)
    assert rep.verdict == "invalid" and rep.reason in reasons, rep.to_json()
    if rep.reason in ("prompt-commitment", "anchor-commitment", "anchor-page"):
        # caught before the replay: at the genesis, or at the anchor page records that follow it
        assert rep.status == "invalid" and rep.divergence["record"] in (0, 1, 2), rep.divergence
        assert rep.divergence["record"] == 0 or rep.reason != "prompt-commitment"


def test_changed_anchor_file(tmp_path, ledgers):
    text = " ".join(f"w{t}" for t in fx.ANCHORS)
    assert fx.verify(ledgers["clean"].ledger, anchors_text=text).verdict == "valid"
    rep = fx.verify(ledgers["clean"].ledger, anchors_text=text.replace("w41", "w42"))
    assert rep.verdict == "invalid" and rep.reason == "anchor-commitment"


# -- forgeries signed with the engine's own key: only the replay can see them --------------------------------


def _forge(ledger, edit):
    recs, cps = layout(open(ledger.ledger, "rb").read())
    return rebuild(edit(list(recs)), fx.key(), cps)


def _retoken(recs, step, token):
    """Change token ``step`` and the commit that lists it, keeping every structural rule."""
    out = []
    for r in recs:
        if isinstance(r, TokenStep) and r.step == step and r.attempt == 0:
            r = r.model_copy(update=dict(token=token))
        if isinstance(r, Commit) and r.first_step <= step < r.end_step:
            toks = list(r.tokens)
            toks[step - r.first_step] = token
            r = r.model_copy(update=dict(tokens=tuple(toks)))
        out.append(r)
    return out


def test_forged_token(tmp_path, ledgers):
    clean = ledgers["clean"]
    data = _forge(clean, lambda recs: _retoken(recs, 5, (clean.tokens[5] + 1) % 64))
    rep = check(tmp_path, data, replay=True)
    d = rep.divergence
    assert rep.reason == "replay-token" and (d["step"], d["field"]) == (5, "token")
    assert (d["expected"], d["actual"]) == ((clean.tokens[5] + 1) % 64, clean.tokens[5])


def test_forged_logits_digest(tmp_path, ledgers):
    def edit(recs):
        return [r.model_copy(update=dict(logits_digest=bytes(32))) if isinstance(r, TokenStep) and r.step == 7 else r
                for r in recs]

    rep = check(tmp_path, _forge(ledgers["clean"], edit), replay=True)
    assert rep.reason == "replay-logits" and rep.divergence["step"] == 7


@pytest.mark.parametrize("rehash_root, reason", [(True, "replay-page"), (False, "page-digest")])
def test_forged_page_digest(tmp_path, ledgers, rehash_root, reason):
    """A forged layer digest with a consistent root is found by the replay (which names the layer);
    a root that is not the root of the layer digests is found before it."""
    from spec.commits import page_digest, pages_root

    def edit(recs):
        out, pages = [], []
        for r in recs:
            if isinstance(r, KVPage) and r.kind == "context" and r.block == 1 and r.used == 3:
                # the prompt's partial page, recorded at the prefill commit
                layers = (b"\x01" * 32,) + r.layer_digests[1:]
                root = page_digest(layers) if rehash_root else r.digest
                r = r.model_copy(update=dict(layer_digests=layers, digest=root))
            if isinstance(r, KVPage):
                pages.append(r.digest)
            if isinstance(r, Commit):
                r = r.model_copy(update=dict(pages_root=pages_root(pages)))
                pages = []
            out.append(r)
        return out

    rep = check(tmp_path, _forge(ledgers["clean"], edit), replay=True)
    d = rep.divergence
    assert rep.reason == reason, rep.to_json()
    if rehash_root:
        assert (d["block"], d["page_kind"], d["layer"], d["field"]) == (1, "context", 0, "layer_digests")
        assert d["expected"] == "01" * 32


@pytest.mark.parametrize("layer", [1, 2])
def test_a_forged_digest_in_one_layer_is_reported_with_that_layer(tmp_path, layer):
    """One layer digest of the prompt's partial page (test model with 3 layers) replaced, the page
    root and the commit's pages root recomputed, re-signed with the engine's key: only the replay
    sees it, and it names the page and the layer."""
    from auditor.report import render_text
    from spec.commits import page_digest, pages_root

    out = fx.generate(tmp_path / "clean3.fpl", layers=3, max_new_tokens=4)

    def edit(recs):
        res, pages = [], []
        for r in recs:
            if isinstance(r, KVPage) and r.kind == "context" and r.block == 1 and r.used == 3:
                layers = r.layer_digests[:layer] + (bytes(31) + b"\x05",) + r.layer_digests[layer + 1:]
                r = r.model_copy(update=dict(layer_digests=layers, digest=page_digest(layers)))
            if isinstance(r, KVPage):
                pages.append(r.digest)
            if isinstance(r, Commit):
                r = r.model_copy(update=dict(pages_root=pages_root(pages)))
                pages = []
            res.append(r)
        return res

    p = tmp_path / "layer.fpl"
    p.write_bytes(_forge(out, edit))
    rep = fx.verify(p, model=fx.artifact(0, 3))
    d = rep.divergence
    assert rep.verdict == "invalid" and rep.reason == "replay-page", rep.to_json()
    assert (d["page_kind"], d["block"], d["layer"], d["field"], d["step"]) == ("context", 1, layer, "layer_digests", 0)
    assert f"layer {layer}" in render_text(rep) and json.loads(rep.to_json())["divergence"]["layer"] == layer


def test_forged_commit_policy(tmp_path, ledgers):
    def edit(recs):
        pol = recs[0].commit_policy.model_copy(update=dict(every_n_tokens=5))
        return [recs[0].model_copy(update=dict(commit_policy=pol))] + recs[1:]

    rep = check(tmp_path, _forge(ledgers["clean"], edit), replay=True)
    assert rep.reason == "commit-unexpected" and rep.divergence["commit"] == 1


def test_forged_rollback_without_failure(tmp_path, ledgers):
    def edit(recs):
        return [r.model_copy(update=dict(passed=True)) if isinstance(r, Validation) else r for r in recs]

    rep = check(tmp_path, _forge(ledgers["rolled"], edit), replay=True)
    assert rep.reason == "rollback-unexplained"


def test_forged_rollback_state(tmp_path, ledgers):
    def edit(recs):
        return [r.model_copy(update=dict(live_state=b"\x02" * 32)) if isinstance(r, Rollback) else r for r in recs]

    rep = check(tmp_path, _forge(ledgers["rolled"], edit), replay=True)
    assert rep.reason == "rollback-state"


def test_retry_must_follow_the_stated_attempt(tmp_path, ledgers):
    """Claiming attempt 2 for a retry that was sampled under attempt 1 breaks the replay."""
    def edit(recs):
        out = []
        for r in recs:
            if isinstance(r, (Rollback, TokenStep)) and r.attempt == 1:
                r = r.model_copy(update=dict(attempt=2))
            out.append(r)
        return out

    rep = check(tmp_path, _forge(ledgers["rolled"], edit), replay=True)
    rb = ledgers["rolled"].rollbacks[0]
    assert rep.reason in ("replay-token", "replay-logits") and rep.divergence["step"] == rb.to_step


# -- issue 7: forgeries with the engine's own key that the records alone expose, crashes and end(error),
# -- the fault history, malformed input ---------------------------------------------------------------------


def records(ledger) -> list:
    return parse_ledger_bytes(open(ledger.ledger, "rb").read()).records


def sign(recs) -> bytes:
    """Renumber ``recs`` and sign them as the runtime does: a checkpoint after every commit and the end."""
    recs = [r.model_copy(update=dict(seq=i)) for i, r in enumerate(recs)]
    return build_ledger_bytes(recs, fx.key(), [i for i, r in enumerate(recs) if isinstance(r, (Commit, End))])


def verify(tmp_path, data: bytes, name="t.fpl", **kw):
    p = tmp_path / name
    p.write_bytes(data)
    kw.setdefault("model", fx.artifact())
    kw.setdefault("trusted_key", fx.key().verifier)
    rep = verify_ledger(p, **kw)
    assert rep.reason != "auditor-error", rep.message  # a crash is a bug, never a verdict
    return rep


def index(recs, cls, **match) -> int:
    return next(i for i, r in enumerate(recs) if isinstance(r, cls) and all(getattr(r, k) == v for k, v in match.items()))


def retoken(recs, i, token):
    """Change the token of record ``i`` (a token step) and of the commit that covers it."""
    out = list(recs)
    out[i] = recs[i].model_copy(update=dict(token=token))
    c = next(k for k in range(i, len(recs)) if isinstance(recs[k], Commit))
    toks = list(recs[c].tokens)
    toks[recs[i].step - recs[c].first_step] = token
    out[c] = recs[c].model_copy(update=dict(tokens=tuple(toks)))
    return out


# -- hole 4: --no-replay -------------------------------------------------------------------------------------


def test_no_replay_checks_the_model(tmp_path, ledgers):
    clean = ledgers["clean"].ledger
    rep = verify_ledger(clean, model=fx.artifact(seed=1), trusted_key=fx.key().verifier, replay=False)
    assert rep.verdict == "invalid" and rep.reason == "model-commitment", rep.to_json()
    rep = verify_ledger(clean, model=str(tmp_path / "no-such-artifact"), trusted_key=fx.key().verifier, replay=False)
    assert rep.verdict == "unreadable" and rep.reason == "model-artifact"


def test_no_replay_says_what_it_did_not_check(ledgers):
    rep = fx.verify(ledgers["rolled"].ledger, replay=False)
    assert rep.verdict == "valid" and rep.checks == "records" and not rep.replay
    assert any("logits" in n for n in rep.not_checked) and any("fault history" in n for n in rep.not_checked)
    assert "not checked" in render_text(rep)
    assert fx.verify(ledgers["rolled"].ledger).checks == "replay"


def _forged_end(recs, reason):
    return recs[:-1] + [recs[-1].model_copy(update=dict(reason=reason))]


def _live(recs, i, state=b"\x05" * 32):
    return recs[:i] + [recs[i].model_copy(update=dict(live_state=state))] + recs[i + 1:]


def _drop(recs, cls):
    i = index(recs, cls)
    return recs[:i] + recs[i + 1:]


@pytest.mark.parametrize("ledger, edit, reason", [
    ("clean", lambda r: _live(r, index(r, Commit, commit=2)), "commit-live-state"),
    ("clean", lambda r: [x.model_copy(update=dict(reason="page_full")) if isinstance(x, Commit) and x.commit == 1
                         else x for x in r], "commit-reason"),
    ("clean", lambda r: [r[0].model_copy(update=dict(commit_policy=r[0].commit_policy.model_copy(
        update=dict(every_n_tokens=5))))] + r[1:], "commit-unexpected"),
    ("clean", lambda r: [x.model_copy(update=dict(used=x.used - 1)) if isinstance(x, KVPage) and x.kind == "context"
                         and x.used == 3 else x for x in r], "page-slots"),
    ("clean", lambda r: retoken(r, index(r, TokenStep, step=6), 64 + 7), "token-range"),
    ("clean", lambda r: _forged_end(r, "eos"), "end-reason"),
    ("clean", lambda r: _forged_end(r, "error"), "end-reason"),  # hole 5: error after a budget end
    ("rolled", lambda r: [x.model_copy(update=dict(passed=True)) if isinstance(x, Validation) else x for x in r],
     "rollback-unexplained"),
    ("rolled", lambda r: _live(r, index(r, Rollback)), "rollback-state"),
    ("window", lambda r: _drop(r, KVEvict), "evict-missing"),
    ("window", lambda r: [x.model_copy(update=dict(blocks=(x.blocks[0] + 1,))) if isinstance(x, KVEvict) else x
                          for x in r], "evict-unexpected"),
])
@pytest.mark.parametrize("replay", [False, True])
def test_record_level_forgeries_are_caught_without_the_replay(tmp_path, ledgers, ledger, edit, reason, replay):
    """Forgeries re-signed with the engine's own key that the records alone expose: --no-replay now
    finds them, and so does a full verify (the replay may name the same record first)."""
    rep = verify(tmp_path, sign(edit(records(ledgers[ledger]))), replay=replay)
    assert rep.verdict == "invalid", rep.to_json()
    if not replay:
        assert rep.reason == reason, rep.to_json()


# -- hole 5: crashes, end(error), rollback targets -----------------------------------------------------------


def test_forged_live_state_of_a_rollback_target_is_reported_at_that_commit(tmp_path, ledgers):
    recs = records(ledgers["rolled"])
    target = recs[index(recs, Rollback)].to_commit
    i = index(recs, Commit, commit=target)
    rep = verify(tmp_path, sign(_live(recs, i)))
    assert rep.reason == "commit-live-state" and rep.divergence["record"] == i, rep.to_json()


def test_a_ledger_cut_short_with_end_error_is_not_valid(tmp_path, ledgers):
    recs = records(ledgers["clean"])
    i = index(recs, Commit, commit=2)
    c = recs[i]
    cut = recs[:i + 1] + [End(seq=0, reason="error", num_tokens=c.end_step, live_state=c.live_state)]
    for replay in (True, False):
        rep = verify(tmp_path, sign(cut), replay=replay)
        assert rep.verdict == "incomplete" and rep.reason == "end-error" and rep.exit_code == 3, rep.to_json()


def test_end_error_after_the_genesis_is_invalid(tmp_path, ledgers):
    g = records(ledgers["clean"])[0]
    g = g.model_copy(update=dict(inputs=g.inputs.model_copy(update=dict(anchor_tokens=())),
                                 anchor_commitment=bytes(32)))
    end = End(seq=0, reason="error", num_tokens=0, live_state=commits.live_state([], {}))
    for replay in (True, False):
        rep = verify(tmp_path, sign([g, end]), replay=replay)
        assert rep.verdict == "invalid" and rep.reason == "end-no-commit", rep.to_json()


def test_a_fault_that_is_not_rolled_back_ends_incomplete(tmp_path):
    """--max-rollbacks 0: the runtime detects the fault, cannot roll back and ends in error; the
    divergence lies in the failed commit's fault window: incomplete (exit 3), not invalid."""
    out = fx.generate(tmp_path / "gave-up.fpl", faults=FaultPlan(flips=[FLIP]), max_rollbacks=0)
    assert out.end_reason == "error"
    rep = fx.verify(out.ledger)
    assert rep.verdict == "incomplete" and rep.reason == "end-error", rep.to_json()
    assert "not rolled back" in rep.message


def test_crash_between_a_fault_and_its_rollback(tmp_path, ledgers):
    """Cut the fault ledger at every checkpoint: a signed prefix with the fault's divergence but not
    the failed validation is invalid (and says why); once the failed validation is signed, the
    prefix is incomplete (exit 3), also when the records stop right after it (no rollback)."""
    data = open(ledgers["flip"].ledger, "rb").read()
    recs = records(ledgers["flip"])
    failed = index(recs, Validation, passed=False)
    verdicts = {}
    for e in parse_ledger_bytes(data).entries:
        if e.checkpoint is None:
            continue
        rep = verify(tmp_path, data[:e.offset + e.size])
        verdicts[e.checkpoint.size] = rep.verdict
        if rep.verdict == "invalid":
            assert e.checkpoint.size <= failed and any("not sealed" in n for n in rep.notes), rep.to_json()
        else:
            assert rep.verdict in ("incomplete", "valid"), rep.to_json()
    assert "invalid" in verdicts.values() and "incomplete" in verdicts.values()
    # signed up to the failed validation, no rollback record: the fault is detected, not resolved
    prefix = recs[:failed + 1]
    cps = [i for i, r in enumerate(prefix) if isinstance(r, Commit)] + [failed]
    rep = verify(tmp_path, build_ledger_bytes(prefix, fx.key(), cps))
    assert rep.verdict == "incomplete" and rep.explained_divergences and rep.fault_history, rep.to_json()
    assert rep.fault_history[0]["rollback_record"] is None


# -- hole 8: the fault history ---------------------------------------------------------------------------------


def test_tokens_of_a_branch_a_policy_validator_rejected_must_replay(tmp_path, ledgers):
    recs = records(ledgers["rolled"])
    rb = index(recs, Rollback)
    abandoned = [i for i, r in enumerate(recs[:rb]) if isinstance(r, TokenStep) and r.step >= recs[rb].to_step]
    assert len(abandoned) >= 4
    for i in abandoned:
        rep = verify(tmp_path, sign(retoken(recs, i, (recs[i].token + 1) % 64)))
        assert rep.verdict == "invalid" and rep.reason == "replay-token", (i, rep.to_json())
        assert rep.divergence["record"] == i and "policy validator" in rep.message


def test_a_divergence_before_the_fault_window_is_fatal(tmp_path, ledgers):
    """Move the kv-rehash failure to the next commit: the divergence (in the faulted commit's
    segment) now lies before the window that failure explains."""
    recs = records(ledgers["flip"])
    f = index(recs, Validation, passed=False)
    c = recs[f].commit
    moved = [r.model_copy(update=dict(commit=c + 1)) if isinstance(r, Validation) and r.commit == c else r
             for r in recs]
    assert verify(tmp_path, sign(recs)).verdict == "valid"
    rep = verify(tmp_path, sign(moved))
    assert rep.verdict == "invalid" and "fault window" in rep.message, rep.to_json()


def _claim(recs, detail):
    """The rolled ledger with its policy rejection turned into a kv-rehash failure saying ``detail``."""
    out = []
    for r in recs:
        if isinstance(r, Validation) and not r.passed:
            r = r.model_copy(update=dict(passed=True, detail="ok"))
        elif isinstance(r, Validation) and r.validator == commits.REHASH_VALIDATOR and r.commit == 2:
            r = r.model_copy(update=dict(passed=False, detail=detail))
        out.append(r)
    return out


def test_an_invented_fault_must_name_a_real_page(tmp_path, ledgers):
    recs = records(ledgers["rolled"])
    block0 = [r for r in recs if isinstance(r, KVPage) and r.kind == "context" and r.block == 0][0].digest.hex()

    def detail(block, recorded, actual="ab" * 8):
        return commits.rehash_failure_detail(1, 4, "context", block, 9, 0, bytes.fromhex(actual + "00" * 24),
                                             bytes.fromhex(recorded + "00" * 24))

    rb = index(recs, Rollback)
    step = recs[rb].to_step + 1
    forged_tokens = retoken(recs, index(recs, TokenStep, step=step, attempt=0), 0)
    for bad in ("the pages are fine, honestly", detail(7, block0[:16]), detail(0, "cd" * 8),
                detail(0, block0[:16], block0[:16])):
        rep = verify(tmp_path, sign(_claim(recs, bad)))
        assert rep.verdict == "invalid" and rep.reason == "fault-claim", (bad, rep.to_json())
        # with a forged token before the bogus claim, the token is the first divergence and it is fatal
        rep = verify(tmp_path, sign(_claim(forged_tokens, bad)))
        assert rep.verdict == "invalid" and rep.divergence["step"] == step, (bad, rep.to_json())
    # a claim naming a live page and its recorded digest cannot be disproven: the report says so
    rep = verify(tmp_path, sign(_claim(forged_tokens, detail(0, block0[:16]))))
    assert rep.verdict == "valid" and rep.fault_history, rep.to_json()
    assert rep.fault_history[0]["first_divergence"] == index(recs, TokenStep, step=step, attempt=0)
    assert "not proven" in render_text(rep)


# -- hole 8: malformed input -----------------------------------------------------------------------------------


def test_a_checkpoint_size_of_thousands_of_digits(tmp_path, ledgers):
    data = open(ledgers["clean"].ledger, "rb").read()
    last = [e for e in parse_ledger_bytes(data).entries if e.checkpoint is not None][-1]
    cp = last.checkpoint
    body = Checkpoint(cp.origin, 1, cp.root, cp.prev).body().replace(b"\n1\n", b"\n" + b"9" * 4301 + b"\n", 1)
    frame = encode_frame(FRAME_CHECKPOINT, sign_note(body, fx.key()))
    rep = verify(tmp_path, data[:last.offset] + frame)
    assert rep.verdict == "invalid" and rep.reason == "checkpoint-format" and "64 bits" in rep.message


@pytest.mark.parametrize("replay", [False, True])
def test_an_anchor_token_outside_the_vocabulary(tmp_path, ledgers, replay):
    recs = records(ledgers["clean"])
    g = recs[0]
    anchors = [r.digest for r in recs if isinstance(r, KVPage) and r.kind == "anchor"]
    toks = g.inputs.anchor_tokens[:-1] + (64 + 3,)
    g = g.model_copy(update=dict(inputs=g.inputs.model_copy(update=dict(anchor_tokens=toks)),
                                 anchor_commitment=commits.anchor_commitment(toks, anchors)))
    rep = verify(tmp_path, sign([g] + recs[1:]), replay=replay)
    assert rep.verdict == "invalid" and rep.reason in ("input-range", "replay-setup"), rep.to_json()
    assert rep.divergence["record"] == 0


@pytest.mark.parametrize("replay", [False, True])
def test_a_commit_before_any_token(tmp_path, ledgers, replay):
    recs = records(ledgers["clean"])
    anchors = [r for r in recs if isinstance(r, KVPage) and r.kind == "anchor"]
    state = commits.live_state([a.digest for a in anchors], {})
    c = Commit(seq=0, commit=0, reason="prefill", first_step=0, end_step=0, tokens=(), page_count=len(anchors),
               pages_root=commits.pages_root([a.digest for a in anchors]), live_state=state)
    rep = verify(tmp_path, sign(recs[:1] + anchors + [c, End(seq=0, reason="eos", num_tokens=0, live_state=state)]),
                 replay=replay)
    assert rep.verdict == "invalid" and rep.reason == "commit-empty", rep.to_json()


def test_huge_frames_are_refused_from_their_header(tmp_path, ledgers):
    """Two 16 MiB kv_page frames after a valid ledger: refused before their payload is read; the
    reader never holds the file (the old one held all of it and decoded every frame)."""
    data = open(ledgers["clean"].ledger, "rb").read()
    p = tmp_path / "huge.fpl"
    size = 2**24 - 64
    h8 = struct.pack("<IB3x", size, FRAME_RECORD)
    head = h8 + blake3.blake3(h8).digest()[:4]
    with open(p, "wb") as f:
        f.write(data)
        for _ in range(2):
            f.write(head)
            f.seek(size + FRAME_CHECK_SIZE, os.SEEK_CUR)
        f.truncate()
    tracemalloc.start()
    rep = verify_ledger(p, model=fx.artifact(), trusted_key=fx.key().verifier, replay=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rep.verdict == "invalid" and rep.reason == "frame-too-large", rep.to_json()
    assert rep.divergence["offset"] == len(data) and "genesis allows" in rep.message
    assert peak < 8 * 2**20, peak


# -- unreadable inputs and fuzzing ---------------------------------------------------------------------------


def test_unreadable_inputs(tmp_path, ledgers):
    clean = ledgers["clean"]
    assert fx.verify(tmp_path / "missing.fpl").verdict == "unreadable"
    (tmp_path / "junk.fpl").write_bytes(b"hello, not a ledger" * 3)
    assert fx.verify(tmp_path / "junk.fpl").reason == "bad-magic"
    (tmp_path / "moved.fpl").write_bytes(open(clean.ledger, "rb").read())
    assert fx.verify(tmp_path / "moved.fpl").verdict == "valid"  # the ledger alone replays: no side file
    rep = fx.verify(clean.ledger, trusted_key="not a key")
    assert rep.verdict == "unreadable" and rep.reason == "key-format"
    rep = verify_ledger(clean.ledger, model=str(tmp_path / "no-artifact"), trusted_key=fx.key().verifier)
    assert rep.verdict == "unreadable" and rep.reason == "model-artifact"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_bytes_never_crash_the_auditor(tmp_path, ledgers, data):
    raw = bytearray(open(ledgers["rolled"].ledger, "rb").read())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    p = tmp_path / "fuzz.fpl"
    p.write_bytes(bytes(raw))
    rep = verify_ledger(p, model=fx.artifact(), trusted_key=fx.key().verifier,
                        replay=False)
    assert rep.verdict in ("valid", "invalid", "incomplete", "unreadable") and rep.reason != "auditor-error", rep.message
    if rep.verdict == "valid":
        assert bytes(raw) == open(ledgers["rolled"].ledger, "rb").read()


_MUTABLE = (TokenStep, KVPage, KVEvict, Commit, Rollback, End)  # every field of these follows from the computation


def _mutate(value, data):
    """Return a different value of the same wire type as ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + data.draw(st.integers(1, 3))
    if isinstance(value, bytes):
        b = bytearray(value)
        b[data.draw(st.integers(0, len(b) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(b)
    if isinstance(value, tuple) and value:
        k = data.draw(st.integers(0, len(value) - 1))
        return value[:k] + (_mutate(value[k], data),) + value[k + 1:]
    return None


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_fields_resigned_with_the_engine_key_are_rejected(tmp_path, ledgers, data):
    """A mutation corpus: one field of one computed record of a ledger with a policy rollback
    (whose abandoned branch must replay exactly) changed and the whole ledger re-signed with the
    engine's key. Whatever the field, the auditor rejects it, with a reason, and never raises."""
    from spec.ledger import COMMIT_REASONS, END_REASONS

    recs, cps = layout(open(ledgers["rolled"].ledger, "rb").read())
    i = data.draw(st.sampled_from([k for k, r in enumerate(recs) if isinstance(r, _MUTABLE)]))
    r = recs[i]
    name = data.draw(st.sampled_from([n for n in type(r).model_fields if n not in ("type", "seq")]))
    value = getattr(r, name)
    if name == "reason" and isinstance(r, (Commit, End)):
        names = COMMIT_REASONS if isinstance(r, Commit) else END_REASONS
        new = data.draw(st.sampled_from(sorted(set(names) - {value})))
    elif name == "kind":
        new = "anchor" if value == "context" else "context"
    elif isinstance(value, str):
        new = value + "!"
        if isinstance(r, Rollback):  # a rollback's reason is free text: nothing to check
            return
    else:
        new = _mutate(value, data)
    if new is None or new == value:
        return
    forged = recs[:i] + [r.model_copy(update={name: new})] + recs[i + 1:]
    try:
        blob = rebuild(forged, fx.key(), cps)
    except Exception:  # the value does not fit its wire type (an id past 2**32): not a ledger
        return
    rep = check(tmp_path, blob, replay=True)
    assert rep.verdict == "invalid" and rep.reason != "auditor-error", (type(r).__name__, name, rep.to_json())
