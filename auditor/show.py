"""``fieldprint-audit show``: a readable timeline of a ledger's commits, validations and rollbacks.

The timeline is built from the records alone (no model, no key needed); with ``--model`` the
tokens are also shown as text, with ``--trusted-key`` the structural verdict is added. Tokens
and pages between commits are summarised by the commit that covers them. A rollback lists the
commits it abandoned; the abandoned records stay in the ledger and in this timeline.
"""
from __future__ import annotations

import json
import os

from auditor.report import window_info, window_text
from spec.ledger import Commit, End, Genesis, KVPage, LedgerError, Rollback, TokenStep, Validation
from spec.ledger_file import read_ledger


def _detok(tokenizer, tokens):
    if tokenizer is None:
        return None
    return tokenizer.decode(list(tokens), skip_special_tokens=True)


def timeline(records: list, tokenizer=None) -> list[dict]:
    """Return one event per genesis, commit, validation, rollback and end (JSON-friendly)."""
    events, live, steps, pages = [], [], 0, 0
    attempts = {}
    for r in records:
        if isinstance(r, Genesis):
            s = r.sampling
            events.append(dict(type="genesis", seq=r.seq, model=r.model_commitment.hex(), sequence=r.sequence,
                               prompt_length=r.prompt_length, anchors=r.anchor_commitment != bytes(32),
                               sampling=f"T={s.temperature_num}/{s.temperature_den} top_k={s.top_k} "
                                        f"top_p={s.top_p_num}/{s.top_p_den} seed={s.seed} max={s.max_new_tokens}",
                               policy=r.commit_policy.model_dump(), engine=r.engine.model_dump(), key=r.key_name,
                               window=window_info(r.inputs)))
        elif isinstance(r, TokenStep):
            steps += 1
            attempts[r.step] = r.attempt
        elif isinstance(r, KVPage):
            pages += 1
        elif isinstance(r, Commit):
            live.append(r.commit)
            events.append(dict(type="commit", seq=r.seq, commit=r.commit, reason=r.reason, steps=[r.first_step, r.end_step],
                               attempt=attempts.get(r.first_step, attempts.get(r.end_step - 1, 0)), tokens=list(r.tokens),
                               text=_detok(tokenizer, r.tokens), pages=r.page_count, live_state=r.live_state.hex()))
        elif isinstance(r, Validation):
            events.append(dict(type="validation", seq=r.seq, commit=r.commit, validator=r.validator, passed=r.passed,
                               detail=r.detail))
        elif isinstance(r, Rollback):
            cut = live.index(r.to_commit) + 1 if r.to_commit in live else len(live)
            abandoned, live = live[cut:], live[:cut]
            events.append(dict(type="rollback", seq=r.seq, to_commit=r.to_commit, to_step=r.to_step, attempt=r.attempt,
                               abandoned=abandoned, reason=r.reason, live_state=r.live_state.hex()))
        elif isinstance(r, End):
            events.append(dict(type="end", seq=r.seq, reason=r.reason, num_tokens=r.num_tokens, live_commits=list(live)))
    return events


def render(events: list[dict], status: str, path: str, verdict: str | None = None) -> str:
    """Return the timeline as text, one line per event."""
    out = [f"ledger {path}  (file: {status}" + (f", structure: {verdict}" if verdict else "") + ")"]
    live_final = next((e["live_commits"] for e in events if e["type"] == "end"), None)
    for e in events:
        t = e["type"]
        if t == "genesis":
            out.append(f"#{e['seq']:<4} GENESIS   model {e['model'][:16]}…  prompt {e['prompt_length']} tokens"
                       f"{'  + anchors' if e['anchors'] else ''}  sequence {e['sequence']}")
            out.append(f"            sampling {e['sampling']}")
            out.append(f"            {window_text(e['window'])}")
            p = e["policy"]
            out.append(f"            commit policy: every {p['every_n_tokens'] or '-'} tokens, page-full "
                       f"{'on' if p['on_page_full'] else 'off'}, end-of-turn {list(p['end_of_turn_tokens']) or '-'}, "
                       f"stop sequences {[list(s) for s in p['stop_sequences']] or '-'}")
            out.append(f"            engine {e['engine']['name']} {e['engine']['version']} ({e['engine']['build']}), "
                       f"key {e['key']}")
        elif t == "commit":
            mark = "" if live_final is None or e["commit"] in live_final else "  (abandoned)"
            text = f"  {e['text']!r}" if e["text"] is not None else f"  tokens {e['tokens']}"
            out.append(f"#{e['seq']:<4} COMMIT {e['commit']:<3} steps [{e['steps'][0]}, {e['steps'][1]}) attempt "
                       f"{e['attempt']} {e['reason']}, {e['pages']} pages, state {e['live_state'][:12]}…{mark}")
            out.append(f"            {text.strip()}")
        elif t == "validation":
            ok = "passed" if e["passed"] else "FAILED"
            out.append(f"#{e['seq']:<4}   {'✓' if e['passed'] else '✗'} commit {e['commit']} {e['validator']} {ok}: "
                       f"{e['detail']}")
        elif t == "rollback":
            out.append(f"#{e['seq']:<4} ROLLBACK  to commit {e['to_commit']} (resume at step {e['to_step']}, attempt "
                       f"{e['attempt']}); abandoned commits {e['abandoned']}")
            out.append(f"            why: {e['reason']}")
        elif t == "end":
            out.append(f"#{e['seq']:<4} END       {e['reason']} after {e['num_tokens']} tokens; live commits "
                       f"{e['live_commits']}")
    if not any(e["type"] == "end" for e in events):
        out.append("      (no end record: the generation did not finish or the file is cut short)")
    return "\n".join(out)


def show(path, *, tokenizer=None, trusted_key=None, as_json: bool = False) -> tuple[str, int]:
    """Return (the rendered timeline, exit code): 0 readable, 2 not a readable ledger."""
    from auditor.verify import UNREADABLE_FRAMES

    try:
        read = read_ledger(path)  # streamed; frame sizes bounded by the genesis
    except LedgerError as e:
        return f"error: {e.message}", 2
    if read.hash_profile is None and read.reason in UNREADABLE_FRAMES:
        return f"error: {os.fspath(path)} is not a Fieldprint ledger ({read.reason})", 2
    verdict = None
    if trusted_key is not None:
        from spec.ledger_file import verify_ledger_structure

        st = verify_ledger_structure(read, trusted_key)
        verdict = st.status + (f" ({st.reason})" if st.reason else "")
    events = timeline(read.records, tokenizer)
    status = read.status + (f" at offset {read.offset}: {read.reason}" if read.status != "complete" else "")
    if as_json:
        return json.dumps({"ledger": os.fspath(path), "file_status": read.status, "reason": read.reason,
                           "structure": verdict, "events": events}), 0
    return render(events, status, os.fspath(path), verdict), 0
