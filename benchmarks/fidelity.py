"""Fidelity of each precision profile: how much cross-entropy the integer spec adds to the float model.

Method (one number per profile, no hand-picked text):

1. prompts: the first ``PROMPT_TOKENS`` tokens of held-out corpus documents (``tools.corpus``
   with a seed the demo model never trained on), each starting with ``<|endoftext|>``;
2. samples: the FLOAT model (transformers, float32) samples ``--tokens`` tokens after each prompt
   at temperature 1 with a fixed seed, so the text is the model's own distribution;
3. teacher forcing: the same sequences run through the float model and, per profile, through
   ``spec.model.forward`` (one chunk per sequence in a fresh ``KVPool``);
4. report, over the sampled positions: float CE, quantized CE, ΔCE = (CE_q - CE_f) / CE_f in %,
   argmax agreement of the two logit rows, and mean KL(float || quantized).

The model is the fidelity benchmark model (``tools.train_bench``, built into ``build/bench-hf``
on first use, about 15 minutes on 2 cores): a Llama with the outlier channels of trained LLMs,
on which ``int8`` loses clearly. The demo model barely notices quantization (``--hf-dir
build/demo-hf``), so it cannot tell the profiles apart.

    python -m benchmarks.fidelity                       # benchmark model, every profile in spec.profiles
    python -m benchmarks.fidelity --hf-dir DIR --samples 32 --tokens 128
    python -m benchmarks.fidelity --profile high --sweep 8   # which widening matters: one width at a time -> 8 bits

Writes a rich table and benchmarks/results/fidelity-<UTC date>.json (``--out`` to choose). The
acceptance bars: ΔCE < 1% for ``default``; ΔCE <= 0.1% and argmax agreement >= 95% for ``high``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PROMPT_TOKENS = 8  # EOT + the first 7 tokens of a held-out document
PROMPT_SEED = 1_000_003  # corpus seed for prompts (the demo model trained on seed 0, the benchmark model on 7)
ACCEPT_DELTA_CE = 1.0  # percent; the default profile must stay below this
ACCEPT_HIGH = {"delta_ce_pct": 0.1, "argmax_agreement": 0.95}  # the high profile: at most, at least
BENCH_HF_DIR = REPO / "build" / "bench-hf"


def prompts(tokenizer, n: int) -> torch.Tensor:
    """Return n prompts [n, PROMPT_TOKENS] from held-out corpus documents."""
    from tools import corpus
    from tools.train_demo import EOT

    eot = tokenizer.token_to_id(EOT)
    rows = []
    for doc in corpus.documents(200_000, PROMPT_SEED):
        ids = tokenizer.encode(doc, add_special_tokens=False).ids
        if len(ids) >= PROMPT_TOKENS - 1:
            rows.append([eot] + ids[:PROMPT_TOKENS - 1])
        if len(rows) == n:
            break
    return torch.tensor(rows, dtype=torch.int64)


@torch.no_grad()
def sample_float(model, prompt: torch.Tensor, tokens: int, seed: int) -> torch.Tensor:
    """Return prompt + `tokens` tokens sampled from the float model at temperature 1 (no EOS stop)."""
    g = torch.Generator().manual_seed(seed)
    out = model(input_ids=prompt, use_cache=True)
    seq, past = prompt, out.past_key_values
    for _ in range(tokens):
        probs = torch.softmax(out.logits[:, -1].double(), dim=-1)
        nxt = torch.multinomial(probs, 1, generator=g)
        seq = torch.cat([seq, nxt], dim=1)
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past = out.past_key_values
    return seq


@torch.no_grad()
def float_logits(model, seqs: torch.Tensor) -> torch.Tensor:
    """Return float64 logits [B, T, V] of the float model on seqs (teacher forcing)."""
    return model(input_ids=seqs).logits.double()


def spec_logits(qmodel, seqs: torch.Tensor) -> torch.Tensor:
    """Return float64 logits [B, T, V] of spec.model.forward on seqs (integer Q16 logits / 2**16)."""
    from spec.attention import KVPool
    from spec.constants import LOGIT_FRAC_BITS, PAGE_TOKENS
    from spec.model import SequenceChunk, forward

    n_pages = -(-seqs.shape[1] // PAGE_TOKENS)
    rows = []
    for s in seqs:  # one sequence per call: the spec is batch-invariant, and this bounds memory
        pool = KVPool.allocate(qmodel.config, qmodel.profile, n_pages)
        chunk = SequenceChunk(tokens=s.clone(), start=0, block_table=torch.arange(n_pages, dtype=torch.int64))
        rows.append(forward(qmodel, pool, [chunk])[0].double() / (1 << LOGIT_FRAC_BITS))
    return torch.stack(rows)


def compare(ref: torch.Tensor, test: torch.Tensor, seqs: torch.Tensor, first: int) -> dict:
    """Return CE of both, ΔCE %, argmax agreement and KL(ref || test) over positions >= first."""
    lr = torch.log_softmax(ref[:, first - 1:-1], -1)
    lt = torch.log_softmax(test[:, first - 1:-1], -1)
    target = seqs[:, first:, None]
    ce_r = -lr.gather(-1, target).mean().item()
    ce_t = -lt.gather(-1, target).mean().item()
    agree = (ref[:, first - 1:-1].argmax(-1) == test[:, first - 1:-1].argmax(-1)).double().mean().item()
    kl = (lr.exp() * (lr - lt)).sum(-1).mean().item()
    return {"ce_float": ce_r, "ce_quant": ce_t, "delta_ce_pct": 100 * (ce_t - ce_r) / ce_r,
            "argmax_agreement": agree, "kl_float_quant": kl}


def _display(path: Path) -> str:
    """Return path relative to the repository when it lies inside it (results stay portable)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def sweep_profiles(base, bits: int) -> dict:
    """Return {label: profile}: base, then base with one width field at a time set to `bits`."""
    from dataclasses import replace

    fields = [k for k, v in base.to_dict().items()
              if (k.startswith(("w_", "a_")) or k in ("embed_bits", "q_bits")) and v != bits]
    if base.edge_layers == 0:
        fields = [f for f in fields if not f.endswith("_edge")]
    out = {base.name: base}
    for f in fields:
        out[f"{base.name}:{f}={bits}"] = replace(base, **{f: bits})
    return out


