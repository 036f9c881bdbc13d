"""Verify a ledger end to end: bytes, signatures, checkpoints, sequence, then a full replay.

``verify_ledger`` runs, in order, stopping at the first failure:

1. read the file (``spec.ledger_file.read_ledger``, streamed): frames, their sizes and checksums;
2. ``spec.ledger_file.verify_ledger_structure`` with the trusted key: genesis key, every
   checkpoint's signature, origin, size, root, ``prev`` chain and consistency with the previous
   one, the record sequence rules (steps, attempts, commit coverage, rollback targets);
3. the replay (``auditor.replay``) of the records covered by the last valid checkpoint, on
   the CPU reference engine: commitments, every token, logits digest and page digest, commit
   policy, live states, rollback semantics.

Records after the last checkpoint are not signed; they are counted, never trusted. The
result is a ``Report`` (``auditor.report``) and never an exception: an input that cannot be
read gives the verdict ``unreadable``.
"""
from __future__ import annotations

import functools
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from auditor.records import NOT_CHECKED, RecordChecker
from auditor.replay import Replayer
from auditor.teacher import DEFAULT_MODE, MODES
from auditor.report import Report, window_info
from spec.keys import SIGNER_PREFIX, Verifier, parse_verifier
from spec.commits import REHASH_VALIDATOR
from spec.ledger import Commit, End, Genesis, LedgerError, Rollback, TokenStep, Validation
from spec.ledger_file import read_ledger, verify_ledger_structure

UNREADABLE_FRAMES = ("bad-magic", "truncated-header", "io")


class _Unreadable(Exception):
    def __init__(self, reason: str, message: str):
        self.reason, self.message = reason, message


def load_trusted_key(key) -> Verifier:
    """Return a Verifier from a Verifier, a verifier string, or a file holding one."""
    if isinstance(key, Verifier):
        return key
    text = str(key)
    source = "--trusted-key"
    if os.path.exists(text):
        source = f"--trusted-key {text}"
        try:
            text = Path(text).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise _Unreadable("key-io", f"cannot read trusted key {key}: {e}") from None
    stripped = text.strip()
    if stripped.startswith(SIGNER_PREFIX) or stripped.startswith("-----BEGIN") or "PRIVATE KEY" in stripped[:64]:
        raise _Unreadable("key-private", f"{source} is a PRIVATE key; it expects the engine's public key file (the "
                          "KEY.pub that `fieldprint keygen` writes next to KEY.key: one line name+keyid+base64). "
                          "Keep the private key secret: an auditor never needs it")
    try:
        return parse_verifier(text)
    except LedgerError as e:
        raise _Unreadable("key-format", f"{source[:120]}: {e.message} (expected the engine's public key file, the "
                          ".pub that `fieldprint keygen` writes)") from None


@functools.lru_cache(maxsize=4)
def _load_artifact_cached(path: str):
    from fieldprint.artifact import load_artifact

    return load_artifact(path)


def load_model(model):
    """Return (QuantizedModel, tokenizer, commitment) from an artifact path or a loaded artifact."""
    if isinstance(model, (str, os.PathLike)):
        from fieldprint.errors import FieldprintError

        try:
            model = _load_artifact_cached(os.fspath(model))
        except FieldprintError as e:
            raise _Unreadable("model-artifact", str(e)) from None
        except OSError as e:
            raise _Unreadable("model-artifact", f"cannot read model artifact {model}: {e}") from None
    return model.model, getattr(model, "tokenizer", None), model.commitment


def anchor_override(anchors_text: str | None, tokenizer) -> list[int] | None:
    """Return the anchor tokens of ``anchors_text`` (tokenized like the engine does), or None."""
    if anchors_text is None:
        return None
    if tokenizer is None:
        raise _Unreadable("anchors", "an anchor text needs the model's tokenizer")
    return list(tokenizer.encode(anchors_text, add_special_tokens=True).ids)


