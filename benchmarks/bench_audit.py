"""Benchmark: an audit faster than the generation it checks (CPU reference engine; GPU fast engine).

``python benchmarks/bench_audit.py [--tokens 256] [--models demo,large] [--policies 8]``
prints a rich table and writes ``benchmarks/results/audit-cpu-<models>-<date>.json`` (or ``--out``).

``python benchmarks/bench_audit.py --gpu [--tokens 256]`` (a CUDA machine) does the same for a
random model of Llama-3.2-1B's shape on the fast engine (``--engine fast --device cuda``) and
writes ``benchmarks/results/audit-gpu-<gpu>-<date>.json``; see `bench_gpu`.

For each model, in one run on this machine:

1. **Weight cache** (``fieldprint_ref.weights``): the time of one decode step with the float64
   weight views and without them (``cache_weights = False``), medians of ``--decode-steps``.
2. **Generation**: ``VerifyingSession.run`` on ``RefEngine`` writes a ``--tokens`` ledger (no EOS:
   the whole budget) for each commit policy ``every=N`` of ``--policies`` (8 is the runtime's
   default; the prefill replay runs across commits, so the policy changes little).
3. **Audit**: ``verify_ledger`` of each ledger with ``replay_mode="stepwise"`` (token by token,
   on the default policy's ledger) and ``"prefill"`` (teacher-forced); both must be ``valid``.
   ``prefill_spec_ops``: the prefill audit again with `fieldprint_ref.fastint` off and the
   float64 weight copy on (the replay as it was before those), a before/after in the same run.
   Speed-up = generation wall time / audit wall time (the whole verify: structure, signatures,
   records checks, the engine's float64 weight views, and the replay).

Models: ``demo`` (``build/demo``, built on first use) and ``large``, a random Llama of 12 layers,
hidden 768 (12 heads, 4 KV heads, intermediate 3072, vocab 32000), quantized with the default
profile. The machine is shared: the JSON records the load average before each phase.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning threads crawl on busy machines
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from auditor.verify import verify_ledger  # noqa: E402
from fieldprint.runtime.session import VerifyingSession  # noqa: E402
from fieldprint_ref.engine import RefEngine  # noqa: E402
from spec.commits import make_policy  # noqa: E402
from spec.keys import SigningKey  # noqa: E402
from spec.sampling import SamplingParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LARGE = dict(vocab=32000, hidden=768, inter=3072, layers=12, heads=12, kv_heads=4)


class Uncached(RefEngine):
    """The reference engine converting every weight on every matmul (as before the cache)."""

    cache_weights = False


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def large_artifact(out: Path, shape=LARGE):
    """Build and save a random Llama artifact of ``shape`` with a WordLevel tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    from fieldprint.artifact import load_artifact, save_artifact
    from spec.convert import quantize_model
    from spec.model import ModelConfig
    from spec.profiles import PROFILES

    s = shape
    hf = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
                     num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                     max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    state = {k: v.detach().float() for k, v in LlamaForCausalLM(hf).state_dict().items()}
    cfg = ModelConfig(arch="llama", vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
                      num_layers=s["layers"], num_heads=s["heads"], num_kv_heads=s["kv_heads"],
                      head_dim=s["hidden"] // s["heads"], rope_theta=10000.0, rms_norm_eps=1e-5, max_position=512,
                      tie_embeddings=False, qkv_bias=False)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(s["vocab"])}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    save_artifact(quantize_model(cfg, state, PROFILES["default"]), out / "artifact", out / "tokenizer.json")
    return load_artifact(out / "artifact")


def model_of(name: str, tmp: Path):
    from fieldprint.artifact import load_artifact

    if name == "demo":
        from fieldprint.demo import ensure_demo_model

        return load_artifact(ensure_demo_model(progress=False)), "demo (build/demo)"
    if name == "large":
        s = LARGE
        return large_artifact(tmp / "large"), (f"random Llama {s['layers']} layers, hidden {s['hidden']}, "
                                              f"intermediate {s['inter']}, vocab {s['vocab']}")
    raise SystemExit(f"error: --models: unknown model {name!r} (demo, large)")


