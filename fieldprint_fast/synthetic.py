"""Random quantized models built directly on a device: for speed benchmarks and engine tests.

A Llama-3-8B-shaped model is 8 GB of int8 weights; converting a float checkpoint of that size
(16 GB of bf16, float64 on the way) only to time decode steps wastes minutes and host memory.
`random_model` draws the integer tensors of `spec.model.tensor_specs` where they will run,
with per-channel multipliers chosen so that activations keep their scale from layer to layer
(weights ~ uniform integers, float scale ~ 1/sqrt(fan-in), as a trained model roughly has), and
the spec's own tables (RoPE, sigmoid, 2**-f, RMSNorm epsilon). Speed does not depend on the
values; the values only need to be in range, which `QuantizedModel` checks as for any model.
"""
from __future__ import annotations

import math

import torch

from spec.constants import ACT_FRAC_BITS, RMS_EPS_FRAC_BITS
from spec.convert import to_q16, weight_multiplier
from spec.model import ModelConfig, QuantizedModel, tensor_specs
from spec.profiles import PROFILES
from spec.tables import exp2_table, rope_tables, sigmoid_table

# the two shapes of the end-to-end benchmark (Hugging Face configs of Llama-3.2-1B and Llama-3-8B)
SHAPES = {
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                         num_kv_heads=8, head_dim=64, rope_theta=500000.0, tie_embeddings=True),
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                       num_kv_heads=8, head_dim=128, rope_theta=500000.0, tie_embeddings=False),
}


def shape_config(name: str, max_position: int = 4096, **override) -> ModelConfig:
    """Return the ModelConfig of a named shape (`SHAPES`), RoPE tables up to ``max_position``."""
    if name not in SHAPES:
        raise ValueError(f"shape: unknown shape {name!r} (choose one of {', '.join(SHAPES)})")
    args = dict(arch="llama", rms_norm_eps=1e-5, max_position=max_position, qkv_bias=False) | SHAPES[name] | override
    return ModelConfig(**args)


def random_model(config: ModelConfig, profile="int8", *, device="cpu", seed: int = 0) -> QuantizedModel:
    """Return a QuantizedModel of random integer weights for ``config``, its tensors on ``device``."""
    profile = PROFILES[profile] if isinstance(profile, str) else profile
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    c = config
    out: dict[str, torch.Tensor] = {}
    for name, (dtype, shape) in tensor_specs(c, profile).items():
        if not name.endswith(".weight"):
            continue
        base = name[: -len(".weight")]
        qmax = 127 if dtype == torch.int8 else _linear_qmax(profile, base, c)
        w = torch.randint(-qmax, qmax + 1, shape, generator=gen, device=dev, dtype=torch.int32).to(dtype)
        out[name] = w
        rows = shape[0]
        std = qmax / math.sqrt(3.0)  # of a uniform integer in [-qmax, qmax]
        if base == "embed":
            scale = torch.full((rows,), 0.5 / qmax, dtype=torch.float64, device=dev)
            out["embed.mul"], out["embed.shift"] = weight_multiplier(scale * (1 << ACT_FRAC_BITS))
            if c.tie_embeddings:
                lm = torch.full((rows,), 1.0 / (std * math.sqrt(c.hidden_size)), dtype=torch.float64, device=dev)
                out["lm_head.mul"], out["lm_head.shift"] = weight_multiplier(lm * 4.0)
            continue
        pre = 1.0 / math.sqrt(c.head_dim) if base.endswith(".q") else 1.0
        scale = torch.full((rows,), pre / (std * math.sqrt(shape[1])), dtype=torch.float64, device=dev)
        out[f"{base}.mul"], out[f"{base}.shift"] = weight_multiplier(scale)
    ones = torch.ones(c.hidden_size, dtype=torch.float64, device=dev)
    for n in range(c.num_layers):
        out[f"layers.{n}.attn_norm.gamma"] = to_q16(ones)
        out[f"layers.{n}.mlp_norm.gamma"] = to_q16(ones)
    out["final_norm.gamma"] = to_q16(ones)
    cos, sin = rope_tables(c.head_dim, c.rope_theta, c.max_position, c.rope_scaling)
    out["rope.cos"], out["rope.sin"] = cos.to(dev), sin.to(dev)
    out["sigmoid.table"] = sigmoid_table().to(dev)
    out["exp2.table"] = exp2_table()  # checked against the spec's on the host, moved below
    out["rms.eps"] = torch.tensor([round(c.rms_norm_eps * (1 << RMS_EPS_FRAC_BITS))], dtype=torch.int64, device=dev)
    model = QuantizedModel(c, profile, out)
    model.tensors["exp2.table"] = model.tensors["exp2.table"].to(dev)
    return model


def _linear_qmax(profile, base: str, config) -> int:
    """Return the largest |w| of a wide (int16) weight: 2**(bits-1) - 1 of its stage's width."""
    if base == "lm_head":
        bits = profile.w_lm_head
    elif base == "embed":
        bits = profile.embed_bits
    else:
        n, stage = int(base.split(".")[1]), base.split(".")[2]
        stage = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}.get(stage, stage)
        bits = profile.linear_bits(stage, n)[0]
    return (1 << (bits - 1)) - 1
