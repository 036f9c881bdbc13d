"""The demo build: deterministic corpus, a tiny deterministic training run, ensure_demo_model, fidelity."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import fieldprint.artifact as artifact
from tools import corpus
from tools.train_demo import TrainConfig, train

TINY = TrainConfig(corpus_bytes=30_000, vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=1,
                   num_heads=2, num_kv_heads=1, max_position=64, seq_len=32, batch_size=2, steps=3, warmup=1,
                   val_windows=2)


def test_corpus_is_deterministic():
    a, b = corpus.generate(50_000, seed=3), corpus.generate(50_000, seed=3)
    assert a == b and len(a.encode()) >= 50_000
    assert corpus.generate(50_000, seed=4) != a


def test_corpus_has_structure():
    text = corpus.generate(200_000, seed=0)
    for marker in ("Once upon a time", '"', "Shopping list:", "Dear ", "degrees", "The end."):
        assert marker in text, marker
    assert len(set(text.split())) > 400  # a real vocabulary, not a handful of words


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "tiny-hf"
    report = train(TINY, out, log=lambda s: None)
    return out, report


def test_trainer_writes_a_loadable_checkpoint(tiny_ckpt):
    from fieldprint.hf import load_hf_checkpoint

    out, report = tiny_ckpt
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    ck = load_hf_checkpoint(out)
    assert (ck.config.arch, ck.config.num_kv_heads, ck.config.tie_embeddings) == ("llama", 1, True)
    assert ck.eos_token_ids == [0]
    assert report["val_ce"] > 0 and json.loads((out / "train_report.json").read_text())["val_ce"] == report["val_ce"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_trainer_is_deterministic(tiny_ckpt, tmp_path):
    threads = torch.get_num_threads()
    train(TINY, tmp_path / "again", log=lambda s: None)
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "again" / f).read_bytes() == (tiny_ckpt[0] / f).read_bytes(), f
    assert torch.get_num_threads() == threads  # the process is left as it was


def test_ensure_demo_model_quantizes_once(tiny_ckpt, tmp_path):
    from fieldprint.artifact import load_artifact
    from fieldprint.demo import ensure_demo_model

    from fieldprint import demo

    hf = tmp_path / "demo-hf"
    shutil.copytree(tiny_ckpt[0], hf)
    demo._write_stamp(hf, demo._TRAIN_SOURCES)  # as if trained by today's trainer
    out = ensure_demo_model(tmp_path / "demo", hf, progress=False)
    assert out == tmp_path / "demo" and load_artifact(out).model.profile.name == "default"
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert ensure_demo_model(tmp_path / "demo", hf, progress=False) == out
    assert (out / "manifest.json").stat().st_mtime_ns == stamp  # not rebuilt
    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 0  # stale artifact: quantized again from the kept checkpoint
    (out / "manifest.json").write_text(json.dumps(m))
    ensure_demo_model(tmp_path / "demo", hf, progress=False)
    assert load_artifact(out).manifest["format_version"] == artifact.FORMAT_VERSION
    # A spec or converter edit since the last build: quantized again, the checkpoint is kept.
    demo._stamp_file(out).write_text("an older spec\n")
    before = (out / "manifest.json").stat().st_mtime_ns
    ensure_demo_model(tmp_path / "demo", hf, progress=False)
    assert (out / "manifest.json").stat().st_mtime_ns != before
    assert demo._stamped(out, demo._QUANTIZE_SOURCES) and demo._stamped(hf, demo._TRAIN_SOURCES)


def test_fidelity_smoke(tiny_ckpt):
    from benchmarks.fidelity import compare, run, table

    report = run(tiny_ckpt[0], ["int8"], samples=2, tokens=4, seed=0, log=lambda s: None)
    r = report["profiles"]["int8"]
    assert r["ce_float"] > 0 and 0 <= r["argmax_agreement"] <= 1 and r["kl_float_quant"] >= -1e-9
    assert table(report).row_count == 1
    logits = torch.randn(2, 6, 9, dtype=torch.float64)
    seqs = torch.randint(0, 9, (2, 6))
    same = compare(logits, logits, seqs, 2)
    assert same["delta_ce_pct"] == 0 and same["argmax_agreement"] == 1


def test_sweep_profiles_change_one_field_each():
    from benchmarks.fidelity import sweep_profiles
    from spec.profiles import PROFILES

    base = PROFILES["default"]
    variants = sweep_profiles(base, 6)
    assert variants[base.name] == base
    for label, p in variants.items():
        if label == base.name:
            continue
        diff = {k for k, v in p.to_dict().items() if v != base.to_dict()[k]}
        assert diff == {label.split(":")[1].split("=")[0]} and label.endswith("=6"), label
