"""The ledger side of the ``fieldprint`` command line: ``keygen`` and ``generate --ledger``.

    fieldprint keygen NAME [--out PREFIX]        writes PREFIX.key (private, 0600) and PREFIX.pub
    fieldprint generate ... --ledger out.fpl --key PREFIX.key [--commit-policy every=8,page-full]

``fieldprint/cli.py`` wires these in with ``register(subparsers)`` and
``add_generate_args(generate_parser)``. ``cmd_generate`` calls ``prepare(args)`` before the
model loads (every ledger option is checked and the key is read there, so a bad option costs
nothing and leaves no file), then ``run_generate_with_ledger`` instead of ``engine.generate``.
Key files use the C2SP signed-note formats of ``spec.keys``: the private key is a signer
string ``PRIVATE+KEY+name+id+key``, the public key a verifier string ``name+id+key`` (what
``fieldprint-audit --trusted-key`` reads).

A generation whose ledger ends with reason ``error`` (a fault the runtime could not roll back)
exits with ``EXIT_GENERATION_FAILED``: its ledger is signed and audits as incomplete, never as
valid, and its text is not printed as if it were a result.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fieldprint.errors import ConfigError

EXIT_GENERATION_FAILED = 3  # the ledger ends with reason `error` (fieldprint-audit: incomplete)
DEFAULT_MAX_ROLLBACKS = 8
DEFAULT_FSYNC = "checkpoint"


# -- keygen ----------------------------------------------------------------------------------------
def register(subparsers, **parser_kw) -> None:
    """Add the ``keygen`` subcommand."""
    k = subparsers.add_parser("keygen", help="create an Ed25519 key pair for signing ledgers",
                              description="Create an Ed25519 key pair for signing ledgers: PREFIX.key (the "
                                          "private signer string, mode 0600: keep it secret, never commit it) "
                                          "and PREFIX.pub (the verifier string auditors trust).", **parser_kw)
    k.add_argument("name", help="key name, e.g. engine.example.com/prod (no spaces, no '+')")
    k.add_argument("--out", default=None, metavar="PREFIX",
                   help="path prefix of the key files (default: the name's last part, in the current folder)")
    k.add_argument("--force", action="store_true", help="overwrite existing key files")
    k.add_argument("--json", action="store_true", help="print a JSON summary")
    k.set_defaults(func=cmd_keygen)


def _write_private(path: Path, text: str, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ConfigError(f"keygen: {path} exists (use --force to overwrite)") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text + "\n")


def cmd_keygen(args) -> int:
    from spec.keys import KeyFormatError, generate_signing_key

    try:
        key = generate_signing_key(args.name)
    except KeyFormatError as e:
        raise ConfigError(f"keygen: {e.message}") from None
    prefix = Path(args.out or args.name.rstrip("/").split("/")[-1] or "fieldprint")
    priv, pub = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    try:
        priv.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"keygen: cannot create {priv.parent}: {e.strerror}") from None
    if pub.exists() and not args.force:
        raise ConfigError(f"keygen: {pub} exists (use --force to overwrite)")
    _write_private(priv, key.to_string(), args.force)
    pub.write_text(key.verifier.to_string() + "\n", encoding="ascii")
    info = {"name": key.name, "key_id": f"{key.verifier.key_id:08x}", "private_key": str(priv),
            "public_key": str(pub), "verifier": key.verifier.to_string()}
    print(json.dumps(info) if args.json else f"wrote {priv} (private, keep it secret) and {pub} (public)\n"
          f"verifier: {info['verifier']}")
    return 0


def load_key(path: str, name: str | None = None):
    """Read a private key file (signer string, PKCS#8 PEM or raw seed); ConfigError if unusable.

    A public key file (a verifier string, what ``keygen`` writes to PREFIX.pub) is refused with
    a message saying that ``--key`` needs the private key, and which file that probably is."""
    from spec.keys import load_signing_key, parse_verifier
    from spec.ledger import LedgerError

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"--key: cannot read {path}: {e.strerror}") from None
    if not data.startswith(b"PRIVATE+KEY+") and len(data) != 32:
        try:
            verifier = parse_verifier(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError, LedgerError):
            pass  # not a verifier string either: load_signing_key says what it is not
        else:
            hint = ""
            if path.endswith(".pub") and os.path.exists(path[:-4] + ".key"):
                hint = f": {path[:-4] + '.key'}"
            raise ConfigError(f"--key: {path} is a public key (the verifier string of {verifier.name!r}); --key needs "
                              f"the private key file that `fieldprint keygen` wrote next to it{hint} "
                              "(give the .pub file to fieldprint-audit --trusted-key)")
    try:
        return load_signing_key(data.strip() if data.startswith(b"PRIVATE+KEY+") else data, name)
    except LedgerError as e:
        raise ConfigError(f"--key: {path}: {e.message} (expected a private key file from `fieldprint keygen`)") \
            from None


# -- generate --ledger -----------------------------------------------------------------------------
def _nonnegative(flag: str):
    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if v < 0:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 0, got {v}")
        return v

    return parse


def add_generate_args(parser: argparse.ArgumentParser) -> None:
    """Add the ledger options of ``fieldprint generate`` (all but --ledger need --ledger)."""
    g = parser.add_argument_group("signed ledger (verifying runtime); every option below needs --ledger")
    g.add_argument("--ledger", metavar="FILE",
                   help="write a signed ledger of the generation to this new file (.fpl); its folder must exist")
    g.add_argument("--key", metavar="FILE", help="private key file (PREFIX.key from `fieldprint keygen`)")
    g.add_argument("--key-name", help="key name, for PEM or raw-seed key files (they carry none)")
    g.add_argument("--commit-policy", default=None, metavar="TRIGGERS",
                   help="when to commit: every=N (N >= 1), page-full, eot=IDS, stop=IDS|IDS, comma-separated; "
                        "prefill and end always commit (default: every=8)")
    g.add_argument("--validator", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="policy validator over each commit's new text (repeatable)")
    g.add_argument("--fsync", choices=["every", "checkpoint", "none"], default=None,
                   help=f"when the ledger is flushed to disk (default: {DEFAULT_FSYNC}, after each signed checkpoint)")
    g.add_argument("--max-rollbacks", type=_nonnegative("--max-rollbacks"), default=None, metavar="N",
                   help="after N rollbacks the next failed validation ends the ledger with reason error and "
                        f"the command exits {EXIT_GENERATION_FAILED} (default: {DEFAULT_MAX_ROLLBACKS})")
    g.add_argument("--inject-kv-flip", action="append", default=[], metavar="STEP[:BLOCK]",
                   help="demo/test: flip a bit of context block BLOCK (default 0) after token STEP")
    g.add_argument("--inject-anchor-flip", action="append", default=[], metavar="STEP[:PAGE]",
                   help="demo/test: flip a bit of anchor page PAGE (default 0) after token STEP")
    g.add_argument("--reject-commit", action="append", default=[], type=_nonnegative("--reject-commit"), metavar="M",
                   help="demo/test: a validator that rejects commit number M (repeatable)")


LEDGER_ONLY = ("key", "key_name", "commit_policy", "validator", "fsync", "max_rollbacks", "inject_kv_flip",
               "inject_anchor_flip", "reject_commit")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _flip_arg(text: str, flag: str) -> tuple[int, int]:
    try:
        parts = [int(x) for x in text.split(":")]
        if len(parts) not in (1, 2) or min(parts) < 0:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{flag}: expected STEP or STEP:INDEX (non-negative integers), got {text!r}") from None
    return parts[0], parts[1] if len(parts) == 2 else 0


def _validator(spec: str):
    import importlib

    from fieldprint.runtime.validate import Validator

    mod, _, fn = spec.partition(":")
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"--validator: cannot import {spec!r} ({e})") from None
    return Validator(spec, f)


def check_ledger_args(args) -> None:
    """Refuse inconsistent ledger options before any work starts (no file is read or written)."""
    if getattr(args, "ledger", None) is None:
        for dest in LEDGER_ONLY:
            if getattr(args, dest, None) not in (None, [], False):
                raise ConfigError(f"{_flag(dest)} needs --ledger (it configures the signed ledger, which is only "
                                  "written with --ledger FILE)")
        return
    if not args.key:
        raise ConfigError("--ledger needs --key (create one with `fieldprint keygen NAME`)")
    if os.path.isdir(args.ledger):
        raise ConfigError(f"--ledger: {args.ledger} is a folder (give the path of a new .fpl file)")
    if os.path.exists(args.ledger):
        raise ConfigError(f"--ledger: {args.ledger} exists (ledgers are never overwritten)")
    folder = Path(args.ledger).parent
    if not folder.is_dir():
        raise ConfigError(f"--ledger: folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--ledger: cannot create a file in {folder} (permission denied)")


@dataclass
class LedgerPlan:
    """Every ledger option, checked and parsed (``prepare``)."""

    path: str
    key: object  # spec.keys.SigningKey
    policy: object  # spec.ledger.CommitPolicy
    faults: object  # fieldprint.runtime.faults.FaultPlan
    validators: list = field(default_factory=list)
    fsync: str = DEFAULT_FSYNC
    max_rollbacks: int = DEFAULT_MAX_ROLLBACKS
    flip_flags: dict = field(default_factory=dict)  # flip -> the flag text that asked for it


def prepare(args, *, max_new_tokens: int | None = None) -> LedgerPlan | None:
    """Check every ledger option and read the key (before any model loads); None without --ledger."""
    from fieldprint.runtime.faults import FaultPlan, FlipAnchor, FlipKV
    from fieldprint.runtime.policy import DEFAULT_POLICY, PolicyError, parse_policy

    check_ledger_args(args)
    if args.ledger is None:
        return None
    key = load_key(args.key, args.key_name)
    try:
        policy = parse_policy(DEFAULT_POLICY if args.commit_policy is None else args.commit_policy)
    except PolicyError as e:
        raise ConfigError(f"--commit-policy: {e}") from None
    flips, flags = [], {}
    for dest, kind in (("inject_kv_flip", FlipKV), ("inject_anchor_flip", FlipAnchor)):
        for text in getattr(args, dest):
            flag = _flag(dest)
            flip = kind(*_flip_arg(text, flag))
            if max_new_tokens is not None and flip.step >= max_new_tokens:
                raise ConfigError(f"{flag} {text}: step {flip.step} is past the last step of --max-new-tokens "
                                  f"{max_new_tokens} (steps 0 .. {max_new_tokens - 1}); it would never fire")
            flips.append(flip)
            flags[flip] = f"{flag} {text}"
    return LedgerPlan(
        path=args.ledger, key=key, policy=policy,
        faults=FaultPlan(flips=flips, reject_commits=set(args.reject_commit)),
        validators=[_validator(v) for v in args.validator],
        fsync=args.fsync or DEFAULT_FSYNC,
        max_rollbacks=DEFAULT_MAX_ROLLBACKS if args.max_rollbacks is None else args.max_rollbacks,
        flip_flags=flags)


def run_generate_with_ledger(plan: LedgerPlan, engine, art, prompt, *, sampling, max_new_tokens, window=None,
                             stop=(), chunk_size=None, on_step=None):
    """Generate through a ``VerifyingSession`` writing ``plan.path``; print a ledger summary on
    stderr and return ``(GenerationResult of the live branch, SessionResult)``."""
    from fieldprint.runtime.faults import FaultError
    from fieldprint.runtime.policy import describe_policy
    from fieldprint.runtime.session import VerifyingSession

    def step_cb(rec):
        if on_step is not None:
            on_step(0, rec)

    session = VerifyingSession(
        engine, key=plan.key, ledger_path=plan.path, policy=plan.policy, sampling=sampling,
        max_new_tokens=max_new_tokens, window=window, stop=list(stop), chunk_size=chunk_size,
        validators=plan.validators, faults=plan.faults, model_commitment=getattr(art, "commitment", None),
        fsync=plan.fsync, max_rollbacks=plan.max_rollbacks, on_step=step_cb)
    try:
        out = session.run(prompt)
    except FaultError as e:  # a fault flag that cannot fire (e.g. a block the window evicted)
        if os.path.exists(plan.path):
            os.unlink(plan.path)  # this run's own ledger, cut short by bad input: leave nothing half-written
        raise ConfigError(f"{plan.flip_flags.get(e.flip, 'fault injection')}: {e}") from None
    rb = "; ".join(f"rollback to commit {r.to_commit} (step {r.to_step}, attempt {r.attempt})" for r in out.rollbacks)
    key = plan.key
    print(f"[ledger {out.ledger}: {out.records} records, {out.commits} commits ({describe_policy(plan.policy)}), "
          f"{len(out.rollbacks)} rollbacks{': ' + rb if rb else ''}, end {out.end_reason}; key {key.name}/"
          f"{key.verifier.key_id:08x}]", file=sys.stderr)
    unfired = [plan.flip_flags[f] for f in plan.faults.flips if f not in [a for a, _ in plan.faults.applied]]
    if unfired and out.end_reason != "error":
        print(f"note: {', '.join(unfired)} did not fire (the generation ended at step {len(out.tokens) - 1})",
              file=sys.stderr)
    return out.generation, out


def ledger_json(plan: LedgerPlan, out) -> dict:
    """The ``ledger`` object of ``generate --json``."""
    from fieldprint.runtime.policy import describe_policy

    return {
        "path": str(out.ledger), "records": out.records, "checkpoints": out.checkpoints, "commits": out.commits,
        "commit_policy": describe_policy(plan.policy),
        "rollbacks": [{"failed_commit": r.failed_commit, "to_commit": r.to_commit, "to_step": r.to_step,
                       "attempt": r.attempt, "reason": r.reason} for r in out.rollbacks],
        "end": out.end_reason, "error": out.error,
        "key": {"name": plan.key.name, "key_id": f"{plan.key.verifier.key_id:08x}"},
    }


def failure_message(out) -> str:
    """The one-line reason a generation whose ledger ends in ``error`` failed."""
    return (f"generation failed: {out.error or 'the runtime gave up'}; the ledger {out.ledger} ends with reason error "
            "(fieldprint-audit verify reports it incomplete)")
