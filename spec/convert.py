"""Conversion of a float Hugging Face checkpoint into a QuantizedModel (the one float path)."""
from __future__ import annotations

import torch

from spec.model import ModelConfig, QuantizedModel
from spec.profiles import PrecisionProfile


def quantize_model(config: ModelConfig, float_state: dict[str, torch.Tensor], profile: PrecisionProfile) -> QuantizedModel:
    """Quantize float HF weights (Llama names) into integer tensors plus every table the forward needs."""
    raise NotImplementedError
