"""The verifying runtime on the reference engine: ledger contents, commit policies, rollbacks."""
from __future__ import annotations

import os

import pytest

import fp_fixtures as fx
from fieldprint.runtime.faults import FaultPlan, FlipAnchor, FlipKV, flip_bit
from fieldprint.runtime.policy import PolicyError, describe_policy, parse_policy
from fieldprint.runtime.validate import Validator
from spec.commits import make_policy
from spec.ledger import Commit, End, Genesis, KVEvict, KVPage, Rollback, TokenStep, Validation
from spec.ledger_file import read_ledger, verify_ledger_structure
from spec.sampling import SamplingParams


def records(path):
    return read_ledger(path).records


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return fx.generate(tmp_path_factory.mktemp("clean") / "clean.fpl")


# -- a clean run -----------------------------------------------------------------------------------


def test_ledger_does_not_change_the_output(clean):
    eng = fx.engine()
    eng.set_anchors(fx.ANCHORS)
    plain = eng.generate(fx.PROMPT, sampling=SamplingParams(temperature="4/5", seed=7), max_new_tokens=16)
    assert clean.tokens == plain.tokens
    assert clean.end_reason == "max_tokens" and not clean.rollbacks


def test_clean_ledger_is_sealed_signed_and_complete(clean):
    rep = verify_ledger_structure(clean.ledger, fx.key().verifier)
    assert rep.status == "complete", rep.error
    recs = rep.records
    assert isinstance(recs[0], Genesis) and isinstance(recs[-1], End)
    assert [r.token for r in recs if isinstance(r, TokenStep)] == clean.tokens
    anchors = [r for r in recs if isinstance(r, KVPage) and r.kind == "anchor"]
    assert [(a.block, a.used) for a in anchors] == [(0, 16), (1, 4)]
    commits = [r for r in recs if isinstance(r, Commit)]
    assert [c.reason for c in commits] == ["prefill"] + ["every_n_tokens"] * 3 + ["end_of_generation"]
    assert [(c.first_step, c.end_step) for c in commits] == [(0, 1), (1, 4), (4, 8), (8, 12), (12, 16)]
    # every commit validated (kv-rehash) and passed
    vals = [r for r in recs if isinstance(r, Validation)]
    assert sorted(v.commit for v in vals) == [0, 1, 2, 3, 4] and all(v.passed for v in vals)
    assert rep.verified_size == len(recs) and len(rep.checkpoints) == len(commits) + 1


def test_genesis_carries_what_replay_needs(clean):
    inp = records(clean.ledger)[0].inputs
    assert list(inp.prompt_tokens) == fx.PROMPT and list(inp.anchor_tokens) == fx.ANCHORS
    assert (inp.window, inp.eos_token_ids, inp.stop_strings) == (0, (), ())
    assert sorted(os.listdir(os.path.dirname(clean.ledger))) == ["clean.fpl"]  # no side file


def test_ledger_bytes_do_not_depend_on_thread_timing(tmp_path, clean):
    again = fx.generate(tmp_path / "again.fpl")
    assert open(again.ledger, "rb").read() == open(clean.ledger, "rb").read()


def test_the_auditor_accepts_the_clean_ledger(clean):
    rep = fx.verify(clean.ledger)
    assert rep.verdict == "valid", rep.message
    assert rep.tokens == clean.tokens and rep.exit_code == 0


# -- commit policies --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy, reasons", [
    (make_policy(0, page_full=True), {"prefill", "page_full", "end_of_generation"}),
    (make_policy(5), {"prefill", "every_n_tokens", "end_of_generation"}),
])
def test_policies_commit_where_they_say_and_verify(tmp_path, policy, reasons):
    out = fx.generate(tmp_path / "p.fpl", policy=policy, max_new_tokens=20)
    commits = [r for r in records(out.ledger) if isinstance(r, Commit)]
    assert {c.reason for c in commits} == reasons
    if policy.every_n_tokens:
        assert all(c.end_step % 5 == 0 for c in commits if c.reason == "every_n_tokens")
    rep = fx.verify(out.ledger)
    assert rep.verdict == "valid", rep.message


def test_end_of_turn_and_stop_sequence_policies(tmp_path, clean):
    toks = clean.tokens
    pol = make_policy(0, end_of_turn_tokens=[toks[3]], stop_sequences=[toks[5:7]])
    out = fx.generate(tmp_path / "eot.fpl", policy=pol)
    commits = {c.end_step - 1: c.reason for c in records(out.ledger) if isinstance(c, Commit)}
    assert commits[3] == "end_of_turn" and commits[6] == "stop_sequence"
    assert fx.verify(out.ledger).verdict == "valid"


def test_sliding_window_records_evictions_and_verifies(tmp_path):
    out = fx.generate(tmp_path / "w.fpl", window=8, max_new_tokens=20, anchors=None)
    evicts = [r for r in records(out.ledger) if isinstance(r, KVEvict)]
    assert evicts and evicts[0].blocks == (0,)
    rep = fx.verify(out.ledger)
    assert rep.verdict == "valid", rep.message


