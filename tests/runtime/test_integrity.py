"""Issue 7, holes 0 and 2: every KV fault is caught at the first commit after it, and an honest
ledger verifies whatever the window, prefill chunking, anchors, stop strings and commit policy.

Hole 0: a bit flipped in the copy-on-write copy of a committed page (the live page after the
first write past a commit) escaped the commit's re-hash, which read the untouched snapshot,
and was hashed into the next commit as if computed. Hole 2: with a window and a chunked
prefill the engine evicted a block between chunks, the replay (which does not know the chunk
size) did not, and the freed page was reused before it was hashed.
"""
from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fp_fixtures as fx
from fieldprint.runtime.faults import FaultPlan, FlipKV
from fieldprint_ref.paging import blocks_for, dead_blocks
from spec.commits import REHASH_VALIDATOR, make_policy
from spec.ledger import Commit, KVEvict, KVPage, TokenStep, Validation
from spec.ledger_file import read_ledger
from spec.sampling import SamplingParams

PT = 16
NEW = 12  # tokens per generation
# the tiny model's page: [1 layer, K|V, 16 slots, 1 kv head, 16 + 4 bytes]
ROW_BYTES = 20
PAGE_BYTES = 2 * PT * ROW_BYTES
# each hypothesis example generates and replays a ledger or two: a handful is the CI budget
FEW = max(3, settings.default.max_examples // 6)

POLICIES = {"every=3": make_policy(3), "every=5": make_policy(5), "page-full": make_policy(0, page_full=True),
            "every=4,page-full": make_policy(4, page_full=True)}


def prompt_of(n: int) -> list[int]:
    return [(7 * i + 3) % 60 + 1 for i in range(n)]


def records(path):
    return read_ledger(path).records


def first_commit_at_or_after(path, step: int) -> int:
    """Number of the first commit of attempt 0 whose segment ends at or after ``step``."""
    return next(r.commit for r in records(path) if isinstance(r, Commit) and r.end_step - 1 >= step)


def slot_of(byte: int) -> int:
    return byte // ROW_BYTES % PT


# -- hole 0 --------------------------------------------------------------------------------------


def test_flip_in_the_copy_on_write_copy_of_a_committed_page_is_caught(tmp_path):
    # 19-token prompt, commits every 4: commit 0 records block 1 with 3 slots; step 1 writes slot 3,
    # so the engine copies block 1's page (shared with commit 0's snapshot) and the flip at step 2
    # lands in the live copy. On 2976e80 this run reported no rollback and the auditor said INVALID.
    out = fx.generate(tmp_path / "cow.fpl", faults=FaultPlan(flips=[FlipKV(step=2, block=1, byte=5, bit=1)]))
    assert [(r.failed_commit, r.to_commit) for r in out.rollbacks] == [(1, 0)]
    failed = [r for r in records(out.ledger) if isinstance(r, Validation) and not r.passed]
    assert [(f.commit, f.validator) for f in failed] == [(1, REHASH_VALIDATOR)]
    assert "context block 1" in failed[0].detail
    rep = fx.verify(out.ledger)
    assert rep.verdict == "valid", rep.message
    assert out.tokens == fx.reference_tokens(fx.PROMPT, [(out.rollbacks[0].to_step, 1)])


def test_flip_in_a_page_the_window_frees_before_the_commit_is_caught(tmp_path):
    # window 4, commits at prefill, page fills and the end. Block 1 (positions 16..31) fills at
    # step 13, a page-full commit; the flip after step 14 corrupts its last slot, which steps 15
    # and 16 attend over; block 1 is evicted at step 17, before the next commit (step 29). Only the
    # copy the runtime takes just before the eviction shows the fault.
    out = fx.generate(tmp_path / "evict.fpl", prompt=list(range(1, 20)), anchors=None, window=4,
                      max_new_tokens=30, policy=make_policy(0, page_full=True),
                      faults=FaultPlan(flips=[FlipKV(step=14, block=1, byte=15 * ROW_BYTES, bit=6)]))
    recs = records(out.ledger)
    assert [r.end_step - 1 for r in recs if isinstance(r, Commit)][:3] == [0, 13, 29]
    evicted_at = [sum(isinstance(x, TokenStep) for x in recs[:i]) - 1 for i, r in enumerate(recs)
                  if isinstance(r, KVEvict) and 1 in r.blocks]
    assert evicted_at[0] == 17  # (counted in ledger order: the retry evicts it again)
    assert [(r.failed_commit, r.to_commit) for r in out.rollbacks] == [(2, 1)]
    rep = fx.verify(out.ledger)
    assert rep.verdict == "valid", rep.message


@st.composite
def flips(draw):
    prompt_len = draw(st.integers(1, 40))
    window = draw(st.sampled_from([None, None, 8, 20]))
    step = draw(st.integers(1, NEW - 1))  # a fault in the prefill commit has no good commit to go back to
    cached = prompt_len + step  # context tokens in the pool right after step `step`
    lo = len(dead_blocks(cached - 1, window, PT))  # blocks the window evicted before step `step`
    block = lo + draw(st.integers(0, 10**6)) % (blocks_for(cached, PT) - lo)
    return dict(prompt_len=prompt_len, window=window, step=step, block=block,
                byte=draw(st.integers(0, PAGE_BYTES - 1)), bit=draw(st.integers(0, 7)),
                policy=draw(st.sampled_from(sorted(POLICIES))), greedy=draw(st.booleans()),
                anchors=draw(st.booleans()))


@settings(max_examples=FEW)
@example(dict(prompt_len=19, window=None, step=2, block=1, byte=5, bit=1, policy="every=3", greedy=False,
              anchors=True))
@example(dict(prompt_len=5, window=None, step=10, block=0, byte=0, bit=0, policy="every=5", greedy=True,
              anchors=False))  # the issue's `every=8 --inject-kv-flip 10` on a short prompt
@given(case=flips())
def test_every_flip_is_caught_at_the_first_commit_after_it_and_the_ledger_verifies(tmp_path_factory, case):
    path = tmp_path_factory.mktemp("flip") / "f.fpl"
    anchors = fx.ANCHORS if case["anchors"] else None
    sampling = SamplingParams() if case["greedy"] else SamplingParams(temperature="4/5", seed=7)
    flip = FlipKV(case["step"], case["block"], case["byte"], case["bit"])
    out = fx.generate(path, prompt=prompt_of(case["prompt_len"]), anchors=anchors, window=case["window"],
                      policy=POLICIES[case["policy"]], sampling=sampling, max_new_tokens=NEW,
                      faults=FaultPlan(flips=[flip]))
    rep = fx.verify(path)
    assert rep.verdict == "valid", rep.message
    first = first_commit_at_or_after(path, flip.step)
    commit_step = next(r.end_step - 1 for r in records(path) if isinstance(r, Commit) and r.commit == first)
    # the one fault there is nothing to see of: a flip in a slot not yet written, which a step
    # before the commit overwrites whole (no query reads a slot before it is written, so the
    # state is exactly the computed one); positions [0, prompt + s) are written after step s
    pos = flip.block * PT + slot_of(flip.byte)
    erased = case["prompt_len"] + flip.step <= pos < case["prompt_len"] + commit_step
    if erased:
        assert not out.rollbacks
        schedule = []
    else:
        assert [r.failed_commit for r in out.rollbacks] == [first]
        bad = [(v.commit, v.validator) for v in records(path) if isinstance(v, Validation) and not v.passed]
        assert bad == [(first, REHASH_VALIDATOR)]
        schedule = [(out.rollbacks[0].to_step, 1)]
    assert out.tokens == fx.reference_tokens(prompt_of(case["prompt_len"]), schedule, anchors=anchors,
                                             max_new_tokens=NEW, sampling=sampling, window=case["window"])


# -- hole 2 --------------------------------------------------------------------------------------


def test_window_16_chunk_8_prompt_38_verifies_and_chunking_changes_no_record(tmp_path):
    # On 2976e80: kv_evict [0] after step 0 (the replay evicts at step 1: `replay-evict`), and the
    # kv_page of block 0 carried block 2's digest (its page was freed and reused mid-prefill).
    kw = dict(prompt=prompt_of(38), anchors=None, window=16, max_new_tokens=8)
    chunked = fx.generate(tmp_path / "chunked.fpl", chunk_size=8, **kw)
    whole = fx.generate(tmp_path / "whole.fpl", **kw)
    recs = records(chunked.ledger)
    first_evict = next(i for i, r in enumerate(recs) if isinstance(r, KVEvict))
    assert sum(isinstance(r, TokenStep) for r in recs[:first_evict]) == 2  # freed before step 1, not 0
    assert open(chunked.ledger, "rb").read() == open(whole.ledger, "rb").read()
    rep = fx.verify(chunked.ledger)
    assert rep.verdict == "valid", rep.message


@settings(max_examples=FEW)
@example(prompt_len=38, window=16, chunk=8, anchors=False, stop=False, policy="every=3")
@example(prompt_len=33, window=1, chunk=3, anchors=True, stop=True, policy="page-full")
@given(prompt_len=st.integers(1, 48), window=st.one_of(st.none(), st.integers(1, 40)),
       chunk=st.integers(1, 20), anchors=st.booleans(), stop=st.booleans(), policy=st.sampled_from(sorted(POLICIES)))
def test_honest_ledgers_verify_and_do_not_depend_on_chunking(tmp_path_factory, prompt_len, window, chunk, anchors,
                                                              stop, policy):
    d = tmp_path_factory.mktemp("honest")
    kw = dict(prompt=prompt_of(prompt_len), anchors=fx.ANCHORS if anchors else None, window=window,
              policy=POLICIES[policy], max_new_tokens=NEW, stop=["w31", "w17"] if stop else [])
    chunked = fx.generate(d / "chunked.fpl", chunk_size=chunk, **kw)
    whole = fx.generate(d / "whole.fpl", **kw)
    assert chunked.end_reason != "error" and not chunked.rollbacks
    assert open(chunked.ledger, "rb").read() == open(whole.ledger, "rb").read()
    rep = fx.verify(chunked.ledger)
    assert rep.verdict == "valid", rep.message


def test_a_page_freed_and_reused_before_its_step_is_recorded_ends_in_error_not_a_wrong_digest(tmp_path):
    # An engine that evicts between prefill chunks (what the reference engine did on 2976e80)
    # frees block 0 and reuses its page for block 2 before the step's record names block 0's
    # write: the runtime must refuse to hash the page as block 0.
    from fieldprint.runtime.session import VerifyingSession
    from fieldprint_ref.engine import RefEngine

    class EvictsMidPrefill(RefEngine):
        def _prepare_chunk(self, s, start, take):
            saved, s.fed_start = s.fed_start, start
            try:
                return super()._prepare_chunk(s, start, take)
            finally:
                s.fed_start = saved

    art = fx.artifact()
    eng = EvictsMidPrefill(art.model, tokenizer=art.tokenizer, num_pages=48)
    out = VerifyingSession(eng, key=fx.key(), ledger_path=tmp_path / "reuse.fpl", policy=make_policy(4), window=16,
                           chunk_size=8, max_new_tokens=4, model_commitment=art.commitment, fsync="none",
                           nonce=b"\x07" * 32).run(prompt_of(38))
    assert out.end_reason == "error" and "freed and reused" in out.error
    assert not any(isinstance(r, KVPage) for r in records(out.ledger))
