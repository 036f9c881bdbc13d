"""`fieldprint generate --ledger ...` end to end: exit codes, refused flag combinations, keys, JSON
(issue 7, holes 3, 6 and 7, and the "also found" list)."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from auditor import cli as audit_cli
from fieldprint.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def cli(capsys, *argv):
    """Run `fieldprint ARGV` in-process; return (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors and --version exit through SystemExit
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *needles):
    assert code == 2, err
    line = err.strip()
    assert line.startswith("error:") and "\n" not in line and "Traceback" not in err, err
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    assert main(["keygen", "cli.test.example/engine", "--out", str(d / "k")]) == 0
    return d / "k.key", d / "k.pub"


def generate(artifact, ledger, key, *extra):
    return ["generate", "--model", artifact, "--prompt", "once upon a time", "--max-new-tokens", 10,
            "--temperature", "0.8", "--seed", 3, "--ledger", ledger, "--key", key, "--fsync", "none",
            "--commit-policy", "every=4", *extra]


# -- hole 3: a fault that cannot be rolled back ----------------------------------------------------
def test_a_fault_that_cannot_be_rolled_back_fails_the_command(capsys, tmp_path, artifact, keys):
    ledger = tmp_path / "g.fpl"
    code, out, err = cli(capsys, *generate(artifact, ledger, keys[0], "--inject-kv-flip", 5, "--max-rollbacks", 0))
    assert code == 3, err
    assert out == ""  # the text of an unverified generation is not printed as a result
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: generation failed: giving up after 0 rollbacks") and "ends with reason error" in last
    assert "kv-rehash" in last
    assert audit_cli.main(["verify", str(ledger), "--model", str(artifact), "--trusted-key", str(keys[1])]) == 3
    capsys.readouterr()

    code, out, err = cli(capsys, *generate(artifact, tmp_path / "j.fpl", keys[0], "--inject-kv-flip", 5,
                                           "--max-rollbacks", 0, "--json"))
    assert code == 3, err
    doc = json.loads(out)["ledger"]
    assert doc["end"] == "error" and "giving up after 0 rollbacks" in doc["error"] and doc["rollbacks"] == []
    assert "error: generation failed" in err


def test_json_reports_the_ledger(capsys, tmp_path, artifact, keys):
    ledger = tmp_path / "ok.fpl"
    code, out, err = cli(capsys, *generate(artifact, ledger, keys[0], "--inject-kv-flip", 5, "--json"))
    assert code == 0, err
    doc = json.loads(out)["ledger"]
    assert doc["path"] == str(ledger) and doc["end"] in ("max_tokens", "eos") and doc["error"] is None
    assert doc["commit_policy"] == "every=4" and doc["commits"] >= 3 and doc["records"] > doc["commits"]
    assert [r["to_commit"] for r in doc["rollbacks"]] == [1] and doc["rollbacks"][0]["attempt"] == 1
    assert doc["key"]["name"] == "cli.test.example/engine" and len(doc["key"]["key_id"]) == 8
    code, out, _ = cli(capsys, "generate", "--model", artifact, "--prompt", "the cat", "--max-new-tokens", 2, "--json")
    assert code == 0 and json.loads(out)["ledger"] is None


@pytest.mark.parametrize("value", ["-5", "x"])
def test_max_rollbacks_must_be_a_non_negative_integer(capsys, tmp_path, artifact, keys, value):
    code, _, err = cli(capsys, *generate(artifact, tmp_path / "m.fpl", keys[0], "--max-rollbacks", value))
    one_line_error(code, err, "--max-rollbacks")
    assert not (tmp_path / "m.fpl").exists()


# -- hole 6: refused before any work -----------------------------------------------------------------
@pytest.mark.parametrize("flags, needle", [
    (["--inject-kv-flip", "3"], "--inject-kv-flip needs --ledger"),
    (["--inject-anchor-flip", "3"], "--inject-anchor-flip needs --ledger"),
    (["--reject-commit", "1"], "--reject-commit needs --ledger"),
    (["--max-rollbacks", "2"], "--max-rollbacks needs --ledger"),
    (["--fsync", "every"], "--fsync needs --ledger"),
    (["--commit-policy", "every=4"], "--commit-policy needs --ledger"),
    (["--validator", "os:getcwd"], "--validator needs --ledger"),
])
def test_ledger_options_without_ledger_are_refused(capsys, artifact, flags, needle):
    code, out, err = cli(capsys, "generate", "--model", artifact, "--prompt", "the cat", *flags)
    one_line_error(code, err, needle)
    assert out == ""


def test_bad_ledger_options_fail_before_the_model_loads(capsys, tmp_path, keys):
    missing_model = tmp_path / "no-such-model"  # an error naming --model would mean the model was looked at
    cases = [
        (["--commit-policy", "every=0"], "--commit-policy: every=N needs N >= 1"),
        (["--ledger", tmp_path / "no" / "such" / "folder" / "x.fpl"], "--ledger: folder"),
        (["--ledger", tmp_path], "is a folder"),
        (["--key", keys[1]], "--key"),
        (["--inject-kv-flip", "10", "--max-new-tokens", "8"], "--inject-kv-flip 10: step 10 is past the last step"),
    ]
    for flags, needle in cases:
        argv = ["generate", "--model", missing_model, "--prompt", "x", "--ledger", tmp_path / "a.fpl", "--key", keys[0],
                *[str(f) for f in flags]]
        code, _, err = cli(capsys, *argv)
        one_line_error(code, err, needle)
        assert "--model" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_flip_that_cannot_fire_is_a_flag_error_and_leaves_no_ledger(capsys, tmp_path, artifact, keys):
    code, _, err = cli(capsys, *generate(artifact, tmp_path / "f.fpl", keys[0], "--inject-kv-flip", "2:7"))
    one_line_error(code, err, "--inject-kv-flip 2:7", "context block 7 does not exist")
    assert not (tmp_path / "f.fpl").exists()


# -- hole 7: keys ----------------------------------------------------------------------------------
def test_the_public_key_as_key_says_a_private_key_is_expected(capsys, tmp_path, artifact, keys):
    code, _, err = cli(capsys, *generate(artifact, tmp_path / "p.fpl", keys[1]))
    one_line_error(code, err, f"--key: {keys[1]} is a public key", "needs the private key", str(keys[0]),
                   "--trusted-key")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("hello\n")
    code, _, err = cli(capsys, "generate", "--model", artifact, "--prompt", "x", "--ledger", tmp_path / "q.fpl",
                       "--key", garbage)
    one_line_error(code, err, f"--key: {garbage}", "expected a private key file")


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_keys_written_as_the_readme_says_are_git_ignored():
    readme = (REPO / "README.md").read_text()
    assert "keygen demo.example/engine --out keys/demo" in readme  # the path this test checks
    for path in ("keys/demo.key", "keys/demo.pub", "prod.key", "elsewhere/engine.key"):
        r = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
        assert r.returncode == 0, f"{path} is not git-ignored"


# -- also found -----------------------------------------------------------------------------------
def test_version(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.startswith("fieldprint ") and "fieldprint-ledger/" in out


def test_every_option_has_help_and_shows_its_default():
    parser = build_parser()
    subs = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict)).choices
    for name, sub in subs.items():
        for action in sub._actions:
            assert action.help, f"fieldprint {name} {action.option_strings or action.dest} has no help"
        text = sub.format_help()
        for action in sub._actions:
            d = action.default
            if action.option_strings and not (d is None or d is False or d == [] or d == argparse.SUPPRESS):
                assert f"default: {d}" in " ".join(text.split()), f"fieldprint {name} {action.option_strings} default"
