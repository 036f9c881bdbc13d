"""BLAKE3 digests of pages, wherever the pages live, behind one signature.

Which implementation runs is decided by the device of the input tensor, never by the caller:

* **CUDA tensor** -> the Triton kernel of :mod:`fieldprint_fast.kernels.blake3`, launched on
  ``stream`` (default: the current stream). The call returns at once; the digests are valid
  once the returned ``event`` has completed (``event.synchronize()``, or
  ``other_stream.wait_event(event)``). When ``stream`` is not the current stream it first
  waits for the current stream, so pages written there are hashed as written.
  The CUDA path never waits for the device: keys and context keys are cached on the device
  after their first use (an upload from pageable memory would block the host until the
  stream drains), and nothing is read back.
* **CPU tensor** -> the ``blake3`` package (the official Rust implementation), synchronously.
  ``max_threads`` (``blake3.AUTO`` or ``None`` = every core) goes to the package's own
  multithreading for pages of ``THREADED_PAGE_BYTES`` or more; smaller pages are hashed one
  after the other on the calling thread, since a Python thread pool over them was slower
  than one thread on a 16-core H100 host (1.7 vs 3.1 GB/s for 16 KiB pages:
  benchmarks/results/blake3-H100-*.json). The returned ``event`` is a
  :class:`CompletedEvent`, already complete, with the same methods.

Both return ``HashResult(digests, event)``: ``digests`` is uint8 ``[N, 32]`` on the input's
device, and ``digests[n]`` equals ``blake3.blake3(page_bytes(n), key=..., derive_key_context=...)
.digest()``, where ``page_bytes(n)`` is the C-order, little-endian byte image of page ``n``.
"""
from __future__ import annotations

from typing import NamedTuple

import blake3 as _blake3
import torch

DIGEST_BYTES = 32  # BLAKE3 default output (= 256 bits)
THREADED_PAGE_BYTES = 1 << 20  # pages this large use the package's threads (= 1 MiB)


class CompletedEvent:
    """Stands in for ``torch.cuda.Event`` when the work was done synchronously on the CPU."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None

    def wait(self, stream=None) -> None:
        return None


class HashResult(NamedTuple):
    """Digests (uint8 [N, 32], on the input's device) and the event after which they are valid."""

    digests: torch.Tensor
    event: "torch.cuda.Event | CompletedEvent"


def hash_pages(pages: torch.Tensor, *, key: bytes | None = None,
               derive_key_context: str | bytes | None = None,
               stream: "torch.cuda.Stream | None" = None,
               max_threads: int | None = 1, max_programs: int | None = None) -> HashResult:
    """Return the BLAKE3 digest of every page ``pages[n]``. Requires a leading page axis.

    ``key`` (32 bytes) selects keyed hashing and ``derive_key_context`` key derivation, as
    in ``blake3.blake3``; at most one of them. ``stream`` and ``max_programs`` (a cap on the
    kernel's grid, to leave SMs to other streams) apply to CUDA tensors, ``max_threads`` to
    CPU tensors; each path ignores the other's.
    """
    return _hash(pages, None, key, derive_key_context, stream, max_threads, max_programs)


def hash_pool_pages(pool: torch.Tensor, page_indices: torch.Tensor | list[int], *,
                    key: bytes | None = None, derive_key_context: str | bytes | None = None,
                    stream: "torch.cuda.Stream | None" = None,
                    max_threads: int | None = 1, max_programs: int | None = None) -> HashResult:
    """Return the BLAKE3 digest of ``pool[i]`` for each ``i`` in ``page_indices``, read in place.

    Requires ``pool`` with a leading physical-page axis (a KV pool's ``data``) and indices
    in ``[0, pool.shape[0])`` (checked for host indices only: checking device indices would
    wait for the device). On CUDA the pages are read through the index, without a gather
    copy; pass the indices as a CUDA tensor to keep the call asynchronous.
    """
    index = torch.as_tensor(page_indices, dtype=torch.int64).reshape(-1)
    if not index.is_cuda and index.numel() and (int(index.min()) < 0 or int(index.max()) >= pool.shape[0]):
        raise IndexError(f"page index out of range for a pool of {pool.shape[0]} pages")
    return _hash(pool, index, key, derive_key_context, stream, max_threads, max_programs)


def _hash(pages, index, key, derive_key_context, stream, max_threads, max_programs) -> HashResult:
    if pages.dim() < 1:
        raise ValueError("pages need a leading page axis")
    if key is not None and derive_key_context is not None:
        raise ValueError("give at most one of key and derive_key_context")
    if pages.is_cuda:
        return _hash_cuda(pages, index, key, derive_key_context, stream, max_programs)
    return _hash_cpu(pages, index, key, derive_key_context, max_threads)


def _hash_cuda(pages, index, key, derive_key_context, stream, max_programs) -> HashResult:
    from fieldprint_fast.kernels.blake3 import blake3 as _kernel

    current = torch.cuda.current_stream(pages.device)
    stream = current if stream is None else stream
    if stream != current:
        stream.wait_stream(current)  # the pages may still be being written on `current`
    with torch.cuda.stream(stream):
        if index is not None:
            index = index.to(pages.device, non_blocking=True)
        digests = _kernel(pages, index=index, key=key, derive_key_context=derive_key_context,
                          max_programs=max_programs)
        event = torch.cuda.Event()
        event.record(stream)
    if stream != current:
        pages.record_stream(stream)  # keep the allocator from reusing the pages too early
    return HashResult(digests, event)


def _hash_cpu(pages, index, key, derive_key_context, max_threads) -> HashResult:
    rows = pages.reshape(pages.shape[0], -1)
    rows = rows.contiguous().view(torch.uint8) if rows.dtype != torch.uint8 else rows.contiguous()
    data = rows.numpy()
    order = range(rows.shape[0]) if index is None else index.tolist()
    kwargs = {}
    if key is not None:
        kwargs["key"] = bytes(key)
    if derive_key_context is not None:
        kwargs["derive_key_context"] = derive_key_context
    out = torch.empty((len(order), DIGEST_BYTES), dtype=torch.uint8)
    view = out.numpy()

    if max_threads is None or max_threads == _blake3.blake3.AUTO:
        threads = _blake3.blake3.AUTO
    else:
        threads = max(1, int(max_threads))
    if threads != 1 and data.shape[1] >= THREADED_PAGE_BYTES:
        kwargs["max_threads"] = threads
    for j, i in enumerate(order):
        view[j] = memoryview(_blake3.blake3(data[i], **kwargs).digest())
    return HashResult(out, CompletedEvent())
