"""The runtime's page hasher: snapshot at submission, per-layer BLAKE3 digests and their Merkle root."""
from __future__ import annotations

import blake3
import pytest
import torch

from fieldprint.runtime.hasher import PageDigest, PageHasher


def _pool(device):
    g = torch.Generator().manual_seed(0)
    return torch.randint(-128, 128, (8, 2, 2, 16, 2, 20), dtype=torch.int8, generator=g).to(device)


def _b3(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def _reference(page):
    """BLAKE3 of each of the two layer slices, and their RFC 9162 root: H(1 || H(0 || d0) || H(0 || d1))."""
    layers = tuple(_b3(page[i].numpy().tobytes()) for i in range(2))
    return PageDigest(_b3(b"\x01" + _b3(b"\x00" + layers[0]) + _b3(b"\x00" + layers[1])), layers)


def _check(pool):
    h = PageHasher()
    try:
        futs = [h.submit_page(pool[i]) for i in range(len(pool))]
        want = [_reference(pool[i].cpu()) for i in range(len(pool))]
        pool.zero_()  # the pages change right after submission: the snapshots were taken
        assert [f.result() for f in futs] == want
    finally:
        h.close()


def test_cpu_pages_are_snapshotted_and_hashed():
    _check(_pool("cpu"))


@pytest.mark.gpu
def test_cuda_pages_hash_on_the_device():
    _check(_pool("cuda"))