def decode_step_s(cls, art, steps: int) -> float:
    """Return the median seconds of one decode step (after a 16-token prefill)."""
    eng = cls(art.model, num_pages=8, keep_logits=False)
    h = eng.add_sequence(list(range(1, 17)), sampling=SamplingParams(temperature="4/5", seed=1),
                         max_new_tokens=steps + 2)
    eng.step([h])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        eng.step([h])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def spec_ops_only(on: bool):
    """With ``on``: the prefill replay as it ran before `fieldprint_ref.fastint` (the spec's own
    linear, attention and sampler, and the float64 weight copy), for a before/after in one run."""
    from auditor import teacher
    from fieldprint_ref import fastint

    was = fastint.ENABLED, teacher.Prefill.weight_cache
    if on:
        fastint.ENABLED, teacher.Prefill.weight_cache = False, True
    try:
        yield
    finally:
        fastint.ENABLED, teacher.Prefill.weight_cache = was


def bench_model(name: str, args, tmp: Path, con) -> dict:
    t0 = time.perf_counter()
    art, desc = model_of(name, tmp)
    out = {"model": desc, "config": art.model.config.to_dict(), "build_s": round(time.perf_counter() - t0, 1),
           "params": sum(t.numel() for t in art.model.tensors.values())}
    con.print(f"[bold]{name}[/bold]: {desc} ({out['params'] / 1e6:.1f} M parameters)")
    out["load_before_decode"] = load()
    cached, uncached = decode_step_s(RefEngine, art, args.decode_steps), decode_step_s(Uncached, art, args.decode_steps)
    out["decode_step_s"] = {"weight_cache": round(cached, 4), "no_cache": round(uncached, 4),
                            "speedup": round(uncached / cached, 2)}
    con.print(f"  decode step: {uncached * 1000:.0f} ms without the weight cache, {cached * 1000:.0f} ms with it")
    key = SigningKey("bench.fieldprint.example/engine", b"\x42" * 32)
    sampling = SamplingParams(temperature="7/10", top_k=40, seed=11)
    v = art.model.config.vocab_size
    prompt = [(7 * i + 3) % v for i in range(args.prompt_tokens)]
    out["ledgers"] = []
    for k, every in enumerate(args.policies):
        path = tmp / f"{name}-every{every}.fpl"
        row = {"commit_policy": f"every={every}", "load_before_generation": load()}
        eng = RefEngine(art.model, tokenizer=art.tokenizer, num_pages=64, eos_token_ids=[])
        t0 = time.perf_counter()
        res = VerifyingSession(eng, key=key, ledger_path=path, policy=make_policy(every), sampling=sampling,
                               max_new_tokens=args.tokens, eos_token_ids=[], model_commitment=art.commitment,
                               fsync="checkpoint").run(prompt)
        gen = time.perf_counter() - t0
        row.update(tokens=len(res.tokens), generation_s=round(gen, 3), commits=res.commits,
                   ledger_bytes=os.path.getsize(path))
        con.print(f"  every={every}: generated {len(res.tokens)} tokens in {gen:.1f} s")
        modes = ("stepwise", "prefill", "prefill_spec_ops") if k == 0 and args.spec_ops else \
            ("stepwise", "prefill") if k == 0 else ("prefill",)
        for mode in modes:
            row[f"load_before_{mode}"] = load()
            t0 = time.perf_counter()
            # a fresh model object: the audit builds its own float64 weight views, as a new process would
            fresh = dataclasses.replace(art, model=copy.copy(art.model))
            with spec_ops_only(mode == "prefill_spec_ops"):
                rep = verify_ledger(path, model=fresh, trusted_key=key.verifier, replay_mode=mode.split("_")[0])
            wall = time.perf_counter() - t0
            if rep.verdict != "valid":
                raise SystemExit(f"error: {name} every={every} {mode}: {rep.verdict} {rep.reason} {rep.message}")
            row[mode] = {"audit_s": round(wall, 3), "replay_s": rep.replay["seconds"],
                         "speedup_vs_generation": round(gen / wall, 2)}
            con.print(f"    {mode} audit: {wall:.2f} s ({gen / wall:.1f}x faster than the generation)")
        out["ledgers"].append(row)
    return out


