"""Paged attention semantics: the KV page pool, anchors, and the exact integer softmax."""
from __future__ import annotations

import torch

from spec.constants import KV_SCALE_BYTES, PAGE_TOKENS


class KVPool:
    """Paged int8 KV cache shared by all sequences.

    `data` is ONE contiguous int8 tensor of shape
    [num_pages, num_layers, 2 (K, V), PAGE_TOKENS, num_kv_heads, head_dim + KV_SCALE_BYTES];
    data[p] holds everything about page p for all layers.
    """

    def __init__(self, data: torch.Tensor):
        self.data = data

    @classmethod
    def allocate(cls, config, profile, num_pages: int, device="cpu") -> "KVPool":
        """Return a zeroed pool of `num_pages` pages for `config`."""
        shape = (num_pages, config.num_layers, 2, PAGE_TOKENS, config.num_kv_heads, config.head_dim + KV_SCALE_BYTES)
        return cls(torch.zeros(shape, dtype=torch.int8, device=device))

    def page_bytes(self, page: int) -> bytes:
        """Return page `page`'s canonical bytes (C order; int8 has no byte order)."""
        return self.data[page].contiguous().cpu().numpy().tobytes()

    def copy_page(self, src: int, dst: int) -> None:
        """Copy page src over page dst (copy-on-write rollback)."""
        self.data[dst].copy_(self.data[src])
