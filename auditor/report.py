"""The auditor's verdict: one ``Report`` per ledger, as text for people or JSON for machines.

Verdicts and exit codes:

========== ==== ==========================================================================
verdict    exit meaning
========== ==== ==========================================================================
valid         0 sealed, signed by the trusted key, every record checks, the replay matches
invalid       1 a frame, record, signature, checkpoint, commitment or replayed value is wrong
unreadable    2 an input cannot be used: the ledger file is missing or not a ledger, the
                model artifact or the key cannot be read
incomplete    3 not sealed (a crash or a torn tail), but its signed prefix verifies and
                replays; ``verified_records`` says how far
========== ==== ==========================================================================

For several ledgers the exit code is the most severe one: 2, then 1, then 3, then 0.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

EXIT = {"valid": 0, "invalid": 1, "unreadable": 2, "incomplete": 3}
SEVERITY = ["valid", "incomplete", "invalid", "unreadable"]  # least to most severe


@dataclass
class Report:
    """Everything the auditor found about one ledger."""

    ledger: str
    verdict: str = "unreadable"
    reason: str = ""
    message: str = ""
    divergence: dict | None = None  # record, offset, step, commit, block, layer, field, expected, actual
    status: str = ""  # structural status: complete | truncated | corrupt | invalid
    key: str | None = None  # name/key ID of the key the checkpoints were checked against
    records: int = 0
    verified_records: int = 0  # records covered by the last checkpoint that verified
    unsigned_records: int = 0
    checkpoints: int = 0
    commits: int = 0
    rollbacks: list[dict] = field(default_factory=list)
    failed_validations: list[dict] = field(default_factory=list)
    explained_divergences: list[dict] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    text: str | None = None
    replay: dict = field(default_factory=dict)  # steps, seconds, tokens_per_s, mode, engine, device
    notes: list[str] = field(default_factory=list)
    checks: str = ""  # "replay" (everything) or "records" (--no-replay: what follows from the records)
    not_checked: list[str] = field(default_factory=list)  # what a --no-replay verdict does not cover
    fault_history: list[dict] = field(default_factory=list)  # per explained divergence: what is proven
    window: dict | None = None  # `window_info` of the genesis: the window used, the model's, override

    @property
    def exit_code(self) -> int:
        return EXIT[self.verdict]

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["exit_code"] = self.exit_code
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=_jsonable)


def _jsonable(v):
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def window_info(inputs) -> dict:
    """Return the attention window of a genesis's replay inputs: the window the run used, the
    model's own (None = full attention) and whether the run overrode the model's window."""
    return {"window": inputs.window or None, "model_window": inputs.model_window or None,
            "override": inputs.window != inputs.model_window}


def window_text(w: dict) -> str:
    """Return one line describing a `window_info` dict."""
    used = f"{w['window']} tokens" if w["window"] else "none (full attention)"
    if not w["override"]:
        return f"window: {used}, the model's own"
    model = f"{w['model_window']} tokens" if w["model_window"] else "none (full attention)"
    return f"window: {used}, an OVERRIDE of the model's window ({model}): not the attention the model was trained with"


def combined_exit(reports: list[Report]) -> int:
    """Return the exit code of the most severe verdict (0 for no reports)."""
    if not reports:
        return 0
    return EXIT[max((r.verdict for r in reports), key=SEVERITY.index)]


def _short(v) -> str:
    if isinstance(v, bytes):
        v = v.hex()
    s = str(v)
    return s if len(s) <= 24 else s[:16] + "…"


ENGINE_NAMES = {"ref": "reference engine", "fast": "fast engine"}


def replayed_on(replay: dict) -> str:
    """Say how a replay ran, e.g. "as prefill on the CPU reference engine"."""
    engine = ENGINE_NAMES.get(replay.get("engine", "ref"), f"{replay.get('engine')} engine")
    device = str(replay.get("device", "cpu")).split(":")[0].upper()
    return f"as {replay.get('mode', 'stepwise')} on the {device} {engine}"


def render_text(r: Report) -> str:
    """Return a few lines for people: verdict first, then where and why."""
    head = {"valid": "VALID", "invalid": "INVALID", "unreadable": "UNREADABLE", "incomplete": "INCOMPLETE"}[r.verdict]
    if r.checks == "records" and r.verdict in ("valid", "incomplete"):
        head += " (records only, not replayed)"
    lines = [f"{r.ledger}: {head}" + (f" [{r.reason}]" if r.reason else "")]
    if r.message:
        lines.append(f"  {r.message}")
    d = r.divergence
    if d:
        where = [f"{k} {d[k]}" for k in ("record", "offset", "step", "commit", "page_kind", "block", "layer", "field")
                 if d.get(k) is not None]
        if where:
            lines.append("  at " + ", ".join(where))
        if d.get("expected") is not None or d.get("actual") is not None:
            lines.append(f"  ledger: {_short(d.get('expected'))}   replay/recomputed: {_short(d.get('actual'))}")
    if r.window is not None:
        lines.append(f"  {window_text(r.window)}")
    if r.records:
        lines.append(f"  {r.records} records ({r.verified_records} signed), {r.checkpoints} checkpoints, "
                     f"{r.commits} commits, {len(r.rollbacks)} rollbacks" + (f", key {r.key}" if r.key else ""))
    for rb in r.rollbacks:
        lines.append(f"  rollback to commit {rb['to_commit']} (step {rb['to_step']}), attempt {rb['attempt']}: "
                     f"{rb['reason']}")
    for e in r.explained_divergences:
        lines.append(f"  abandoned branch diverged (explained): {e['message']}")
    for f in r.fault_history:
        lo, hi = f["unverified"]
        lines.append(f"  fault history: records before {lo} replay exactly; records {lo}..{hi} (from step {f['step']}) "
                     f"follow the fault commit {f['fault_commit']}'s kv-rehash reported and are not verified: the "
                     "ledger's word that a fault happened is not proven (docs/auditor.md, threat model)")
    if r.checks == "records":
        lines.append("  checked without replay: signatures, structure, model commitment and the rules that follow "
                     "from the records; not checked: " + "; ".join(n.split(":")[0] for n in r.not_checked))
    if r.replay.get("steps"):
        lines.append(f"  replayed {r.replay['steps']} steps in {r.replay['seconds']:.2f} s "
                     f"({r.replay['tokens_per_s']:.1f} tokens/s) {replayed_on(r.replay)}")
    if r.verdict == "valid" and r.text is not None:
        lines.append(f"  text: {r.text!r}")
    for n in r.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)
