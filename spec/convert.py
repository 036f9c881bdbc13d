"""Conversion of a float Hugging Face checkpoint into a QuantizedModel: the one float path.

Run once per checkpoint and profile; the result is committed (spec.commitment), so conversion
need not be reproducible across machines, only the integer forward must be. All math is float64.

- Linear weights: symmetric per output channel, scale_o = max_k |W[o, k]| / qmax(bits),
  W_int = round_half_even(W / scale_o), channel multiplier (mul, shift) = scale_o as
  mul * 2**-shift with 2**12 <= mul < 2**13 (`weight_multiplier`). The query projection (and
  its bias) is divided by sqrt(head_dim) first, so attention scores need no further scaling.
- Embedding: symmetric per row (per token) with embed_bits; multiplier = scale_t * 2**16 (to Q16).
  Tied lm_head reads the same integer rows with multiplier scale_t.
- Biases, norm gains: round(value * 2**16) (Q16), saturated to ACT_MAX. RMSNorm eps: round(eps * 2**48).
- Tables: spec.tables (RoPE cos/sin with the config's RoPE scaling folded in, sigmoid, 2**-f).
"""
from __future__ import annotations

import torch

from spec.constants import ACT_FRAC_BITS, ACT_MAX, RMS_EPS_FRAC_BITS, WEIGHT_MANT_BITS
from spec.model import ModelConfig, QuantizedModel
from spec.profiles import PrecisionProfile
from spec.tables import exp2_table, rope_tables, sigmoid_table


def weight_multiplier(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return int32 (mul, shift) with c ~ mul * 2**-shift, 2**12 <= mul < 2**13 (mul = 0 where c = 0)."""
    mant, ex = torch.frexp(c.to(torch.float64))  # c = mant * 2**ex, 0.5 <= mant < 1
    mul = torch.round(mant * (1 << WEIGHT_MANT_BITS)).to(torch.int64)
    shift = WEIGHT_MANT_BITS - ex.to(torch.int64)
    carry = mul == (1 << WEIGHT_MANT_BITS)  # mant rounded up to 1.0
    mul, shift = torch.where(carry, mul >> 1, mul), torch.where(carry, shift - 1, shift)
    return mul.to(torch.int32), torch.where(c > 0, shift, 0).to(torch.int32)


def quantize_channels(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (W_int [O, K] int8/int16, scale [O] float64): symmetric per-row absmax quantization."""
    qm = (1 << (bits - 1)) - 1
    w = w.to(torch.float64)
    scale = w.abs().amax(1) / qm
    wq = torch.round(w / torch.where(scale > 0, scale, 1.0)[:, None]).clamp(-qm, qm)
    return wq.to(torch.int8 if bits <= 8 else torch.int16), scale


def to_q16(v: torch.Tensor) -> torch.Tensor:
    """Return round(v * 2**16) as int32, saturated to ACT_MAX."""
    return torch.round(v.to(torch.float64) * (1 << ACT_FRAC_BITS)).clamp(-ACT_MAX, ACT_MAX).to(torch.int32)


def _linear(out: dict, name: str, w: torch.Tensor, bits: int, bias: torch.Tensor | None = None) -> None:
    wq, scale = quantize_channels(w, bits)
    out[f"{name}.weight"] = wq
    out[f"{name}.mul"], out[f"{name}.shift"] = weight_multiplier(scale)
    if bias is not None:
        out[f"{name}.bias"] = to_q16(bias)


def _layer(out: dict, config: ModelConfig, profile: PrecisionProfile, st: dict, n: int) -> None:
    src, dst = f"model.layers.{n}.", f"layers.{n}."
    inv_sqrt_d = 1.0 / float(config.head_dim) ** 0.5  # folded into W_q, b_q: scores need no scaling
    b = lambda s: st[f"{src}self_attn.{s}_proj.bias"].double() if config.qkv_bias else None  # noqa: E731
    wq = profile.linear_bits("qkv", n)[0]
    _linear(out, dst + "q", st[f"{src}self_attn.q_proj.weight"].double() * inv_sqrt_d, wq,
            None if b("q") is None else b("q") * inv_sqrt_d)
    _linear(out, dst + "k", st[f"{src}self_attn.k_proj.weight"], wq, b("k"))
    _linear(out, dst + "v", st[f"{src}self_attn.v_proj.weight"], wq, b("v"))
    _linear(out, dst + "o", st[f"{src}self_attn.o_proj.weight"], profile.linear_bits("o", n)[0])
    wg = profile.linear_bits("gate_up", n)[0]
    _linear(out, dst + "gate", st[f"{src}mlp.gate_proj.weight"], wg)
    _linear(out, dst + "up", st[f"{src}mlp.up_proj.weight"], wg)
    _linear(out, dst + "down", st[f"{src}mlp.down_proj.weight"], profile.linear_bits("down", n)[0])
    out[dst + "attn_norm.gamma"] = to_q16(st[f"{src}input_layernorm.weight"])
    out[dst + "mlp_norm.gamma"] = to_q16(st[f"{src}post_attention_layernorm.weight"])


def quantize_model(config: ModelConfig, float_state: dict[str, torch.Tensor], profile: PrecisionProfile,
                   files: dict[str, bytes] | None = None) -> QuantizedModel:
    """The one place float math is allowed: float HF weights (Llama names) -> integer tensors +
    every table the forward needs (RoPE cos/sin, sigmoid, 2**-f, RMSNorm eps). ``files`` (the
    tokenizer) are committed with the model as they are."""
    st, out = float_state, {}
    eq, escale = quantize_channels(st["model.embed_tokens.weight"], profile.embed_bits)
    out["embed.weight"] = eq
    out["embed.mul"], out["embed.shift"] = weight_multiplier(escale * (1 << ACT_FRAC_BITS))
    for n in range(config.num_layers):
        _layer(out, config, profile, st, n)
    out["final_norm.gamma"] = to_q16(st["model.norm.weight"])
    if config.tie_embeddings:
        out["lm_head.mul"], out["lm_head.shift"] = weight_multiplier(escale)
    else:
        _linear(out, "lm_head", st["lm_head.weight"], profile.w_lm_head)
    out["rope.cos"], out["rope.sin"] = rope_tables(config.head_dim, config.rope_theta, config.max_position,
                                                   config.rope_scaling)
    out["sigmoid.table"], out["exp2.table"] = sigmoid_table(), exp2_table()
    out["rms.eps"] = torch.tensor([round(config.rms_norm_eps * (1 << RMS_EPS_FRAC_BITS))], dtype=torch.int64)
    return QuantizedModel(config, profile, out, files)
