"""Benchmark: what the verifying runtime costs per decoded token, and where the engine thread waits.

``python benchmarks/bench_ledger_cost.py [--engine sleep|fast] [--tokens 128] [--prompt 512] [--runs 5]``
prints a table and writes ``benchmarks/results/ledger-cost-<engine>-<device>-<date>.json`` (or ``--out``).

Engines:

* ``sleep`` (default, any machine): `fieldprint.runtime.sleep_engine.SleepEngine`, the reference
  engine's bookkeeping over a forward that writes fake K/V into a pool of Llama-3.2-1B pages
  (``--layers`` of them, 16 by default) and sleeps ``--step-ms`` with the GIL released, the way a
  decode step waits for the GPU. Page hashing and re-hashing run on the host (blake3), torch with
  one intra-op thread (``--threads``).
* ``fast`` (CUDA): `FastEngine` over a random model of ``--shape`` (`fieldprint_fast.synthetic`),
  decode graphs captured ahead, device logits digests, page hashing on the device; with
  ``--smoke`` a tiny model on the CPU instead (checks the script, measures nothing).

Per run, alternating: the **bare loop** (``engine.step`` until the sequence finishes, as the
session drives it, nothing else) and ``VerifyingSession.run`` (commit every ``--commit-every``
tokens, signed checkpoint, fsync after each checkpoint, asynchronous re-hash validation), a
session with ``fsync="none"``, and one with the engine's wait hook on (``ledger_wait_hook``: the
runtime hands work over, and its workers run, only while the engine waits for the device;
`fieldprint.runtime.turns`; the fast engine calls it right before it blocks on a decode
round's results, `FastEngine._finish`), and ``ledger`` without it. Each run time-stamps every token; reported per variant, medians
over ``--runs``: ``token_ms`` (first token to last, per token: includes every stall), the median
and largest gap between tokens, the largest gap after the first (the prefill commit's), ``seal_ms``
(last token to return), and the session's own engine-thread timings (`SessionResult.timings`:
time in engine.step, recording tokens between steps, handing work to the workers, making commits,
waiting for validations) and the engine thread's CPU time per token (``time.thread_time``: what
it computed, without its waits for the GIL or a core).
``cost_pct`` = token_ms / bare token_ms - 1 (target <= 2 %). The load average is recorded: the
sleep engine's numbers mean something only on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fieldprint.runtime.session import VerifyingSession  # noqa: E402
from spec.commits import make_policy  # noqa: E402
from spec.keys import SigningKey  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = SigningKey("bench.fieldprint.example/ledger-cost", b"\x5a" * 32)


def make_engine(a):
    """Return (engine, device name, a description). The engine can call the runtime's wait hook
    (``calls_wait_hook``); the variants switch it on and off."""
    if a.engine == "sleep":
        from fieldprint.runtime.sleep_engine import SleepEngine

        # the engine thread's page copies are device launches on a GPU; on the host, torch's
        # intra-op pool would run them on threads that the hashing workers keep busy (a stall of
        # milliseconds per copy that a GPU run does not have)
        torch.set_num_threads(a.threads)
        pages = -(-(a.prompt + a.tokens) // 16) + 16
        eng = SleepEngine.llama_1b(layers=a.layers, step_ms=a.step_ms, prefill_ms=a.prefill_ms, num_pages=pages)
        return eng, "cpu", f"sleep engine, {a.layers}-layer Llama-3.2-1B pages, {a.step_ms} ms steps"
    from fieldprint_fast.engine import FastEngine
    from fieldprint_fast.synthetic import random_model, shape_config

    device = "cpu" if a.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_ledger_cost: --engine fast needs a CUDA device (or --smoke)")
    tiny = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                head_dim=32) if a.smoke else {}
    cfg = shape_config(a.shape, max_position=max(4096, a.prompt + 2 * a.tokens), **tiny)
    model = random_model(cfg, a.profile, device=device, seed=0)
    eng = FastEngine(model, device=device, num_pages=-(-(a.prompt + a.tokens) // 16) + 64, keep_logits=False,
                     decode_loop=True)
    eng.prepare_decode(1, a.prompt + a.tokens)
    desc = f"fast engine, {a.shape}{' (smoke: tiny, CPU)' if a.smoke else ''} {a.profile}, batch 1"
    return eng, torch.cuda.get_device_name() if device == "cuda" else "cpu", desc


def _sync(eng):
    if getattr(eng, "device", torch.device("cpu")).type == "cuda":
        torch.cuda.synchronize()


def timing(stamps, end, cpu) -> dict:
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return dict(engine_thread_cpu_us_per_token=cpu / len(stamps) * 1e6, token_ms=(stamps[-1] - stamps[0]) / len(gaps) * 1e3, median_gap_ms=statistics.median(gaps) * 1e3,
                max_gap_ms=max(gaps) * 1e3, max_gap_after_first_ms=max(gaps[1:]) * 1e3,
                first_gap_ms=gaps[0] * 1e3, seal_ms=(end - stamps[-1]) * 1e3)


def bare(eng, prompt, a) -> dict:
    stamps = []
    cpu = time.thread_time()
    h = eng.add_sequence(prompt, max_new_tokens=a.tokens, eos_token_ids=())
    while eng.finish_reason(h) is None:
        if eng.step([h]):
            stamps.append(time.perf_counter())
    _sync(eng)
    end = time.perf_counter()
    eng.release(h)
    return timing(stamps, end, time.thread_time() - cpu)


def session(eng, prompt, a, path, hook: bool = False, **kw) -> dict:
    eng.calls_wait_hook = hook
    stamps = []
    cpu = time.thread_time()
    out = VerifyingSession(eng, key=KEY, ledger_path=path, policy=make_policy(a.commit_every), max_new_tokens=a.tokens,
                           eos_token_ids=(), model_commitment=b"\0" * 32, nonce=b"\1" * 32,
                           on_step=lambda rec: stamps.append(time.perf_counter()), **kw).run(prompt)
    _sync(eng)
    end = time.perf_counter()
    if out.end_reason != "max_tokens":
        raise SystemExit(f"bench_ledger_cost: the session ended with {out.end_reason}: {out.error}")
    r = timing(stamps, end, time.thread_time() - cpu)
    tm = getattr(out, "timings", None) or {}  # (an older runtime has none)
    r.update({f"engine_thread_{k[:-2]}_us_per_token": round(v / tm["tokens"] * 1e6, 2) for k, v in tm.items()
              if k.endswith("_s")})
    r["commits"] = out.commits
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["sleep", "fast"], default="sleep")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--commit-every", type=int, default=8)
    ap.add_argument("--layers", type=int, default=16, help="sleep engine: layers of a page")
    ap.add_argument("--step-ms", type=float, default=1.9, help="sleep engine: a decode step")
    ap.add_argument("--prefill-ms", type=float, default=10.0, help="sleep engine: the prompt's forward")
    ap.add_argument("--threads", type=int, default=1, help="sleep engine: torch intra-op threads")
    ap.add_argument("--smoke", action="store_true", help="fast engine: a tiny model on the CPU (checks the script)")
    ap.add_argument("--shape", default="llama-3.2-1b", help="fast engine: model shape")
    ap.add_argument("--profile", default="int8", help="fast engine: quantization profile")
    ap.add_argument("--no-fsync-variant", action="store_true", help="leave out the fsync='none' session")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)

    eng, device, desc = make_engine(a)
    prompt = torch.randint(0, eng.model.config.vocab_size, (a.prompt,),
                           generator=torch.Generator().manual_seed(1)).tolist()
    variants = {"bare": [], "ledger": []} | ({} if a.no_fsync_variant else {"ledger_fsync_none": []})
    variants["ledger_wait_hook"] = []
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        bare(eng, prompt, a)  # warm-up: allocator, graphs, page cache
        session(eng, prompt, a, f"{tmp}/warm.fpl")
        for i in range(a.runs):
            variants["bare"].append(bare(eng, prompt, a))
            variants["ledger"].append(session(eng, prompt, a, f"{tmp}/a{i}.fpl"))
            if "ledger_fsync_none" in variants:
                variants["ledger_fsync_none"].append(session(eng, prompt, a, f"{tmp}/b{i}.fpl", fsync="none"))
            variants["ledger_wait_hook"].append(session(eng, prompt, a, f"{tmp}/c{i}.fpl", hook=True))
            load.append(os.getloadavg()[0])
            print(f"run {i}: " + ", ".join(f"{k} {v[-1]['token_ms']:.3f} ms/token (max gap {v[-1]['max_gap_ms']:.1f})"
                                           for k, v in variants.items()), file=sys.stderr, flush=True)
    rows = {k: {m: round(statistics.median(r[m] for r in v), 3) for m in v[0]} for k, v in variants.items()}
    base = rows["bare"]["token_ms"]
    paired = {k: round(100 * statistics.median(r["token_ms"] / b["token_ms"] - 1 for r, b in zip(v, variants["bare"])), 2)
              for k, v in variants.items()}
    for k, r in rows.items():
        r["cost_pct"] = round(100 * (r["token_ms"] / base - 1), 2)
        r["paired_cost_pct"] = paired[k]
    res = dict(benchmark="ledger-cost", date=date.today().isoformat(), engine=a.engine, description=desc,
               device=device, machine=f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                                      f"Python {platform.python_version()}",
               command="python benchmarks/bench_ledger_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               tokens=a.tokens, prompt_tokens=a.prompt, runs=a.runs, commit_policy=f"every={a.commit_every}",
               load_average=[round(x, 2) for x in load], variants=rows, target_cost_pct=2.0)
    print(f"{desc}; {a.tokens} tokens after a {a.prompt}-token prompt, medians of {a.runs} runs, "
          f"load average {min(load):.2f}-{max(load):.2f}")
    print(f"{'variant':18} {'ms/token':>9} {'cost':>8} {'paired':>8} {'med gap':>8} {'max gap':>8} {'max>0':>7} "
          f"{'1st gap':>8} {'seal':>7} {'cpu us/tok':>10}")
    for k, r in rows.items():
        print(f"{k:18} {r['token_ms']:9.3f} {r['cost_pct']:+7.2f}% {r['paired_cost_pct']:+7.2f}% {r['median_gap_ms']:8.3f} "
              f"{r['max_gap_ms']:8.2f} {r['max_gap_after_first_ms']:7.2f} {r['first_gap_ms']:8.2f} {r['seal_ms']:7.2f} "
              f"{r['engine_thread_cpu_us_per_token']:10.1f}")
    for k, r in rows.items():
        t = {m[len('engine_thread_'):-len('_us_per_token')]: v for m, v in r.items()
             if m.startswith("engine_thread_") and m != "engine_thread_cpu_us_per_token"}
        if t:
            print(f"  {k}: engine thread per token (us): " + ", ".join(f"{m} {v}" for m, v in t.items()))
    name = f"ledger-cost-{a.engine}-{device.replace(' ', '_')}-{date.today()}.json"
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
