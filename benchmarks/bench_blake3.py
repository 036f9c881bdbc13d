"""Benchmark: BLAKE3 of KV pages on the GPU (Triton) against the CPU ways of doing it.

Run on a CUDA machine: ``python benchmarks/bench_blake3.py`` (prints a rich table, writes
``benchmarks/results/blake3-<device>-<date>.json`` or ``--out``). Parts, all in one run:

1. GPU BLAKE3 in GB/s (message bytes per second) for pages of 4, 16 and 64 KiB, batches of
   64 MiB and 1 GiB (``triton.testing.do_bench``, median; input buffers rotated so that the
   working set exceeds the 50 MB L2), plus a small sweep of launch shapes at 16 KiB and the
   in-place (pool + page index) variant.
2. The ``blake3`` package on all the machine's cores: per-page digests on a thread pool, and
   one ``blake3.blake3(buffer, max_threads=AUTO)`` over the whole buffer (upper bound), each
   with and without the device-to-host copy it needs.
3. The strawman: synchronous device-to-host copy of a 32 MiB tensor, then hashlib SHA-256.
4. Overlap: a bandwidth-bound copy loop on the main stream, timed alone and with page hashing
   on a side stream; the main stream's slowdown against the share of bandwidth hashing takes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fieldprint_fast.hashing import hash_pages  # noqa: E402
from fieldprint_fast.kernels import blake3 as K  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
L2_BYTES = 50 * MiB  # H100 L2; buffers rotate over more than twice this


def _rotating(total: int, L: int, device="cuda"):
    """Return enough [n, L] random page batches of `total` bytes to exceed 2x L2 together."""
    copies = max(2, -(-2 * L2_BYTES // total) + 1)
    return [torch.randint(0, 256, (total // L, L), dtype=torch.uint8, device=device) for _ in range(copies)]


def _bench_rot(fn, bufs, warmup=50, rep=300) -> float:
    i = [0]

    def step():
        fn(bufs[i[0] % len(bufs)])
        i[0] += 1

    return do_bench(step, warmup=warmup, rep=rep, return_mode="median")


def gpu_throughput(rows: list, sweep: list) -> dict:
    best = {}
    # -- launch-shape sweep at 16 KiB pages, 1 GiB ----
    bufs = _rotating(GiB, 16384)
    for block, warps, nreg in sweep:
        t = time.perf_counter()
        K.blake3(bufs[0], block=block, num_warps=warps, maxnreg=nreg)  # compile
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t
        ms = _bench_rot(lambda x: K.blake3(x, block=block, num_warps=warps, maxnreg=nreg), bufs, warmup=20, rep=200)
        gbs = GiB / ms / 1e6
        rows.append(dict(part="gpu-sweep", what=f"16 KiB pages, 1 GiB, block={block} warps={warps} maxnreg={nreg}",
                         ms=ms, GBps=gbs, compile_s=compile_s))
        print(f"sweep block={block} warps={warps} maxnreg={nreg}: {gbs:.1f} GB/s (first call {compile_s:.1f} s)",
              flush=True)
        best.setdefault("cfg", (block, warps, nreg, gbs))
        if gbs > best["cfg"][3]:
            best["cfg"] = (block, warps, nreg, gbs)
    del bufs
    block, warps, nreg, _ = best["cfg"]
    # -- page sizes x totals with the best shape ----
    for L in (4096, 16384, 65536):
        for total in (64 * MiB, GiB):
            bufs = _rotating(total, L)
            ms = _bench_rot(lambda x: K.blake3(x, block=block, num_warps=warps, maxnreg=nreg), bufs,
                            warmup=20 if total == GiB else 50, rep=200 if total == GiB else 300)
            gbs = total / ms / 1e6
            rows.append(dict(part="gpu", what=f"{L // 1024} KiB pages, {total // MiB} MiB", L=L, total=total,
                             block=block, warps=warps, ms=ms, GBps=gbs))
            print(f"gpu L={L} total={total // MiB} MiB: {gbs:.1f} GB/s ({ms:.3f} ms)", flush=True)
            del bufs
    # -- in place through a page index (16 KiB pages of a 2 GiB pool, 1 GiB hashed) ----
    pool = torch.randint(0, 256, (2 * GiB // 16384, 16384), dtype=torch.uint8, device="cuda")
    idxs = [torch.randperm(pool.shape[0], device="cuda")[: GiB // 16384] for _ in range(2)]
    ms = _bench_rot(lambda ix: K.blake3(pool, index=ix, block=block, num_warps=warps, maxnreg=nreg), idxs, warmup=20, rep=200)
    rows.append(dict(part="gpu", what="16 KiB pages via index (in place), 1024 MiB", L=16384, total=GiB,
                     block=block, warps=warps, ms=ms, GBps=GiB / ms / 1e6))
    print(f"gpu in-place index 16 KiB: {GiB / ms / 1e6:.1f} GB/s", flush=True)
    del pool, idxs
    torch.cuda.empty_cache()
    return dict(block=block, warps=warps, maxnreg=nreg)


def copy_bandwidth() -> float:
    """Device-to-device copy rate, bytes read + written per second (the memory ceiling)."""
    a = torch.empty(2 * GiB, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=20, rep=200, return_mode="median")
    del a, b
    return 2 * 2 * GiB / ms * 1e3


def cpu_package(rows: list, L=16384, total=GiB, reps=3):
    threads = os.cpu_count() or 1
    x = torch.randint(0, 256, (total // L, L), dtype=torch.uint8, device="cuda")
    host = torch.empty(x.shape, dtype=torch.uint8, pin_memory=True)
    copy_s, hash_s, one_s, single_s = [], [], [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        host.copy_(x)  # synchronous device-to-host copy into pinned memory
        copy_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as ex:  # a Python thread pool over pages, for the record
            step = -(-host.shape[0] // threads)
            list(ex.map(lambda lo: [blake3.blake3(host[i].numpy()).digest()
                                    for i in range(lo, min(lo + step, host.shape[0]))], range(0, host.shape[0], step)))
        hash_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        hash_pages(host, max_threads=blake3.blake3.AUTO)  # the fallback: one thread for small pages
        single_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        blake3.blake3(host.numpy(), max_threads=blake3.blake3.AUTO).digest()
        one_s.append(time.perf_counter() - t)
    c, h, o, h1 = (statistics.median(v) for v in (copy_s, hash_s, one_s, single_s))
    rows.append(dict(part="cpu", what=f"blake3 package, {L // 1024} KiB pages, hash_pages (1 thread), hash only",
                     ms=h1 * 1e3, GBps=total / h1 / 1e9))
    rows.append(dict(part="cpu", what=f"blake3 package, {L // 1024} KiB pages, {threads}-thread pool, hash only",
                     ms=h * 1e3, GBps=total / h / 1e9))
    rows.append(dict(part="cpu", what=f"blake3 package, {L // 1024} KiB pages, hash_pages (1 thread), + D2H copy",
                     ms=(h1 + c) * 1e3, GBps=total / (h1 + c) / 1e9))
    rows.append(dict(part="cpu", what=f"blake3 one {total // MiB} MiB buffer, AUTO threads, hash only (bound)",
                     ms=o * 1e3, GBps=total / o / 1e9))
    rows.append(dict(part="cpu", what=f"blake3 one {total // MiB} MiB buffer, AUTO threads, + D2H copy",
                     ms=(o + c) * 1e3, GBps=total / (o + c) / 1e9))
    rows.append(dict(part="cpu", what=f"D2H copy alone, {total // MiB} MiB to pinned memory", ms=c * 1e3,
                     GBps=total / c / 1e9))
    print(f"cpu: copy {total / c / 1e9:.1f} GB/s, pages {total / h / 1e9:.1f} GB/s, one buffer {total / o / 1e9:.1f} GB/s",
          flush=True)
    del x, host


def strawman(rows: list, size=32 * MiB, reps=10):
    x = torch.randint(0, 256, (size,), dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        hashlib.sha256(x.cpu().numpy()).digest()  # per-layer: synchronous copy, then SHA-256
        times.append(time.perf_counter() - t)
    s = statistics.median(times)
    rows.append(dict(part="strawman", what=f"sync D2H + hashlib SHA-256 of a {size // MiB} MiB tensor",
                     ms=s * 1e3, GBps=size / s / 1e9))
    print(f"strawman: {size / s / 1e9:.2f} GB/s", flush=True)


def overlap(rows: list, cfg: dict, bw: float, L=16384, hash_total=GiB, copy_bytes=GiB, copies=60,
            main_high_priority=False, max_programs=None):
    """Main stream: `copies` copies of `copy_bytes`. Side stream: 1 GiB page batches, back to back.

    ``main_high_priority`` runs the main work on a stream of the highest priority (the side
    stream keeps the default, lowest one), so the block scheduler serves main first;
    ``max_programs`` caps the hashing grid (persistent programs), bounding the SMs it holds.
    """
    lo, hi = torch.cuda.Stream.priority_range()
    main = torch.cuda.Stream(priority=hi) if main_high_priority else torch.cuda.current_stream()
    side = torch.cuda.Stream()
    a = torch.empty(copy_bytes, dtype=torch.uint8, device="cuda").random_(0, 256)
    b = torch.empty_like(a)
    pages = torch.randint(0, 256, (hash_total // L, L), dtype=torch.uint8, device="cuda")
    block, warps, nreg = cfg["block"], cfg["warps"], cfg["maxnreg"]
    torch.cuda.synchronize()

    def main_work():
        with torch.cuda.stream(main):
            for _ in range(copies):
                b.copy_(a)

    def hash_once():
        K.blake3(pages, block=block, num_warps=warps, maxnreg=nreg, max_programs=max_programs)

    # -- each alone ----
    for _ in range(2):
        main_work()
        hash_once()
    torch.cuda.synchronize()
    alone = []
    for _ in range(3):
        ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        ev0.record(main)
        main_work()
        ev1.record(main)
        torch.cuda.synchronize()
        alone.append(ev0.elapsed_time(ev1))
    t_main = statistics.median(alone)
    with torch.cuda.stream(side):
        t_hash = do_bench(hash_once, warmup=5, rep=100, return_mode="median")
    n_hash = int(1.5 * t_main / t_hash) + 2
    # -- together: both streams released by one event after a sleep, so they start together ----
    results = []
    for _ in range(3):
        torch.cuda.synchronize()
        with torch.cuda.stream(main):
            torch.cuda._sleep(50_000_000)  # ~25 ms at 2 GHz: lets the host enqueue everything first
        start = torch.cuda.Event(enable_timing=True)
        start.record(main)
        side.wait_event(start)
        marks = []
        with torch.cuda.stream(side):
            for _ in range(n_hash):
                hash_once()
                e = torch.cuda.Event(enable_timing=True)
                e.record(side)
                marks.append(e)
        main_work()
        end = torch.cuda.Event(enable_timing=True)
        end.record(main)
        torch.cuda.synchronize()
        t1 = start.elapsed_time(end)
        done = [start.elapsed_time(m) for m in marks]
        # hashed bytes inside the main stream's window, the straddling batch pro rata
        hashed, prev = 0.0, 0.0
        for t in done:
            if t <= t1:
                hashed += hash_total
            else:
                hashed += hash_total * max(0.0, (t1 - prev) / (t - prev))
                break
            prev = t
        results.append((t1, hashed))
    t1, hashed = sorted(results)[1]
    main_bytes = 2 * copy_bytes * copies
    slowdown = t1 / t_main - 1
    hash_rate = hashed / t1 * 1e3  # bytes/s during overlap
    share = hash_rate / bw  # hashing's reads as a share of the copy bandwidth
    main_loss = 1 - t_main / t1
    tag = f"main {'high' if main_high_priority else 'default'} priority, hash grid {max_programs or 'full'}"
    rows.append(dict(part="overlap", what=f"[{tag}] main copy loop alone", ms=t_main, GBps=main_bytes / t_main / 1e6))
    rows.append(dict(part="overlap", what=f"[{tag}] main copy loop + side hashing", ms=t1,
                     GBps=main_bytes / t1 / 1e6))
    rows.append(dict(part="overlap", what=f"[{tag}] side hashing during the loop", ms=t1, GBps=hash_rate / 1e9))
    rows.append(dict(part="overlap", what=f"[{tag}] hashing alone (same launches)", ms=t_hash,
                     GBps=hash_total / t_hash / 1e6))
    summary = dict(variant=tag, main_alone_ms=t_main, main_with_hash_ms=t1, main_slowdown=slowdown,
                   main_throughput_loss=main_loss, hash_GBps_during=hash_rate / 1e9,
                   hash_share_of_bandwidth=share, copy_bandwidth_GBps=bw / 1e9,
                   target_met=main_loss <= share)
    print(f"overlap [{tag}]: main {t_main:.1f} -> {t1:.1f} ms (+{slowdown * 100:.1f}%, loses {main_loss * 100:.1f}% "
          f"throughput); hashing {hash_rate / 1e9:.1f} GB/s = {share * 100:.1f}% of {bw / 1e9:.0f} GB/s", flush=True)
    del a, b, pages
    return summary


def print_table(rows):
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain fallback
        for r in rows:
            print(f"{r['part']:<9} {r['what']:<70} {r['ms']:10.3f} ms {r['GBps']:9.2f} GB/s")
        return
    t = Table(title="BLAKE3 page hashing")
    for col in ("part", "what", "ms", "GB/s"):
        t.add_column(col, justify="right" if col in ("ms", "GB/s") else "left")
    for r in rows:
        t.add_row(r["part"], r["what"], f"{r['ms']:.3f}", f"{r['GBps']:.2f}")
    Console(width=120).print(t)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="64 MiB only, no sweep (smoke run)")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows: list[dict] = []
    props = torch.cuda.get_device_properties(0)
    sweep = [(128, 4, 128)] if args.quick else [(128, 4, 128), (128, 4, None), (128, 4, 96), (64, 2, 128)]
    bw = copy_bandwidth()
    rows.append(dict(part="ceiling", what="D2D copy, 2 GiB, read + write", ms=4 * GiB / bw * 1e3, GBps=bw / 1e9))
    cfg = gpu_throughput(rows, sweep)
    cpu_package(rows)
    strawman(rows)
    sms = props.multi_processor_count
    ov = [overlap(rows, cfg, bw),
          overlap(rows, cfg, bw, main_high_priority=True),
          overlap(rows, cfg, bw, main_high_priority=True, max_programs=sms),
          overlap(rows, cfg, bw, main_high_priority=True, max_programs=sms // 4)]
    print_table(rows)
    meta = dict(device=torch.cuda.get_device_name(), sms=props.multi_processor_count,
                cpu_cores=os.cpu_count(), torch=torch.__version__, triton=triton.__version__,
                blake3=blake3.__version__, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                best_launch=cfg, overlap=ov)
    out = args.out or (Path(__file__).parent / "results" /
                       f"blake3-{meta['device'].replace(' ', '_')}-{time.strftime('%Y%m%d')}.json")
    Path(out).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
