"""The records check (auditor/records.py) accepts every honest ledger: windows, rollbacks,
faults, policies and stop conditions together, with and without the replay."""
from __future__ import annotations

import pytest

import fp_fixtures as fx
from fieldprint.runtime.faults import FaultPlan, FlipKV
from spec.commits import make_policy

CONFIGS = {
    "window-fault": dict(window=8, max_new_tokens=24, faults=FaultPlan(flips=[FlipKV(step=9, block=1, byte=7, bit=1)])),
    # block 1 corrupted after the commit at step 19, freed by the window at step 21: its re-hash
    # before it goes fails, and the failure names a block that is no longer live at the commit
    "window-fault-evicted": dict(window=8, max_new_tokens=28,
                                 faults=FaultPlan(flips=[FlipKV(step=20, block=1, byte=7, bit=1)])),
    "window-rejected": dict(window=12, max_new_tokens=20, faults=FaultPlan(reject_commits={1, 3})),
    "page-full-eos": dict(policy=make_policy(3, page_full=True), eos_token_ids=[5, 9, 17], max_new_tokens=30),
    "stop-end-of-turn": dict(policy=make_policy(0, end_of_turn_tokens=[7, 11]), stop=["w3"], max_new_tokens=30),
    "no-anchors-long-prompt": dict(anchors=None, prompt=list(range(1, 40)), window=16, max_new_tokens=12),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_honest_ledgers_pass_the_records_check(tmp_path, name):
    out = fx.generate(tmp_path / f"{name}.fpl", **CONFIGS[name])
    assert bool(out.rollbacks) == ("faults" in CONFIGS[name]) and out.end_reason != "error"
    for replay in (False, True):
        rep = fx.verify(out.ledger, replay=replay)
        assert rep.verdict == "valid", (replay, rep.to_json())
        assert rep.checks == ("replay" if replay else "records")