# Llama-3.2-1B: 16 layers, hidden 2048, 32 heads of 64, 8 KV heads, MLP 8192, vocab 128256, tied.
LLAMA_1B = dict(vocab=128256, hidden=2048, inter=8192, layers=16, heads=32, kv_heads=8, tied=True,
                rope_theta=500000.0)
TINY = dict(vocab=512, hidden=64, inter=128, layers=2, heads=4, kv_heads=2, tied=True, rope_theta=10000.0)


def random_artifact(shape: dict, max_position: int, seed: int = 0):
    """Return a LoadedArtifact (in memory) of a random Llama of ``shape``, quantized with the default
    profile by `spec.convert` on the host CPU: weights ~ N(0, 0.02) drawn on the GPU when there
    is one (one tensor at a time, then copied to the host), norm gains 1, a WordLevel tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from fieldprint.artifact import LoadedArtifact
    from spec.commitment import model_commitment
    from spec.convert import quantize_model
    from spec.model import ModelConfig
    from spec.profiles import PROFILES

    s = shape
    d = s["hidden"] // s["heads"]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(seed)
    rnd = lambda *shp: (torch.randn(*shp, generator=g, device=dev) * 0.02).cpu()  # noqa: E731
    st = {"model.embed_tokens.weight": rnd(s["vocab"], s["hidden"]), "model.norm.weight": torch.ones(s["hidden"])}
    for n in range(s["layers"]):
        p = f"model.layers.{n}."
        for name, o, i in (("self_attn.q_proj", s["heads"] * d, s["hidden"]), ("self_attn.k_proj", s["kv_heads"] * d, s["hidden"]),
                           ("self_attn.v_proj", s["kv_heads"] * d, s["hidden"]), ("self_attn.o_proj", s["hidden"], s["heads"] * d),
                           ("mlp.gate_proj", s["inter"], s["hidden"]), ("mlp.up_proj", s["inter"], s["hidden"]),
                           ("mlp.down_proj", s["hidden"], s["inter"])):
            st[f"{p}{name}.weight"] = rnd(o, i)
        st[p + "input_layernorm.weight"] = st[p + "post_attention_layernorm.weight"] = torch.ones(s["hidden"])
    cfg = ModelConfig(arch="llama", vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
                      num_layers=s["layers"], num_heads=s["heads"], num_kv_heads=s["kv_heads"], head_dim=d,
                      rope_theta=s["rope_theta"], rms_norm_eps=1e-5, max_position=max_position,
                      tie_embeddings=s["tied"], qkv_bias=False)
    qm = quantize_model(cfg, st, PROFILES["default"])
    del st
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(s["vocab"])}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    return LoadedArtifact(path=Path("(in memory)"), model=qm, tokenizer=tok, commitment=model_commitment(qm), manifest={})


def bench_gpu(args, tmp: Path, con) -> dict:
    """The fast engine on one GPU, in one run: build the random 1B-shape model (host CPU), warm
    the kernels up (a short generation and its audit, not timed: Triton compiles each kernel on
    first use), then time the generation of a ``--tokens`` ledger (`VerifyingSession` on
    `FastEngine` on cuda) and its audit, ``verify_ledger(engine="fast", device="cuda")``, in
    prefill mode (and stepwise with ``--gpu-stepwise``). Both must be valid."""
    import dataclasses as dc

    from fieldprint_fast.engine import FastEngine

    dev = args.device
    shape = TINY if args.gpu_shape == "tiny" else LLAMA_1B
    name = "tiny" if args.gpu_shape == "tiny" else "llama-3.2-1b-shape"
    t0 = time.perf_counter()
    art = random_artifact(shape, max_position=max(512, args.prompt_tokens + args.tokens + 16))
    params = sum(t.numel() for t in art.model.tensors.values())
    out = {"model": f"random {name} ({shape['layers']} layers, hidden {shape['hidden']}, {shape['heads']}/"
                    f"{shape['kv_heads']} heads, MLP {shape['inter']}, vocab {shape['vocab']}, tied), default profile",
           "config": art.model.config.to_dict(), "params": params, "build_s": round(time.perf_counter() - t0, 1)}
    con.print(f"[bold]{name}[/bold]: {params / 1e9:.2f} B parameters, built in {out['build_s']} s")
    key = SigningKey("bench.fieldprint.example/engine", b"\x42" * 32)
    sampling = SamplingParams(temperature="7/10", top_k=40, seed=11)
    v = art.model.config.vocab_size
    prompt = [(7 * i + 3) % v for i in range(args.prompt_tokens)]
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)

    def generate(path: Path, tokens: int) -> tuple[float, object]:
        eng = FastEngine(art.model, tokenizer=art.tokenizer, num_pages=-(-(len(prompt) + tokens) // 16) + 8,
                         eos_token_ids=[], device=dev)
        sync()
        t = time.perf_counter()
        res = VerifyingSession(eng, key=key, ledger_path=path, policy=make_policy(8), sampling=sampling,
                               max_new_tokens=tokens, eos_token_ids=[], model_commitment=art.commitment,
                               fsync="checkpoint").run(prompt)
        sync()
        return time.perf_counter() - t, res

    def audit(path: Path, mode: str) -> tuple[float, object]:
        sync()
        t = time.perf_counter()
        rep = verify_ledger(path, model=dc.replace(art), trusted_key=key.verifier, replay_mode=mode,
                            engine="fast", device=dev)
        sync()
        wall = time.perf_counter() - t
        if rep.verdict != "valid":
            raise SystemExit(f"error: {name} {mode} audit on {dev}: {rep.verdict} {rep.reason} {rep.message}")
        return wall, rep

    t0 = time.perf_counter()
    warm = tmp / "warm.fpl"
    generate(warm, args.gpu_warmup_tokens)
    audit(warm, "prefill")
    out["warmup_s"] = round(time.perf_counter() - t0, 1)
    con.print(f"  warm-up ({args.gpu_warmup_tokens} tokens, generation and audit): {out['warmup_s']} s")
    path = tmp / "gpu.fpl"
    gen, res = generate(path, args.tokens)
    row = {"commit_policy": "every=8", "tokens": len(res.tokens), "generation_s": round(gen, 3),
           "commits": res.commits, "ledger_bytes": os.path.getsize(path)}
    con.print(f"  generated {len(res.tokens)} tokens in {gen:.2f} s")
    for mode in ("prefill", "stepwise") if args.gpu_stepwise else ("prefill",):
        wall, rep = audit(path, mode)
        row[mode] = {"audit_s": round(wall, 3), "replay_s": rep.replay["seconds"],
                     "speedup_vs_generation": round(gen / wall, 2), "engine": rep.replay.get("engine")}
        con.print(f"    {mode} audit (fast engine, {dev}): {wall:.2f} s ({gen / wall:.1f}x faster than the generation)")
    out["ledgers"] = [row]
    return out


def main_gpu(args) -> int:
    from rich.console import Console

    con = Console(stderr=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-gpu-"))
    dev = args.device
    gpu = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"{dev} (TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')})"
    import triton

    result = {"benchmark": "audit-gpu", "date": date.today().isoformat(), "machine": gpu, "gpu": gpu, "device": dev,
              "torch": torch.__version__, "triton": triton.__version__, "host_cores": os.cpu_count(),
              "tokens": args.tokens, "prompt_tokens": args.prompt_tokens, "engine": "fast",
              "note": "generation and audit on the same GPU in one run, after a warm-up that compiles the kernels"}
    m = bench_gpu(args, tmp, con)
    result["models"] = {m["model"].split(" ")[1]: m}
    summarize(result)
    tag = gpu.replace("NVIDIA ", "").replace(" ", "_").split("(")[0].strip("_")
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"audit-gpu-{tag}-{date.today()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    con.print(f"wrote {path}")
    return 0


def summarize(result: dict) -> None:
    """Add ``summary`` (one row per model and replay mode: seconds, speed-up vs generation) and the
    ``plot`` hint `tools.plot_benchmarks` reads, so the plot shows the speed-ups."""
    rows = []
    for name, m in result["models"].items():
        for row in m["ledgers"]:
            rows.append({"what": f"{name} {row['commit_policy']} generation", "seconds": row["generation_s"],
                         "speedup_vs_generation": 1.0})
            rows += [{"what": f"{name} {row['commit_policy']} {mode} audit", "seconds": row[mode]["audit_s"],
                      "speedup_vs_generation": row[mode]["speedup_vs_generation"]}
                     for mode in ("stepwise", "prefill", "prefill_spec_ops") if mode in row]
    result["summary"] = rows
    result["plot"] = {"table": "summary", "metrics": ["speedup_vs_generation", "seconds"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256, help="tokens per ledger")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--models", default="demo,large")
    ap.add_argument("--policies", default="8", help="commit every N tokens, one ledger each (comma-separated; "
                    "8 is the runtime's default)")
    ap.add_argument("--decode-steps", type=int, default=8)
    ap.add_argument("--no-spec-ops", dest="spec_ops", action="store_false",
                    help="skip the before/after audit with fastint off (`spec_ops_only`)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--gpu", action="store_true", help="the fast engine on a GPU, Llama-3.2-1B shape (see bench_gpu)")
    ap.add_argument("--device", default="cuda", help="--gpu: the device (cpu with TRITON_INTERPRET=1 for a smoke test)")
    ap.add_argument("--gpu-shape", choices=("1b", "tiny"), default="1b")
    ap.add_argument("--gpu-warmup-tokens", type=int, default=24)
    ap.add_argument("--gpu-stepwise", action="store_true", help="--gpu: also time a stepwise audit")
    args = ap.parse_args(argv)
    if args.gpu:
        return main_gpu(args)
    args.policies = [int(x) for x in args.policies.split(",")]
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor() or platform.machine())
    result = {"benchmark": "audit", "date": date.today().isoformat(), "machine": f"{cpu}, {os.cpu_count()} cores",
              "cpu": cpu, "cores": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "tokens": args.tokens,
              "prompt_tokens": args.prompt_tokens, "load_at_start": load(),
              "note": "shared machine: other jobs ran at the same time; load averages are recorded per phase",
              "models": {}}
    for name in args.models.split(","):
        result["models"][name] = bench_model(name, args, tmp, con)
    result["load_at_end"] = load()
    summarize(result)
    t = Table(title=f"Audit vs generation, {args.tokens}-token ledgers, CPU reference engine "
                    f"({result['cores']} cores, load {result['load_at_start'][0]}-{result['load_at_end'][0]})")
    for c in ("model", "policy", "generation", "stepwise audit", "prefill audit", "prefill speed-up",
              "decode step, weight cache"):
        t.add_column(c, justify="right" if c != "model" else "left")
    for name, m in result["models"].items():
        for row in m["ledgers"]:
            step = row.get("stepwise")
            t.add_row(name, row["commit_policy"], f"{row['generation_s']:.1f} s",
                      f"{step['audit_s']:.1f} s ({step['speedup_vs_generation']}x)" if step else "-",
                      f"{row['prefill']['audit_s']:.2f} s", f"{row['prefill']['speedup_vs_generation']}x",
                      f"{m['decode_step_s']['speedup']}x faster")
    Console().print(t)
    tag = "-".join(args.models.split(","))
    path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"audit-cpu-{tag}-{date.today()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = path.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_out.replace(path)
    con.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
