"""GPU suite for the Triton BLAKE3 at real sizes: mismatch counts against the `blake3` package.

Run on a CUDA machine (``python benchmarks/gpu_blake3_check.py --out check.json``). Every case
hashes a batch on the GPU through :mod:`fieldprint_fast.hashing`, hashes the same bytes on
the CPU with the ``blake3`` package, and counts digests that differ. Cases: pages of 4, 16
and 64 KiB in batches up to 1 GiB; odd page sizes (byte loads, partial chunks and blocks);
pages read in place through a shuffled index; misaligned rows (byte path); long messages
that need parent passes (1 MiB to 256 MiB); ragged batches; keyed and derive-key modes; and
every input length and mode of the official test vectors (first 32 bytes of each output).
Exits non-zero on any mismatch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fieldprint_fast.hashing import hash_pages, hash_pool_pages  # noqa: E402
from fieldprint_fast.kernels.blake3 import blake3_ragged, mode  # noqa: E402

VECTORS = Path(__file__).resolve().parents[1] / "tests/vectors/blake3/test_vectors.json"
KEY = b"whats the Elvish word for friend"
CONTEXT = "BLAKE3 2019-12-27 16:29:52 test vectors context"
POOL = ThreadPoolExecutor(os.cpu_count() or 1)


def cpu_digests(rows_np, order, **kw) -> list[bytes]:
    """Digest rows ``order`` of a uint8 numpy array with the blake3 package, on every core."""
    order = list(order)
    step = max(1, -(-len(order) // (4 * (os.cpu_count() or 1))))
    parts = POOL.map(lambda lo: [blake3.blake3(rows_np[i], **kw).digest() for i in order[lo:lo + step]],
                     range(0, len(order), step))
    return [d for part in parts for d in part]


def mismatches(gpu: torch.Tensor, ref: list[bytes]) -> tuple[int, int | None]:
    got = gpu.cpu().numpy()
    bad = [i for i, r in enumerate(ref) if bytes(got[i]) != r]
    return len(bad), (bad[0] if bad else None)


def case_pages(results, L, total, modes=("hash",), g=None, max_programs=None):
    n = max(1, total // max(L, 1))
    x = torch.randint(0, 256, (n, L), dtype=torch.uint8, device="cuda", generator=g)
    x_np = x.cpu().numpy()
    for m in modes:
        kw = {"key": KEY} if m == "keyed_hash" else {"derive_key_context": CONTEXT} if m == "derive_key" else {}
        t = time.perf_counter()
        d, ev = hash_pages(x, max_programs=max_programs, **kw)
        ev.synchronize()
        gpu_s = time.perf_counter() - t
        bad, first = mismatches(d, cpu_digests(x_np, range(n), **kw))
        results.append(dict(case="pages" if max_programs is None else f"pages, grid {max_programs}",
                            L=L, n=n, mode=m, mismatches=bad, first_bad=first,
                            gpu_wall_s=round(gpu_s, 4)))
        print(f"pages L={L:>9} n={n:>7} {m:<10} mismatches={bad}", flush=True)


def case_pool(results, L, pool_pages, take, g=None):
    pool = torch.randint(-128, 128, (pool_pages, L // 2), dtype=torch.int16, device="cuda", generator=g)
    idx = torch.randperm(pool_pages, device="cuda", generator=g)[:take]
    d, ev = hash_pool_pages(pool, idx)
    ev.synchronize()
    rows = pool.reshape(pool_pages, -1).view(torch.uint8).cpu().numpy()
    bad, first = mismatches(d, cpu_digests(rows, idx.tolist()))
    results.append(dict(case="pool_index", L=L, n=take, mode="hash", mismatches=bad, first_bad=first))
    print(f"pool  L={L:>9} n={take:>7} int16 via index  mismatches={bad}", flush=True)


def case_misaligned(results, L, n, g=None):
    big = torch.randint(0, 256, (n, L + 8), dtype=torch.uint8, device="cuda", generator=g)
    x = big[:, 1:L + 1]  # rows start at odd addresses: byte loads
    d, ev = hash_pages(x)
    ev.synchronize()
    bad, first = mismatches(d, cpu_digests(x.cpu().numpy(), range(n)))
    results.append(dict(case="misaligned", L=L, n=n, mode="hash", mismatches=bad, first_bad=first))
    print(f"misal L={L:>9} n={n:>7} mismatches={bad}", flush=True)


def case_ragged(results, n, max_len, g=None):
    lens = torch.randint(0, max_len + 1, (n,), generator=torch.Generator().manual_seed(n))
    lens[: min(n, 12)] = torch.tensor([0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 3072, 4097, 31 * 1024])[: min(n, 12)]
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lens, 0)[:-1]])
    data = torch.randint(0, 256, (int(lens.sum()) + 1,), dtype=torch.uint8, device="cuda", generator=g)
    d_np = data.cpu().numpy()
    for m in ("hash", "keyed_hash", "derive_key"):
        kw = {"key": KEY} if m == "keyed_hash" else {"derive_key_context": CONTEXT} if m == "derive_key" else {}
        k, f = mode(kw.get("key"), kw.get("derive_key_context"), "cuda")
        out = blake3_ragged(data, starts, lens, key=k, flags=f).view(torch.uint8)
        ref = list(POOL.map(lambda i: blake3.blake3(d_np[starts[i]:starts[i] + lens[i]], **kw).digest(), range(n)))
        bad, first = mismatches(out, ref)
        results.append(dict(case="ragged", L=f"0..{max_len}", n=n, mode=m, mismatches=bad, first_bad=first))
        print(f"ragged n={n} lengths 0..{max_len} {m:<10} mismatches={bad}", flush=True)


def case_vectors(results):
    vec = json.loads(VECTORS.read_text())
    bad = total = 0
    for c in vec["cases"]:
        L = c["input_len"]
        data = torch.tensor([i % 251 for i in range(L)], dtype=torch.uint8, device="cuda").reshape(1, L)
        for m, kw in (("hash", {}), ("keyed_hash", {"key": vec["key"].encode()}),
                      ("derive_key", {"derive_key_context": vec["context_string"]})):
            d, ev = hash_pages(data, **kw)
            ev.synchronize()
            total += 1
            bad += bytes(d[0].cpu().tolist()) != bytes.fromhex(c[m])[:32]
    results.append(dict(case="official_vectors", L="35 lengths", n=total, mode="all 3", mismatches=bad,
                        first_bad=None))
    print(f"official vectors: {total} (length, mode) pairs, mismatches={bad}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_blake3_check.json")
    ap.add_argument("--max-total", type=int, default=1 << 30, help="largest batch in bytes")
    args = ap.parse_args()
    g = torch.Generator(device="cuda").manual_seed(20261122)
    results: list[dict] = []
    t0 = time.time()
    case_vectors(results)
    for L in (4096, 16384, 65536):
        case_pages(results, L, 64 << 20, modes=("hash", "keyed_hash", "derive_key"), g=g)
        case_pages(results, L, args.max_total, g=g)
    for L in (0, 1, 63, 65, 1023, 1025, 4097, 16383, 65537, 100_003):
        case_pages(results, L, 8 << 20 if L > 1000 else 4096 * max(L, 1), modes=("hash", "keyed_hash"), g=g)
    for L in (1 << 20, (16 << 20) + 1, 256 << 20):
        case_pages(results, L, max(L, 64 << 20) if L < (256 << 20) else L, g=g)
    case_pages(results, 16384, 64 << 20, g=g, max_programs=132)  # persistent programs
    case_pages(results, 4096, 64 << 20, g=g, max_programs=7)
    case_pool(results, 16384, 8192, 4096, g=g)
    case_pool(results, 4096, 65536, 50_000, g=g)
    case_misaligned(results, 16384, 2048, g=g)
    case_misaligned(results, 4099, 2048, g=g)
    case_ragged(results, 3000, 40_000, g=g)
    total_bad = sum(r["mismatches"] for r in results)
    total_digests = sum(r["n"] for r in results)
    summary = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                   triton=__import__("triton").__version__, blake3=blake3.__version__,
                   date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), wall_s=round(time.time() - t0, 1),
                   digests_checked=total_digests, mismatches=total_bad, cases=results)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"GPU suite: {len(results)} cases, {total_digests} digests, {total_bad} mismatches, "
          f"{summary['wall_s']} s", flush=True)
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
