"""Exact paged attention kernels against SDPA bf16, measured in the same run (issue 8).

    python -m benchmarks.bench_attention                   # every row (CUDA)
    python -m benchmarks.bench_attention --quick           # a few rows
    python -m benchmarks.bench_attention --short           # short-context decode rows only (~1 min)
    python -m benchmarks.bench_attention --out FILE.json

Decode rows: one query token per sequence, GQA 32/8, head dim 128, context 4K / 32K / 128K,
batch 1 / 8 / 64, 0 or 4K anchor tokens (pinned pages shared by the batch; SDPA gets them as part
of each sequence's keys). Ours reads int8 page rows (128 values + 4 scale bytes) through random
block tables (`fieldprint_fast.kernels.attention_decode`); SDPA reads contiguous bf16 K and V
[B, 8, L, 128] (`enable_gqa=True`). GB/s is the bytes each must read (ours: K and V page rows once,
264 bytes per key and KV head; SDPA: 512) over the median time; `ratio` = SDPA time / ours.

Short decode rows (``--short``, also part of the full run): 512 and 4K keys at batch 1 / 8 / 64,
GQA 32/8 with head dim 64 (the Llama-3.2-1B shape of the end-to-end loop) and 128, each timed
four ways in the same run: the default path (`attention_decode.decode_path`), the fused path
forced (its default shares per sequence: 8 at batch 1, 4 at 8, 1 at 64), the fused path with one
share (one launch), the split path forced; and SDPA bf16.

Prefill rows: one causal chunk of T = 4K / 16K tokens from position 0, same heads; TOP/s counts
2 * T**2 * H * d (the causal half of QK and PV) for both.

Inputs are random (valid page rows: int8 values, scale mantissas in (2**12, 2**14]); every row
rotates among enough copies of its inputs to exceed the L2 cache several times. Timing:
`triton.testing.do_bench`, median. Writes a table and benchmarks/results/attention-<GPU>-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

H, G, D = 32, 8, 128
ROW = D + 4
L2_BYTES = 50 * 2**20


def random_pool(pages: int, dev, d: int = D) -> torch.Tensor:
    """Return a pool [pages, 1, 2, 16, G, d + 4] of valid random page rows."""
    pool = torch.randint(-127, 128, (pages, 1, 2, 16, G, d + 4), dtype=torch.int8, device=dev)
    m = torch.randint(2**12 + 1, 2**14 + 1, (pages, 1, 2, 16, G), device=dev)
    e = torch.randint(-14, -5, (pages, 1, 2, 16, G), device=dev)
    to8 = lambda x: ((x & 255) - (((x & 255) >> 7) << 8)).to(torch.int8)  # noqa: E731
    pool[..., d], pool[..., d + 1], pool[..., d + 2], pool[..., d + 3] = to8(m), to8(m >> 8), to8(e), 0
    return pool


def _copies(nbytes: int) -> int:
    return max(1, min(8, -(-4 * L2_BYTES // max(nbytes, 1))))


def bench_decode(ctx: int, batch: int, anchors: int, dev, bench, cfg: dict | None = None, peer: bool = True,
                 d: int = D, ways: dict | None = None) -> dict:
    """Time ours (``cfg``: decode_attention's knobs; ``ways``: several named knob sets, each timed
    on the same inputs) and SDPA bf16 at one shape."""
    from fieldprint_fast.kernels.attention_decode import decode_attention
    from spec.tables import exp2_table

    exp = exp2_table().to(dev)
    blocks, a_blocks = ctx // 16, -(-anchors // 16)
    keys = ctx + anchors
    n = _copies(batch * keys * G * 2 * (d + 4))
    sets = []
    for _ in range(n):
        pool = random_pool(batch * blocks + a_blocks, dev, d)
        perm = torch.randperm(batch * blocks + a_blocks, device=dev)
        tables = perm[a_blocks:].view(batch, blocks).to(torch.int32)
        at = perm[:a_blocks][None].expand(batch, -1).to(torch.int32).contiguous() if anchors else None
        q = torch.randint(-(2**18), 2**18, (batch, H, d), device=dev)
        sets.append((q, pool, tables, at))
    starts, windows, alens = [ctx - 1] * batch, [None] * batch, [anchors] * batch
    it = iter(range(10**9))

    def ours(knobs):
        q, pool, tables, at = sets[next(it) % n]
        decode_attention(q, pool, 0, tables, starts, windows, at, alens, 12, 15, exp, **knobs)

    t_ways = {name: bench(lambda: ours(knobs)) for name, knobs in (ways or {}).items()}
    t_ours = bench(lambda: ours(cfg or {}))
    del sets
    torch.cuda.empty_cache()
    if not peer:
        return {"kind": "decode-tune", "context": ctx, "batch": batch, "anchors": anchors, "config": cfg, "ours_ms": t_ours}
    n2 = _copies(batch * keys * G * 2 * d * 2)
    kv = [(torch.randn(batch, G, keys, d, device=dev, dtype=torch.bfloat16),
           torch.randn(batch, G, keys, d, device=dev, dtype=torch.bfloat16)) for _ in range(n2)]
    qf = torch.randn(batch, H, 1, d, device=dev, dtype=torch.bfloat16)
    it2 = iter(range(10**9))

    def sdpa():
        k, v = kv[next(it2) % n2]
        torch.nn.functional.scaled_dot_product_attention(qf, k, v, enable_gqa=True)

    t_sdpa = bench(sdpa)
    del kv
    torch.cuda.empty_cache()
    ours_bytes = batch * keys * G * 2 * (d + 4)
    sdpa_bytes = batch * keys * G * 2 * d * 2
    row = {"kind": "decode", "context": ctx, "batch": batch, "anchors": anchors,
           "ours_ms": t_ours, "sdpa_ms": t_sdpa, "ours_GBps": ours_bytes / t_ours / 1e6,
           "sdpa_GBps": sdpa_bytes / t_sdpa / 1e6, "ratio": t_sdpa / t_ours}
    if ways:
        row |= {"head_dim": d, "ways_ms": t_ways, "ways_ratio": {k: t_sdpa / v for k, v in t_ways.items()}}
    return row


def short_ways(ctx: int) -> dict:
    """The four ways a short row times ours: the default path, the fused path with its default
    shares (`attention_decode.fused_splits`), the fused path with one share, the split path."""
    return {"default": {}, "fused": {"path": "fused"}, "fused-1": {"path": "fused", "split": (ctx, 16)},
            "split": {"path": "split"}}


def bench_prefill(t: int, dev, bench, cfg: dict | None = None) -> dict:
    from fieldprint_fast.kernels.attention_prefill import prefill_attention
    from spec.tables import exp2_table

    exp = exp2_table().to(dev)
    pool = random_pool(t // 16, dev)
    table = torch.randperm(t // 16, device=dev)
    q = torch.randint(-(2**18), 2**18, (t, H, D), device=dev)
    t_ours = bench(lambda: prefill_attention(q, pool, 0, table, 0, None, None, 0, 12, 15, exp, **(cfg or {})))
    qf = torch.randn(1, H, t, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, G, t, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(1, G, t, D, device=dev, dtype=torch.bfloat16)
    t_sdpa = bench(lambda: torch.nn.functional.scaled_dot_product_attention(qf, k, v, is_causal=True, enable_gqa=True))
    ops = 2 * t * t * H * D
    return {"kind": "prefill", "context": t, "batch": 1, "anchors": 0, "config": cfg, "ours_ms": t_ours, "sdpa_ms": t_sdpa,
            "ours_TOPs": ops / t_ours / 1e9, "sdpa_TFLOPs": ops / t_sdpa / 1e9, "ratio": t_sdpa / t_ours}


def main(argv: list[str] | None = None) -> int:
    import triton

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer tuning configs; 128K decode at batch 1 and 8; 4K and 16K prefill")
    p.add_argument("--no-prefill", action="store_true")
    p.add_argument("--short", action="store_true", help="only the short-context decode rows (512 and 4K keys)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attention: needs a CUDA device", file=sys.stderr)
        return 2
    dev = torch.device("cuda")

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=30, rep=200, return_mode="median")

    # -- tuning: decode block size and warps at 128K, batch 1 and 8 (ours only), best one kept --
    rows, tune = [], []
    name = torch.cuda.get_device_name()
    gpu = "H200" if "H200" in name else name.replace(" ", "-")
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    out = args.out or REPO / "benchmarks" / "results" / f"attention-{gpu}-{date[:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    best = {}

    def save():  # after every row, so a run cut short keeps what it measured
        report = {"date": date, "device": name, "torch": torch.__version__, "triton": triton.__version__,
                  "heads": H, "kv_heads": G, "head_dim": D, "q_bits": 12, "prob_bits": 15,
                  "decode_config": best, "tune": tune, "rows": rows}
        out.write_text(json.dumps(report, indent=2) + "\n")
    configs = [] if args.quick or args.short else \
        [dict(num_warps=[1, 4]), dict(num_warps=[2, 4]), dict(num_warps=[1, 8]), dict(num_warps=[2, 8], pack=8),
         dict(num_warps=[1, 4], prefetch=True), dict(num_warps=[1, 8], prefetch=True)]  # (scores, mix) warps; pack: KV heads per program; prefetch: the mix's loads a page ahead
    for cfg in configs:
        try:
            tune += [bench_decode(131072, b, 0, dev, bench, cfg, peer=False) for b in (1, 8)]
        except Exception as e:  # a config that does not compile or run: recorded, skipped
            tune.append({"kind": "decode-tune", "config": cfg, "error": repr(e)[:300]})
        print(json.dumps(tune[-1]), flush=True)
        save()
    ok = {json.dumps(r["config"]): 0.0 for r in tune if "error" not in r}
    for r in tune:
        if "error" not in r and json.dumps(r["config"]) in ok:
            ok[json.dumps(r["config"])] += r["ours_ms"]
    best = json.loads(min(ok, key=ok.get)) if ok else {}  # --quick: the kernel's defaults
    print("decode config:", best, flush=True)
    # -- short contexts (the end-to-end loop's): every path, the 1B shape's d = 64 and d = 128 --
    for d in () if args.quick else (64, 128):
        for c in (512, 4096):
            for b in (1, 8, 64):
                try:
                    rows.append(bench_decode(c, b, 0, dev, bench, None, d=d, ways=short_ways(c)) | {"kind": "decode-short"})
                except Exception as e:
                    rows.append({"kind": "decode-short", "context": c, "batch": b, "anchors": 0, "head_dim": d,
                                 "error": repr(e)[:300]})
                    torch.cuda.empty_cache()
                print(json.dumps(rows[-1]), flush=True)
                save()
    if args.short:
        decode, prefill = [], []
    elif args.quick:
        decode = [(131072, 1, 0), (131072, 8, 0), (131072, 1, 4096)]
        prefill = [4096, 16384]
    else:
        decode = [(c, b, a) for c in (4096, 32768, 131072) for b in (1, 8, 64) for a in (0, 4096)]
        prefill = [4096, 16384]
    for c, b, a in decode:
        try:
            rows.append(bench_decode(c, b, a, dev, bench, best))
        except Exception as e:  # out of memory at the largest rows, recorded as such
            rows.append({"kind": "decode", "context": c, "batch": b, "anchors": a, "error": repr(e)[:300]})
            torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
        save()
    pcfgs = [dict(block_m=32, block_n=32, num_warps=4)] if args.quick else \
        [dict(block_m=32, block_n=32, num_warps=4), dict(block_m=64, block_n=32, num_warps=8),
         dict(block_m=32, block_n=64, num_warps=4), dict(block_m=64, block_n=32, num_warps=4)]
    for t in ([] if args.no_prefill else prefill):
        for cfg in pcfgs if t == prefill[0] else [best_p]:
            try:
                rows.append(bench_prefill(t, dev, bench, cfg))
            except Exception as e:
                rows.append({"kind": "prefill", "context": t, "batch": 1, "anchors": 0, "config": cfg, "error": repr(e)[:300]})
            print(json.dumps(rows[-1]), flush=True)
            save()
        save()
        done = [r for r in rows if r["kind"] == "prefill" and r["context"] == prefill[0] and "error" not in r]
        best_p = min(done, key=lambda r: r["ours_ms"])["config"] if done else pcfgs[0]
    print(f"\n{'kind':8} {'ctx':>7} {'B':>3} {'anch':>5} {'ours ms':>9} {'SDPA ms':>9} {'ours':>12} {'SDPA':>12} {'ratio':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['kind']:8} {r['context']:>7} {r['batch']:>3} {r['anchors']:>5}  {r['error']}")
            continue
        unit = ("TOP/s", "ours_TOPs", "sdpa_TFLOPs") if r["kind"] == "prefill" else ("GB/s", "ours_GBps", "sdpa_GBps")
        kind = r["kind"] if "head_dim" not in r else f"d{r['head_dim']}"
        print(f"{kind:8} {r['context']:>7} {r['batch']:>3} {r['anchors']:>5} {r['ours_ms']:>9.3f} {r['sdpa_ms']:>9.3f} "
              f"{r[unit[1]]:>7.0f} {unit[0]:>4} {r[unit[2]]:>7.0f} {unit[0]:>4} {r['ratio']:>6.2f}"
              + "".join(f"  {k} {v * 1e3:.1f} us" for k, v in r.get("ways_ms", {}).items()))
    save()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
