"""Precision profiles: the integer width of every stage of the forward, recorded in the artifact.

A linear stage has a weight width (symmetric per-output-channel, |w| <= 2**(bits-1) - 1) and an
activation width (dynamic per-row absmax of its input, |a| <= 2**(bits-1) - 1). The first
`edge_layers` decoder layers use the `edge` widths for all their linear stages, because the first
layer is the most sensitive (measured, see docs/spec/numerics.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

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
        return cls(**d)


PROFILES: dict[str, PrecisionProfile] = {
    "int8": PrecisionProfile(name="int8"),
    "default": PrecisionProfile(
        name="default", a_qkv=12, a_o=12, a_gate_up=12, a_down=12, a_lm_head=12,
        edge_layers=1, w_edge=10, a_edge=12, q_bits=12,
    ),
}
