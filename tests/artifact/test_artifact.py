"""fieldprint.artifact: atomic save, verified load, and every tampering named."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import fieldprint.artifact as artifact
from fieldprint.artifact import load_artifact, quantize_checkpoint, save_artifact
from fieldprint.errors import ArtifactError, ConfigError
from spec.commitment import model_commitment
from spec.constants import NUMERICS_VERSION


@pytest.fixture(scope="module")
def _art(tmp_path_factory, _llama_dir):
    out = tmp_path_factory.mktemp("art") / "model"
    info = quantize_checkpoint(_llama_dir, out, "default", progress=False)
    return out, info


@pytest.fixture
def art(_art, tmp_path):
    """A fresh copy of a quantized tiny Llama artifact (tests may damage it)."""
    import shutil

    dst = tmp_path / "art"
    shutil.copytree(_art[0], dst)
    return dst


def test_round_trip(_art):
    out, info = _art
    loaded = load_artifact(out)
    assert loaded.commitment == info.commitment == model_commitment(loaded.model)
    assert loaded.manifest["commitment"] == info.commitment.hex()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.safetensors", "tokenizer.json"]
    assert loaded.model.profile.name == "default" and loaded.model.config.arch == "llama"
    assert loaded.tokenizer.token_to_id("<|endoftext|>") == 0
    m = loaded.manifest
    assert m["format"] == "fieldprint-artifact" and m["format_version"] == 2
    assert m["numerics"] == NUMERICS_VERSION and set(m["files"]) == {"tokenizer.json"}
    assert loaded.model.files == {"tokenizer.json": (out / "tokenizer.json").read_bytes()}
    assert set(m["source"]["files"]) == {"config.json", "model.safetensors"}
    assert set(m["tensors"]) == set(loaded.model.tensors)


def test_save_load_preserves_every_tensor(_art, tmp_path):
    model = load_artifact(_art[0]).model
    info = save_artifact(model, tmp_path / "again", _art[0] / "tokenizer.json")
    again = load_artifact(tmp_path / "again").model
    assert info.commitment == _art[1].commitment
    for name, t in model.tensors.items():
        assert again.tensors[name].dtype == t.dtype and torch.equal(again.tensors[name], t), name


@pytest.mark.parametrize("profile", ["int8", "default"])
def test_profiles_commit_differently(_llama_dir, tmp_path, profile):
    info = quantize_checkpoint(_llama_dir, tmp_path / profile, profile, progress=False)
    assert load_artifact(tmp_path / profile).model.profile.name == profile
    assert info.commitment == load_artifact(tmp_path / profile).commitment


def test_unknown_profile(_llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown precision profile 'int3'"):
        quantize_checkpoint(_llama_dir, tmp_path / "x", "int3", progress=False)
    assert not (tmp_path / "x").exists()


# -- tampering --------------------------------------------------------------------------------
def _rewrite_tensors(path, edit):
    f = path / "model.safetensors"
    t = load_file(str(f))
    edit(t)
    save_file(t, str(f))


def test_tensor_byte_change_names_tensor(art):
    def edit(t):
        t["layers.1.down.weight"].view(-1)[7] += 1

    _rewrite_tensors(art, edit)
    with pytest.raises(ArtifactError, match="tensor 'layers.1.down.weight' does not match its leaf hash"):
        load_artifact(art)


def test_missing_tensor_named(art):
    _rewrite_tensors(art, lambda t: t.pop("final_norm.gamma"))
    with pytest.raises(ArtifactError, match="tensor 'final_norm.gamma' listed in manifest.json is missing"):
        load_artifact(art)


def test_extra_tensor_named(art):
    _rewrite_tensors(art, lambda t: t.update({"bonus": torch.zeros(2, dtype=torch.int8)}))
    with pytest.raises(ArtifactError, match="unexpected tensor 'bonus'"):
        load_artifact(art)


def test_reshaped_tensor_named(art):
    _rewrite_tensors(art, lambda t: t.update({"embed.weight": t["embed.weight"].reshape(32, -1).contiguous()}))
    with pytest.raises(ArtifactError, match="tensor 'embed.weight' is torch.int8"):
        load_artifact(art)


def test_manifest_config_change_breaks_commitment(art):
    m = json.loads((art / "manifest.json").read_text())
    m["config"]["rope_theta"] = 500000.0
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="field 'commitment'"):
        load_artifact(art)


def test_manifest_commitment_edit(art):
    m = json.loads((art / "manifest.json").read_text())
    m["commitment"] = "00" * 32
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="field 'commitment'"):
        load_artifact(art)


def test_manifest_bad_json_names_line(art):
    (art / "manifest.json").write_text('{\n  "format": "fieldprint-artifact",\n  oops\n}')
    with pytest.raises(ArtifactError, match=r"manifest\.json: invalid JSON at line 3"):
        load_artifact(art)


def test_manifest_version(art):
    m = json.loads((art / "manifest.json").read_text())
    m["format_version"] = 99
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="field 'format_version'"):
        load_artifact(art)


def test_tokenizer_change_named(art):
    (art / "tokenizer.json").write_text((art / "tokenizer.json").read_text().replace("w1", "w1x"))
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: does not match its leaf hash in manifest\.json"):
        load_artifact(art)


def _swap_two_tokens(path) -> tuple[int, int]:
    """Swap the strings of two vocabulary entries of tokenizer.json (ids unchanged); return the ids."""
    doc = json.loads(path.read_text())
    vocab = doc["model"]["vocab"]
    (a, ia), (b, ib) = sorted(((k, v) for k, v in vocab.items() if k.startswith("w")), key=lambda kv: kv[1])[:2]
    vocab[a], vocab[b] = ib, ia
    path.write_text(json.dumps(doc))
    return ia, ib


def test_tokenizer_swap_changes_the_commitment(art):
    """Issue 7 hole 8: a tokenizer whose token strings are swapped was outside the commitment (a ledger
    of the original artifact verified against the copy, and the auditor printed a different text)."""
    before = load_artifact(art)
    ia, ib = _swap_two_tokens(art / "tokenizer.json")
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: does not match its leaf hash"):
        load_artifact(art)
    # a forger who also rewrites the manifest's hashes gets a different model commitment, not the old one
    from spec.commitment import file_leaf
    from spec.merkle import BLAKE3, leaf_hash

    m = json.loads((art / "manifest.json").read_text())
    data = (art / "tokenizer.json").read_bytes()
    m["files"]["tokenizer.json"]["leaf_hash"] = leaf_hash(file_leaf("tokenizer.json", data), BLAKE3).hex()
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="field 'commitment'"):
        load_artifact(art)
    m["commitment"] = model_commitment(before.model.__class__(before.model.config, before.model.profile,
                                                               before.model.tensors, {"tokenizer.json": data})).hex()
    (art / "manifest.json").write_text(json.dumps(m))
    forged = load_artifact(art)
    assert forged.commitment != before.commitment
    assert forged.tokenizer.decode([ia]) == before.tokenizer.decode([ib])  # the swap is real


def test_manifest_sliding_window_change_breaks_commitment(art):
    """Issue 7 hole 1: the model's window was outside the commitment (editing it changed nothing)."""
    m = json.loads((art / "manifest.json").read_text())
    assert m["config"]["sliding_window"] is None
    m["config"]["sliding_window"] = 8
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="field 'commitment'"):
        load_artifact(art)


