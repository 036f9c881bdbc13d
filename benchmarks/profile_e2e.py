"""Profile: where a fast-engine decode round and the ledger spend their time (GPU).

``python benchmarks/profile_e2e.py [--shape llama-3.2-1b] [--profile int8] [--batches 1,64]
[--prompt 512] [--ledger]`` prints a table and writes ``benchmarks/results/profile-e2e-<gpu>-<date>.json``
(or ``--out``). A development tool beside `bench_e2e.py`: the speed targets are that benchmark's;
this one says why a number is what it is.

Per batch size, with every sequence past a ``--prompt``-token prompt:

* ``round``: one `FastEngine.step` of decode, synchronous (``sync``: host bookkeeping, graph
  replay, the token read back, one after the other) and overlapped (``overlap``: the next round
  launched before this one's tokens are read), split into the time the host waits for the
  device and the rest (``load``: the step's inputs, inside it);
* ``replay``: the captured graph replayed back to back (device time of a step, no host);
* ``kernels``: the same step run eagerly under `torch.profiler`: per kernel name, launches and
  device time per step, so ``replay - sum(kernels)`` is what launches and gaps cost.

``--host`` (no GPU needed): the host time of a round on this CPU, the device work replaced by a
step that returns fixed logits: planning, paging, loading and records per sequence.

``--ledger``: batch 1 with a `VerifyingSession` (commit every 8 tokens) against plain
generation; also with Python's default 5 ms GIL switch interval (the session lowers it) and
with its page re-hash validation left out: what the ledger costs and where.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def _sync():
    torch.cuda.synchronize()


class _Timer:
    """Wall time accumulated by wrapped callables, by name."""

    def __init__(self):
        self.total = defaultdict(float)
        self.last = {}  # label -> the first argument of the last call (the instance, for methods)

    def wrap(self, obj, name, label):
        fn = getattr(obj, name)

        def timed(*a, **k):
            self.last[label] = a[0] if a else None
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total[label] += time.perf_counter() - t0

        setattr(obj, name, timed)
        return fn


def _timed_rounds(eng, handles, rounds: int, overlap: bool) -> tuple[dict, object]:
    """Median wall time of ``rounds`` decode steps with ``overlap`` on or off, and the host time
    in `DecodeStep.load`, `DecodeStep.run` and waiting for the device (CUDA events); return the
    figures and the DecodeStep last run."""
    from fieldprint_fast.loop import DecodeStep

    eng.settle()
    eng.overlap = overlap
    for _ in range(3):  # warm
        eng.step(handles)
    timer = _Timer()
    load, run = timer.wrap(DecodeStep, "load", "load"), timer.wrap(DecodeStep, "run", "run")
    wait = timer.wrap(torch.cuda.Event, "synchronize", "wait") if torch.cuda.is_available() else None
    if torch.cuda.is_available():
        _sync()
    times = []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            eng.step(handles)
            times.append(time.perf_counter() - t0)
    finally:
        DecodeStep.load, DecodeStep.run = load, run
        if wait is not None:
            torch.cuda.Event.synchronize = wait
    eng.settle()
    per = {k: timer.total[k] / rounds * 1e3 for k in ("load", "run", "wait")}
    round_ms = statistics.median(times) * 1e3
    return dict(round_ms=round(round_ms, 3), load_ms=round(per["load"], 3), run_ms=round(per["run"], 3),
                wait_ms=round(per["wait"], 3), host_ms=round(round_ms - per["wait"], 3)), timer.last.get("run")


def profile_batch(model, batch: int, prompt_len: int, rounds: int) -> dict:
    from fieldprint_fast.engine import FastEngine

    new = 2 * rounds + 16
    pages = batch * (-(-(prompt_len + new + 16) // 16) + 1) + 8
    eng = FastEngine(model, device="cuda", num_pages=pages, keep_logits=False)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, model.config.vocab_size, (prompt_len,), generator=g).tolist() for _ in range(batch)]
    eng.generate(prompts[:1], max_new_tokens=4)  # compile
    eng.prepare_decode(batch, prompt_len + new + 8)
    handles = [eng.add_sequence(p, max_new_tokens=new) for p in prompts]
    eng.prefill(handles, chunk_size=max(16, 4096 // batch))
    sync, _ = _timed_rounds(eng, handles, rounds, overlap=False)
    over, step = _timed_rounds(eng, handles, rounds, overlap=True)
    # the graph alone, back to back, on the last loaded inputs
    n = 30
    _sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step.run()
    _sync()
    replay_ms = (time.perf_counter() - t0) / n * 1e3
    # eager, under the profiler: the kernels of one step
    from torch.profiler import ProfilerActivity, profile

    step._forward()
    _sync()
    reps = 3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            step._forward()
        _sync()
    kernels = defaultdict(lambda: [0, 0.0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[ev.name[:80]]
            k[0] += 1
            k[1] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
    ker = sorted(({"kernel": name, "launches": c // reps, "us": round(t / reps, 1)} for name, (c, t) in kernels.items()),
                 key=lambda r: -r["us"])
    ahead = dict(eng.ahead_rows)
    del eng
    torch.cuda.empty_cache()
    return dict(batch=batch, round_ms=over["round_ms"], sync=sync, overlap=over, ahead_rows=ahead,
                replay_ms=round(replay_ms, 3), kernel_launches=sum(r["launches"] for r in ker),
                kernel_us=round(sum(r["us"] for r in ker), 1), kernels=ker[:40])


def profile_host(batch: int, prompt_len: int, rounds: int, vocab: int) -> dict:
    """Host time of a decode round on this machine's CPU, the device work left out: a DecodeStep
    whose forward returns fixed logits (the engine's planning, paging, `DecodeStep.load` and
    records at ``batch``; a tiny model of ``vocab`` tokens)."""
    import fieldprint_fast.loop as loop
    from fieldprint_fast.engine import FastEngine
    from fieldprint_fast.synthetic import random_model
    from spec.model import ModelConfig

    class HostOnlyStep(loop.DecodeStep):
        def _forward(self):
            if getattr(self, "logits", None) is None:
                self.logits = torch.zeros(self.batch, vocab, dtype=torch.int64)
                self.digests = torch.zeros(self.batch, 32, dtype=torch.uint8)
            self.tokens = (self.i64[0] * 7 + 3) % vocab

    cfg = ModelConfig(arch="llama", vocab_size=vocab, hidden_size=64, intermediate_size=128, num_layers=1,
                      num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5,
                      max_position=4096, tie_embeddings=False, qkv_bias=False)
    model = random_model(cfg, "int8", seed=0)
    new = 2 * rounds + 16
    eng = FastEngine(model, device="cpu", decode_loop=True, num_pages=batch * (-(-(prompt_len + new) // 16) + 1),
                     keep_logits=False)
    real, loop.DecodeStep = loop.DecodeStep, HostOnlyStep
    try:
        g = torch.Generator().manual_seed(1)
        handles = [eng.add_sequence(torch.randint(0, vocab, (prompt_len,), generator=g).tolist(), max_new_tokens=new)
                   for _ in range(batch)]
        eng.prefill(handles, chunk_size=4096)
        out = {}
        for overlap in (False, True):
            out["overlap" if overlap else "sync"], _ = _timed_rounds(eng, handles, rounds, overlap)
    finally:
        loop.DecodeStep = real
    return dict(batch=batch, **out)


def profile_ledger(model, prompt_len: int, new: int, runs: int) -> dict:
    import fieldprint.runtime.validate as validate
    from fieldprint.runtime.session import VerifyingSession
    from fieldprint_fast.engine import FastEngine
    from spec.commits import make_policy
    from spec.keys import SigningKey

    eng = FastEngine(model, device="cuda", num_pages=-(-(prompt_len + new) // 16) + 64, keep_logits=False)
    prompt = torch.randint(0, model.config.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    key = SigningKey("bench.example/e2e", b"\x07" * 32)
    eng.prepare_decode(1, prompt_len + new)

    def timing(stamps):
        """(mean ms per token from the first token to the last, median and largest interval,
        ms from the last token until the call returned: the sealing)"""
        end = time.perf_counter()
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        return ((stamps[-1] - stamps[0]) / len(gaps) * 1e3, statistics.median(gaps) * 1e3, max(gaps) * 1e3,
                (end - stamps[-1]) * 1e3)

    def plain():
        stamps = []
        eng.generate(prompt, max_new_tokens=new, on_step=lambda i, r: stamps.append(time.perf_counter()))
        _sync()
        return timing(stamps)

    def ledger(path, **kw):
        stamps = []
        VerifyingSession(eng, key=key, ledger_path=path, policy=make_policy(8), max_new_tokens=new,
                         model_commitment=b"\0" * 32, on_step=lambda *a: stamps.append(time.perf_counter()),
                         **kw).run(prompt)
        _sync()
        return timing(stamps)

    out = defaultdict(list)
    real = validate.rehash
    with tempfile.TemporaryDirectory() as tmp:
        ledger(f"{tmp}/warm.fpl")
        plain()
        for i in range(runs):
            out["plain"].append(plain())
            out["ledger"].append(ledger(f"{tmp}/a{i}.fpl"))
            out["ledger_gil_5ms"].append(ledger(f"{tmp}/c{i}.fpl", switch_interval=None))
            out["ledger_fsync_none"].append(ledger(f"{tmp}/d{i}.fpl", fsync="none"))
            validate.rehash = lambda engine, checks: (True, "skipped")
            try:
                out["ledger_no_rehash"].append(ledger(f"{tmp}/b{i}.fpl"))
            finally:
                validate.rehash = real
    del eng
    torch.cuda.empty_cache()
    rows = {k: dict(zip(("token_ms", "median_gap_ms", "max_gap_ms", "seal_ms"),
                        (round(statistics.median(r[j] for r in v), 3) for j in range(4)))) for k, v in out.items()}
    base = rows["plain"]["token_ms"]
    for r in rows.values():
        r["token_cost"] = round(r["token_ms"] / base - 1, 4)
    return dict(new_tokens=new, variants=rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama-3.2-1b")
    ap.add_argument("--profile", default="int8")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--ledger", action="store_true")
    ap.add_argument("--ledger-tokens", type=int, default=128)
    ap.add_argument("--out", default=None)
    ap.add_argument("--host", action="store_true", help="host time of a round only, on the CPU (no device work)")
    ap.add_argument("--vocab", type=int, default=1024, help="--host: the vocabulary (small: the logits copies are device work)")
    a = ap.parse_args(argv)
    if a.host:
        torch.set_num_threads(1)  # the host's own thread: tensor ops on a shared CPU otherwise wait for workers
        for b in (int(x) for x in a.batches.split(",")):
            r = profile_host(b, min(a.prompt, 64), a.rounds, a.vocab)
            for k in ("sync", "overlap"):
                v = r[k]
                print(f"host B={b:<3} {k:8} round {v['round_ms']:7.3f} ms (load {v['load_ms']:.3f}, run "
                      f"{v['run_ms']:.3f}): {v['round_ms'] / b * 1e3:.1f} us per sequence", flush=True)
        return 0
    if not torch.cuda.is_available():
        print("profile_e2e: needs a CUDA device", file=sys.stderr)
        return 2
    from fieldprint_fast.synthetic import random_model, shape_config

    gpu = torch.cuda.get_device_name()
    cfg = shape_config(a.shape, max_position=max(4096, a.prompt + 2 * a.ledger_tokens))
    model = random_model(cfg, a.profile, device="cuda", seed=0)
    res = dict(what="where a fast-engine decode round and the ledger spend their time", date=date.today().isoformat(),
               machine=f"{gpu}, torch {torch.__version__}, Python {platform.python_version()}",
               command="python benchmarks/profile_e2e.py " + " ".join(sys.argv[1:]), shape=a.shape,
               profile=a.profile, prompt_tokens=a.prompt, batches=[])
    path = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"profile-e2e-{gpu.replace(' ', '_')}-{date.today()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    for b in (int(x) for x in a.batches.split(",")):
        r = profile_batch(model, b, a.prompt, a.rounds)
        res["batches"].append(r)
        for k in ("sync", "overlap"):
            v = r[k]
            print(f"B={b:<3} {k:8} round {v['round_ms']:7.3f} ms = waiting for the device {v['wait_ms']:.3f} + host "
                  f"{v['host_ms']:.3f} (load {v['load_ms']:.3f}, run {v['run_ms']:.3f})", flush=True)
        print(f"B={b:<3} graph alone {r['replay_ms']:.3f} ms; {r['kernel_launches']} kernels, "
              f"{r['kernel_us'] / 1e3:.3f} ms of kernel time; rows ahead {r['ahead_rows']}", flush=True)
        for k in r["kernels"][:25]:
            print(f"    {k['us']:9.1f} us  x{k['launches']:<4} {k['kernel']}")
        path.write_text(json.dumps(res, indent=1) + "\n")
    if a.ledger:
        r = res["ledger"] = profile_ledger(model, a.prompt, a.ledger_tokens, 2)
        for name, v in r["variants"].items():
            print(f"ledger B=1 {name:18} {v['token_ms']:7.3f} ms/token ({v['token_cost']:+.1%}), median gap "
                  f"{v['median_gap_ms']:.3f}, max gap {v['max_gap_ms']:.3f}, sealing {v['seal_ms']:.1f} ms", flush=True)
        path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
