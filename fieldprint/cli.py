"""The ``fieldprint`` command line: quantize a checkpoint, generate text (optionally with a
signed ledger, see `fieldprint.ledger_cli`), create signing keys.

Every user error (missing file, unsupported architecture, truncated weights, prompt too long,
bad sampling option) prints one line, ``error: <what> (<file or field>)``, on stderr and exits
with status 2; no traceback.  ``--json`` prints one JSON object on stdout instead of text.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line: ``error: <prog>: <message>``."""

    def error(self, message):  # noqa: D102 - argparse hook
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Show each option's default after its help, unless the help already says it or there is
    nothing to show (no default, a flag, an empty list)."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if not action.option_strings or "default" in text or d is None or d is False or d == []:
            return text
        if d is argparse.SUPPRESS:
            return text
        return text + " (default: %(default)s)"


class UsageError(Exception):
    """A command-line value is invalid (raised before any work starts)."""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fieldprint")
    except Exception:  # not installed: running from a checkout
        return "0+checkout"


# -- argument types -------------------------------------------------------------------------
def _decimal(name: str, lo: Fraction, hi: Fraction | None = None, lo_open: bool = False):
    def parse(text: str) -> Fraction:
        try:
            v = Fraction(text.strip())
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"{name} must be a decimal number, got {text!r}") from None
        if v.numerator > 2**16 or v.denominator > 2**16:
            raise argparse.ArgumentTypeError(
                f"{name} must be a decimal whose reduced numerator and denominator are <= 65536, got {text}"
            )
        if v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
            rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}{']' if hi is not None else ')'}"
            raise argparse.ArgumentTypeError(f"{name} must be in {rng}, got {text}")
        return v

    return parse


def _int(name: str, lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"{name} must be >= {lo}" + (f" and <= {hi}" if hi is not None else "") + f", got {v}"
            )
        return v

    return parse


