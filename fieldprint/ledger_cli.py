"""The ledger side of the ``fieldprint`` command line: ``keygen`` and ``generate --ledger``.

    fieldprint keygen NAME [--out PREFIX]        writes PREFIX.key (private, 0600) and PREFIX.pub
    fieldprint generate ... --ledger out.fpl --key PREFIX.key [--commit-policy every=8,page-full]

``fieldprint/cli.py`` wires these in with ``register(subparsers)`` and
``add_generate_args(generate_parser)``; ``cmd_generate`` calls ``run_generate_with_ledger``
instead of ``engine.generate`` when ``--ledger`` is given. Key files use the C2SP signed-note
formats of ``spec.keys``: the private key is a signer string ``PRIVATE+KEY+name+id+key``, the
public key a verifier string ``name+id+key`` (what ``fieldprint-audit --trusted-key`` reads).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fieldprint.errors import ConfigError


# -- keygen ----------------------------------------------------------------------------------------
def register(subparsers) -> None:
    """Add the ``keygen`` subcommand."""
    k = subparsers.add_parser("keygen", help="create an Ed25519 key pair for signing ledgers")
    k.add_argument("name", help="key name, e.g. engine.example.com/prod (no spaces, no '+')")
    k.add_argument("--out", default=None, help="path prefix of the key files (default: the name's last part)")
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
    """Read a private key file (signer string, PKCS#8 PEM or raw seed); ConfigError if unusable."""
    from spec.keys import load_signing_key
    from spec.ledger import LedgerError

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"--key: cannot read {path}: {e.strerror}") from None
    try:
        return load_signing_key(data.strip() if data.startswith(b"PRIVATE+KEY+") else data, name)
    except LedgerError as e:
        raise ConfigError(f"--key: {path}: {e.message}") from None


# -- generate --ledger -----------------------------------------------------------------------------
def add_generate_args(parser: argparse.ArgumentParser) -> None:
    """Add the ledger options of ``fieldprint generate``."""
    g = parser.add_argument_group("signed ledger (verifying runtime)")
    g.add_argument("--ledger", help="write a signed ledger of the generation to this file (.fpl)")
    g.add_argument("--key", help="private key file from `fieldprint keygen` (needed with --ledger)")
    g.add_argument("--key-name", help="key name, for PEM or raw-seed key files (they carry none)")
    g.add_argument("--commit-policy", default=None,
                   help="when to commit: every=N, page-full, eot=IDS, stop=IDS|IDS, comma-separated "
                        "(default every=8; prefill and end always commit)")
    g.add_argument("--validator", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="policy validator over each commit's new text (repeatable)")
    g.add_argument("--fsync", choices=["every", "checkpoint", "none"], default="checkpoint",
                   help="when the ledger is flushed to disk (default: after each checkpoint)")
    g.add_argument("--max-rollbacks", type=int, default=8, help="give up (end reason error) after this many")
    g.add_argument("--inject-kv-flip", action="append", default=[], metavar="STEP[:BLOCK]",
                   help="demo/test: flip a bit of context block BLOCK (default 0) after token STEP")
    g.add_argument("--inject-anchor-flip", action="append", default=[], metavar="STEP[:PAGE]",
                   help="demo/test: flip a bit of anchor page PAGE (default 0) after token STEP")
    g.add_argument("--reject-commit", action="append", default=[], type=int, metavar="M",
                   help="demo/test: a validator that rejects commit number M")


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
    """Refuse inconsistent ledger options before any work starts."""
    if getattr(args, "ledger", None) is None:
        for flag in ("key", "commit_policy"):
            if getattr(args, flag, None):
                raise ConfigError(f"--{flag.replace('_', '-')} needs --ledger")
        return
    if not args.key:
        raise ConfigError("--ledger needs --key (create one with `fieldprint keygen NAME`)")
    if os.path.exists(args.ledger):
        raise ConfigError(f"--ledger: {args.ledger} exists (ledgers are never overwritten)")


def run_generate_with_ledger(args, engine, art, prompt, *, sampling, max_new_tokens, window=None, stop=(),
                             chunk_size=None, on_step=None):
    """Generate through a ``VerifyingSession`` writing ``args.ledger``; return the live branch as a
    ``GenerationResult`` (what ``engine.generate`` returns) and print a ledger summary on stderr."""
    from fieldprint.runtime.faults import FaultPlan, FlipAnchor, FlipKV
    from fieldprint.runtime.policy import DEFAULT_POLICY, PolicyError, describe_policy, parse_policy
    from fieldprint.runtime.session import VerifyingSession

    check_ledger_args(args)
    key = load_key(args.key, args.key_name)
    try:
        policy = parse_policy(args.commit_policy or DEFAULT_POLICY)
    except PolicyError as e:
        raise ConfigError(f"--commit-policy: {e}") from None
    flips = [FlipKV(*_flip_arg(t, "--inject-kv-flip")) for t in args.inject_kv_flip]
    flips += [FlipAnchor(*_flip_arg(t, "--inject-anchor-flip")) for t in args.inject_anchor_flip]
    faults = FaultPlan(flips=flips, reject_commits=set(args.reject_commit))
    validators = [_validator(v) for v in args.validator]

    def step_cb(rec):
        if on_step is not None:
            on_step(0, rec)

    session = VerifyingSession(
        engine, key=key, ledger_path=args.ledger, policy=policy, sampling=sampling, max_new_tokens=max_new_tokens,
        window=window, stop=list(stop), chunk_size=chunk_size, validators=validators, faults=faults,
        model_commitment=getattr(art, "commitment", None), fsync=args.fsync, max_rollbacks=args.max_rollbacks,
        on_step=step_cb)
    out = session.run(prompt)
    res = out.generation
    rb = "; ".join(f"rollback to commit {r.to_commit} (step {r.to_step}, attempt {r.attempt})" for r in out.rollbacks)
    print(f"[ledger {out.ledger}: {out.records} records, {out.commits} commits ({describe_policy(policy)}), "
          f"{len(out.rollbacks)} rollbacks{': ' + rb if rb else ''}, end {out.end_reason}; key {key.name}/"
          f"{key.verifier.key_id:08x}]", file=sys.stderr)
    return res
