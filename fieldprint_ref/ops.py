"""The engine's op surface: thin names over `spec`, mirrored one for one by `fieldprint_fast.ops`.

The engine loop (`fieldprint_ref.engine`) calls only these names, so an engine built over
`fieldprint_fast.ops` runs the same loop with faster kernels wherever one exists.  Each op has
exactly the signature of the spec function it names. Two of them run exact fast forms of the
spec on the CPU (`fieldprint_ref.fastint`, speed only; same integers for every input): `forward`
passes fastint's `linear`, `lm_head` and `paged_attention` to `spec.model.forward` as its stage
kernels, and
`sample` is fastint's top-k shortcut of `spec.sampling.sample`.
"""
from __future__ import annotations

import torch

from spec.attention import KVPool
from spec.constants import PAGE_TOKENS
from fieldprint_ref import fastint
from fieldprint_ref.fastint import sample
from spec.model import AnchorRef, SequenceChunk
from spec.model import forward as _spec_forward
from spec.sampling import SamplingParams

__all__ = [
    "PAGE_TOKENS",
    "AnchorRef",
    "KVPool",
    "SamplingParams",
    "SequenceChunk",
    "allocate_pool",
    "copy_page",
    "forward",
    "page_bytes",
    "sample",
    "zero_pages",
]


def forward(model, pool, chunks):
    """``spec.model.forward`` with `fieldprint_ref.fastint`'s exact `linear`, `lm_head`, `paged_attention`."""
    return _spec_forward(model, pool, chunks, kernels=fastint)


def allocate_pool(config, profile, num_pages: int, device="cpu") -> KVPool:
    """Return a zeroed KV pool of ``num_pages`` pages (``spec.attention.KVPool.allocate``)."""
    return KVPool.allocate(config, profile, num_pages, device=device)


def page_bytes(pool: KVPool, page: int) -> bytes:
    """Return the canonical bytes of one page (``spec.attention.KVPool.page_bytes``)."""
    return pool.page_bytes(page)


def copy_page(pool: KVPool, src: int, dst: int) -> None:
    """Copy every byte of page ``src`` onto page ``dst`` (``spec.attention.KVPool.copy_page``)."""
    pool.copy_page(src, dst)


def zero_pages(pool: KVPool, pages: list[int]) -> None:
    """Set every byte of the given pages to zero (done to each page when it is allocated, so a
    page's bytes depend only on the tokens written into it, never on its previous owner)."""
    if pages:
        pool.data[torch.tensor(pages, dtype=torch.int64, device=pool.data.device)] = 0
