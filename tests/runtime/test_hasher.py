"""The runtime's page hasher: snapshot at submission, digest equal to BLAKE3 of the page bytes."""
from __future__ import annotations

import blake3
import pytest
import torch

from fieldprint.runtime.hasher import PageHasher


def _pool(device):
    g = torch.Generator().manual_seed(0)
    return torch.randint(-128, 128, (8, 2, 2, 16, 2, 20), dtype=torch.int8, generator=g).to(device)


def _check(pool):
    h = PageHasher()
    try:
        futs = [h.submit_page(pool[i]) for i in range(len(pool))]
        want = [blake3.blake3(pool[i].cpu().numpy().tobytes()).digest() for i in range(len(pool))]
        pool.zero_()  # the pages change right after submission: the snapshots were taken
        assert [f.result() for f in futs] == want
    finally:
        h.close()


def test_cpu_pages_are_snapshotted_and_hashed():
    _check(_pool("cpu"))


@pytest.mark.gpu
def test_cuda_pages_hash_on_the_device():
    _check(_pool("cuda"))
