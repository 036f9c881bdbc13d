"""Parity of the Triton BLAKE3 (fieldprint_fast.kernels.blake3) with the `blake3` package.

Compared byte for byte with ``blake3.blake3(...).digest()`` (the reference: the official
Rust implementation), and with the official test vectors (tests/vectors/blake3/). On a CPU
machine this runs under ``TRITON_INTERPRET=1`` (set by scripts/test.sh) on small sizes: the
interpreter pays per operation, not per element, so the tests use wide programs (few programs
with many lanes) and few examples; the real sizes run on a GPU through
``benchmarks/gpu_blake3_check.py``. Extended output (XOF) is out of scope for the kernel:
vector outputs are compared on their first 32 bytes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest
import torch
from hypothesis import given, settings, strategies as st

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or TRITON_INTERPRET=1")

from fieldprint_fast.hashing import CompletedEvent, hash_pages, hash_pool_pages  # noqa: E402
from fieldprint_fast.kernels.blake3 import blake3 as triton_blake3, blake3_ragged, mode  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"
WIDE = 1024 if INTERPRET else 128  # lanes per program: one program per launch under the interpreter
WIDER = 8192 if INTERPRET else 128  # for ragged batches of up to 35 messages of up to 128 chunks
EXAMPLES = int(os.environ.get("FP_BLAKE3_EXAMPLES", "6"))
VECTORS = json.loads((Path(__file__).parents[1] / "vectors/blake3/test_vectors.json").read_text())
KEY = VECTORS["key"].encode()  # b"whats the Elvish word for friend"
CONTEXT = VECTORS["context_string"]
MODES = {"hash": {}, "keyed_hash": {"key": KEY}, "derive_key": {"derive_key_context": CONTEXT}}
# chunk and block boundaries: BLOCK_LEN = 64, CHUNK_LEN = 1024, 31 chunks = 16 + 8 + 4 + 2 + 1
BOUNDARIES = [0, 1, 3, 4, 63, 64, 65, 127, 128, 1023, 1024, 1025, 2048, 2049, 3072, 4096, 4097]


def reference(data: bytes, kw: dict) -> bytes:
    return blake3.blake3(data, **kw).digest()


def assert_digests(got: torch.Tensor, want: list[bytes], what: str) -> None:
    """torch.equal on uint8 [N, 32]; on failure report the mismatch count and the first index."""
    want_t = torch.tensor([list(w) for w in want], dtype=torch.uint8).reshape(-1, 32)
    got = got.cpu()
    if not torch.equal(got, want_t):
        bad = (got != want_t).any(dim=1).nonzero().flatten().tolist()
        raise AssertionError(f"{what}: {len(bad)} of {len(want)} digests differ, first at {bad[0]}: "
                             f"{bytes(got[bad[0]].tolist()).hex()} != {want[bad[0]].hex()}")


def ragged_digests(messages: list[bytes], kw: dict) -> torch.Tensor:
    lengths = torch.tensor([len(m) for m in messages], dtype=torch.int64)
    starts = torch.cumsum(lengths, 0) - lengths
    data = torch.tensor(list(b"".join(messages)) + [0], dtype=torch.uint8, device=DEVICE)
    key, flags = mode(kw.get("key"), kw.get("derive_key_context"), DEVICE)
    return blake3_ragged(data, starts, lengths, key=key, flags=flags, block=WIDER).view(torch.uint8)


# -- official vectors ----


@pytest.mark.parametrize("name", list(MODES))
def test_official_vectors(name):
    """Every input length of test_vectors.json, in one batch per mode; first 32 output bytes."""
    cases = VECTORS["cases"]
    messages = [bytes(i % 251 for i in range(c["input_len"])) for c in cases]
    got = ragged_digests(messages, MODES[name])
    assert_digests(got, [bytes.fromhex(c[name])[:32] for c in cases], f"official vectors, {name}")


def test_official_vectors_agree_with_package():
    """The checked-in vectors are what the package computes (a check on the reference itself)."""
    for c in VECTORS["cases"][:12]:
        data = bytes(i % 251 for i in range(c["input_len"]))
        for name, kw in MODES.items():
            assert blake3.blake3(data, **kw).hexdigest(length=len(c[name]) // 2) == c[name]


# -- fixed-length batches: word loads, byte loads, in place through an index ----


@pytest.mark.parametrize("L", [0, 4, 64, 1024, 3 * 1024 + 4, 4096, 1025, 4099])
def test_pages_fixed_length(L):
    g = torch.Generator().manual_seed(L)
    pages = torch.randint(0, 256, (3, L), dtype=torch.uint8, generator=g)
    got = triton_blake3(pages.to(DEVICE), block=WIDE)
    assert_digests(got, [reference(p.numpy().tobytes(), {}) for p in pages], f"pages L={L}")


def test_pool_pages_in_place_through_index():
    """int16 KV-like pool, pages read through a shuffled index, keyed mode, several programs."""
    g = torch.Generator().manual_seed(7)
    pool = torch.randint(-2**15, 2**15, (6, 1024), dtype=torch.int16, generator=g)  # 2 KiB pages
    index = torch.tensor([5, 0, 3, 3])
    got = triton_blake3(pool.to(DEVICE), index=index.to(DEVICE), key=KEY, block=4)  # 2 messages a program
    rows = pool.view(torch.uint8).reshape(6, -1)
    assert_digests(got, [reference(rows[i].numpy().tobytes(), {"key": KEY}) for i in index], "pool via index")


def test_misaligned_rows_use_byte_loads():
    base = torch.randint(0, 256, (2, 1100), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    rows = base[:, 1:1029]  # starts at an odd offset
    got = triton_blake3(rows.to(DEVICE) if DEVICE == "cpu" else base.to(DEVICE)[:, 1:1029], block=WIDE)
    assert_digests(got, [reference(r.numpy().tobytes(), {}) for r in rows], "misaligned rows")


@pytest.mark.parametrize("block, L, name", [(2, 2049, "hash"), (2, 5 * 1024 - 3, "derive_key")])
def test_long_messages_need_parent_passes(block, L, name):
    """Messages wider than a program: subtree CVs, then one (2049) or two (5 chunks) parent passes."""
    msg = torch.randint(0, 256, (1, L), dtype=torch.uint8, generator=torch.Generator().manual_seed(L))
    got = triton_blake3(msg.to(DEVICE), block=block, **MODES[name])
    assert_digests(got, [reference(msg[0].numpy().tobytes(), MODES[name])], f"L={L} block={block} {name}")


def test_capped_grid_loops_over_tiles():
    pages = torch.randint(0, 256, (5, 200), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    got = triton_blake3(pages.to(DEVICE), block=2, max_programs=2)  # 3 tiles on 2 programs
    assert_digests(got, [reference(p.numpy().tobytes(), {}) for p in pages], "max_programs=2")


# -- hypothesis: lengths, batch sizes, contents, modes ----

lengths = st.one_of(st.sampled_from(BOUNDARIES), st.integers(0, 2 * 1024 + 100))


@settings(max_examples=EXAMPLES, deadline=None)
@given(L=lengths, n=st.integers(1, 4), name=st.sampled_from(list(MODES)), seed=st.integers(0, 2**31),
       via_index=st.booleans())
def test_pages_match_package(L, n, name, seed, via_index):
    g = torch.Generator().manual_seed(seed)
    pool = torch.randint(0, 256, (n + 1, L), dtype=torch.uint8, generator=g)
    kw = MODES[name]
    if via_index:
        index = torch.randperm(n + 1, generator=g)[:n]
        got = triton_blake3(pool.to(DEVICE), index=index.to(DEVICE), block=WIDE, **kw)
        want = [reference(pool[i].numpy().tobytes(), kw) for i in index]
    else:
        got = triton_blake3(pool[:n].to(DEVICE), block=WIDE, **kw)
        want = [reference(pool[i].numpy().tobytes(), kw) for i in range(n)]
    assert_digests(got, want, f"L={L} n={n} {name} index={via_index}")


@settings(max_examples=EXAMPLES, deadline=None)
@given(messages=st.lists(st.one_of(st.binary(max_size=200), st.sampled_from(BOUNDARIES).map(lambda k: bytes(range(256)) * (k // 256) + bytes(k % 256))), min_size=1, max_size=8),
       name=st.sampled_from(list(MODES)))
def test_ragged_batches_match_package(messages, name):
    got = ragged_digests(messages, MODES[name])
    assert_digests(got, [reference(m, MODES[name]) for m in messages], f"ragged {name}")


# -- host API: one signature for both paths ----


def test_host_api_cpu_fallback_matches_package():
    pool = torch.randint(0, 256, (9, 3, 700), dtype=torch.uint8, generator=torch.Generator().manual_seed(11))
    rows = pool.reshape(9, -1)
    for name, kw in MODES.items():
        for threads in (1, 3):
            digests, event = hash_pages(pool, max_threads=threads, **kw)
            assert isinstance(event, CompletedEvent) and event.query()
            event.synchronize()
            assert_digests(digests, [reference(r.numpy().tobytes(), kw) for r in rows], f"cpu {name} {threads}")
    digests, _ = hash_pool_pages(pool, [8, 2, 2], key=KEY)
    assert_digests(digests, [reference(rows[i].numpy().tobytes(), {"key": KEY}) for i in (8, 2, 2)], "cpu pool")


def test_host_api_rejects_bad_arguments():
    pool = torch.zeros((2, 64), dtype=torch.uint8)
    with pytest.raises(ValueError):
        hash_pages(pool, key=KEY, derive_key_context=CONTEXT)
    with pytest.raises(IndexError):
        hash_pool_pages(pool, [2])
    with pytest.raises(ValueError):
        hash_pages(pool, key=b"short")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or INTERPRET, reason="needs CUDA without the interpreter")
def test_host_api_cuda_side_stream():
    pages = torch.randint(0, 256, (64, 16384), dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()
    digests, event = hash_pages(pages, stream=side)
    event.synchronize()
    assert_digests(digests, [reference(p.cpu().numpy().tobytes(), {}) for p in pages], "cuda side stream")
