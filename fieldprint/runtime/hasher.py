"""Page hashing off the critical path: snapshot on the engine's thread, hash on a worker.

The runtime hands the worker a commit's pages at once (``submit_batch``): one job, one
`page_digests` call (one BLAKE3 launch on CUDA), one wake-up of the worker per commit.

The engine thread snapshots a page (``snapshot``: ``clone()`` on the engine's device, one page,
no host transfer) right after each step that wrote it, and ``submit_snapshot`` hashes the copy
later on the worker thread, so the engine may rewrite, free or reuse the page immediately. A
digest is therefore always that of the bytes the engine wrote, never of the live page at some
later time (which a fault may have changed in between). ``submit_call`` runs other work on
snapshots (the runtime's write checks) on the same worker. ``submit_logits`` hashes a step's logits row
the same way (the engine hands out a fresh tensor per step, so no copy is needed).

A page's digests are those of ``spec.commits``: BLAKE3 of each layer's slice of the page
(``page[i]``, C order), then their BLAKE3 Merkle root. On CUDA the worker hashes all layer
slices of a page in one launch of ``fieldprint_fast.hashing.hash_pages`` over the
``[layers, slice]`` view of the snapshot (BLAKE3 on the device, only the digests come back);
otherwise it copies the snapshot to the host and uses the ``blake3`` package.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import blake3 as _blake3
import torch

from spec.commits import content_digest, layer_digests, page_digest, page_layer_bytes


class PageDigest(NamedTuple):
    """A page's ``kv_page.digest`` (``root``) and ``kv_page.layer_digests`` (``layers``)."""

    root: bytes
    layers: tuple[bytes, ...]


def page_digests_of(layers) -> PageDigest:
    """Return the PageDigest of a page given its layer digests."""
    layers = tuple(bytes(d) for d in layers)
    return PageDigest(page_digest(layers), layers)


def page_digest_cpu(page: torch.Tensor) -> PageDigest:
    """Return a page's digests, hashing its layer slices on the host (``spec.commits``)."""
    return page_digests_of(layer_digests(page_layer_bytes(page)))


DIGEST_BYTES = 32  # BLAKE3 output, one per layer slice
STACK_BYTES = 64 << 20  # pages stacked into one device launch by `page_digests`, at most (64 MiB)


def _batch_hash_pages():
    """Return ``fieldprint_fast.hashing.hash_pages`` (BLAKE3 of many rows in one call: the Triton
    kernel for CUDA tensors, the blake3 package for host ones), or None without it."""
    try:
        from fieldprint_fast.hashing import hash_pages
    except Exception:  # the GPU hashing is optional: the host's blake3 package serves instead
        return None
    return hash_pages


