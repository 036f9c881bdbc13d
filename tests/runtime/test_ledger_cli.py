"""``fieldprint keygen``, ``fieldprint generate --ledger/--key`` and ``fieldprint-audit``."""
from __future__ import annotations

import argparse
import json
import os

import pytest

import fp_fixtures as fx
from auditor import cli as audit_cli
from fieldprint import ledger_cli
from fieldprint.errors import ConfigError
from spec.keys import parse_verifier
from spec.sampling import SamplingParams


def _keygen(tmp_path, *extra):
    p = argparse.ArgumentParser()
    ledger_cli.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["keygen", "cli.test.example/engine", "--out", str(tmp_path / "eng"), *extra])
    return args.func(args)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    assert _keygen(d) == 0
    return d / "eng.key", d / "eng.pub"


def _generate(tmp_path, keys, *flags, name="g.fpl"):
    p = argparse.ArgumentParser()
    ledger_cli.add_generate_args(p)
    args = p.parse_args(["--ledger", str(tmp_path / name), "--key", str(keys[0]), "--fsync", "none", *flags])
    plan = ledger_cli.prepare(args, max_new_tokens=12)
    eng = fx.engine()
    eng.set_anchors(fx.ANCHORS)
    res, _ = ledger_cli.run_generate_with_ledger(plan, eng, fx.artifact(), fx.PROMPT,
                                                 sampling=SamplingParams(temperature="4/5", seed=7), max_new_tokens=12)
    return tmp_path / name, res


def test_keygen_writes_a_private_and_a_public_key(tmp_path, keys):
    priv, pub = keys
    assert oct(os.stat(priv).st_mode & 0o777) == "0o600"
    key = ledger_cli.load_key(str(priv))
    assert parse_verifier(pub.read_text()) == key.verifier
    with pytest.raises(ConfigError, match="exists"):
        _keygen(priv.parent)
    assert _keygen(priv.parent, "--force") == 0
    with pytest.raises(ConfigError):
        p = argparse.ArgumentParser()
        ledger_cli.register(p.add_subparsers(dest="command"))
        args = p.parse_args(["keygen", "bad name", "--out", str(tmp_path / "x")])
        args.func(args)


def test_generate_with_ledger_then_audit_cli(tmp_path, keys, capsys):
    ledger, res = _generate(tmp_path, keys, "--commit-policy", "every=4", "--reject-commit", "2")
    assert len(res.tokens) == 12 and res.finish_reason == "length"
    err = capsys.readouterr().err
    assert "1 rollbacks: rollback to commit 1 (step 4, attempt 1)" in err
    code = audit_cli.main(["verify", str(ledger), "--model", fx.artifact_dir(), "--trusted-key", str(keys[1]),
                           "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["verdict"] == "valid" and out["tokens"] == res.tokens
    assert out["rollbacks"][0]["to_commit"] == 1
    assert audit_cli.main(["show", str(ledger), "--model", fx.artifact_dir(), "--trusted-key", str(keys[1])]) == 0
    text = capsys.readouterr().out
    assert "ROLLBACK  to commit 1" in text and "structure: complete" in text and "'w" in text
    assert audit_cli.main(["show", str(ledger), "--json"]) == 0
    events = json.loads(capsys.readouterr().out)["events"]
    assert [e["type"] for e in events].count("rollback") == 1


def test_audit_cli_folder_in_parallel_and_exit_codes(tmp_path, keys, capsys):
    folder = tmp_path / "many"
    folder.mkdir()
    ledger, _ = _generate(folder, keys, name="a.fpl")
    data = ledger.read_bytes()
    (folder / "b.fpl").write_bytes(data[: len(data) - 40])  # cut inside the last checkpoint
    args = ["--model", fx.artifact_dir(), "--trusted-key", str(keys[1]), "--json"]
    assert audit_cli.main(["verify", str(folder), "--jobs", "2", *args]) == 3  # valid + incomplete
    verdicts = [json.loads(line)["verdict"] for line in capsys.readouterr().out.splitlines()]
    assert verdicts == ["valid", "incomplete"]
    (folder / "c.fpl").write_bytes(b"\x00" * 64)
    assert audit_cli.main(["verify", str(folder / "c.fpl"), *args]) == 2
    bad = bytearray(data)
    bad[100] ^= 1
    (folder / "d.fpl").write_bytes(bytes(bad))
    assert audit_cli.main(["verify", str(folder / "d.fpl"), *args[:-1]]) == 1
    assert "INVALID [frame-checksum]" in capsys.readouterr().out


def test_ledger_option_errors(tmp_path, keys):
    p = argparse.ArgumentParser()
    ledger_cli.add_generate_args(p)
    with pytest.raises(ConfigError, match="needs --key"):
        ledger_cli.check_ledger_args(p.parse_args(["--ledger", str(tmp_path / "x.fpl")]))
    (tmp_path / "y.fpl").write_bytes(b"")
    with pytest.raises(ConfigError, match="exists"):
        ledger_cli.check_ledger_args(p.parse_args(["--ledger", str(tmp_path / "y.fpl"), "--key", str(keys[0])]))
    with pytest.raises(ConfigError, match="needs --ledger"):
        ledger_cli.check_ledger_args(p.parse_args(["--key", str(keys[0])]))
    with pytest.raises(ConfigError, match="cannot read"):
        ledger_cli.load_key(str(tmp_path / "nope.key"))
    with pytest.raises(ConfigError, match="commit-policy"):
        _generate(tmp_path, keys, "--commit-policy", "sometimes", name="z.fpl")


def test_fieldprint_cli_wiring(tmp_path):
    from fieldprint import cli

    parser = cli.build_parser()
    try:
        parser.parse_args(["keygen", "x.example/k"])
    except SystemExit:
        pytest.skip("fieldprint/cli.py does not wire `keygen` in yet")
    assert cli.main(["keygen", "wired.example/k", "--out", str(tmp_path / "w")]) == 0
    assert (tmp_path / "w.pub").is_file()


def test_keygen_creates_missing_parent_folders(tmp_path):
    p = argparse.ArgumentParser()
    ledger_cli.register(p.add_subparsers(dest="command"))
    args = p.parse_args(["keygen", "cli.test.example/nested", "--out", str(tmp_path / "keys" / "demo" / "k")])
    assert args.func(args) == 0
    assert (tmp_path / "keys" / "demo" / "k.key").is_file() and (tmp_path / "keys" / "demo" / "k.pub").is_file()
    assert oct(os.stat(tmp_path / "keys" / "demo").st_mode & 0o777) == "0o700"
    (tmp_path / "file").write_text("")
    args = p.parse_args(["keygen", "cli.test.example/x", "--out", str(tmp_path / "file" / "k")])
    with pytest.raises(ConfigError, match="cannot create"):
        args.func(args)


def test_audit_cli_sets_a_passive_openmp_wait_policy(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert audit_cli.main(["show", str(tmp_path / "missing.fpl")]) == 2
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a choice made by the user stays
    audit_cli.main(["show", str(tmp_path / "missing.fpl")])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
