"""``fieldprint-audit``: verify ledgers offline, show their timeline.

    fieldprint-audit verify out.fpl --model ARTIFACT --trusted-key KEY.pub [--json]
    fieldprint-audit verify ledgers/ --model ARTIFACT --trusted-key KEY.pub --jobs 4
    fieldprint-audit show out.fpl [--model ARTIFACT] [--trusted-key KEY.pub] [--json]

Exit codes (``auditor.report``): 0 valid, 1 invalid, 2 unreadable input, 3 incomplete.
Output into a closed pipe (``| head``) is dropped quietly: the exit code is still the verdict's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from auditor.report import ENGINE_NAMES, combined_exit, render_text


EXIT_CODES = """exit codes:
  0  valid       sealed, signed by the trusted key, every record checks, the replay matches
  1  invalid     a frame, record, signature, checkpoint, commitment or replayed value is wrong
  2  unreadable  the ledger, model artifact or key cannot be used, or bad arguments
  3  incomplete  not sealed (a crash) or ended in error, but every signed record verifies"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # noqa: D102 - usage errors are unreadable input
        self.exit(2, f"error: {self.prog}: {message}\n")


def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of processes >= 1, got {text!r} (leave it out "
                                         "for one per CPU)")
    return n


class _Stdout:
    """stdout that a closed pipe (``| head -1``) silences instead of failing the command."""

    closed = False

    @classmethod
    def print(cls, text: str) -> None:
        if cls.closed:
            return
        try:
            print(text, flush=True)
        except BrokenPipeError:
            cls.closed = True
            # later writes, and the interpreter's flush at exit, go nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


def build_parser() -> argparse.ArgumentParser:
    from auditor.teacher import DEFAULT_MODE, MODES

    p = _Parser(prog="fieldprint-audit", description="Verify Fieldprint ledgers offline (CPU replay).",
                epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    v = sub.add_parser("verify", help="verify ledgers: signatures, checkpoints, sequence and a full replay",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("ledgers", nargs="+", help="ledger files or folders of *.fpl")
    v.add_argument("--model", required=True, help="model artifact folder the ledger must commit to")
    v.add_argument("--trusted-key", required=True, help="public key file (or verifier string) of the engine")
    v.add_argument("--anchors-file", help="anchor text to replay instead of the ledger's anchor tokens (checked "
                   "against its anchor commitment)")
    v.add_argument("--no-replay", action="store_true", help="do not run the model: check signatures, structure, the "
                   "model commitment and every rule that follows from the records (the report lists what is not "
                   "checked)")
    v.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                   help="parallel processes for several ledgers, N >= 1 (default: one per CPU)")
    v.add_argument("--ray", metavar="ADDRESS", help="verify on a Ray cluster instead, one task per ledger (ADDRESS "
                   "as ray.init takes it, or 'local' to start one here; pip install 'fieldprint[ray]'); the model "
                   "path must be readable on every node")
    v.add_argument("--replay", choices=MODES, default=DEFAULT_MODE, help="prefill (default): feed each segment's "
                   "recorded tokens as one prefill and check every position; stepwise: re-run the generation token "
                   "by token. Both reach the same verdict (docs/auditor.md, replay modes)")
    v.add_argument("--engine", choices=sorted(ENGINE_NAMES), default="ref", help="engine the replay runs on: ref "
                   "(default, the reference engine) or fast (the Triton engine, for models too large for a CPU "
                   "audit; with --device cuda)")
    v.add_argument("--device", default="cpu", help="torch device of the replay (default cpu)")
    v.add_argument("--json", action="store_true", help="one JSON report per line")
    v.add_argument("--progress", action="store_true", help="progress bar even when stderr is not a terminal")
    s = sub.add_parser("show", help="print a ledger's timeline of commits, validations and rollbacks")
    s.add_argument("ledger")
    s.add_argument("--model", help="artifact folder, to show tokens as text")
    s.add_argument("--trusted-key", help="public key, to add the structural verdict")
    s.add_argument("--json", action="store_true")
    return p


def _tokenizer(model_dir):
    if model_dir is None:
        return None
    from pathlib import Path

    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    return Tokenizer.from_file(str(path)) if path.is_file() else None


def _replay_target_problem(args) -> str | None:
    """Return why the options cannot run here (--engine, --device, --ray with --jobs), or None."""
    if args.ray and args.jobs is not None:
        return "--jobs and --ray exclude each other (a Ray cluster schedules one task per ledger)"
    if args.no_replay or args.ray:  # with --ray, the workers' devices count, not this machine's
        return None
    if args.device != "cpu":
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            return f"--device {args.device}: {e}"
        if device.type == "cuda" and not torch.cuda.is_available():
            return f"--device {args.device}: this machine has no CUDA device (leave --device out to replay on the CPU)"
    if args.engine != "ref":
        from fieldprint.engine import select_engine

        try:
            select_engine(args.engine)
        except Exception as e:  # the fast engine needs triton
            return f"--engine {args.engine}: cannot load the engine: {e}"
    return None


def cmd_verify(args) -> int:
    from auditor.verify import ledger_paths, verify_many

    anchors = None
    if args.anchors_file:
        try:
            anchors = open(args.anchors_file, encoding="utf-8").read()
        except OSError as e:
            print(f"error: --anchors-file: {e}", file=sys.stderr)
            return 2
    paths = ledger_paths(args.ledgers)
    if not paths:
        print("error: no ledger found", file=sys.stderr)
        return 2
    problem = _replay_target_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    progress = not args.json and (args.progress or sys.stderr.isatty())
    kw = dict(model=args.model, trusted_key=args.trusted_key, anchors_text=anchors, replay=not args.no_replay,
              progress=progress, replay_mode=args.replay, engine=args.engine, device=args.device)
    if args.ray:
        from auditor.cluster import RayUnavailable, verify_on_ray

        try:
            reports = verify_on_ray(paths, args.ray, **kw)
        except RayUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        reports = verify_many(paths, jobs=args.jobs, **kw)
    for r in reports:
        _Stdout.print(r.to_json() if args.json else render_text(r))
    if len(reports) > 1 and not args.json:
        counts = {}
        for r in reports:
            counts[r.verdict] = counts.get(r.verdict, 0) + 1
        _Stdout.print("summary: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
    return combined_exit(reports)


def cmd_show(args) -> int:
    from auditor.show import show
    from auditor.verify import _Unreadable, load_trusted_key

    key = None
    if args.trusted_key:
        try:
            key = load_trusted_key(args.trusted_key)
        except _Unreadable as e:
            print(f"error: {e.message}", file=sys.stderr)
            return 2
    text, code = show(args.ledger, tokenizer=_tokenizer(args.model), trusted_key=key, as_json=args.json)
    if code == 0:
        _Stdout.print(text)
    else:
        print(text, file=sys.stderr)
    return code


def main(argv=None) -> int:
    # OpenMP threads that spin while waiting make the CPU replay crawl on busy small machines;
    # set before torch is imported (the commands import it lazily)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return cmd_verify(args) if args.command == "verify" else cmd_show(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