def _read_text(path: str, flag: str) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{flag}: file not found: {p}") from None
    except IsADirectoryError:
        raise UsageError(f"{flag}: is a directory, not a text file: {p}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{flag}: not UTF-8 text: {p}") from None
    except OSError as e:
        raise UsageError(f"{flag}: cannot read {p}: {e.strerror}") from None


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Return the ``fieldprint`` argument parser."""
    from fieldprint import ledger_cli
    from spec.profiles import PROFILES

    from spec.ledger import SPEC_VERSION

    parser = _Parser(prog="fieldprint", description="Verification-first LLM inference.",
                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"fieldprint {_version()} ({SPEC_VERSION})")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    fmt = dict(formatter_class=_HelpFormatter)

    q = sub.add_parser("quantize", help="quantize a Hugging Face checkpoint into a Fieldprint artifact", **fmt)
    q.add_argument("hf_dir", help="Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json)")
    q.add_argument("out", help="output artifact folder")
    q.add_argument("--profile", default="default", choices=sorted(PROFILES), help="precision profile")
    q.add_argument("--max-position", type=_int("--max-position", 1), default=None,
                   help="positions the artifact serves (default: the checkpoint's max_position_embeddings); RoPE "
                        "tables and the default KV pool scale with it")
    q.add_argument("--quiet", action="store_true", help="no progress output")
    q.add_argument("--json", action="store_true", help="print a JSON summary")
    q.set_defaults(func=cmd_quantize)

    g = sub.add_parser("generate", help="generate text with a quantized model", **fmt,
                       epilog=f"exit status: 0 done, {EXIT_USER_ERROR} bad input (nothing written), "
                              f"{ledger_cli.EXIT_GENERATION_FAILED} the runtime could not recover from a fault "
                              "(the ledger ends with reason error; no text is printed)")
    g.add_argument("--model", help="artifact folder (default: the embedded demo model, built on first use)")
    a = g.add_mutually_exclusive_group()
    a.add_argument("--anchors", help="anchor text (system prompt) computed once into pinned pages")
    a.add_argument("--anchors-file", help="read the anchor text from this file")
    p = g.add_mutually_exclusive_group(required=True)
    p.add_argument("--prompt", help="prompt text")
    p.add_argument("--prompt-file", help="read the prompt from this file")
    g.add_argument("--max-new-tokens", type=_int("--max-new-tokens", 1), default=64, metavar="N",
                   help="generate at most N tokens")
    g.add_argument("--temperature", type=_decimal("--temperature", Fraction(0)), default=Fraction(0),
                   help="sampling temperature, an exact decimal; 0 = greedy")
    g.add_argument("--top-k", type=_int("--top-k", 1), default=None, metavar="K",
                   help="sample among the K most likely tokens only (default: all)")
    g.add_argument("--top-p", type=_decimal("--top-p", Fraction(0), Fraction(1), lo_open=True), default=None,
                   metavar="P", help="sample among the most likely tokens whose probabilities sum to P, an exact "
                                     "decimal in (0, 1] (default: all)")
    g.add_argument("--seed", type=_int("--seed", 0, 2**64 - 1), default=0,
                   help="sampling seed (a token depends only on the seed, the step and the logits)")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--engine", choices=["ref", "fast"], default="ref",
                   help="ref: the reference engine (plain PyTorch, any device); fast: the Triton engine (bit-exact "
                        "with ref; with --device cuda, decode steps run as CUDA graphs with device sampling and "
                        "logits digests)")
    g.add_argument("--window", type=_int("--window", 1), default=None,
                   help="sliding attention window in tokens (default: the model's own, from its committed config; "
                        "another value overrides it and a ledger records the override)")
    g.add_argument("--chunk-size", type=_int("--chunk-size", 1), default=None, metavar="N",
                   help="feed the prompt in chunks of N tokens (changes no result and no ledger record; default: "
                        "one chunk)")
    g.add_argument("--num-pages", type=_int("--num-pages", 1), default=None, metavar="N",
                   help="KV pool size in 16-token pages (default: from a 256 MiB budget)")
    g.add_argument("--device", default="cpu", help="torch device")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ledger_cli.add_generate_args(g)
    g.set_defaults(func=cmd_generate)

    ledger_cli.register(sub, **fmt)  # keygen
    return parser


# -- commands --------------------------------------------------------------------------------
def cmd_quantize(args) -> int:
    from fieldprint.artifact import quantize_checkpoint

    if not Path(args.hf_dir).is_dir():
        raise UsageError(f"hf_dir: checkpoint folder not found: {args.hf_dir}")
    t0 = time.perf_counter()
    info = quantize_checkpoint(args.hf_dir, args.out, profile_name=args.profile, progress=not (args.quiet or args.json),
                               max_position=args.max_position)
    summary = {"artifact": str(args.out), "profile": args.profile, "seconds": round(time.perf_counter() - t0, 3)}
    for key in ("commitment", "num_params", "size_bytes"):
        v = getattr(info, key, None)
        if v is not None:
            summary[key] = v.hex() if isinstance(v, bytes) else v
    if args.json:
        print(json.dumps(summary))
    else:
        extra = f", commitment {summary['commitment']}" if "commitment" in summary else ""
        print(f"wrote {args.out} (profile {args.profile}{extra})")
    return 0


def _sampling(args):
    from spec.sampling import SamplingParams

    try:
        return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except ValueError as e:
        raise UsageError(f"--temperature/--top-k/--top-p/--seed: {e}") from None


def _load(args):
    """Return a LoadedArtifact for --model, or for the demo model (built on first use)."""
    from fieldprint.artifact import load_artifact

    if args.model is None:
        from fieldprint.demo import ensure_demo_model

        path = ensure_demo_model()
        return path, load_artifact(path)
    if not Path(args.model).exists():
        raise UsageError(f"--model: artifact folder not found: {args.model}")
    return args.model, load_artifact(args.model)


def cmd_generate(args) -> int:
    import torch

    from fieldprint import ledger_cli
    from fieldprint.engine import load_engine

    plan = ledger_cli.prepare(args, max_new_tokens=args.max_new_tokens)  # every ledger option, before any work
    prompt = args.prompt if args.prompt is not None else _read_text(args.prompt_file, "--prompt-file")
    anchors = args.anchors if args.anchors is not None else (
        _read_text(args.anchors_file, "--anchors-file") if args.anchors_file is not None else None
    )
    if anchors is not None and not anchors.strip():
        raise UsageError("--anchors: anchor text is empty")
    if not prompt:
        raise UsageError("--prompt: prompt text is empty")
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except Exception as e:  # torch raises RuntimeError, ValueError or AssertionError here
        raise UsageError(f"--device: {args.device!r} is not available ({str(e).splitlines()[0]})") from None
    sampling = _sampling(args)
    model_path, art = _load(args)
    engine = load_engine(args.engine, art, num_pages=args.num_pages, device=device)
    info = engine.set_anchors(anchors) if anchors is not None else None
    model_window = art.model.config.sliding_window  # committed with the model
    window = args.window if args.window is not None else model_window

    times = []
    t0 = time.perf_counter()
    with _progress(args.max_new_tokens, enabled=not args.json) as advance:
        def on_step(_, rec):
            times.append(time.perf_counter())
            advance()

        kw = dict(sampling=sampling, max_new_tokens=args.max_new_tokens, window=window, stop=args.stop,
                  chunk_size=args.chunk_size, on_step=on_step)
        session = None
        if plan is not None:  # the verifying runtime: signed ledger, commits, rollbacks
            res, session = ledger_cli.run_generate_with_ledger(plan, engine, art, prompt, **kw)
        else:
            res = engine.generate(prompt, **kw)
    timing = _timing(t0, times)
    failed = session is not None and session.end_reason == "error"
    if args.json:
        print(json.dumps(_result_json(args, model_path, art, engine, info, res, timing, window) | {
            "model_window": model_window, "window_override": window != model_window,
            "ledger": None if session is None else ledger_cli.ledger_json(plan, session)}))
    elif failed:
        pass  # the text of a generation the runtime could not verify is not a result
    else:
        if sys.stdout.isatty():  # a person is reading: show the prompt (dim) before the completion
            from rich.console import Console
            from rich.text import Text

            Console(highlight=False).print(Text.assemble((prompt, "dim"), res.text))
        else:
            sys.stdout.write(res.text + "\n")
            sys.stdout.flush()
        print(
            f"[{len(res.tokens)} tokens, finish {res.finish_reason}, prefill {timing['prefill_s']:.3f}s, "
            f"{timing['decode_tokens_per_s']:.1f} tok/s decode, engine {engine.name}"
            + (f", window {window} overrides the model's {model_window or 'full attention'}" if window != model_window
               else "") + "]",
            file=sys.stderr,
        )
    if failed:
        print(f"error: {ledger_cli.failure_message(session)}", file=sys.stderr)
        return ledger_cli.EXIT_GENERATION_FAILED
    return 0


def _timing(t0: float, times: list[float]) -> dict:
    prefill = (times[0] - t0) if times else 0.0
    decode = (times[-1] - times[0]) if len(times) > 1 else 0.0
    rate = (len(times) - 1) / decode if decode > 0 else 0.0
    return {"prefill_s": round(prefill, 4), "decode_s": round(decode, 4), "decode_tokens_per_s": round(rate, 2)}


class _progress:
    """A transient rich progress bar on stderr (nothing when disabled or not a terminal)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar = total, enabled and sys.stderr.isatty(), None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        )
        self.bar.__enter__()
        task = self.bar.add_task("gen", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def _result_json(args, model_path, art, engine, info, res, timing, window) -> dict:
    import blake3

    commitment = getattr(art, "commitment", None)
    return {
        "engine": engine.name,
        "model": str(model_path),
        "model_commitment": commitment.hex() if isinstance(commitment, bytes) else commitment,
        "anchors": None if info is None else {"tokens": list(info.tokens), "pages": list(info.pages)},
        "prompt_tokens": res.prompt_tokens,
        "sampling": {
            "temperature": str(args.temperature), "top_k": args.top_k,
            "top_p": None if args.top_p is None else str(args.top_p), "seed": args.seed,
        },
        "window": window,
        "tokens": res.tokens,
        "text": res.text,
        "finish_reason": res.finish_reason,
        "timing": timing,
        "steps": [
            {
                "step": r.step,
                "token": r.token,
                "fed": [r.fed_start, r.fed_end],
                "writes": [[w.page, w.block, w.slot_start, w.slot_end, w.full] for w in r.writes],
                "evicted": list(r.evicted),
                "logits_blake3": blake3.blake3(r.logits_bytes()).hexdigest(),
            }
            for r in res.steps
        ],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    # Before torch loads: OpenMP's active spin-wait stalls every small parallel op on a busy
    # 2-core machine (decode 0.8-1 s/token instead of ~70 ms; docs/spec/numerics.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from fieldprint.errors import FieldprintError
    from fieldprint_ref.errors import EngineError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FieldprintError, EngineError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:  # the file system refused (no such folder, permission, disk full)
        what = f"{e.strerror or e}" + (f": {e.filename}" if e.filename is not None else "")
        if args.command == "quantize":
            print(f"error: {args.out}: cannot write the artifact ({what})", file=sys.stderr)
        else:
            print(f"error: {what}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fieldprint generate ... | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
