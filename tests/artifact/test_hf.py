"""fieldprint.hf: supported checkpoints load exactly; everything else fails naming file and field."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from ckpts import edit_config, hf_model, save_hf
from safetensors.torch import load_file, save_file

from fieldprint.errors import CheckpointError, UnsupportedArchitectureError
from fieldprint.hf import load_hf_checkpoint

MODELS = [  # (arch, kv heads, tied)
    ("llama", 2, False), ("llama", 4, False), ("llama", 2, True), ("llama", 4, True),
    ("mistral", 2, False), ("qwen2", 2, False), ("qwen2", 2, True),
]


@pytest.mark.parametrize("arch,kv,tied", MODELS)
def test_load_matches_transformers_state(arch, kv, tied, tmp_path):
    model = hf_model(arch, kv, tied)
    ckpt = load_hf_checkpoint(save_hf(model, tmp_path / arch))
    c = ckpt.config
    assert (c.arch, c.num_kv_heads, c.tie_embeddings, c.qkv_bias) == (arch, kv, tied, arch == "qwen2")
    assert (c.hidden_size, c.num_heads, c.head_dim, c.num_layers, c.vocab_size) == (32, 4, 8, 2, 64)
    assert (c.max_position, c.rms_norm_eps) == (64, 1e-5)
    want = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert sorted(ckpt.state) == sorted(want)
    for k, v in want.items():
        assert ckpt.state[k].dtype == torch.float32 and torch.equal(ckpt.state[k], v), k
    assert ckpt.tokenizer_path.name == "tokenizer.json"


def test_mistral_sliding_window_recorded(tmp_path):
    ckpt = load_hf_checkpoint(save_hf(hf_model("mistral", sliding_window=16), tmp_path / "m"))
    assert ckpt.sliding_window == 16


def test_sharded_checkpoint(tmp_path):
    model = hf_model("llama")
    path = save_hf(model, tmp_path / "sharded", max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").is_file()
    ckpt = load_hf_checkpoint(path)
    assert len(ckpt.weight_files) > 1
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.state[k], v)


def test_sharded_missing_shard_names_file(tmp_path):
    path = save_hf(hf_model("llama"), tmp_path / "sharded", max_shard_size="20KB")
    shard = sorted(path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        load_hf_checkpoint(path)


def test_bfloat16_weights_are_widened(tmp_path):
    path = save_hf(hf_model("llama").to(torch.bfloat16), tmp_path / "bf16")
    ckpt = load_hf_checkpoint(path)
    assert all(t.dtype == torch.float32 for t in ckpt.state.values())


# -- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["GPT2LMHeadModel", "FooForCausalLM", "Qwen3ForCausalLM"])
def test_unsupported_architecture_named(llama_dir, arch):
    edit_config(llama_dir, architectures=[arch])
    with pytest.raises(UnsupportedArchitectureError) as e:
        load_hf_checkpoint(llama_dir)
    assert f"unsupported architecture '{arch}' in config.json: field 'architectures'" in str(e.value)


def test_gpt2_config_refused(tmp_path):
    import transformers

    path = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32)).save_pretrained(path)
    with pytest.raises(UnsupportedArchitectureError, match="'GPT2LMHeadModel' in config.json: field 'architectures'"):
        load_hf_checkpoint(path)


@pytest.mark.parametrize("field,value", [
    ("rope_scaling", {"rope_type": "dynamic", "factor": 2.0}),
    ("rope_parameters", {"rope_type": "longrope", "rope_theta": 10000.0, "factor": 4.0}),
    ("rope_parameters", {"rope_type": "ntk-by-parts", "rope_theta": 10000.0, "factor": 4.0}),
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}),
    ("hidden_act", "gelu"),
    ("mlp_bias", True),
    ("attention_bias", True),
    ("quantization_config", {"quant_method": "gptq"}),
])
def test_unsupported_feature_named(llama_dir, field, value):
    edit_config(llama_dir, **{field: value})
    with pytest.raises(UnsupportedArchitectureError, match=f"field '{field}"):
        load_hf_checkpoint(llama_dir)


def test_qwen2_sliding_window_refused(tmp_path):
    path = save_hf(hf_model("qwen2"), tmp_path / "q")
    edit_config(path, use_sliding_window=True, sliding_window=16)
    with pytest.raises(UnsupportedArchitectureError, match="use_sliding_window"):
        load_hf_checkpoint(path)


# -- broken folders ---------------------------------------------------------------------------
def test_missing_config(llama_dir):
    (llama_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: file not found"):
        load_hf_checkpoint(llama_dir)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_hf_checkpoint(tmp_path / "nope")


def test_bad_json_names_file_and_line(llama_dir):
    text = (llama_dir / "config.json").read_text().splitlines()
    text[3] = text[3] + " oops"
    (llama_dir / "config.json").write_text("\n".join(text))
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON at line 4"):
        load_hf_checkpoint(llama_dir)


@pytest.mark.parametrize("field,value,msg", [
    ("hidden_size", "32", "field 'hidden_size' must be int"),
    ("num_hidden_layers", 0, "field 'num_hidden_layers' must be > 0"),
    ("num_key_value_heads", 3, "field 'num_key_value_heads'"),
    ("vocab_size", None, "missing field 'vocab_size'"),
    ("tie_word_embeddings", "no", "field 'tie_word_embeddings' must be bool"),
])
def test_bad_config_field_named(llama_dir, field, value, msg):
    edit_config(llama_dir, **{field: value})
    with pytest.raises(CheckpointError, match=msg):
        load_hf_checkpoint(llama_dir)


def test_missing_tokenizer(llama_dir):
    (llama_dir / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: file not found"):
        load_hf_checkpoint(llama_dir)


def test_tokenizer_larger_than_vocab(llama_dir):
    edit_config(llama_dir, vocab_size=16)
    with pytest.raises(CheckpointError, match="field 'vocab_size'"):
        load_hf_checkpoint(llama_dir)


def test_no_weights(llama_dir):
    (llama_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_hf_checkpoint(llama_dir)


def _rewrite(path, edit):
    f = path / "model.safetensors"
    tensors = load_file(str(f))
    edit(tensors)
    save_file(tensors, str(f))


def test_missing_tensor_named(llama_dir):
    _rewrite(llama_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_hf_checkpoint(llama_dir)


def test_extra_tensor_named(llama_dir):
    _rewrite(llama_dir, lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": torch.zeros(32)}))
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.layers.0.self_attn.o_proj.bias'"):
        load_hf_checkpoint(llama_dir)


def test_wrong_shape_named(llama_dir):
    _rewrite(llama_dir, lambda t: t.update({"model.norm.weight": torch.ones(31)}))
    with pytest.raises(CheckpointError, match=r"tensor 'model.norm.weight' has shape \[31\], config.json implies \[32\]"):
        load_hf_checkpoint(llama_dir)


@pytest.mark.parametrize("cut", [1, 100, 5000])
def test_truncated_safetensors_named(llama_dir, cut):
    f = llama_dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-cut])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated"):
        load_hf_checkpoint(llama_dir)


@pytest.mark.parametrize("damage", ["empty", "huge-header", "garbage-header", "trailing"])
def test_corrupt_safetensors_named(llama_dir, damage):
    f = llama_dir / "model.safetensors"
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    bad = {"empty": b"", "huge-header": struct.pack("<Q", 1 << 40) + data[8:],
           "garbage-header": data[:8] + b"\xff" * n + data[8 + n:], "trailing": data + b"\0" * 8}[damage]
    f.write_bytes(bad)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: (truncated|corrupt)"):
        load_hf_checkpoint(llama_dir)


def test_generation_config_eos(llama_dir):
    (llama_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 3]}))
    assert load_hf_checkpoint(llama_dir).eos_token_ids == [0, 3]