def test_policy_strings_round_trip():
    p = parse_policy("every=8,page-full,eot=2|7,stop=5 6|9 9 9")
    assert p.every_n_tokens == 8 and p.on_page_full and p.end_of_turn_tokens == (2, 7)
    assert p.stop_sequences == ((5, 6), (9, 9, 9))
    assert parse_policy(describe_policy(p)) == p
    for bad in ("every=x", "every=-1", "every=0", "sometimes", "stop=", "eot=a"):
        with pytest.raises(PolicyError):
            parse_policy(bad)


# -- rollbacks --------------------------------------------------------------------------------------
# commits (every 4): 0 = [0,1) prefill, 1 = [1,4), 2 = [4,8), 3 = [8,12), 4 = [12,16) end.
SCENARIOS = {
    # fault, failing commit, rollback target, repaired (anchor pages, context blocks)
    "kv-bit-flip": (FaultPlan(flips=[FlipKV(step=9, block=0, byte=100, bit=3)]), 3, 2, ([], [0])),
    "anchor-bit-flip": (FaultPlan(flips=[FlipAnchor(step=5, page=1, byte=7, bit=0)]), 2, 1, ([1], [])),
    "validator-rejects": (FaultPlan(reject_commits={2}), 2, 1, ([], [])),
}


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request, tmp_path_factory):
    plan, failing, target, repaired = SCENARIOS[request.param]
    out = fx.generate(tmp_path_factory.mktemp(request.param) / f"{request.param}.fpl", faults=plan)
    return request.param, out, failing, target, repaired


def test_fault_is_detected_at_the_next_commit_and_rolled_back(scenario):
    name, out, failing, target, repaired = scenario
    assert len(out.rollbacks) == 1
    rb = out.rollbacks[0]
    assert (rb.failed_commit, rb.to_commit, rb.attempt) == (failing, target, 1)
    assert (rb.repaired_anchor_pages, rb.repaired_blocks) == repaired
    recs = records(out.ledger)
    failed = [r for r in recs if isinstance(r, Validation) and not r.passed]
    assert [f.commit for f in failed] == [failing]
    rollback = next(r for r in recs if isinstance(r, Rollback))
    commit_of = {r.commit: r for r in recs if isinstance(r, Commit)}
    assert rollback.to_commit == target and rollback.live_state == commit_of[target].live_state
    # the abandoned branch stays in the log: token steps of attempt 0 beyond the rollback point
    assert any(isinstance(r, TokenStep) and r.attempt == 0 and r.step >= rollback.to_step for r in recs)
    assert recs[-1].num_tokens == 16


def test_final_output_equals_a_fault_free_run_with_the_attempt_rule(scenario):
    name, out, failing, target, repaired = scenario
    rb = out.rollbacks[0]
    assert out.tokens == fx.reference_tokens(fx.PROMPT, [(rb.to_step, rb.attempt)])


def test_auditor_accepts_rollbacks_and_show_explains_them(scenario):
    from auditor.show import show

    name, out, failing, target, repaired = scenario
    rep = fx.verify(out.ledger)
    assert rep.verdict == "valid", rep.message
    assert rep.tokens == out.tokens and len(rep.rollbacks) == 1
    text, code = show(out.ledger)
    assert code == 0
    assert f"ROLLBACK  to commit {target}" in text and "(abandoned)" in text
    assert f"✗ commit {failing}" in text


def test_greedy_kv_flip_output_equals_the_plain_run(tmp_path):
    greedy = SamplingParams()
    out = fx.generate(tmp_path / "g.fpl", sampling=greedy, faults=FaultPlan(flips=[FlipKV(step=6, block=0)]))
    eng = fx.engine()
    eng.set_anchors(fx.ANCHORS)
    assert out.rollbacks and out.tokens == eng.generate(fx.PROMPT, sampling=greedy, max_new_tokens=16).tokens


def test_validator_that_raises_rejects_and_one_that_always_rejects_ends_in_error(tmp_path):
    calls = []

    def flaky(view):
        calls.append(view.commit)
        if view.commit == 1:
            raise RuntimeError("boom")
        return True

    out = fx.generate(tmp_path / "flaky.fpl", validators=[flaky])
    assert [r.failed_commit for r in out.rollbacks] == [1]
    assert "validator raised RuntimeError: boom" in out.rollbacks[0].reason
    assert fx.verify(out.ledger).verdict == "valid"

    never = Validator("never", lambda view: (view.commit == 0, "no"))
    out = fx.generate(tmp_path / "never.fpl", validators=[never], max_rollbacks=2)
    assert out.end_reason == "error" and len(out.rollbacks) == 2
    assert out.error.startswith("giving up after 2 rollbacks: never: no")
    rep = fx.verify(out.ledger)
    assert rep.verdict == "incomplete", rep.message  # signed and consistent, but the generation failed


