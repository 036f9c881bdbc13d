"""The quantized model, its configuration, and the integer forward pass."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from spec.profiles import PrecisionProfile


@dataclass(frozen=True)
class ModelConfig:
    """Shape and hyper-parameters of a decoder-only transformer (Llama family)."""

    arch: str  # "llama" | "mistral" | "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position: int  # RoPE tables cover positions [0, max_position)
    tie_embeddings: bool
    qkv_bias: bool  # Qwen2-style q/k/v biases

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(**d)


@dataclass(frozen=True)
class AnchorRef:
    """Pinned anchor pages visible to every query of a chunk."""

    block_table: torch.Tensor  # int64 physical pages holding the anchor K/V
    length: int  # number of anchor tokens A


@dataclass
class SequenceChunk:
    """Consecutive tokens of one sequence to run through the model."""

    tokens: torch.Tensor  # int64 [T], T >= 1
    start: int  # context tokens of this sequence already in the cache
    block_table: torch.Tensor  # int64 [n_blocks]; physical page of logical block b; -1 = evicted
    anchors: AnchorRef | None = None
    window: int | None = None  # sliding window over the context (anchors always visible)


class QuantizedModel:
    """Everything the integer forward needs; integer tensors only."""

    def __init__(self, config: ModelConfig, profile: PrecisionProfile, tensors: dict[str, torch.Tensor]):
        self.config = config
        self.profile = profile
        self.tensors = tensors


def forward(model: QuantizedModel, pool, chunks: list[SequenceChunk]) -> list[torch.Tensor]:
    """Run every chunk through the model; write its K/V into its pages; return int64 logits [T_i, vocab]."""
    raise NotImplementedError
