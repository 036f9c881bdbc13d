"""Benchmark: what the signed ledger costs on the reference engine, and how fast the auditor replays.

``python benchmarks/bench_ledger.py [--tokens 64] [--runs 3] [--device cpu]`` prints a rich table
and writes ``benchmarks/results/ledger-<device>-<date>.json`` (or ``--out``). One model for all
runs: the demo model when ``build/demo`` exists, else a random Llama built here. Parts:

1. **Generation with and without the ledger, same run**: the same prompt, anchors, sampling and
   engine settings, alternating ``engine.generate`` (plain) and ``VerifyingSession.run`` (every
   token recorded, pages hashed, a commit + signed checkpoint + asynchronous validation every
   ``--commit-every`` tokens, fsync after each checkpoint); medians over ``--runs``. The two
   runs produce the same tokens (checked). Overhead = ledger / plain - 1.
2. **The auditor**: ``verify_ledger`` on the ledger just written: the structural check
   (frames, signatures, checkpoints, sequence) alone, then with the full CPU replay; replay
   speed in generated tokens per second, next to the plain generation's speed.
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
from auditor.verify import verify_ledger  # noqa: E402
from fieldprint.runtime.session import VerifyingSession  # noqa: E402
from fieldprint_ref.engine import RefEngine  # noqa: E402
from spec.commits import make_policy  # noqa: E402
from spec.keys import SigningKey  # noqa: E402
from spec.sampling import SamplingParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "build" / "demo"


def random_artifact(out: Path):
    """Build a random 2-layer Llama artifact (hidden 128, vocab 512) with a WordLevel tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    from fieldprint.artifact import load_artifact, save_artifact
    from spec.convert import quantize_model
    from spec.model import ModelConfig
    from spec.profiles import PROFILES

    vocab, hidden = 512, 128
    hf = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                     tie_word_embeddings=False, initializer_range=0.1)
    torch.manual_seed(0)
    state = {k: v.detach().float() for k, v in LlamaForCausalLM(hf).state_dict().items()}
    cfg = ModelConfig(arch="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=256, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=hidden // 4, rope_theta=10000.0, rms_norm_eps=1e-6,
                      max_position=512, tie_embeddings=False, qkv_bias=False)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    save_artifact(quantize_model(cfg, state, PROFILES["default"]), out / "artifact", out / "tokenizer.json")
    return load_artifact(out / "artifact"), str(out / "artifact")


def load_model(tmp: Path):
    from fieldprint.artifact import load_artifact

    if (DEMO / "manifest.json").is_file():
        return load_artifact(DEMO), str(DEMO), "demo (build/demo)"
    art, path = random_artifact(tmp / "random")
    return art, path, "random Llama 2x128 (no build/demo)"


