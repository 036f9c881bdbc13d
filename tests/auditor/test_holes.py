"""Regression tests of issue 7's auditor holes (each failed on 2976e80): --no-replay checks the
model and every rule that follows from the records; crashes, ``end(error)`` and forged rollback
targets get the right verdict at the right record; the fault history is checked where it can be;
malformed input never crashes the auditor or fills its memory; the CLI behaves in pipes."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import tracemalloc

import blake3
import pytest

import fp_fixtures as fx
from auditor.report import render_text
from auditor.verify import verify_ledger
from fieldprint.runtime.faults import FaultPlan, FlipKV
from spec import commits
from spec.checkpoint import Checkpoint, sign_note
from spec.keys import write_private_key_file, write_public_key_file
from spec.ledger import Commit, End, KVEvict, KVPage, Rollback, TokenStep, Validation
from spec.ledger_file import (
    FRAME_CHECK_SIZE,
    FRAME_CHECKPOINT,
    FRAME_HEADER_SIZE,
    FRAME_RECORD,
    build_ledger_bytes,
    encode_frame,
    parse_ledger_bytes,
)

FLIP = FlipKV(step=5, block=0, byte=100, bit=3)  # block 0 is full after the prompt: snapshot and live share it


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory):
    d = tmp_path_factory.mktemp("holes")
    return {"clean": fx.generate(d / "clean.fpl"),
            "rolled": fx.generate(d / "rolled.fpl", faults=FaultPlan(reject_commits={2})),
            "flip": fx.generate(d / "flip.fpl", faults=FaultPlan(flips=[FLIP])),
            "window": fx.generate(d / "window.fpl", window=8, max_new_tokens=24)}


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
    return verify_ledger(p, **kw)


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


# -- holes 6 and 7: the command line ---------------------------------------------------------------------------


def _cli(args, stdout=subprocess.PIPE):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, "-m", "auditor.cli", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env=env, timeout=300)


def test_output_into_a_closed_pipe(tmp_path, ledgers):
    """`show L | head -1` and `verify ... | head -1`: the reader is gone; exit with the verdict's
    code, no traceback."""
    pub = tmp_path / "engine.pub"
    write_public_key_file(pub, fx.key().verifier)
    for args, code in ((["show", ledgers["rolled"].ledger], 0),
                       (["verify", ledgers["rolled"].ledger, "--model", fx.artifact_dir(), "--trusted-key", str(pub),
                         "--no-replay"], 0)):
        r, w = os.pipe()
        os.close(r)
        try:
            out = _cli(args, stdout=w)
        finally:
            os.close(w)
        assert out.returncode == code and "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr


@pytest.mark.parametrize("jobs", ["0", "-1", "x"])
def test_jobs_must_be_positive(jobs, capsys):
    from auditor.cli import main

    with pytest.raises(SystemExit) as e:
        main(["verify", "a.fpl", "--model", "m", "--trusted-key", "k", "--jobs", jobs])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--jobs" in err and len(err.strip().splitlines()) == 1, err


def test_private_key_given_as_the_trusted_key(tmp_path, ledgers, capsys):
    from auditor.cli import main

    key = tmp_path / "engine.key"
    write_private_key_file(key, fx.key())
    rep = fx.verify(ledgers["clean"].ledger, trusted_key=str(key))
    assert rep.verdict == "unreadable" and rep.reason == "key-private"
    assert str(key) in rep.message and ".pub" in rep.message and "public key" in rep.message
    code = main(["verify", ledgers["clean"].ledger, "--model", fx.artifact_dir(), "--trusted-key", str(key)])
    assert code == 2 and "PRIVATE" in capsys.readouterr().out
