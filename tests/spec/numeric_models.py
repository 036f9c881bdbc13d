"""Tiny random Hugging Face models and their integer twins, shared by the numeric tests.

Random-init tiny models have near-uniform logits, so initializer_range is raised to 0.2 (logit
spread of a few units) so that argmax agreement is a meaningful check.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from spec.attention import KVPool
from spec.constants import PAGE_TOKENS
from spec.convert import quantize_model
from spec.model import ModelConfig, SequenceChunk, forward
from spec.profiles import PROFILES


def hf_model(arch: str = "llama", kv_heads: int = 2, tied: bool = False, seed: int = 0, layers: int = 2):
    """Return a tiny float32 HF causal LM (eval mode) built from a fixed seed."""
    import transformers

    kw = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
              num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128,
              rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied, initializer_range=0.2)
    torch.manual_seed(seed)
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(**kw)
        model = transformers.Qwen2ForCausalLM(cfg)
        with torch.no_grad():  # random init leaves biases at 0: make them matter
            for layer in model.model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0, 0.5)
    else:
        cfg = transformers.LlamaConfig(**kw)
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # random init leaves norm gains at 1: vary them
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


def spec_config(model, arch: str) -> ModelConfig:
    """Return the ModelConfig of an HF model."""
    c = model.config
    return ModelConfig(
        arch=arch, vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_layers=c.num_hidden_layers, num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads,
        head_dim=c.hidden_size // c.num_attention_heads, rope_theta=float(c.rope_theta if hasattr(c, "rope_theta") else 10000.0),
        rms_norm_eps=c.rms_norm_eps, max_position=c.max_position_embeddings,
        tie_embeddings=bool(c.tie_word_embeddings), qkv_bias=arch == "qwen2")


@lru_cache(maxsize=None)
def pair(arch: str = "llama", kv_heads: int = 2, tied: bool = False, profile: str = "default", layers: int = 2):
    """Return (hf_model, QuantizedModel) for a tiny model (cached: conversion is deterministic)."""
    model = hf_model(arch, kv_heads, tied, layers=layers)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return model, quantize_model(spec_config(model, arch), state, PROFILES[profile])


def run(qm, tokens: torch.Tensor, pages: int | None = None):
    """Run one prefill of `tokens` on a fresh pool with pages 0.. in order; return (logits, pool)."""
    n = -(-tokens.numel() // PAGE_TOKENS)
    pool = KVPool.allocate(qm.config, qm.profile, pages or n)
    chunk = SequenceChunk(tokens=tokens, start=0, block_table=torch.arange(n))
    return forward(qm, pool, [chunk])[0], pool
