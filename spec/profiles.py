"""Precision profiles: the integer width of every stage of the forward, recorded in the artifact.

A linear stage has a weight width (symmetric per-output-channel, |w| <= 2**(bits-1) - 1) and an
activation width (dynamic per-row absmax of its input, |a| <= 2**(bits-1) - 1). The first
`edge_layers` decoder layers use the `edge` widths for all their linear stages, because the first
layer is the most sensitive (measured, see docs/spec/numerics.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from spec.constants import MAX_HIDDEN, SCALE_MANT_BITS, WEIGHT_MANT_BITS

ACC_LIMIT = 2**61  # every scaled accumulator must stay below this (spec.quant.shift_round needs < 2**63 - 2**61)

LINEAR_STAGES = ("qkv", "o", "gate_up", "down", "lm_head")


@dataclass(frozen=True)
class PrecisionProfile:
    """Per-stage integer widths. Widths are bits of a signed symmetric integer (2..16)."""

    name: str
    embed_bits: int = 8
    w_qkv: int = 8
    a_qkv: int = 8
    w_o: int = 8
    a_o: int = 8
    w_gate_up: int = 8
    a_gate_up: int = 8
    w_down: int = 8
    a_down: int = 8
    w_lm_head: int = 8
    a_lm_head: int = 8
    edge_layers: int = 0
    w_edge: int = 8
    a_edge: int = 8
    q_bits: int = 8  # query quantization before q.k
    kv_bits: int = 8  # KV cache values; the page format fixes this at 8
    prob_bits: int = 15  # softmax probability grid 2**-prob_bits

    def linear_bits(self, stage: str, layer: int | None = None) -> tuple[int, int]:
        """Return (weight_bits, act_bits) of a linear stage in decoder layer `layer`."""
        if layer is not None and layer < self.edge_layers:
            return self.w_edge, self.a_edge
        return getattr(self, f"w_{stage}"), getattr(self, f"a_{stage}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PrecisionProfile":
        """Return the profile of `to_dict` output; unknown fields or non-integer widths are refused."""
        names = {f.name for f in fields(cls)}
        if set(d) - names or "name" not in d:
            raise ProfileError(f"profile fields: unknown {sorted(set(d) - names)}, name required")
        if any(type(v) is not int for k, v in d.items() if k != "name"):
            raise ProfileError("profile widths must be integers")
        return cls(**d)


PROFILES: dict[str, PrecisionProfile] = {
    "int8": PrecisionProfile(name="int8"),
    "default": PrecisionProfile(
        name="default", a_qkv=12, a_o=12, a_gate_up=12, a_down=12, a_lm_head=12,
        edge_layers=1, w_edge=10, a_edge=12, q_bits=12,
    ),
    # The high-fidelity rung: 10-bit weights everywhere (int16 storage, two int8 limbs in the fast
    # kernels) and the embedding at 10 bits (a tied lm_head reads it), because on the fidelity
    # benchmark model the 8-bit weights of layers past the first are what `default` still loses
    # (benchmarks/results/fidelity-bench-sweep8-*.json). Activations stay at 12 bits: 10-bit weights
    # times 12-bit activations keep the accumulator of a K = 16,427 dot product below 2**61.
    "high": PrecisionProfile(
        name="high", embed_bits=10, w_qkv=10, a_qkv=12, w_o=10, a_o=12, w_gate_up=10, a_gate_up=12,
        w_down=10, a_down=12, w_lm_head=10, a_lm_head=12, q_bits=12,
    ),
}


class ProfileError(ValueError):
    """A precision profile that cannot run a model: a width out of range or a possible overflow."""


def _qmax(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def stage_bounds(profile: PrecisionProfile, config) -> dict[str, int]:
    """Return the worst-case |scaled accumulator| of every stage for this model's dimensions.

    linear: qmax(a) * qmax(w) * K * 2**SCALE_MANT_BITS * (2**WEIGHT_MANT_BITS - 1)  (spec.quant.requantize)
    scores: qmax(q_bits) * 127 * head_dim * 2**(2 * SCALE_MANT_BITS)                 (spec.attention.scores)
    values: 2**prob_bits * 127 * 2**18 (weights <= 2**P, int8 values, < 2**18 keys)   (spec.attention.mix_values)
    """
    c = config
    k_in = {"qkv": c.hidden_size, "o": c.num_heads * c.head_dim, "gate_up": c.hidden_size,
            "down": c.intermediate_size, "lm_head": c.hidden_size}
    layers = [None] + list(range(min(profile.edge_layers, c.num_layers)))
    out = {}
    for stage, k in k_in.items():
        for n in layers if stage != "lm_head" else [None]:
            w, a = profile.linear_bits(stage, n)
            w = max(w, profile.embed_bits) if stage == "lm_head" else w  # tied heads read embed.weight
            key = stage if n is None else f"{stage}@layer{n}"
            out[key] = _qmax(a) * _qmax(w) * k * (1 << SCALE_MANT_BITS) * ((1 << WEIGHT_MANT_BITS) - 1)
    out["scores"] = _qmax(profile.q_bits) * 127 * c.head_dim * (1 << (2 * SCALE_MANT_BITS))
    out["values"] = ((1 << profile.prob_bits) * 127) << 18
    return out


def validate_profile(profile: PrecisionProfile, config) -> None:
    """Refuse a profile whose widths are out of range or whose accumulators could reach 2**61."""
    widths = {k: v for k, v in profile.to_dict().items() if k.startswith(("w_", "a_")) or k in ("embed_bits", "q_bits")}
    bad = {k: v for k, v in widths.items() if not 2 <= v <= 16}
    if bad:
        raise ProfileError(f"profile {profile.name}: widths must be 2..16 bits, got {bad}")
    if profile.kv_bits != 8 or not 1 <= profile.prob_bits <= 30 or profile.edge_layers < 0:
        raise ProfileError(f"profile {profile.name}: kv_bits must be 8, prob_bits 1..30, edge_layers >= 0")
    if config.hidden_size > MAX_HIDDEN or config.head_dim % 2 or config.num_heads % config.num_kv_heads:
        raise ProfileError("model: hidden_size <= 65536, even head_dim and num_heads % num_kv_heads == 0 required")
    if not 0 < config.rms_norm_eps < 0.25:
        raise ProfileError("model: rms_norm_eps must be in (0, 1/4)")
    over = {k: v.bit_length() for k, v in stage_bounds(profile, config).items() if v >= ACC_LIMIT}
    if over:
        raise ProfileError(f"profile {profile.name}: accumulators could overflow 2**61 (bits needed: {over})")


# -- the fidelity ladder (informational: measured, not normative) --------------------------------
# What each shipped profile costs on the fidelity benchmark model (tools/train_bench.py: a Llama
# with the outlier channels of trained LLMs, on which `int8` loses clearly), as measured by
# benchmarks/fidelity.py in the results file named here. An artifact made with one of these
# profiles states its rung in its manifest (`fidelity_record`); tests/spec/test_profile_ladder.py
# checks that this table is that results file, measured under this NUMERICS_VERSION.
FIDELITY_BENCHMARK = {
    "model": "fieldprint-bench: tools/train_bench.py (Llama, 4 layers, hidden 192, outlier channels)",
    "results": "benchmarks/results/fidelity-bench-2026-12-02.json",
    "method": "benchmarks/fidelity.py: 32 float samples x 128 tokens after held-out prompts, teacher forced",
    "numerics": "fieldprint-numerics/2",
}
FIDELITY: dict[str, dict[str, float]] = {
    "int8": {"delta_ce_pct": 3.968, "argmax_agreement": 0.9358, "kl_float_quant": 0.04153},
    "default": {"delta_ce_pct": -0.02396, "argmax_agreement": 0.9893, "kl_float_quant": 0.0003025},
    "high": {"delta_ce_pct": -0.02028, "argmax_agreement": 0.9937, "kl_float_quant": 0.00008927},
}


def fidelity_record(profile: PrecisionProfile) -> dict | None:
    """Return the manifest's ``fidelity`` field for a shipped profile (None for any other widths):
    the benchmark, this profile's rung (ΔCE %, argmax agreement, KL(float || quantized)) and the
    whole ladder, so an artifact says what its profile costs and what the others would."""
    if PROFILES.get(profile.name) != profile or profile.name not in FIDELITY:
        return None
    return {"profile": profile.name, **FIDELITY[profile.name], "benchmark": dict(FIDELITY_BENCHMARK),
            "ladder": {name: dict(r) for name, r in FIDELITY.items()}}