def _summary(report: Report, records: list) -> None:
    report.commits = sum(isinstance(r, Commit) for r in records)
    report.rollbacks = [dict(to_commit=r.to_commit, to_step=r.to_step, attempt=r.attempt, reason=r.reason)
                        for r in records if isinstance(r, Rollback)]
    report.failed_validations = [dict(commit=r.commit, validator=r.validator, detail=r.detail)
                                 for r in records if isinstance(r, Validation) and not r.passed]


class _Bar:
    """A rich progress bar over replayed steps (stderr; transient)."""

    def __init__(self, total: int, enabled: bool, label: str):
        self.total, self.enabled, self.label, self.bar = total, enabled, label, None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(f"replaying {self.label}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("replay", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def verify_ledger(path, *, model, trusted_key, anchors_text: str | None = None, replay: bool = True,
                  progress: bool = False, replay_mode: str = DEFAULT_MODE, engine: str = "ref",
                  device: str = "cpu") -> Report:
    """Verify one ledger file; return its Report (see the module docstring).

    ``replay_mode`` is where the replay's steps come from (``auditor.teacher``: "prefill", the
    recorded tokens fed as prefill, or "stepwise"); ``engine`` and ``device`` what it runs on
    (the CPU reference engine by default; "fast" on "cuda" for models too large for a CPU)."""
    if replay_mode not in MODES:
        raise ValueError(f"replay_mode must be one of {', '.join(MODES)}, got {replay_mode!r}")
    report = Report(ledger=os.fspath(path))
    try:
        return _verify(report, path, model, trusted_key, anchors_text, replay, progress,
                       dict(replay=replay_mode, engine=engine, device=device))
    except _Unreadable as e:
        report.verdict, report.reason, report.message = "unreadable", e.reason, e.message
        return report
    except Exception as e:  # a bug: a traceback would exit 1, which reads as the verdict "invalid"
        report.verdict, report.reason = "unreadable", "auditor-error"
        report.message = (f"the auditor failed on this input ({type(e).__name__}: {e}): a bug in the auditor, not a "
                          "verdict on the ledger")
        return report


