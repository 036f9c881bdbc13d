"""The command line in pipes and with bad arguments (issue 7, holes 6 and 7)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fp_fixtures as fx
from fieldprint.runtime.faults import FaultPlan
from spec.keys import write_private_key_file, write_public_key_file


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    return {"clean": fx.generate(d / "clean.fpl"),
            "rolled": fx.generate(d / "rolled.fpl", faults=FaultPlan(reject_commits={2}))}


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


def test_an_auditor_bug_is_not_a_verdict(ledgers, monkeypatch, capsys):
    """An exception inside the auditor must not exit 1, the code of "invalid"."""
    from auditor import records
    from auditor.cli import main

    def boom(self, recs):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(records.RecordChecker, "run", boom)
    code = main(["verify", ledgers["clean"].ledger, "--model", fx.artifact_dir(), "--trusted-key",
                 fx.key().verifier.to_string(), "--no-replay"])
    out = capsys.readouterr().out
    assert code == 2 and "auditor-error" in out and "ZeroDivisionError: simulated bug" in out