def test_validators_see_the_commit_text(tmp_path):
    seen = []
    fx.generate(tmp_path / "t.fpl", validators=[lambda v: seen.append((v.commit, v.text, v.tokens)) or True])
    assert seen[0][0] == 0 and seen[0][1] == f"w{seen[0][2][0]}"


def test_flip_bit_flips_exactly_one_bit():
    import torch

    t = torch.zeros(2, 3, dtype=torch.int8)
    flip_bit(t, 4, 7)
    assert t.view(torch.uint8).view(-1).tolist() == [0, 0, 0, 0, 128, 0]
    with pytest.raises(ValueError):
        flip_bit(t, 6, 0)


def test_fast_engine_ledger_is_verified_by_the_reference_replay(tmp_path, clean):
    from fieldprint.engine import select_engine
    from fieldprint.runtime.session import VerifyingSession

    art = fx.artifact()
    eng = select_engine("fast")(art.model, tokenizer=art.tokenizer, num_pages=48)
    eng.set_anchors(fx.ANCHORS)
    out = VerifyingSession(eng, key=fx.key(), ledger_path=tmp_path / "fast.fpl", policy=make_policy(4),
                           sampling=SamplingParams(temperature="4/5", seed=7), max_new_tokens=16,
                           model_commitment=art.commitment, nonce=b"\x07" * 32, fsync="none").run(fx.PROMPT)
    assert out.tokens == clean.tokens
    rep = fx.verify(out.ledger, progress=True)
    assert rep.verdict == "valid", rep.message


@pytest.mark.parametrize("kw, end, n", [
    (dict(stop=["w31"]), "stop_sequence", 3),
    (dict(eos_token_ids=[59]), "eos", 4),
    (dict(chunk_size=5), "max_tokens", 16),
])
def test_stop_strings_eos_and_chunked_prefill(tmp_path, clean, kw, end, n):
    assert clean.tokens[2] == 31 and clean.tokens[3] == 59  # the clean run's w31 and w59
    out = fx.generate(tmp_path / "s.fpl", **kw)
    assert out.end_reason == end and out.tokens == clean.tokens[:n]
    rep = fx.verify(out.ledger)
    assert rep.verdict == "valid", rep.message


def test_refused_input_leaves_no_ledger(tmp_path):
    from fieldprint_ref.errors import EngineError

    with pytest.raises(EngineError):
        fx.generate(tmp_path / "long.fpl", prompt=list(range(1, 60)) * 3)
    assert not (tmp_path / "long.fpl").exists()
    (tmp_path / "taken.fpl").write_bytes(b"")
    with pytest.raises(FileExistsError):
        fx.generate(tmp_path / "taken.fpl")


def test_sha256_profile_ledger_verifies(tmp_path):
    out = fx.generate(tmp_path / "sha.fpl", hash_profile="sha256", max_new_tokens=6)
    assert read_ledger(out.ledger).hash_profile == "sha256"
    rep = fx.verify(out.ledger)
    assert rep.verdict == "valid" and not rep.notes, rep.to_json()


def test_max_rollbacks_zero_ends_in_error_at_the_first_fault_and_negative_is_refused(tmp_path):
    out = fx.generate(tmp_path / "zero.fpl", max_rollbacks=0, faults=FaultPlan(flips=[FlipKV(step=5, block=1)]))
    assert out.end_reason == "error" and not out.rollbacks
    assert out.error.startswith("giving up after 0 rollbacks: kv-rehash:")
    assert records(out.ledger)[-1].reason == "error"
    assert fx.verify(out.ledger).verdict == "incomplete"
    with pytest.raises(ValueError, match="max_rollbacks"):
        fx.generate(tmp_path / "neg.fpl", max_rollbacks=-5)
    assert not (tmp_path / "neg.fpl").exists()


def test_gil_switch_interval_is_lowered_while_running_and_restored(tmp_path):
    """The session lowers Python's switch interval while it runs (the engine thread must get the
    GIL back as soon as a device step ends) and restores it afterwards, also when it fails."""
    import sys

    from fieldprint.runtime.session import SWITCH_INTERVAL

    before = sys.getswitchinterval()
    seen = []
    out = fx.generate(tmp_path / "a.fpl", on_step=lambda rec: seen.append(sys.getswitchinterval()))
    assert seen and all(s <= SWITCH_INTERVAL * 1.01 for s in seen)
    assert sys.getswitchinterval() == before and out.end_reason == "max_tokens"

    def boom(rec):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        fx.generate(tmp_path / "b.fpl", on_step=boom)
    assert sys.getswitchinterval() == before
    seen.clear()
    fx.generate(tmp_path / "c.fpl", switch_interval=None, on_step=lambda rec: seen.append(sys.getswitchinterval()))
    assert seen and all(s == before for s in seen)
    with pytest.raises(ValueError, match="switch_interval"):
        fx.generate(tmp_path / "d.fpl", switch_interval=0)