def test_manifest_numerics_version_refused(art):
    m = json.loads((art / "manifest.json").read_text())
    m["numerics"] = "fieldprint-numerics/0"
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="field 'numerics' is 'fieldprint-numerics/0'"):
        load_artifact(art)


def test_truncated_model_file(art):
    f = art / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match=r"model\.safetensors: truncated"):
        load_artifact(art)


@pytest.mark.parametrize("name", ["manifest.json", "model.safetensors", "tokenizer.json"])
def test_missing_file_named(art, name):
    (art / name).unlink()
    with pytest.raises(ArtifactError, match=name.replace(".", r"\.") + ": file not found"):
        load_artifact(art)


def test_missing_folder(tmp_path):
    with pytest.raises(ArtifactError, match="artifact folder not found"):
        load_artifact(tmp_path / "nothing")


# -- atomic writes ----------------------------------------------------------------------------
def _explode(*a, **k):
    raise OSError("disk full (injected)")


def test_failure_mid_save_leaves_nothing(_art, tmp_path, monkeypatch):
    model = load_artifact(_art[0]).model
    monkeypatch.setattr(artifact, "_fsync", _explode)  # right after model.safetensors is written
    with pytest.raises(OSError, match="injected"):
        save_artifact(model, tmp_path / "out", _art[0] / "tokenizer.json")
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_replace_keeps_old_artifact(_art, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(_art[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    model = load_artifact(_art[0]).model
    monkeypatch.setattr(artifact, "_write_json", _explode)
    with pytest.raises(OSError, match="injected"):
        save_artifact(model, out, _art[0] / "tokenizer.json")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_replaces_existing_artifact(_art, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(_art[0], out)
    (out / "model.safetensors").write_bytes(b"junk")
    model = load_artifact(_art[0]).model
    save_artifact(model, out, _art[0] / "tokenizer.json")
    assert load_artifact(out).commitment == _art[1].commitment
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_refuses_to_replace_other_folders(_art, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(ArtifactError, match="not a Fieldprint artifact"):
        save_artifact(load_artifact(_art[0]).model, out, _art[0] / "tokenizer.json")
    assert (out / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize("arch,kv,tied", [("llama", 4, True), ("mistral", 2, False), ("qwen2", 2, True)])
def test_quantize_every_architecture(arch, kv, tied, tmp_path):
    from ckpts import hf_model, save_hf

    hf = save_hf(hf_model(arch, kv, tied, sliding_window=16) if arch == "mistral" else hf_model(arch, kv, tied),
                 tmp_path / "hf")
    info = quantize_checkpoint(hf, tmp_path / "art", "int8", progress=False)
    loaded = load_artifact(tmp_path / "art")
    assert loaded.commitment == info.commitment
    assert (loaded.model.config.arch, loaded.model.config.qkv_bias) == (arch, arch == "qwen2")
    assert loaded.model.config.sliding_window == (16 if arch == "mistral" else None)
    assert ("layers.0.q.bias" in loaded.model.tensors) == (arch == "qwen2")


def test_mistral_window_tamper_caught_at_load(tmp_path):
    """Issue 7 hole 1: `"sliding_window": null` in a Mistral artifact's manifest loaded with the same commitment."""
    from ckpts import hf_model, save_hf

    hf = save_hf(hf_model("mistral", 2, False, sliding_window=8), tmp_path / "hf")
    quantize_checkpoint(hf, tmp_path / "art", "default", progress=False)
    m = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert m["config"]["sliding_window"] == 8
    m["config"]["sliding_window"] = None
    (tmp_path / "art" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="field 'commitment'"):
        load_artifact(tmp_path / "art")
