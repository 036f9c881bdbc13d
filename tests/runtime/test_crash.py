"""Crash safety: a generation killed mid-way leaves a ledger whose signed prefix verifies."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import fp_fixtures as fx
from auditor.show import show

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from fieldprint.artifact import load_artifact
    from fieldprint.runtime.session import VerifyingSession
    from fieldprint_ref.engine import RefEngine
    from spec.commits import make_policy
    from spec.keys import SigningKey
    from spec.sampling import SamplingParams

    art_dir, ledger, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    art = load_artifact(art_dir)
    eng = RefEngine(art.model, tokenizer=art.tokenizer, num_pages=48)
    eng.set_anchors(list(range(40, 60)))

    def on_step(rec):
        if rec.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    VerifyingSession(eng, key=SigningKey({name!r}, b"\\x11" * 32), ledger_path=ledger, policy=make_policy(4),
                     sampling=SamplingParams(temperature="4/5", seed=7), max_new_tokens=16,
                     model_commitment=art.commitment, on_step=on_step).run(list(range(1, 20)))
""").format(name=fx.KEY_NAME)


def test_killed_generation_leaves_a_verifiable_prefix(tmp_path):
    ledger = tmp_path / "killed.fpl"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, fx.artifact_dir(), str(ledger), "10"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == -9, proc.stderr
    rep = fx.verify(ledger)
    assert rep.verdict == "incomplete" and rep.exit_code == 3, rep.to_json()
    assert 0 < rep.verified_records <= rep.records and rep.replay["steps"] > 0
    assert "did not finish" in rep.message
    text, code = show(ledger)
    assert code == 0 and "no end record" in text

    # a torn last frame (a write cut short) is cut off by readers: same verdict
    with open(ledger, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x01\x00\x00")
    torn = fx.verify(ledger)
    assert torn.verdict == "incomplete" and torn.reason == "truncated-frame"
    assert torn.verified_records == rep.verified_records
