"""Long-context configs on a small budget (issue 7 "also found", issue 12).

``fieldprint quantize --max-position N`` limits the positions an artifact serves, so its RoPE
tables do not scale with a 1M-position config; the engine's default KV pool stays within its
stated memory budget whatever the config says, and a request that cannot fit is refused with a
message naming num_pages.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def long_hf(tmp_path_factory):
    """A tiny Llama checkpoint whose config claims 2**20 positions."""
    from ckpts import hf_model, save_hf

    return save_hf(hf_model("llama", max_position_embeddings=2**20), tmp_path_factory.mktemp("long") / "hf")


def test_max_position_limits_the_tables(long_hf, tmp_path):
    from fieldprint.artifact import load_artifact, quantize_checkpoint

    info = quantize_checkpoint(long_hf, tmp_path / "short", "default", progress=False, max_position=256)
    art = load_artifact(tmp_path / "short")
    assert art.model.config.max_position == 256
    assert tuple(art.model.tensors["rope.cos"].shape) == (256, 4)
    assert art.manifest["source"]["max_position_embeddings"] == 2**20
    assert info.size_bytes < 1 << 20  # a 1M-position table alone would be 16 MiB
    other = quantize_checkpoint(long_hf, tmp_path / "other", "default", progress=False, max_position=128)
    assert other.commitment != info.commitment  # the served positions are part of the model


@pytest.mark.parametrize("bad", [0, 2**20 + 1])
def test_max_position_out_of_range_refused(long_hf, tmp_path, bad):
    from fieldprint.artifact import quantize_checkpoint
    from fieldprint.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--max-position: .* must be an integer in \[1, 1048576\]"):
        quantize_checkpoint(long_hf, tmp_path / "x", "default", progress=False, max_position=bad)
    assert not (tmp_path / "x").exists()


def test_cli_max_position(long_hf, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "fieldprint.cli", "quantize", str(long_hf), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    ok = run(str(tmp_path / "a"), "--max-position", "64", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["config"]["max_position"] == 64
    bad = run(str(tmp_path / "b"), "--max-position", "2000000", "--quiet")
    assert bad.returncode == 2 and "--max-position" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_default_pool_respects_its_budget():
    """At Mistral-7B's KV dimensions (32 layers, 8 KV heads of 128, 32K positions) the default pool
    allocated 2 full-length sequences (~4 GiB) for any prompt."""
    from fieldprint_ref.engine import DEFAULT_POOL_BYTES, RefEngine
    from spec.attention import KVPool
    from spec.model import ModelConfig
    from spec.profiles import PROFILES

    cfg = ModelConfig("mistral", 32768, 4096, 14336, 32, 32, 8, 128, 1e6, 1e-5, 32768, False, False, 4096)
    probe = KVPool.allocate(cfg, PROFILES["default"], 1)
    page = probe.data[0].numel() * probe.data.element_size()
    engine = RefEngine.__new__(RefEngine)  # only the pool-size rule: no 7B weights needed
    engine.ops, engine.config, engine.page_tokens = RefEngine.ops, cfg, 16
    engine.model = type("M", (), {"profile": PROFILES["default"]})()
    pages = engine._default_num_pages()
    assert pages * page <= DEFAULT_POOL_BYTES
    assert pages >= 27 // 16 + 1  # still room for a short prompt


def test_request_too_big_for_the_pool_is_refused(tmp_path):
    from ckpts import hf_model, save_hf

    from fieldprint.artifact import quantize_checkpoint
    from fieldprint.engine import OutOfPagesError, load_engine

    hf = save_hf(hf_model("llama", max_position_embeddings=256), tmp_path / "hf")
    quantize_checkpoint(hf, tmp_path / "art", "default", progress=False)
    eng = load_engine("ref", tmp_path / "art", num_pages=4)
    with pytest.raises(OutOfPagesError, match=r"request needs at least 6 KV pages of 16 tokens \(prompt 20 \+ "
                                              r"max_new_tokens 70\), num_pages is 4"):
        eng.generate(list(range(2, 22)), max_new_tokens=70)
    assert len(eng.generate(list(range(2, 22)), max_new_tokens=40).tokens) == 40  # 59 cached tokens: 4 pages
    assert eng.allocator.num_free == 4  # the refused request left nothing allocated


def test_llama3_rope_checkpoint_quantizes_generates_and_audits(tmp_path):
    """A Llama-3.1-shaped config (rope_scaling llama3) was refused; its scaling now lives in the
    committed RoPE tables and config, and a ledger of it audits."""
    from ckpts import hf_model, save_hf

    from auditor.verify import verify_ledger
    from fieldprint.artifact import load_artifact, quantize_checkpoint
    from fieldprint.engine import load_engine
    from fieldprint.errors import ArtifactError
    from fieldprint.runtime.session import VerifyingSession
    from spec.keys import SigningKey

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16, "rope_theta": 500000.0}
    hf = save_hf(hf_model("llama", max_position_embeddings=4096, rope_parameters=rope), tmp_path / "hf")
    quantize_checkpoint(hf, tmp_path / "art", "default", progress=False, max_position=96)
    art = load_artifact(tmp_path / "art")
    assert art.model.config.rope_scaling["rope_type"] == "llama3" and art.model.config.rope_theta == 500000.0
    key = SigningKey("llama3.test", bytes(range(32)))
    eng = load_engine("ref", art, num_pages=16)
    VerifyingSession(eng, key=key, ledger_path=tmp_path / "l.fpl", max_new_tokens=8, fsync="none").run(
        [2 + (5 * i) % 60 for i in range(40)])  # positions past original_max_position_embeddings
    rep = verify_ledger(tmp_path / "l.fpl", model=art, trusted_key=key.verifier)
    assert rep.verdict == "valid", rep.message
    m = json.loads((tmp_path / "art" / "manifest.json").read_text())
    m["config"]["rope_scaling"]["factor"] = 4.0
    (tmp_path / "art" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="field 'commitment'"):
        load_artifact(tmp_path / "art")


def test_replay_pool_follows_the_ledger_not_max_position(long_hf, tmp_path, monkeypatch):
    """The auditor sized its replay pool by max_position (3 x 65,536 / 16 pages here, GBs at 7B dims)."""
    import fieldprint_ref.engine as ref
    from auditor.verify import verify_ledger
    from fieldprint.artifact import load_artifact, quantize_checkpoint
    from fieldprint.engine import load_engine
    from fieldprint.runtime.session import VerifyingSession
    from spec.keys import SigningKey

    quantize_checkpoint(long_hf, tmp_path / "art", "default", progress=False, max_position=65536)
    art = load_artifact(tmp_path / "art")
    key = SigningKey("long.test", bytes(range(32)))
    VerifyingSession(load_engine("ref", art, num_pages=8), key=key, ledger_path=tmp_path / "l.fpl", max_new_tokens=6,
                     fsync="none").run(list(range(2, 30)))
    sizes, init = [], ref.RefEngine.__init__

    def spy(self, model, **kw):
        sizes.append(kw.get("num_pages"))
        init(self, model, **kw)

    monkeypatch.setattr(ref.RefEngine, "__init__", spy)
    rep = verify_ledger(tmp_path / "l.fpl", model=art, trusted_key=key.verifier)
    assert rep.verdict == "valid", rep.message
    assert sizes and max(sizes) <= 3 * 3 + 16, sizes  # 34 context tokens: 3 blocks