def layer_digest_rows(pages, *, device_hashing: bool = True) -> list[bytes]:
    """Return, per page (``[layers, ...]`` tensors of one shape, one device), its layer digests
    concatenated (``layers x 32`` bytes: ``b"".join(PageDigest.layers)``).

    Pages are stacked, up to `STACK_BYTES` at a time, and every layer slice of a stack is hashed
    in one call of ``fieldprint_fast.hashing.hash_pages``: for CUDA pages one BLAKE3 launch on the
    device, and only the digests (32 bytes a layer) come back, in one copy. A commit's re-hash of
    all its live pages is then a few launches, not a host transfer and a host hash per layer
    slice. CUDA pages without ``device_hashing`` (or without that module) are copied to the host
    and hashed slice by slice. Every path gives ``spec.commits``' digests."""
    pages = list(pages)
    if not pages:
        return []
    if not pages[0].is_cuda:  # host pages: BLAKE3 of each layer slice where it lies (no stacked copy)
        return [_host_layer_row(p) for p in pages]
    hash_fn = _batch_hash_pages()
    if hash_fn is None or not device_hashing:
        return [b"".join(layer_digests(page_layer_bytes(p))) for p in pages]
    layers = pages[0].shape[0]
    per = max(1, STACK_BYTES // max(1, pages[0].numel() * pages[0].element_size()))
    out: list[bytes] = []
    for i in range(0, len(pages), per):
        group = torch.stack([p.detach() for p in pages[i:i + per]])  # [n, layers, ...], a device copy
        res = hash_fn(group.reshape(group.shape[0] * layers, -1))
        res.event.synchronize()
        flat = res.digests.cpu().numpy().tobytes()
        step = layers * DIGEST_BYTES
        out += [flat[j * step:(j + 1) * step] for j in range(group.shape[0])]
    return out


def _host_layer_row(page: torch.Tensor) -> bytes:
    """A host page's layer digests, concatenated: BLAKE3 over each layer slice's memory (the
    blake3 package reads the buffer in place and releases the GIL while it hashes)."""
    page = page.detach()
    if not page.is_contiguous():
        page = page.contiguous()
    flat = page.view(torch.uint8).numpy().reshape(page.shape[0], -1)
    return b"".join(_blake3.blake3(flat[i]).digest() for i in range(flat.shape[0]))


def page_digests(pages, *, device_hashing: bool = True) -> list[PageDigest]:
    """Return the PageDigest of each page: `layer_digest_rows` and each page's Merkle root."""
    return [page_digests_of(r[k:k + DIGEST_BYTES] for k in range(0, len(r), DIGEST_BYTES))
            for r in layer_digest_rows(pages, device_hashing=device_hashing)]


class PageHasher:
    """A single worker thread that digests page snapshots and logits rows in FIFO order."""

    def __init__(self, *, device_hashing: bool = True, turn=None):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fieldprint-hash")
        self._turn = turn or (lambda: None)  # `fieldprint.runtime.turns.Turns.turn`: before a batch
        self._device_hashing = device_hashing
        self.pages = 0  # pages submitted (for reports)

    def _digest_tensor(self, t: torch.Tensor) -> PageDigest:
        return page_digests([t], device_hashing=self._device_hashing)[0]

    @staticmethod
    def snapshot(page: torch.Tensor) -> torch.Tensor:
        """Return a private copy of ``page`` (on its device), taken now."""
        return page.detach().clone()

    def submit_page(self, page: torch.Tensor) -> Future:
        """Snapshot ``page`` now (a device copy); return a Future of its PageDigest."""
        return self.submit_snapshot(self.snapshot(page))

    def submit_snapshot(self, snap: torch.Tensor) -> Future:
        """Return a Future of the PageDigest of a snapshot (which nobody writes again)."""
        self.pages += 1
        return self._pool.submit(self._digest_tensor, snap)

    def submit_batch(self, items) -> None:
        """Hash ``(snapshot, future)`` pairs in one job (one `page_digests` call) and resolve
        each future with its snapshot's PageDigest; nobody writes the snapshots again."""
        items = list(items)
        if not items:
            return
        self.pages += len(items)
        self._pool.submit(self._digest_batch, items)

    def _digest_batch(self, items) -> None:
        self._turn()
        try:
            digests = page_digests([t for t, _ in items], device_hashing=self._device_hashing)
        except BaseException as e:  # noqa: BLE001 - every waiter sees the error
            for _, f in items:
                f.set_exception(e)
            return
        for (_, f), d in zip(items, digests):
            f.set_result(d)

    def submit_call(self, fn, *args) -> Future:
        """Run ``fn(*args)`` on the worker, in FIFO order with the digests; return its Future."""
        return self._pool.submit(fn, *args)

    def submit_logits(self, logits: torch.Tensor) -> Future:
        """Return a Future of BLAKE3 over the int64 little-endian logits row."""
        return self._pool.submit(
            lambda: content_digest(logits.to(torch.int64).cpu().contiguous().numpy().astype("<i8").tobytes()))

    def page_digest_now(self, page: torch.Tensor) -> PageDigest:
        """Return a page's digests synchronously (restores and the anchor commitment use it)."""
        return page_digest_cpu(page)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def done(value) -> Future:
    """Return an already-resolved Future holding ``value``."""
    f: Future = Future()
    f.set_result(value)
    return f
