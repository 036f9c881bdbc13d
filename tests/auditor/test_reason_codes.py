"""The reason-code table of docs/auditor.md lists exactly the codes the auditor's code can emit.

The codes are read from the source: the first argument of every error or divergence the
auditor and the ledger reader raise, and every reason the verifier assigns itself; the ledger
writer's refusals (``LedgerWriter``) are not verdicts and are left out."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "auditor").glob("*.py")) + [
    "spec/ledger_file.py", "spec/checkpoint.py", "spec/ledger.py"]
RAISERS = {"fail", "_fail", "_diverge", "Divergence", "FrameError", "SequenceError", "CheckpointError",
           "LedgerError", "EncodingError", "_Unreadable"}
NOT_VERDICTS = {"LedgerWriter"}  # classes whose errors refuse a write, never describe a ledger


def _strings(node) -> list[str]:
    """String constants a reason expression can take (``a``, ``x or "b"``, ``"a" if c else "b"``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.BoolOp):
        return [s for v in node.values for s in _strings(v)]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def _reason_targets(node: ast.Assign) -> list[str]:
    """Codes assigned to ``x.reason`` (also inside a tuple assignment)."""
    out = []
    for t in node.targets:
        if isinstance(t, ast.Attribute) and t.attr == "reason":
            out += _strings(node.value)
        elif isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple):
            for tt, vv in zip(t.elts, node.value.elts):
                if isinstance(tt, ast.Attribute) and tt.attr == "reason":
                    out += _strings(vv)
    return out


def emitted_codes() -> dict[str, set[str]]:
    codes: dict[str, set[str]] = {}

    def visit(node, path):
        if isinstance(node, ast.ClassDef) and node.name in NOT_VERDICTS:
            return
        found = []
        if isinstance(node, ast.Call) and node.args:
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            if name in RAISERS:
                found = _strings(node.args[0])
        elif isinstance(node, ast.Assign):
            found = _reason_targets(node)
        for c in found:
            if c:
                codes.setdefault(c, set()).add(path)
        for child in ast.iter_child_nodes(node):
            visit(child, path)

    for path in SOURCES:
        visit(ast.parse((ROOT / path).read_text(encoding="utf-8")), path)
    return codes


def documented_codes() -> list[str]:
    text = (ROOT / "docs/auditor.md").read_text(encoding="utf-8")
    section = text.split("\n## Reason codes\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)


def test_the_scan_finds_codes_of_every_stage():
    codes = emitted_codes()
    for c in ("frame-checksum", "checkpoint-root", "record-short", "replay-token", "commit-live-state",
              "fault-claim", "key-private", "end-error", "no-checkpoint"):
        assert c in codes, c
    assert "sealed" not in codes  # the writer's refusal of a sealed ledger is not a verdict


def test_reason_code_table_matches_the_code():
    documented = documented_codes()
    assert len(documented) == len(set(documented)), "a code is listed twice"
    emitted = emitted_codes()
    missing = sorted(set(emitted) - set(documented))
    stale = sorted(set(documented) - set(emitted))
    assert not missing, f"codes the auditor emits that docs/auditor.md does not list: {missing}"
    assert not stale, f"codes docs/auditor.md lists that no code emits: {stale}"
