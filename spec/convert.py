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

from collections.abc import Iterator, Mapping

import torch

from spec.constants import ACT_FRAC_BITS, ACT_MAX, RMS_EPS_FRAC_BITS, WEIGHT_MANT_BITS
from spec.model import ModelConfig, QuantizedModel
from spec.profiles import PrecisionProfile, validate_profile
from spec.tables import exp2_table, rope_tables, sigmoid_table


def weight_multiplier(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return int32 (mul, shift) with c ~ mul * 2**-shift, 2**12 <= mul < 2**13 (mul = 0 where c = 0)."""
    mant, ex = torch.frexp(c.to(torch.float64))  # c = mant * 2**ex, 0.5 <= mant < 1
    mul = torch.round(mant * (1 << WEIGHT_MANT_BITS)).to(torch.int64)
    shift = WEIGHT_MANT_BITS - ex.to(torch.int64)
    carry = mul == (1 << WEIGHT_MANT_BITS)  # mant rounded up to 1.0
    mul, shift = torch.where(carry, mul >> 1, mul), torch.where(carry, shift - 1, shift)
    return mul.to(torch.int32), torch.where(c > 0, shift, 0).to(torch.int32)


ROW_BLOCK_ELEMENTS = 1 << 22  # elements quantized at a time (float64 temporaries of ~32 MiB)


def quantize_channels(w: torch.Tensor, bits: int, pre: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (W_int [O, K] int8/int16, scale [O] float64): symmetric per-row absmax quantization
    of W * pre (pre: a factor folded into the weights first, 1 = none).

    Rows are independent, so they are processed in blocks of about ROW_BLOCK_ELEMENTS (the
    result does not depend on the block size): memory beyond the input and output stays bounded."""
    qm = (1 << (bits - 1)) - 1
    out = torch.empty(tuple(w.shape), dtype=torch.int8 if bits <= 8 else torch.int16)
    scale = torch.empty(w.shape[0], dtype=torch.float64)
    step = max(1, ROW_BLOCK_ELEMENTS // max(1, w.shape[1]))
    for r in range(0, w.shape[0], step):
        blk = w[r:r + step].to(torch.float64) * pre
        s = blk.abs().amax(1) / qm
        out[r:r + step] = torch.round(blk / torch.where(s > 0, s, 1.0)[:, None]).clamp(-qm, qm)
        scale[r:r + step] = s
    return out, scale


def to_q16(v: torch.Tensor) -> torch.Tensor:
    """Return round(v * 2**16) as int32, saturated to ACT_MAX."""
    return torch.round(v.to(torch.float64) * (1 << ACT_FRAC_BITS)).clamp(-ACT_MAX, ACT_MAX).to(torch.int32)


Tensors = Iterator[tuple[str, torch.Tensor]]


def _linear(name: str, w: torch.Tensor, bits: int, bias: torch.Tensor | None = None, pre: float = 1.0) -> Tensors:
    wq, scale = quantize_channels(w, bits, pre)
    yield f"{name}.weight", wq
    mul, shift = weight_multiplier(scale)
    yield f"{name}.mul", mul
    yield f"{name}.shift", shift
    if bias is not None:
        yield f"{name}.bias", to_q16(bias.to(torch.float64) * pre)


def _layer(config: ModelConfig, profile: PrecisionProfile, st: Mapping[str, torch.Tensor], n: int) -> Tensors:
    src, dst = f"model.layers.{n}.", f"layers.{n}."
    inv_sqrt_d = 1.0 / float(config.head_dim) ** 0.5  # folded into W_q, b_q: scores need no scaling
    b = lambda s: st[f"{src}self_attn.{s}_proj.bias"] if config.qkv_bias else None  # noqa: E731
    wq = profile.linear_bits("qkv", n)[0]
    yield from _linear(dst + "q", st[f"{src}self_attn.q_proj.weight"], wq, b("q"), pre=inv_sqrt_d)
    yield from _linear(dst + "k", st[f"{src}self_attn.k_proj.weight"], wq, b("k"))
    yield from _linear(dst + "v", st[f"{src}self_attn.v_proj.weight"], wq, b("v"))
    yield from _linear(dst + "o", st[f"{src}self_attn.o_proj.weight"], profile.linear_bits("o", n)[0])
    wg = profile.linear_bits("gate_up", n)[0]
    yield from _linear(dst + "gate", st[f"{src}mlp.gate_proj.weight"], wg)
    yield from _linear(dst + "up", st[f"{src}mlp.up_proj.weight"], wg)
    yield from _linear(dst + "down", st[f"{src}mlp.down_proj.weight"], profile.linear_bits("down", n)[0])
    yield dst + "attn_norm.gamma", to_q16(st[f"{src}input_layernorm.weight"])
    yield dst + "mlp_norm.gamma", to_q16(st[f"{src}post_attention_layernorm.weight"])


def quantize_tensors(config: ModelConfig, float_state: Mapping[str, torch.Tensor], profile: PrecisionProfile) -> Tensors:
    """Yield (name, integer tensor) for every tensor of `spec.model.tensor_specs`, reading each
    float weight of ``float_state`` (HF Llama names; any mapping, e.g. one that loads lazily) once.

    The one place float math is allowed. Streaming conversion writes each tensor as it comes, so
    its memory is about one tensor; `quantize_model` collects them."""
    st = float_state
    eq, escale = quantize_channels(st["model.embed_tokens.weight"], profile.embed_bits)
    yield "embed.weight", eq
    del eq
    mul, shift = weight_multiplier(escale * (1 << ACT_FRAC_BITS))
    yield "embed.mul", mul
    yield "embed.shift", shift
    for n in range(config.num_layers):
        yield from _layer(config, profile, st, n)
    yield "final_norm.gamma", to_q16(st["model.norm.weight"])
    if config.tie_embeddings:
        mul, shift = weight_multiplier(escale)
        yield "lm_head.mul", mul
        yield "lm_head.shift", shift
    else:
        yield from _linear("lm_head", st["lm_head.weight"], profile.w_lm_head)
    cos, sin = rope_tables(config.head_dim, config.rope_theta, config.max_position, config.rope_scaling)
    yield "rope.cos", cos
    yield "rope.sin", sin
    yield "sigmoid.table", sigmoid_table()
    yield "exp2.table", exp2_table()
    yield "rms.eps", torch.tensor([round(config.rms_norm_eps * (1 << RMS_EPS_FRAC_BITS))], dtype=torch.int64)


def quantize_model(config: ModelConfig, float_state: Mapping[str, torch.Tensor], profile: PrecisionProfile,
                   files: dict[str, bytes] | None = None) -> QuantizedModel:
    """Return the QuantizedModel of float HF weights: every tensor of `quantize_tensors` (integer
    weights and every table the forward needs: RoPE cos/sin, sigmoid, 2**-f, RMSNorm eps).
    ``files`` (the tokenizer) are committed with the model as they are."""
    validate_profile(profile, config)
    return QuantizedModel(config, profile, dict(quantize_tensors(config, float_state, profile)), files)