def run(hf_dir: Path, profiles, samples: int, tokens: int, seed: int, log=print, baseline_attention: bool = False) -> dict:
    """Measure every profile (names in spec.profiles, or a {label: PrecisionProfile} dict) on one
    set of float samples; return the JSON report. With `baseline_attention`, every profile is also
    measured with the numerics/1 attention rule (`benchmarks.attention_v1`), labelled "<name>@attention-v1"."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from fieldprint.artifact import file_hash
    from fieldprint.hf import load_hf_checkpoint
    from spec.commitment import model_commitment
    from spec.constants import NUMERICS_VERSION
    from spec.convert import quantize_model
    from spec.profiles import PROFILES

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    t0 = time.time()
    ckpt = load_hf_checkpoint(hf_dir)
    fmodel = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(str(ckpt.tokenizer_path))
    seqs = sample_float(fmodel, prompts(tok, samples), tokens, seed)
    ref = float_logits(fmodel, seqs)
    log(f"sampled {samples} x {tokens} tokens from the float model ({time.time() - t0:.1f}s)")
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "checkpoint": _display(hf_dir), "checkpoint_files": {f.name: file_hash(f) for f in ckpt.weight_files},
              "samples": samples, "tokens": tokens, "prompt_tokens": PROMPT_TOKENS,
              "seed": seed, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "numerics": NUMERICS_VERSION, "model": _model_summary(hf_dir),
              "accept_delta_ce_pct": ACCEPT_DELTA_CE, "accept_high": ACCEPT_HIGH, "profiles": {}}
    if not isinstance(profiles, dict):
        profiles = {name: PROFILES[name] for name in profiles}
    for name, profile in profiles.items():
        t1 = time.time()
        try:
            q = quantize_model(ckpt.config, ckpt.state, profile)
        except ValueError as e:  # spec.profiles.ProfileError: this variant cannot run the model
            report["profiles"][name] = {"error": str(e), "profile": profile.to_dict()}
            log(f"{name}: refused ({e})")
            continue
        variants = [(name, None)] + ([(f"{name}@attention-v1", "v1")] if baseline_attention else [])
        for label, rule in variants:
            t1 = time.time()
            with _attention_rule(rule):
                res = compare(ref, spec_logits(q, seqs), seqs, PROMPT_TOKENS)
            res.update(seconds=round(time.time() - t1, 1), commitment=model_commitment(q).hex(),
                       profile=profile.to_dict(), attention="numerics/1" if rule else "spec")
            report["profiles"][label] = res
            log(f"{label}: ΔCE {res['delta_ce_pct']:+.3f}%  agreement {res['argmax_agreement']:.4f}  ({res['seconds']}s)")
    return report


@contextlib.contextmanager
def _attention_rule(rule: str | None):
    """Run spec.model.forward with the numerics/1 attention rule when rule == "v1"."""
    import spec.model

    if rule is None:
        yield
        return
    from benchmarks.attention_v1 import paged_attention_v1

    saved = spec.model.paged_attention
    spec.model.paged_attention = paged_attention_v1
    try:
        yield
    finally:
        spec.model.paged_attention = saved


def _model_summary(hf_dir: Path) -> dict:
    """Return what the checkpoint's train_report.json says about it (tools.train_bench / train_demo)."""
    path = Path(hf_dir) / "train_report.json"
    if not path.is_file():
        return {}
    r = json.loads(path.read_text())
    keep = ("val_ce", "train_ce", "activation_stats", "activation_stats_trained", "reparam_max_logit_change", "config")
    return {k: r[k] for k in keep if k in r}


