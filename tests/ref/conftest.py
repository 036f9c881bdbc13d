"""Fixtures of the engine tests: a tiny random Llama quantized through `spec.convert`."""
from __future__ import annotations

import pytest
import torch

TINY = dict(vocab=96, hidden=64, inter=128, layers=2, heads=4, kv_heads=2, max_position=128)


def tiny_llama_state(seed: int = 0, *, vocab=96, hidden=64, inter=128, layers=2, heads=4, kv_heads=2,
                     max_position=128, scale: float = 0.15):
    """Return (hf LlamaConfig, float state dict) of a random tiny Llama (weights ~ N(0, scale))."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_position,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=scale,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hf)
    state = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    return hf, state


def tiny_model(seed: int = 0, profile: str = "default", **shape):
    """Return a QuantizedModel of a random tiny Llama."""
    from spec.convert import quantize_model
    from spec.model import ModelConfig
    from spec.profiles import PROFILES

    args = {**TINY, **shape}
    hf, state = tiny_llama_state(seed, **args)
    config = ModelConfig(
        arch="llama", vocab_size=args["vocab"], hidden_size=args["hidden"], intermediate_size=args["inter"],
        num_layers=args["layers"], num_heads=args["heads"], num_kv_heads=args["kv_heads"],
        head_dim=args["hidden"] // args["heads"], rope_theta=10000.0, rms_norm_eps=1e-5,
        max_position=args["max_position"], tie_embeddings=False, qkv_bias=False,
    )
    return quantize_model(config, state, PROFILES[profile])


@pytest.fixture(scope="session")
def model():
    return tiny_model()


@pytest.fixture
def make_engine(model):
    """Return a factory of reference engines over the tiny model."""
    from fieldprint_ref.engine import RefEngine

    def make(cls=RefEngine, **kw):
        kw.setdefault("num_pages", 64)
        return cls(model, **kw)

    return make