def prompt_of(art, n: int) -> list[int]:
    return [(7 * i + 3) % art.model.config.vocab_size for i in range(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per run")
    ap.add_argument("--prompt-tokens", type=int, default=40)
    ap.add_argument("--anchor-tokens", type=int, default=24)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--commit-every", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engine", choices=["ref", "fast"], default="ref",
                    help="engine that generates (the auditor always replays on the CPU reference engine)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    art, art_path, model_desc = load_model(tmp)
    key = SigningKey("bench.fieldprint.example/engine", b"\x42" * 32)
    sampling = SamplingParams(temperature="7/10", top_k=40, seed=11)
    prompt = prompt_of(art, args.prompt_tokens)
    anchors = prompt_of(art, args.anchor_tokens + 5)[5:]
    eos = []  # run the full token budget every time

    from fieldprint.engine import select_engine

    cls = select_engine(args.engine) if args.engine != "ref" else RefEngine

    def engine():
        eng = cls(art.model, tokenizer=art.tokenizer, num_pages=96, device=args.device, eos_token_ids=eos)
        eng.set_anchors(anchors)
        return eng

    def timed(eng, box):
        """Wrap eng.step so that box[0] accumulates the seconds spent inside the engine."""
        step = eng.step

        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return step(*a, **kw)
            finally:
                box[0] += time.perf_counter() - t

        eng.step = wrapper
        return eng

    plain_s, ledger_s, ledger_path, tokens = [], [], None, None
    plain_outside, ledger_outside = [], []  # seconds on the engine thread outside engine.step
    engine().generate(prompt[:4], max_new_tokens=2)  # warm-up (allocator, kernels)
    for run in range(args.runs):
        box = [0.0]
        eng = timed(engine(), box)
        t0 = time.perf_counter()
        res = eng.generate(prompt, sampling=sampling, max_new_tokens=args.tokens)
        plain_s.append(time.perf_counter() - t0)
        plain_outside.append(plain_s[-1] - box[0])
        box = [0.0]
        eng = timed(engine(), box)
        path = tmp / f"run{run}.fpl"
        t0 = time.perf_counter()
        out = VerifyingSession(eng, key=key, ledger_path=path, policy=make_policy(args.commit_every),
                               sampling=sampling, max_new_tokens=args.tokens, eos_token_ids=eos,
                               model_commitment=art.commitment, fsync="checkpoint").run(prompt)
        ledger_s.append(time.perf_counter() - t0)
        ledger_outside.append(ledger_s[-1] - box[0])
        if out.tokens != res.tokens:
            con.print("[red]the ledger run produced other tokens than the plain run[/red]")
            return 1
        ledger_path, tokens = path, out.tokens
        con.print(f"run {run}: plain {plain_s[-1]:.3f} s, with ledger {ledger_s[-1]:.3f} s")

    t0 = time.perf_counter()
    structural = verify_ledger(ledger_path, model=art, trusted_key=key.verifier, replay=False)
    struct_s = time.perf_counter() - t0
    full = verify_ledger(ledger_path, model=art, trusted_key=key.verifier)
    if full.verdict != "valid":
        con.print(f"[red]auditor: {full.verdict} {full.reason} {full.message}[/red]")
        return 1
    p, l = statistics.median(plain_s), statistics.median(ledger_s)
    result = {
        "benchmark": "ledger", "date": date.today().isoformat(), "device": args.device, "engine": args.engine,
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "model": model_desc, "model_path": art_path, "config": art.model.config.to_dict(),
        "tokens": len(tokens), "prompt_tokens": len(prompt), "anchor_tokens": len(anchors), "runs": args.runs,
        "commit_policy": f"every={args.commit_every}", "fsync": "checkpoint",
        "plain_s": [round(x, 4) for x in plain_s], "ledger_s": [round(x, 4) for x in ledger_s],
        "plain_median_s": round(p, 4), "ledger_median_s": round(l, 4),
        "overhead_pct": round(100 * (l / p - 1), 2),
        "paired_overhead_pct": round(100 * statistics.median(b / a - 1 for a, b in zip(plain_s, ledger_s)), 2),
        "run_to_run_spread_pct": round(100 * (max(plain_s) - min(plain_s)) / p, 1),
        "engine_thread_outside_step_ms_per_token": {
            "plain": round(1000 * statistics.median(plain_outside) / len(tokens), 3),
            "ledger": round(1000 * statistics.median(ledger_outside) / len(tokens), 3)},
        "critical_path_overhead_pct": round(100 * (statistics.median(ledger_outside) - statistics.median(plain_outside)) / p, 2),
        "plain_tokens_per_s": round(len(tokens) / p, 2), "ledger_tokens_per_s": round(len(tokens) / l, 2),
        "ledger_bytes": os.path.getsize(ledger_path), "ledger_records": full.records,
        "checkpoints": full.checkpoints, "commits": full.commits,
        "audit_structural_s": round(struct_s, 4), "audit_replay_s": full.replay["seconds"],
        "audit_replay_tokens_per_s": full.replay["tokens_per_s"],
    }
    t = Table(title=f"Ledger cost, {args.engine} engine ({model_desc}, {args.device}, {len(tokens)} tokens)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("generate, plain (median)", f"{p:.3f} s  ({result['plain_tokens_per_s']} tok/s)")
    t.add_row("generate, with ledger (median)", f"{l:.3f} s  ({result['ledger_tokens_per_s']} tok/s)")
    t.add_row("ledger overhead (wall, medians)", f"{result['overhead_pct']:+.2f} %  (plain runs spread "
              f"{result['run_to_run_spread_pct']} %)")
    t.add_row("ledger overhead (median of paired runs)", f"{result['paired_overhead_pct']:+.2f} %")
    ms = result["engine_thread_outside_step_ms_per_token"]
    t.add_row("engine thread outside engine.step", f"plain {ms['plain']} ms/token, ledger {ms['ledger']} ms/token")
    t.add_row("ledger work on the critical path", f"{result['critical_path_overhead_pct']:+.2f} % of generation time")
    t.add_row("ledger size", f"{result['ledger_bytes']} B, {full.records} records, {full.checkpoints} checkpoints")
    t.add_row("audit: structure + signatures", f"{struct_s * 1000:.1f} ms")
    t.add_row("audit: full CPU replay", f"{full.replay['seconds']:.3f} s  ({full.replay['tokens_per_s']} tok/s)")
    Console().print(t)
    name = f"ledger-{args.engine}-{args.device}-{date.today()}.json"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    con.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