def passes(name: str, r: dict, report: dict) -> bool:
    """Return whether a profile's row meets its acceptance bar (profiles without one pass)."""
    if name == "default":
        return r["delta_ce_pct"] < report["accept_delta_ce_pct"]
    if name == "high":
        a = report.get("accept_high", ACCEPT_HIGH)
        return r["delta_ce_pct"] <= a["delta_ce_pct"] and r["argmax_agreement"] >= a["argmax_agreement"]
    return True


def ensure_model(hf_dir: Path) -> None:
    """Build the benchmark (or demo) checkpoint when hf_dir is its default place and it is missing."""
    if (hf_dir / "config.json").is_file():
        return
    if hf_dir.resolve() == BENCH_HF_DIR.resolve():
        from tools.train_bench import BenchConfig, train

        train(BenchConfig(), hf_dir)
    elif hf_dir.resolve() == (REPO / "build" / "demo-hf").resolve():
        from fieldprint.demo import ensure_demo_model

        ensure_demo_model()
    else:
        raise SystemExit(f"fidelity: {hf_dir / 'config.json'}: no such checkpoint")


def table(report: dict):
    """Return a rich Table of the report."""
    from rich.table import Table

    t = Table(title=f"Fidelity vs float ({report['samples']} samples x {report['tokens']} tokens, "
                    f"{report['checkpoint']})")
    for col in ("profile", "CE float", "CE quant", "ΔCE %", "argmax agree", "KL", "time s"):
        t.add_column(col, justify="right" if col != "profile" else "left", no_wrap=col == "profile")
    for name, r in report["profiles"].items():
        if "error" in r:
            t.add_row(name, "-", "-", "[red]refused[/]", "-", "-", "-")
            continue
        ok = passes(name, r, report)
        t.add_row(name, f"{r['ce_float']:.4f}", f"{r['ce_quant']:.4f}",
                  f"[{'green' if ok else 'red'}]{r['delta_ce_pct']:+.3f}[/]", f"{r['argmax_agreement']:.4f}",
                  f"{r['kl_float_quant']:.5f}", f"{r['seconds']}")
    return t


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from spec.profiles import PROFILES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hf-dir", type=Path, default=BENCH_HF_DIR)
    p.add_argument("--profile", action="append", choices=sorted(PROFILES), help="default: every profile")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sweep", type=int, metavar="BITS", default=None,
                   help="sensitivity: lower one width field of the first --profile (default: default) to BITS at a time")
    p.add_argument("--baseline-attention", action="store_true",
                   help="also measure every profile with the numerics/1 attention rule (benchmarks/attention_v1.py)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/fidelity-<date>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ensure_model(args.hf_dir)
    console = Console(stderr=True)
    profiles = args.profile or list(PROFILES)
    if args.sweep is not None:
        profiles = sweep_profiles(PROFILES[(args.profile or ["default"])[0]], args.sweep)
    report = run(args.hf_dir, profiles, args.samples, args.tokens, args.seed, log=lambda s: console.print(s),
                 baseline_attention=args.baseline_attention)
    Console().print(table(report))
    kind = "fidelity" if args.sweep is None else f"fidelity-sweep{args.sweep}"
    out = args.out or REPO / "benchmarks" / "results" / f"{kind}-{report['date'][:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {out}")
    if args.sweep is not None:
        return 0
    return 0 if all(passes(n, r, report) for n, r in report["profiles"].items() if "error" not in r) else 1


if __name__ == "__main__":
    raise SystemExit(main())
