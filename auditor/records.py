"""The checks that need the records alone: what ``verify --no-replay`` proves.

``RecordChecker`` walks the signed records (already past ``spec.ledger_file``'s sequence rules)
with the model's commitment, vocabulary size, position limit and tokenizer, but never runs the
model. From the genesis inputs and the tokens the ledger lists it recomputes everything that
follows from them by arithmetic, exactly as the runtime derives it:

* ``genesis``: the model commitment is the artifact's; prompt, anchor and EOS ids are in the
  vocabulary;
* ``token_step``: the id is in the vocabulary; no step follows the end of generation (an EOS
  token, the token budget, the model's last position, a stop string);
* ``kv_evict``: after the first step, exactly the blocks the sliding window frees before that
  step (at the first step, a subset of the blocks it frees by the end of the prompt);
* ``kv_page``: the block is live and ``used`` is the number of its slots the tokens fill;
* ``commit``: covers at least one token; exactly the pages the runtime records since the last
  commit; the commit policy requires a commit there, with this reason, and none was skipped;
  ``live_state`` is the Merkle root of the live pages' recorded digests;
* ``validation``: a failed ``kv-rehash`` names a page of that commit and quotes a digest the
  ledger recorded for that page (``spec.commits.parse_rehash_failure``);
* ``rollback``: a later commit failed a validation, the target did not, ``live_state`` is the
  target's; the live pages, evictions and tokens go back to the target's;
* ``end``: at least one commit; ``live_state`` is the last live commit's; the reason is the one
  the last token implies (``error`` only where the generation had not finished or a live commit
  failed a validation), and no live commit failed unless the reason is ``error``.

What it cannot see without the replay (``NOT_CHECKED``): that each token is the one the model
samples, the logits digests, the layer digests of every page (so whether the live states are
the pages the model computes), and the fault history of abandoned branches.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from auditor.replay import Divergence, _Fatal
from fieldprint_ref.paging import blocks_for, dead_blocks
from spec import commits
from spec.commits import REHASH_VALIDATOR, parse_rehash_failure
from spec.ledger import Commit, End, Genesis, KVEvict, KVPage, Rollback, TokenStep, Validation, hasher_for

NOT_CHECKED = (
    "tokens: that each one is what the model samples (sampling needs the logits)",
    "logits digests",
    "page digests: that each page's layer digests are the KV bytes the model computes (so the live states "
    "commit to the right pages)",
    "anchor pages: that they are the model's KV pages of the anchor tokens",
    "fault history: whether abandoned branches replay up to their fault window",
)


@dataclass
class _Live:
    """A commit of the live branch and the state the records give it."""

    commit: Commit
    record: int
    recorded: dict[int, bytes]  # live context block -> recorded digest
    evicted: set[int]


@dataclass
class RecordCheckResult:
    divergence: Divergence | None = None
    notes: list[str] = field(default_factory=list)


class RecordChecker:
    """Check ``records`` against the rules that follow from the records (see the module docstring)."""

    def __init__(self, *, commitment: bytes, vocab_size: int, max_position: int, tokenizer=None, offsets=None,
                 model_window: int | None = None):
        self.commitment = commitment
        self.model_window = model_window or 0  # the model's committed sliding window (0 = full attention)
        self.vocab = int(vocab_size)
        self.max_position = int(max_position)
        self.tokenizer = tokenizer
        self.offsets = offsets or {}
        self.result = RecordCheckResult()

    def fail(self, reason, message, **kw) -> _Fatal:
        return _Fatal(Divergence(reason, message, record=self.i, offset=self.offsets.get(self.i), **kw))

    # ------------------------------------------------------------------------ genesis
    def _genesis(self, g: Genesis) -> None:
        if g.model_commitment != self.commitment:
            raise self.fail("model-commitment", "the ledger was not produced by this model artifact",
                            field="model_commitment", expected=g.model_commitment, actual=self.commitment)
        inp = g.inputs
        if inp.model_window != self.model_window:
            raise self.fail("model-window", f"the genesis says the model's sliding window is {inp.model_window or 'none'}, "
                            f"the model commits to {self.model_window or 'none'}", field="inputs.model_window",
                            expected=inp.model_window, actual=self.model_window)
        for what, ids in (("prompt_tokens", inp.prompt_tokens), ("anchor_tokens", inp.anchor_tokens),
                          ("eos_token_ids", inp.eos_token_ids)):
            bad = [t for t in ids if t >= self.vocab]
            if bad:
                raise self.fail("input-range", f"genesis inputs.{what} holds token id {bad[0]}, outside the "
                                f"model's vocabulary of {self.vocab}", field=f"inputs.{what}", expected=bad[0],
                                actual=self.vocab)
        self.g, self.P, self.policy = g, g.page_tokens, g.commit_policy
        self.prompt_len, self.anchors = len(inp.prompt_tokens), len(inp.anchor_tokens)
        self.window = inp.window or None
        self.eos = set(inp.eos_token_ids)
        self.stops = list(inp.stop_strings)
        self.stops_unknown = bool(self.stops) and self.tokenizer is None
        if self.stops_unknown:
            self.result.notes.append("stop strings not checked: the model artifact has no tokenizer")
        self.hasher = hasher_for(g)

    def _finish(self, step: int) -> str | None:
        """Return why generation ends after token ``step`` of the live branch (the engine's order), or None."""
        if self.generated[-1] in self.eos:
            return "eos"
        if self.stops and self.tokenizer is not None:
            text = self.tokenizer.decode(list(self.generated), skip_special_tokens=True)
            if any(s in text for s in self.stops):
                return "stop"
        if len(self.generated) >= self.g.sampling.max_new_tokens:
            return "length"
        if self.anchors + self.prompt_len + step + 1 > self.max_position:
            return "max_position"
        return None

    # ------------------------------------------------------------------------ records
    def _evict_due(self) -> None:
        if self.expect_evict:
            raise self.fail("evict-missing", f"the sliding window frees blocks {self.expect_evict} before step "
                            f"{self.last}, the ledger has no kv_evict record for them", step=self.last,
                            field="kv_evict", actual=str(self.expect_evict))

    def _token(self, r: TokenStep) -> None:
        self._evict_due()
        if self.commit_due is not None:
            step, reason = self.commit_due
            raise self.fail("commit-missing", f"the policy requires a commit ({reason}) after step {step}, the "
                            f"ledger goes on to step {r.step}", step=step, field="commit")
        if self.finished is not None:
            raise self.fail("step-after-finish", f"step {r.step} follows the end of generation ({self.finished} "
                            f"after step {r.step - 1})", step=r.step, field="step")
        if r.token >= self.vocab:
            raise self.fail("token-range", f"step {r.step}: token id {r.token} is outside the model's vocabulary "
                            f"of {self.vocab}", step=r.step, field="token", expected=r.token, actual=self.vocab)
        s, P = r.step, self.P
        self.generated.append(r.token)
        self.last = s
        if s == 0:  # the prompt: every block it touches; the window may free blocks between prefill chunks
            writes = [(b, (b + 1) * P <= self.prompt_len) for b in range(blocks_for(self.prompt_len, P))]
            self.expect_evict, self.step0_dead = None, set(dead_blocks(self.prompt_len - 1, self.window, P))
        else:  # the previous token, at context index prompt + s - 1
            pos = self.prompt_len + s - 1
            writes = [(pos // P, (pos + 1) % P == 0)]
            table = blocks_for(pos, P)  # blocks allocated before this forward
            self.expect_evict = [b for b in dead_blocks(pos, self.window, P) if b < table and b not in self.evicted]
        for b, full in writes:
            if full:
                self.dirty.discard(b)
                self.expect_pages.append((b, P))
            else:
                self.dirty.add(b)
        self.table = blocks_for(self.prompt_len + s, P)
        self.finished = self._finish(s)
        reason = commits.commit_reason(self.policy, step=s, generated=self.generated,
                                       filled_page=any(full for _, full in writes), finished=self.finished is not None)
        if self.stops_unknown and reason in (None, "end_of_generation", "every_n_tokens", "page_full"):
            reason = "?"  # a stop string may end the generation here: commit reasons are not checked
        self.commit_due = None if reason is None else (s, reason)

    def _evict(self, r: KVEvict) -> None:
        blocks = list(r.blocks)
        if self.expect_evict is None:  # first step
            extra = [b for b in blocks if b not in self.step0_dead or b in self.evicted]
            if extra:
                raise self.fail("evict-unexpected", f"kv_evict lists blocks {extra}, which the window does not free "
                                "during the prompt", step=self.last, field="blocks", expected=str(blocks))
        elif blocks != self.expect_evict:
            raise self.fail("evict-unexpected", f"kv_evict lists blocks {blocks}, the sliding window frees "
                            f"{self.expect_evict} before step {self.last}", step=self.last, field="blocks",
                            expected=str(blocks), actual=str(self.expect_evict))
        self.expect_evict = []
        for b in blocks:
            self.evicted.add(b)
            self.recorded.pop(b, None)
            self.dirty.discard(b)

    def _page(self, r: KVPage) -> None:
        self.history.setdefault((r.kind, r.block), []).append(r.digest)
        if r.kind == "anchor":
            self.anchor_digests.append(r.digest)
            return
        self._evict_due()
        if self.last is None or r.block >= self.table or r.block in self.evicted:
            raise self.fail("page-block", f"kv_page for context block {r.block}, which is not live "
                            + ("before the first token step" if self.last is None else f"after step {self.last}"),
                            step=self.last, block=r.block, page_kind="context", field="block")
        used = commits.filled_slots(r.block, self.prompt_len + self.last, self.P)
        if r.used != used:
            raise self.fail("page-slots", f"context block {r.block} after step {self.last}: used {r.used}, the "
                            f"tokens fill {used} slots", step=self.last, block=r.block, page_kind="context",
                            field="used", expected=r.used, actual=used)
        self.recorded[r.block] = r.digest
        self.seen_pages.append((r.block, r.used))

    def _commit(self, r: Commit) -> None:
        if r.end_step <= r.first_step or self.last is None:
            raise self.fail("commit-empty", f"commit {r.commit} covers no token: the runtime commits right after a "
                            "token step", commit=r.commit, field="tokens")
        self._evict_due()
        step = r.end_step - 1
        expected = self.expect_pages + commits.commit_partial_pages(self.dirty, self.prompt_len + self.last, self.P)
        if self.seen_pages != expected:
            raise self.fail("commit-pages", f"commit {r.commit}: pages recorded {self.seen_pages} (block, used), the "
                            f"runtime records {expected}", commit=r.commit, step=step, field="pages")
        if self.commit_due is None or self.commit_due[0] != step:
            raise self.fail("commit-unexpected", f"commit {r.commit} after step {step}: the policy requires no "
                            "commit there", commit=r.commit, step=step, field="commit")
        if self.commit_due[1] not in ("?", r.reason):
            raise self.fail("commit-reason", f"commit {r.commit}: reason {r.reason}, the policy says "
                            f"{self.commit_due[1]}", commit=r.commit, step=step, field="reason", expected=r.reason,
                            actual=self.commit_due[1])
        live = {b: d for b, d in self.recorded.items() if b < self.table and b not in self.evicted}
        ls = commits.live_state(self.anchor_digests, live, self.hasher)
        if ls != r.live_state:
            raise self.fail("commit-live-state", f"commit {r.commit}: live state is not the root of the recorded "
                            "digests of the live pages", commit=r.commit, step=step, field="live_state",
                            expected=r.live_state, actual=ls)
        c = _Live(r, self.i, dict(live), set(self.evicted))
        self.live.append(c)
        self.commits[r.commit] = c
        self.commit_due = None
        self.expect_pages, self.seen_pages, self.dirty = [], [], set()

    def _validation(self, r: Validation) -> None:
        self.validations.setdefault(r.commit, []).append(r)
        if r.passed:
            return
        self.failed.add(r.commit)
        if r.validator == REHASH_VALIDATOR:
            self._fault_claim(r)

    def _fault_claim(self, r: Validation) -> None:
        """A failed kv-rehash must name a page of its commit and quote a digest recorded for it."""
        c = self.commits[r.commit]
        claim = parse_rehash_failure(r.detail)

        def bad(why):
            return self.fail("fault-claim", f"the failed {REHASH_VALIDATOR} validation of commit {r.commit} {why}",
                             commit=r.commit, field="detail", expected=r.detail[:120])

        if claim is None:
            raise bad("names no page and digests (spec.commits.rehash_failure_detail)")
        n_anchor = commits.anchor_pages(self.anchors, self.P)
        k = self.live.index(c) if c in self.live else 0
        # the runtime also re-hashes the copies of pages the window freed in the commit's segment
        freed = c.evicted - (self.live[k - 1].evicted if k > 0 else set())
        live = claim.block < n_anchor if claim.kind == "anchor" else claim.block in c.recorded or claim.block in freed
        if not live:
            raise bad(f"names {claim.kind} block {claim.block}, which is not a live page of that commit nor one "
                      "the window freed in its segment")
        seen = [d.hex() for d in self.history.get((claim.kind, claim.block), [])]
        if not any(d.startswith(claim.recorded) for d in seen):
            raise bad(f"quotes recorded digest {claim.recorded} for {claim.kind} block {claim.block}, which the "
                      "ledger never recorded for it")
        n = min(len(claim.actual), len(claim.recorded))
        if claim.actual[:n] == claim.recorded[:n]:
            raise bad(f"claims {claim.kind} block {claim.block} re-hashes to the digest it recorded")

    def _rollback(self, r: Rollback) -> None:
        idx = next(k for k, c in enumerate(self.live) if c.commit.commit == r.to_commit)
        target = self.live[idx]
        if r.to_commit in self.failed:
            raise self.fail("rollback-to-failed", f"rollback target commit {r.to_commit} failed its validation",
                            commit=r.to_commit, field="to_commit")
        dropped = [c.commit.commit for c in self.live[idx + 1:]]
        if not any(c in self.failed for c in dropped):
            raise self.fail("rollback-unexplained", f"rollback to commit {r.to_commit} although no later commit "
                            f"({dropped}) failed a validation", commit=r.to_commit, field="to_commit")
        if r.live_state != target.commit.live_state:
            raise self.fail("rollback-state", f"rollback to commit {r.to_commit} restores a state other than the "
                            "one that commit recorded", commit=r.to_commit, field="live_state",
                            expected=target.commit.live_state, actual=r.live_state)
        self.live = self.live[:idx + 1]
        self.generated = self.generated[:r.to_step]
        self.last = r.to_step - 1
        self.table = blocks_for(self.prompt_len + self.last, self.P)
        self.recorded, self.evicted = dict(target.recorded), set(target.evicted)
        self.finished, self.commit_due, self.expect_evict = None, None, []
        self.expect_pages, self.seen_pages, self.dirty = [], [], set()

    def _end(self, r: End) -> None:
        if not self.live:
            raise self.fail("end-no-commit", "end record without a commit on the live branch: the runtime seals "
                            "a ledger only at a commit", field="reason")
        last = self.live[-1].commit
        if r.live_state != last.live_state:
            raise self.fail("end-live-state", f"the end record's live state is not the last live commit's "
                            f"({last.commit})", field="live_state", expected=r.live_state, actual=last.live_state)
        unresolved = [c.commit.commit for c in self.live if c.commit.commit in self.failed]
        fin = self.finished
        if self.stops_unknown and fin is None:
            return
        if r.reason == "error":
            if fin is not None and not unresolved:
                raise self.fail("end-reason", f"end reason error, but the generation finished ({fin}: "
                                f"{commits.end_reason(fin)}) and no live commit failed a validation", field="reason",
                                expected=r.reason, actual=commits.end_reason(fin))
            return
        if unresolved:
            raise self.fail("end-unresolved", f"generation ended although live commits {unresolved} failed "
                            "validation and were not rolled back", field="reason")
        if fin is None or commits.end_reason(fin) != r.reason:
            raise self.fail("end-reason", f"end reason {r.reason}, but " + (
                "the generation had not finished" if fin is None else f"the last token ends it with {fin}"),
                field="reason", expected=r.reason, actual=commits.end_reason(fin))

    # ------------------------------------------------------------------------ driver
    def run(self, records: list) -> RecordCheckResult:
        """Check ``records`` (record 0 is the genesis); return the first violation (never raises for one)."""
        self.i = 0
        self.generated, self.last, self.table, self.finished = [], None, 0, None
        self.recorded, self.evicted, self.dirty = {}, set(), set()
        self.expect_pages, self.seen_pages, self.expect_evict, self.step0_dead = [], [], [], set()
        self.commit_due = None
        self.anchor_digests, self.history = [], {}
        self.live, self.commits, self.validations, self.failed = [], {}, {}, set()
        try:
            for self.i, r in enumerate(records):
                if isinstance(r, Genesis):
                    self._genesis(r)
                elif isinstance(r, TokenStep):
                    self._token(r)
                elif isinstance(r, KVEvict):
                    self._evict(r)
                elif isinstance(r, KVPage):
                    self._page(r)
                elif isinstance(r, Commit):
                    self._commit(r)
                elif isinstance(r, Validation):
                    self._validation(r)
                elif isinstance(r, Rollback):
                    self._rollback(r)
                elif isinstance(r, End):
                    self._end(r)
        except _Fatal as f:
            self.result.divergence = f.d
        return self.result
