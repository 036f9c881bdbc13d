"""Fixtures of the CLI tests: a tiny random Llama as a Hugging Face folder and as an artifact."""
from __future__ import annotations

import json

import pytest
import torch

WORDS = ["<|endoftext|>", "<unk>", "once", "upon", "a", "time", "there", "was", "cat", "dog", "the", "and",
         "ran", "sat", "on", "mat", "big", "small", "red", "blue", "happy", "sad", "day", "night"]
VOCAB = 96
MAX_POSITION = 128


def write_tokenizer(path) -> None:
    """Write a word-level tokenizer.json: 96 words, `<|endoftext|>` = 0 is EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = WORDS + [f"w{i}" for i in range(VOCAB - len(WORDS))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(path))


def tiny_hf(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=MAX_POSITION, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, initializer_range=0.15, bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """A Hugging Face checkpoint folder: config.json, model.safetensors, tokenizer.json."""
    d = tmp_path_factory.mktemp("hf")
    tiny_hf().save_pretrained(d, safe_serialization=True)
    write_tokenizer(d / "tokenizer.json")
    return d


@pytest.fixture(scope="session")
def artifact(tmp_path_factory, hf_dir):
    """A quantized artifact of the tiny model, written by `fieldprint.artifact.save_artifact`."""
    from fieldprint.artifact import save_artifact
    from fieldprint.hf import load_hf_checkpoint
    from spec.convert import quantize_model
    from spec.profiles import PROFILES

    ck = load_hf_checkpoint(hf_dir)
    model = quantize_model(ck.config, ck.state, PROFILES["default"])
    out = tmp_path_factory.mktemp("art") / "tiny"
    save_artifact(model, out, hf_dir / "tokenizer.json")
    return out


@pytest.fixture
def broken(tmp_path, artifact):
    """Return a function copying the artifact to a temp folder so a test can damage it."""
    import shutil

    count = iter(range(1000))

    def copy():
        dst = tmp_path / f"broken{next(count)}"
        shutil.copytree(artifact, dst)
        return dst

    return copy


def read_json(text: str) -> dict:
    return json.loads(text)
