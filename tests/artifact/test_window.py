"""The model's sliding window is part of the model (issue 7 hole 1).

It is committed (spec.commitment's config leaf), applied by default by every entry point (the
engine's ``generate``/``add_sequence``, ``load_engine``, ``VerifyingSession``, ``fieldprint
generate``), recorded in the ledger genesis beside the window actually used, checked by the
auditor against the model, and printed by ``verify`` and ``show``. Before this, a Mistral model
with ``sliding_window: 8`` ran full attention unless the caller passed the window, and a ledger
of that run verified VALID.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

WINDOW = 8
PROMPT = [3 + (7 * i) % 50 for i in range(30)]  # 30 tokens: the window evicts blocks 0 and 1


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """A quantized tiny Mistral artifact whose checkpoint says sliding_window = 8."""
    from ckpts import hf_model, save_hf

    from fieldprint.artifact import load_artifact, quantize_checkpoint

    root = tmp_path_factory.mktemp("mistral")
    hf = save_hf(hf_model("mistral", 2, False, seed=3, sliding_window=WINDOW), root / "hf")
    quantize_checkpoint(hf, root / "art", "default", progress=False)
    return load_artifact(root / "art")


@pytest.fixture(scope="module")
def key():
    from spec.keys import SigningKey

    return SigningKey("window.test", bytes(range(32)))


def _logits(res) -> torch.Tensor:
    return torch.stack([r.logits for r in res.steps])


def test_window_is_committed(mistral):
    from spec.commitment import model_commitment
    from spec.model import QuantizedModel
    import dataclasses

    m = mistral.model
    assert m.config.sliding_window == WINDOW
    for other in (None, WINDOW + 1):
        cfg = dataclasses.replace(m.config, sliding_window=other)
        assert model_commitment(QuantizedModel(cfg, m.profile, m.tensors, m.files)) != mistral.commitment


def test_engine_applies_the_model_window_by_default(mistral):
    from fieldprint.engine import load_engine

    eng = load_engine("ref", mistral, num_pages=32)
    default = eng.generate(PROMPT, max_new_tokens=6)
    windowed = eng.generate(PROMPT, max_new_tokens=6, window=WINDOW)
    full = eng.generate(PROMPT, max_new_tokens=6, window=None)  # an explicit override: full attention
    assert torch.equal(_logits(default), _logits(windowed))
    assert not torch.equal(_logits(default), _logits(full))
    assert any(r.evicted_blocks for r in default.steps)  # the window freed pages
    h = eng.add_sequence(PROMPT, max_new_tokens=6)
    eng.prefill([h])
    eng.decode([h])
    assert eng.block_table(h)[0] == -1  # add_sequence applies it too: block 0 is out of the window
    eng.release(h)


def _session(mistral, key, path, **kw):
    from fieldprint.engine import load_engine
    from fieldprint.runtime.session import VerifyingSession

    eng = load_engine("ref", mistral, num_pages=48)
    return VerifyingSession(eng, key=key, ledger_path=path, max_new_tokens=6, fsync="none", **kw).run(PROMPT)


def _genesis(path):
    from spec.ledger_file import parse_ledger_bytes

    return parse_ledger_bytes(open(path, "rb").read()).records[0]


def test_session_default_window_and_report(mistral, key, tmp_path):
    from auditor.report import render_text
    from auditor.show import show
    from auditor.verify import verify_ledger

    _session(mistral, key, tmp_path / "a.fpl")
    g = _genesis(tmp_path / "a.fpl")
    assert (g.inputs.window, g.inputs.model_window) == (WINDOW, WINDOW)
    rep = verify_ledger(tmp_path / "a.fpl", model=mistral, trusted_key=key.verifier)
    assert rep.verdict == "valid", rep.message
    assert rep.window == {"window": WINDOW, "model_window": WINDOW, "override": False}
    assert "window: 8 tokens, the model's own" in render_text(rep)
    assert json.loads(rep.to_json())["window"]["window"] == WINDOW
    text, code = show(tmp_path / "a.fpl")
    assert code == 0 and "window: 8 tokens, the model's own" in text
    doc, _ = show(tmp_path / "a.fpl", as_json=True)
    assert json.loads(doc)["events"][0]["window"] == rep.window


@pytest.mark.parametrize("override", [100000, None])
def test_override_is_recorded_and_shown(mistral, key, tmp_path, override):
    from auditor.report import render_text
    from auditor.show import show
    from auditor.verify import verify_ledger

    _session(mistral, key, tmp_path / "o.fpl", window=override)
    g = _genesis(tmp_path / "o.fpl")
    assert (g.inputs.window, g.inputs.model_window) == (override or 0, WINDOW)
    rep = verify_ledger(tmp_path / "o.fpl", model=mistral, trusted_key=key.verifier)
    assert rep.verdict == "valid", rep.message  # an honest record of what ran
    assert rep.window == {"window": override, "model_window": WINDOW, "override": True}
    assert "OVERRIDE of the model's window (8 tokens)" in render_text(rep)
    assert "OVERRIDE" in show(tmp_path / "o.fpl")[0]


def test_ledger_claiming_another_model_window_is_invalid(mistral, key, tmp_path):
    """The old hole: the run used full attention and named the artifact's commitment; its genesis
    now carries the window the run believed the model had, which the auditor checks."""
    import copy
    import dataclasses

    from auditor.verify import verify_ledger
    from fieldprint_ref.engine import RefEngine
    from fieldprint.runtime.session import VerifyingSession

    wrong = copy.copy(mistral.model)
    wrong.config = dataclasses.replace(wrong.config, sliding_window=None)
    eng = RefEngine(wrong, tokenizer=mistral.tokenizer, num_pages=48)
    VerifyingSession(eng, key=key, ledger_path=tmp_path / "w.fpl", max_new_tokens=6, fsync="none",
                     model_commitment=mistral.commitment).run(PROMPT)
    rep = verify_ledger(tmp_path / "w.fpl", model=mistral, trusted_key=key.verifier)
    assert (rep.verdict, rep.reason) == ("invalid", "model-window")
    assert rep.window == {"window": None, "model_window": None, "override": False}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fieldprint.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_generate_window_default_and_override(mistral):
    prompt = " ".join(f"w{i % 30}" for i in range(30))
    base = ["generate", "--model", str(mistral.path), "--prompt", prompt, "--max-new-tokens", "3", "--json"]
    d = json.loads(_cli(*base).stdout)
    assert (d["window"], d["model_window"], d["window_override"]) == (WINDOW, WINDOW, False)
    o = _cli(*base, "--window", "100000")
    d = json.loads(o.stdout)
    assert (d["window"], d["model_window"], d["window_override"]) == (100000, WINDOW, True)
    t = _cli(*base[:-1], "--window", "100000")
    assert t.returncode == 0 and "window 100000 overrides the model's 8" in t.stderr


def test_no_replay_checks_the_model_window_too(mistral, key, tmp_path):
    import copy
    import dataclasses

    from auditor.verify import verify_ledger
    from fieldprint_ref.engine import RefEngine
    from fieldprint.runtime.session import VerifyingSession

    wrong = copy.copy(mistral.model)
    wrong.config = dataclasses.replace(wrong.config, sliding_window=None)
    VerifyingSession(RefEngine(wrong, tokenizer=mistral.tokenizer, num_pages=48), key=key,
                     ledger_path=tmp_path / "w.fpl", max_new_tokens=4, fsync="none",
                     model_commitment=mistral.commitment).run(PROMPT)
    rep = verify_ledger(tmp_path / "w.fpl", model=mistral, trusted_key=key.verifier, replay=False)
    assert (rep.verdict, rep.reason) == ("invalid", "model-window")


def test_auditor_refuses_a_swapped_tokenizer(mistral, key, tmp_path):
    """Issue 7 hole 8, end to end: a copy of the artifact whose tokenizer.json swaps two tokens'
    strings verified VALID against the ledger (and printed another text). Now the copy does not
    load, and a copy whose manifest is rewritten to match names another model."""
    import shutil

    from auditor.verify import verify_ledger
    from spec.commitment import file_leaf, model_commitment
    from spec.merkle import BLAKE3, leaf_hash
    from spec.model import QuantizedModel

    _session(mistral, key, tmp_path / "t.fpl")
    copy = tmp_path / "copy"
    shutil.copytree(mistral.path, copy)
    doc = json.loads((copy / "tokenizer.json").read_text())
    vocab = doc["model"]["vocab"]
    vocab["w1"], vocab["w2"] = vocab["w2"], vocab["w1"]
    (copy / "tokenizer.json").write_text(json.dumps(doc))
    rep = verify_ledger(tmp_path / "t.fpl", model=str(copy), trusted_key=key.verifier)
    assert (rep.verdict, rep.reason) == ("unreadable", "model-artifact")
    assert "tokenizer.json: does not match its leaf hash" in rep.message and "\n" not in rep.message
    data = (copy / "tokenizer.json").read_bytes()
    m = json.loads((copy / "manifest.json").read_text())
    m["files"]["tokenizer.json"]["leaf_hash"] = leaf_hash(file_leaf("tokenizer.json", data), BLAKE3).hex()
    q = mistral.model
    m["commitment"] = model_commitment(QuantizedModel(q.config, q.profile, q.tensors, {"tokenizer.json": data})).hex()
    (copy / "manifest.json").write_text(json.dumps(m))
    rep = verify_ledger(tmp_path / "t.fpl", model=str(copy), trusted_key=key.verifier)
    assert (rep.verdict, rep.reason) == ("invalid", "model-commitment")
