"""Tiny Hugging Face checkpoint folders for the artifact tests, written with save_pretrained."""
from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = 64


def write_tokenizer(path: Path, vocab: int = 40) -> Path:
    """Write a small word-level tokenizer.json with `vocab` tokens (ids < VOCAB) and return its path."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<|endoftext|>", "<unk>"] + [f"w{i}" for i in range(vocab - 2)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    return path / "tokenizer.json"


def hf_model(arch: str = "llama", kv_heads: int = 2, tied: bool = False, seed: int = 0, **extra):
    """Return a tiny random float32 HF model: hidden 32, 4 heads, 2 layers, vocab 64."""
    import transformers

    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
              rms_norm_eps=1e-5, tie_word_embeddings=tied, initializer_range=0.2)
    kw.update(extra)
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
    torch.manual_seed(seed)
    model = cls[1](cls[0](**kw))
    if arch == "qwen2":
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
    return model.eval()


def save_hf(model, path: Path, **save_kw) -> Path:
    """Save model + a tokenizer into path (created) and return path."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, **save_kw)
    write_tokenizer(path)
    return path


def edit_config(path: Path, **changes) -> None:
    """Rewrite path/config.json with fields changed (None deletes a field)."""
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
