"""The `fieldprint` command line: generate end to end, JSON output, and every user-error path."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fieldprint.cli import main


def cli(capsys, *argv):
    """Run `fieldprint ARGV` in-process; return (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors exit through SystemExit
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    line = err.strip()
    assert line.startswith("error:") and "\n" not in line, err
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"


# -- generate ----------------------------------------------------------------------------------
def test_generate_json_is_valid_and_complete(capsys, artifact):
    code, out, err = cli(capsys, "generate", "--model", artifact, "--prompt", "once upon a time", "--json",
                         "--max-new-tokens", 6, "--anchors", "the cat sat on the mat")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["engine"] == "ref" and doc["finish_reason"] in {"eos", "length"}
    assert 1 <= len(doc["tokens"]) <= 6 and len(doc["steps"]) == len(doc["tokens"])
    assert [s["token"] for s in doc["steps"]] == doc["tokens"]
    assert doc["anchors"]["tokens"] == [10, 8, 13, 14, 10, 15]
    assert doc["prompt_tokens"] == [2, 3, 4, 5]
    assert doc["steps"][0]["fed"] == [0, 4] and len(doc["steps"][0]["logits_blake3"]) == 64
    assert isinstance(doc["text"], str) and isinstance(doc["model_commitment"], str)


def test_generate_text_and_engines_agree(capsys, artifact):
    args = ["generate", "--model", artifact, "--prompt", "the dog ran", "--max-new-tokens", 5,
            "--temperature", "0.8", "--top-k", 20, "--top-p", "0.9", "--seed", 3, "--window", 4]
    code, text, err = cli(capsys, *args)
    assert code == 0, err
    assert "tok/s" in err
    docs = {}
    for engine in ("ref", "fast"):
        code, out, err = cli(capsys, *args, "--engine", engine, "--json", "--chunk-size", 2)
        assert code == 0, err
        docs[engine] = json.loads(out)
    assert docs["ref"]["tokens"] == docs["fast"]["tokens"]
    assert [s["logits_blake3"] for s in docs["ref"]["steps"]] == [s["logits_blake3"] for s in docs["fast"]["steps"]]
    assert text.rstrip("\n") == docs["ref"]["text"]


def test_quantize_then_generate(capsys, hf_dir, tmp_path):
    out = tmp_path / "int8"
    code, stdout, err = cli(capsys, "quantize", hf_dir, out, "--profile", "int8", "--json")
    assert code == 0, err
    assert json.loads(stdout)["profile"] == "int8"
    code, stdout, err = cli(capsys, "generate", "--model", out, "--prompt", "a big red dog", "--json",
                            "--max-new-tokens", 3)
    assert code == 0, err
    assert json.loads(stdout)["tokens"]


def test_console_script_end_to_end(artifact):
    """A real process: JSON on stdout, and a user error without a traceback."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "fieldprint.cli", "generate", "--model", str(artifact), "--json",
           "--max-new-tokens", "2"]
    ok = subprocess.run(cmd + ["--prompt", "once upon"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["tokens"]) <= 2
    bad = subprocess.run(cmd + ["--prompt", "w5 " * 200], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "prompt too long" in bad.stderr


# -- user errors: one line, exit 2, naming the file or field --------------------------------------
@pytest.mark.parametrize(
    "flag, value, needle",
    [
        ("--temperature", "-1", "--temperature"),
        ("--temperature", "hot", "--temperature"),
        ("--temperature", "0.1234567", "--temperature"),
        ("--top-p", "1/0", "--top-p"),
        ("--top-p", "0", "--top-p"),
        ("--top-p", "1.5", "--top-p"),
        ("--top-k", "0", "--top-k"),
        ("--max-new-tokens", "0", "--max-new-tokens"),
        ("--seed", "-1", "--seed"),
        ("--window", "0", "--window"),
        ("--chunk-size", "x", "--chunk-size"),
        ("--engine", "turbo", "--engine"),
        ("--num-pages", "0", "--num-pages"),
    ],
)
def test_bad_options(capsys, artifact, flag, value, needle):
    code, _, err = cli(capsys, "generate", "--model", artifact, "--prompt", "a", flag, value)
    assert_user_error(code, err, needle)


def test_missing_and_conflicting_arguments(capsys, artifact):
    assert_user_error(*cli(capsys, "generate", "--model", artifact)[::2], "--prompt")
    code, _, err = cli(capsys, "generate", "--prompt", "a", "--anchors", "x", "--anchors-file", "f")
    assert_user_error(code, err, "--anchors-file")
    assert_user_error(*cli(capsys)[::2], "command")


def test_missing_files(capsys, artifact, tmp_path):
    code, _, err = cli(capsys, "generate", "--model", tmp_path / "nope", "--prompt", "a")
    assert_user_error(code, err, "--model", "nope")
    code, _, err = cli(capsys, "generate", "--model", artifact, "--prompt", "a", "--anchors-file", tmp_path / "sys.txt")
    assert_user_error(code, err, "--anchors-file", "sys.txt")
    code, _, err = cli(capsys, "generate", "--model", artifact, "--prompt-file", tmp_path)
    assert_user_error(code, err, "--prompt-file")
    code, _, err = cli(capsys, "quantize", tmp_path / "nohf", tmp_path / "out")
    assert_user_error(code, err, "nohf")


def test_prompt_too_long_and_device(capsys, artifact, tmp_path):
    code, _, err = cli(capsys, "generate", "--model", artifact, "--prompt", "w7 " * 129)
    assert_user_error(code, err, "prompt too long", "129 prompt tokens", "max_position 128")
    code, _, err = cli(capsys, "generate", "--model", artifact, "--anchors", "w3 " * 100, "--prompt", "w2 " * 40)
    assert_user_error(code, err, "prompt too long", "100 anchor tokens")
    import torch

    for device in ("tpu:9", "cuda:x") + (() if torch.cuda.is_available() else ("cuda",)):
        code, _, err = cli(capsys, "generate", "--model", artifact, "--prompt", "a", "--device", device)
        assert_user_error(code, err, "--device")
    p = tmp_path / "empty.txt"
    p.write_text("")
    code, _, err = cli(capsys, "generate", "--model", artifact, "--prompt-file", p)
    assert_user_error(code, err, "--prompt")


def test_damaged_artifacts_name_the_file(capsys, broken):
    d = broken()
    (d / "model.safetensors").unlink()
    assert_user_error(*cli(capsys, "generate", "--model", d, "--prompt", "a")[::2], "model.safetensors")
    d = broken()
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_user_error(*cli(capsys, "generate", "--model", d, "--prompt", "a")[::2], "model.safetensors")
    d = broken()
    (d / "manifest.json").write_text("{not json")
    assert_user_error(*cli(capsys, "generate", "--model", d, "--prompt", "a")[::2], "manifest.json")


def test_quantize_refuses_bad_checkpoints(capsys, hf_dir, tmp_path):
    import shutil

    d = tmp_path / "gpt2"
    shutil.copytree(hf_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "gpt2", ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    assert_user_error(*cli(capsys, "quantize", d, tmp_path / "o1")[::2], "GPT2LMHeadModel", "config.json")
    d = tmp_path / "trunc"
    shutil.copytree(hf_dir, d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:1000])
    assert_user_error(*cli(capsys, "quantize", d, tmp_path / "o2")[::2], "model.safetensors")
    code, _, err = cli(capsys, "quantize", hf_dir, tmp_path / "o3", "--profile", "int4")
    assert_user_error(code, err, "--profile")
    (tmp_path / "afile").write_text("x")
    code, _, err = cli(capsys, "quantize", hf_dir, tmp_path / "afile" / "out")
    assert_user_error(code, err, "afile")


def test_keygen_and_generate_with_a_ledger(capsys, artifact, tmp_path):
    code, _, err = cli(capsys, "keygen", "cli.example/engine", "--out", tmp_path / "eng")
    assert code == 0, err
    ledger = tmp_path / "run.fpl"
    args = ["generate", "--model", artifact, "--prompt", "once upon a time", "--max-new-tokens", 4,
            "--ledger", ledger, "--key", tmp_path / "eng.key", "--fsync", "none", "--json"]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert ledger.stat().st_size > 0 and "[ledger" in err
    plain = json.loads(cli(capsys, *args[:7], "--json")[1])
    assert json.loads(out)["tokens"] == plain["tokens"]  # the ledger does not change the generation
    assert_user_error(*cli(capsys, *args)[::2], "--ledger", "exists")
    assert_user_error(*cli(capsys, *args[:7], "--key", tmp_path / "eng.key")[::2], "--key needs --ledger")