def _verify(report, path, model, trusted_key, anchors_text, replay, progress, how) -> Report:
    try:
        read = read_ledger(path)  # streamed, frame sizes bounded by the genesis: never the whole file in memory
    except LedgerError as e:
        raise _Unreadable("io", f"cannot read ledger {e.message.removeprefix('cannot read ')}") from None
    if read.hash_profile is None and read.reason in UNREADABLE_FRAMES:
        raise _Unreadable(read.reason, f"{os.fspath(path)} is not a Fieldprint ledger ({read.error.message})")
    key = load_trusted_key(trusted_key)
    report.key = f"{key.name}/{key.key_id:08x}"
    offsets = {}
    n = 0
    for e in read.entries:
        if e.record is not None:
            offsets[n] = e.offset
            n += 1
    st = verify_ledger_structure(read, key)
    report.status = st.status
    report.records = len(read.records)
    report.checkpoints = len(st.checkpoints)
    report.verified_records = st.verified_size
    report.unsigned_records = max(0, len(st.records) - st.verified_size)
    _summary(report, st.records[:st.verified_size])
    if st.records and isinstance(st.records[0], Genesis):
        report.window = window_info(st.records[0].inputs)
    if st.status in ("corrupt", "invalid"):
        e = st.error
        report.verdict, report.reason = "invalid", st.reason
        report.message = e.message if e is not None else st.reason
        report.divergence = {"record": getattr(e, "index", None), "offset": getattr(e, "offset", None),
                             "field": "frame" if st.status == "corrupt" else "record"}
        return report
    if st.status == "truncated":
        report.notes.append(f"ledger is not sealed ({st.reason}); {report.unsigned_records} records after the last "
                            "checkpoint are unsigned and not replayed")
    if st.verified_size == 0:
        report.verdict, report.reason = "incomplete", st.reason or "no-checkpoint"
        report.message = "no checkpoint verifies: nothing of this ledger is signed"
        return report
    records = st.records[:st.verified_size]
    qm, tokenizer, commitment = load_model(model)  # with or without the replay: the commitment is checked
    checked = RecordChecker(commitment=commitment, vocab_size=qm.config.vocab_size,
                            max_position=qm.config.max_position, tokenizer=tokenizer, offsets=offsets,
                            model_window=qm.config.sliding_window).run(records)
    report.notes += checked.notes
    d = checked.divergence
    res = None
    if d is not None:  # replay only what precedes the first record-level violation: nothing past it is sane
        records = records[:d.record]
    if replay and records:
        anchors = anchor_override(anchors_text, tokenizer)
        total = sum(isinstance(r, TokenStep) for r in records)
        t0 = time.perf_counter()
        with _Bar(total, progress, os.path.basename(os.fspath(path))) as advance:
            res = Replayer(qm, tokenizer, commitment, anchor_tokens=anchors, offsets=offsets,
                           progress=advance, **how).run(records, cut=d is not None)
        secs = time.perf_counter() - t0
        report.replay = {"steps": res.steps_replayed, "seconds": round(secs, 4),
                         "tokens_per_s": round(res.steps_replayed / secs, 2) if secs > 0 else 0.0,
                         "mode": how["replay"], "engine": how["engine"], "device": how["device"]}
        report.checks = "replay"
        report.explained_divergences = [x.to_dict() for x in res.explained]
        report.fault_history = res.fault_history
        report.notes += res.notes
        if res.divergence is not None and (d is None or (res.divergence.record or 0) <= (d.record or 0)):
            d = res.divergence  # the first divergence of the two; the replay's on a tie (it says more)
    elif not replay:
        report.checks = "records"
        report.not_checked = list(NOT_CHECKED)
        report.notes.append("replay skipped (--no-replay): checked the model commitment and every rule that follows "
                            "from the records; NOT checked: " + "; ".join(NOT_CHECKED))
    if d is not None:
        report.verdict, report.reason, report.message = "invalid", d.reason, d.message
        report.divergence = d.to_dict()
        if st.status == "truncated":
            report.notes.append("the ledger is not sealed; a run that crashed after a fault, before the runtime signed "
                                "the failed validation that detected it, leaves signed records that do not replay: "
                                "the auditor cannot tell them from a wrong computation")
        return report
    if res is not None:
        report.tokens, report.text = res.live_tokens, res.text
    end = records[-1] if isinstance(records[-1], End) else None
    if end is not None and end.reason == "error":
        report.verdict, report.reason = "incomplete", "end-error"
        report.message = (f"the generation ended with reason error after {end.num_tokens} tokens (the runtime could "
                          f"not go on); its {st.verified_size} signed records verify"
                          + (" and replay" if res is not None else "") + ", but it did not finish")
    elif st.status == "complete":
        report.verdict = "valid"
    else:
        report.verdict, report.reason = "incomplete", st.reason
        report.message = (f"the signed prefix ({st.verified_size} records) verifies"
                          + (" and replays" if res is not None else "") + "; the generation did not finish")
    if res is not None and res.unresolved_fault is not None:
        report.message += (f"; the fault commit {res.unresolved_fault}'s {REHASH_VALIDATOR} validation detected "
                           "was not rolled back")
    return report


def _verify_one(args):
    path, kw = args
    return verify_ledger(path, **kw)


def ledger_paths(targets) -> list[str]:
    """Expand files and folders (every ``*.fpl`` inside, sorted) into ledger paths."""
    out = []
    for t in targets:
        p = Path(t)
        out += sorted(str(x) for x in p.glob("*.fpl")) if p.is_dir() else [str(p)]
    return out


def verify_many(paths, *, jobs: int | None = None, **kw) -> list[Report]:
    """Verify several ledgers in parallel processes (one model load per process)."""
    paths = list(paths)
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be an integer >= 1 (None: one process per CPU), got {jobs!r}")
    if len(paths) <= 1 or jobs == 1:
        return [verify_ledger(p, **kw) for p in paths]
    jobs = min(len(paths), jobs or os.cpu_count() or 1)
    kw = dict(kw, progress=False)
    if isinstance(kw.get("trusted_key"), Verifier):
        kw["trusted_key"] = kw["trusted_key"].to_string()
    # spawn, not fork: forking a process that holds torch's thread pools can deadlock the children
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_verify_one, [(p, kw) for p in paths]))
