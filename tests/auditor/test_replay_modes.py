"""Prefill (teacher-forced) and stepwise replay reach the same verdict on every ledger.

The ledgers are those of the tamper suite that reach the replay: clean and rolled-back runs, a
kv-rehash fault with its explained divergence, a fault the runtime signed as it was (one layer of
a page), a sliding window that evicts within segments, an early EOS, long segments, signed
prefixes cut at checkpoints, and forgeries re-signed with the engine's own key (token, logits
digest, page digest, commit policy, rollback state, validation, retry attempt, genesis inputs).
For each, both modes must give the same verdict, reason, location (record, step, block, layer,
field), values, explained divergences and tokens; and prefill must run fewer forwards.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

import fp_fixtures as fx
from auditor.replay import Replayer
from auditor.verify import verify_ledger
from fieldprint.runtime.faults import FaultPlan, FlipKV
from spec.commits import make_policy, page_digest, pages_root
from spec.ledger import Commit, KVPage, Rollback, TokenStep, Validation
from spec.ledger_file import build_ledger_bytes, parse_ledger_bytes, verify_ledger_structure

COMPARED = ("verdict", "reason", "message", "divergence", "explained_divergences", "tokens", "text", "fault_history")


def _layout(data: bytes):
    recs, cps = [], []
    for e in parse_ledger_bytes(data).entries:
        if e.record is not None:
            recs.append(e.record)
        else:
            cps.append(len(recs) - 1)
    return recs, cps


def _forge(path, edit) -> bytes:
    recs, cps = _layout(open(path, "rb").read())
    return build_ledger_bytes(edit(list(recs)), fx.key(), checkpoint_after=cps)


def _retoken(step, token):
    def edit(recs):
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
    return edit


def _page_layer0(recs):
    out, pages = [], []
    for r in recs:
        if isinstance(r, KVPage) and r.kind == "context" and r.block == 1 and r.used == 3:
            layers = (b"\x01" * 32,) + r.layer_digests[1:]
            r = r.model_copy(update=dict(layer_digests=layers, digest=page_digest(layers)))
        if isinstance(r, KVPage):
            pages.append(r.digest)
        if isinstance(r, Commit):
            r = r.model_copy(update=dict(pages_root=pages_root(pages)))
            pages = []
        out.append(r)
    return out


def _mid_segment_page(path) -> bytes:
    """A kv_page record for the partial block inserted right after step 6, inside a segment (the
    runtime records partial pages only at commits): its commit's page count and root are fixed,
    so only the replay sees it. Prefill mode must hash that page as it stood at step 6."""
    recs, cps = _layout(open(path, "rb").read())
    at = next(i for i, r in enumerate(recs) if isinstance(r, TokenStep) and r.step == 6) + 1
    cached = len(fx.PROMPT) + 6
    block = cached // 16
    layers = (b"\x05" * 32,)
    page = KVPage(seq=0, kind="context", block=block, used=cached - 16 * block, digest=page_digest(layers),
                  layer_digests=layers)
    recs.insert(at, page)
    out, pages = [], []
    for i, r in enumerate(recs):
        r = r.model_copy(update=dict(seq=i))
        if isinstance(r, KVPage):
            pages.append(r.digest)
        if isinstance(r, Commit):
            r = r.model_copy(update=dict(page_count=len(pages), pages_root=pages_root(pages)))
            pages = []
        out.append(r)
    return build_ledger_bytes(out, fx.key(), checkpoint_after=[c + (c >= at) for c in cps])


def _genesis_input(field, value):
    def edit(recs):
        inputs = recs[0].inputs.model_copy(update={field: value})
        return [recs[0].model_copy(update=dict(inputs=inputs))] + recs[1:]
    return edit


def _map(kind, attempt_from=None, **update):
    def edit(recs):
        out = []
        for r in recs:
            if isinstance(r, kind) and (attempt_from is None or r.attempt == attempt_from):
                r = r.model_copy(update=update)
            out.append(r)
        return out
    return edit


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory):
    d = tmp_path_factory.mktemp("modes")
    out = {}
    out["clean"] = fx.generate(d / "clean.fpl")
    out["rolled"] = fx.generate(d / "rolled.fpl", faults=FaultPlan(reject_commits={2}))
    out["kv-flip"] = fx.generate(d / "kvflip.fpl", faults=FaultPlan(flips=[FlipKV(step=9, block=0, byte=100, bit=3)]))
    out["window"] = fx.generate(d / "window.fpl", window=5, max_new_tokens=44, policy=make_policy(12))
    out["long"] = fx.generate(d / "long.fpl", anchors=(), max_new_tokens=60, policy=make_policy(25))
    out["eos"] = fx.generate(d / "eos.fpl", eos_token_ids=[out["clean"].tokens[6]])
    slice_bytes = fx.engine(fx.artifact(0, 3)).page_tensor(0)[0].numel()
    out["layer"] = fx.generate(d / "layer.fpl", layers=3, max_new_tokens=6,
                               faults=FaultPlan(flips=[FlipKV(step=0, block=1, byte=2 * slice_bytes + 5, bit=2)]))
    paths = {k: (v.ledger, 3 if k == "layer" else 1) for k, v in out.items()}
    clean, rolled = out["clean"].ledger, out["rolled"].ledger
    forged = {
        "token": (clean, _retoken(5, (out["clean"].tokens[5] + 1) % 64)),
        "token-0": (clean, _retoken(0, (out["clean"].tokens[0] + 1) % 64)),
        "token-last": (clean, _retoken(15, (out["clean"].tokens[15] + 1) % 64)),
        "logits": (clean, lambda recs: [r.model_copy(update=dict(logits_digest=bytes(32)))
                                        if isinstance(r, TokenStep) and r.step == 7 else r for r in recs]),
        "page": (clean, _page_layer0),
        "policy": (clean, lambda recs: [recs[0].model_copy(update=dict(
            commit_policy=recs[0].commit_policy.model_copy(update=dict(every_n_tokens=5))))] + recs[1:]),
        "rollback-state": (rolled, _map(Rollback, live_state=b"\x02" * 32)),
        "validation": (rolled, _map(Validation, passed=True)),
        "attempt": (rolled, lambda recs: _map(TokenStep, 1, attempt=2)(_map(Rollback, 1, attempt=2)(recs))),
        "window-4": (clean, _genesis_input("window", 4)),
        "eos-5": (clean, _genesis_input("eos_token_ids", (out["clean"].tokens[5],))),
        "stop": (clean, _genesis_input("stop_strings", ("w31",))),
        "window-token": (out["window"].ledger, _retoken(30, (out["window"].tokens[30] + 1) % 64)),
    }
    for name, (src, edit) in forged.items():
        p = d / f"forged-{name}.fpl"
        p.write_bytes(_forge(src, edit))
        paths[f"forged-{name}"] = (str(p), 1)
    (d / "forged-mid-page.fpl").write_bytes(_mid_segment_page(clean))
    paths["forged-mid-page"] = (str(d / "forged-mid-page.fpl"), 1)
    data = open(clean, "rb").read()  # signed prefixes cut right after a checkpoint
    ends = [e.offset for e in parse_ledger_bytes(data).entries][1:] + [len(data)]
    cuts = [end for e, end in zip(parse_ledger_bytes(data).entries, ends) if e.checkpoint is not None][:-1]
    for k, cut in enumerate(cuts[1::2]):
        p = d / f"cut-{k}.fpl"
        p.write_bytes(data[:cut])
        paths[f"cut-{k}"] = (str(p), 1)
    return paths


def test_prefill_and_stepwise_agree_on_every_ledger(ledgers):
    seen = {}
    for name, (path, layers) in ledgers.items():
        kw = dict(model=fx.artifact(0, layers), trusted_key=fx.key().verifier)
        a = verify_ledger(path, replay_mode="prefill", **kw).to_dict()
        b = verify_ledger(path, replay_mode="stepwise", **kw).to_dict()
        for f in COMPARED:
            assert a.get(f) == b.get(f), (name, f, a.get(f), b.get(f))
        assert (a["replay"].get("mode"), b["replay"].get("mode")) == ("prefill", "stepwise"), (name, a)
        assert a["replay"]["steps"] == b["replay"]["steps"], name
        seen[name] = (a["verdict"], a["reason"])
        if name == "kv-flip":  # the abandoned branch diverges and is explained, in both modes
            assert a["explained_divergences"] and a["fault_history"], a
    # the suite covers what it claims: valid, incomplete and invalid ledgers, replay reasons, explained faults
    verdicts = {v for v, _ in seen.values()}
    reasons = {r for _, r in seen.values()}
    assert {"valid", "invalid", "incomplete"} <= verdicts, seen
    assert {"replay-token", "replay-logits", "rollback-state"} <= reasons and len(reasons) >= 7, str(seen)
    assert seen["clean"][0] == seen["window"][0] == seen["long"][0] == seen["kv-flip"][0] == "valid", seen
    assert seen["forged-window-token"][1] == "replay-token", seen


def test_prefill_runs_a_branch_in_few_forwards(ledgers):
    """The long ledger (60 tokens, commits every 25) replays in one forward, across its commits;
    the sliding window needs a new forward where a block is freed (every 16 positions)."""
    for name, most in (("long", 1), ("window", 4)):  # window: 44 tokens, a block freed 3 times
        path, _ = ledgers[name]
        rep, res = _replay(path, "prefill")
        steps = sum(isinstance(r, TokenStep) for r in rep.records)
        assert res.divergence is None and res.steps_replayed == steps, res.divergence
        assert rep.source.forwards <= most < steps, (name, rep.source.forwards, steps)


def _replay(path, mode, layers=1):
    art = fx.artifact(0, layers)
    records = verify_ledger_structure(open(path, "rb").read(), fx.key().verifier).records
    rep = Replayer(art.model, art.tokenizer, art.commitment, replay=mode)
    return rep, rep.run(records)


def test_a_page_read_inside_a_prefill_run_is_hashed_as_of_its_step(ledgers):
    """The forged mid-segment page (block 1, 9 slots used after step 6) is read while the prefill
    run has already written slots 9.. of that block: the replay must hash it as it stood."""
    got = {}
    for mode in ("prefill", "stepwise"):
        _, res = _replay(ledgers["forged-mid-page"][0], mode)
        got[mode] = res.divergence.to_dict()
    assert got["prefill"] == got["stepwise"]
    d = got["prefill"]
    assert (d["reason"], d["block"], d["layer"], d["step"]) == ("replay-page", 1, 0, 6), d


# -- the command line: --replay, --engine/--device, --ray ------------------------------------------


def _cli(capsys, *args):
    from auditor import cli

    try:
        code = cli.main(["verify", *args, "--model", fx.artifact_dir(), "--trusted-key",
                         fx.key().verifier.to_string()])
    except SystemExit as e:  # argparse refuses the arguments
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_replay_modes_and_the_report_says_how(capsys, ledgers):
    path = ledgers["clean"][0]
    code, out, _ = _cli(capsys, path)
    assert code == 0 and "as prefill on the CPU reference engine" in out, out
    code, out, _ = _cli(capsys, path, "--replay", "stepwise", "--json")
    rep = json.loads(out)
    assert code == 0 and (rep["replay"]["mode"], rep["replay"]["engine"], rep["replay"]["device"]) == (
        "stepwise", "ref", "cpu")
    code, out, _ = _cli(capsys, ledgers["forged-token"][0], "--json")
    assert code == 1 and json.loads(out)["reason"] == "replay-token"


def test_cli_refuses_a_device_or_engine_it_cannot_run(capsys, ledgers):
    path = ledgers["clean"][0]
    code, out, err = _cli(capsys, path, "--replay", "sideways")
    assert code == 2 and "--replay" in err and not out
    code, out, err = _cli(capsys, path, "--device", "nonsense")
    assert code == 2 and err.startswith("error: --device nonsense") and not out
    if not torch.cuda.is_available():
        code, out, err = _cli(capsys, path, "--engine", "fast", "--device", "cuda")
        assert code == 2 and "no CUDA device" in err and not out
    code, out, err = _cli(capsys, path, "--ray", "local", "--jobs", "2")
    assert code == 2 and "--jobs and --ray" in err and not out


@pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
                    reason="the fast engine needs CUDA or the Triton interpreter")
def test_the_fast_engine_replays_to_the_same_report(ledgers):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kw = dict(model=fx.artifact(), trusted_key=fx.key().verifier)
    for name in ("clean", "forged-token"):
        ref = verify_ledger(ledgers[name][0], **kw).to_dict()
        fast = verify_ledger(ledgers[name][0], engine="fast", device=device, **kw).to_dict()
        assert all(ref.get(f) == fast.get(f) for f in COMPARED), (name, ref, fast)
        assert (fast["replay"]["engine"], fast["replay"]["device"]) == ("fast", device)


@pytest.mark.slow
def test_ray_gives_the_reports_of_one_machine(ledgers, tmp_path):
    """A local Ray instance (about 30 s to start on 2 busy cores): the same reports, in order,
    for a valid, a forged and a missing ledger."""
    pytest.importorskip("ray")
    from auditor.cluster import verify_on_ray

    paths = [ledgers["clean"][0], ledgers["forged-token"][0], str(tmp_path / "missing.fpl")]
    kw = dict(model=fx.artifact_dir(), trusted_key=fx.key().verifier)
    local = [verify_ledger(p, **kw).to_dict() for p in paths]
    remote = [r.to_dict() for r in verify_on_ray(paths, "local", **kw)]
    assert [r["verdict"] for r in remote] == ["valid", "invalid", "unreadable"]
    for a, b in zip(local, remote):
        assert all(a.get(f) == b.get(f) for f in COMPARED + ("ledger",)), (a, b)
