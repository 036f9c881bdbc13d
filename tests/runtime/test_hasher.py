"""The runtime's page hasher: snapshot at submission, per-layer BLAKE3 digests and their Merkle root."""
from __future__ import annotations

import blake3
import pytest
import torch
from hypothesis import given, settings, strategies as st

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


def _pages(seed, n, layers, device):
    g = torch.Generator().manual_seed(seed)
    return [t.to(device) for t in torch.randint(-128, 128, (n, layers, 2, 16, 2, 20), dtype=torch.int8, generator=g)]


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 9), st.integers(1, 5), st.integers(1, 4))
def test_page_digests_in_stacks_equal_page_by_page(seed, n, layers, per_stack):
    """Batched digests (stacks of ``per_stack`` pages, one hash call each) equal the per-page,
    per-layer digests of spec.commits, in order, for any page and stack count."""
    import fieldprint.runtime.hasher as hz

    pages = _pages(seed, n, layers, "cpu")
    old = hz.STACK_BYTES
    hz.STACK_BYTES = per_stack * pages[0].numel()
    try:
        got = hz.page_digests(pages)
    finally:
        hz.STACK_BYTES = old
    assert got == [hz.page_digest_cpu(p) for p in pages]
    if layers == 2:
        assert got == [_reference(p) for p in pages]


@pytest.mark.gpu
def test_page_digests_on_the_device_equal_the_host():
    import fieldprint.runtime.hasher as hz

    pages = _pages(3, 300, 16, "cuda")  # 300 pages of 16 layers: more than one stack of STACK_BYTES
    old = hz.STACK_BYTES
    hz.STACK_BYTES = 1 << 20
    try:
        got = hz.page_digests(pages)
    finally:
        hz.STACK_BYTES = old
    assert got == [hz.page_digest_cpu(p.cpu()) for p in pages]
    assert hz.page_digests(pages[:5], device_hashing=False) == got[:5]
