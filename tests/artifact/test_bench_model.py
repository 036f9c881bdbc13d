"""The fidelity benchmark model (tools/train_bench.py): outlier channels that change no logit,
document-aligned windows, and a tiny deterministic build."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.train_bench import BenchConfig, activation_stats, build_model, doc_starts, plant_outliers, train

TINY = BenchConfig(corpus_bytes=30_000, vocab_size=300, hidden_size=32, intermediate_size=96, num_layers=2,
                   num_heads=2, num_kv_heads=1, max_position=64, seq_len=32, batch_size=2, steps=3, warmup=1,
                   val_windows=2, outlier_channels=2, massive_channels=2)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([4.0, 24.0, 100.0]), massive=st.sampled_from([8.0, 32.0]))
def test_outlier_channels_keep_the_function(seed, scale, massive):
    """plant_outliers is a reparametrization: logits stay (float32 rounding), inputs grow outliers."""
    torch.manual_seed(seed)
    cfg = dataclasses.replace(TINY, outlier_scale=scale, massive_scale=massive)
    model = build_model(cfg).eval()
    with torch.no_grad():  # trained-like gains: not all ones, so the channel choice is meaningful
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    ids = torch.randint(0, cfg.vocab_size, (2, 24))
    with torch.no_grad():
        before, stats0 = model(input_ids=ids).logits, activation_stats(model, ids)
        planted = plant_outliers(model, cfg)
        after, stats1 = model(input_ids=ids).logits, activation_stats(model, ids)
    assert len(planted["channels"]) == cfg.outlier_channels and len(planted["massive"]) == cfg.num_layers
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    assert stats1["q_proj"] > stats0["q_proj"] and stats1["gate_proj"] > stats0["gate_proj"]
    assert stats1["down_proj"] > stats0["down_proj"]


def test_windows_start_at_documents():
    stream = torch.tensor([0, 5, 6, 0, 7, 8, 9, 0, 4])
    assert doc_starts(stream, 0, 3).tolist() == [0, 3]  # the EOT at 7 has no full window after it


def test_tiny_build_is_deterministic_and_loadable(tmp_path):
    from fieldprint.hf import load_hf_checkpoint

    a = train(TINY, tmp_path / "a", log=lambda s: None)
    b = train(TINY, tmp_path / "b", log=lambda s: None)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert a["val_ce"] == b["val_ce"] and a["reparam_max_logit_change"] < 1e-3
    report = json.loads((tmp_path / "a" / "train_report.json").read_text())
    assert report["config"]["outlier_scale"] == TINY.outlier_scale and report["activation_stats"]
    ckpt = load_hf_checkpoint(tmp_path / "a")
    assert ckpt.config.num_layers == TINY.num_layers


def test_unknown_override_is_refused():
    from tools.train_bench import main

    with pytest.raises(SystemExit, match="no_such_field"):
        main(["--set", "no_such_field=1"])
