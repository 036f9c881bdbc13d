"""Replay a ledger on the CPU reference engine and find the first divergence.

The replay re-runs the recorded generation with ``fieldprint_ref.engine.RefEngine`` and
walks the records in ledger order, checking each against its own state:

* ``genesis``: model and anchor commitments against the artifact and the genesis inputs
  (``spec.ledger_file`` already bound the inputs to the genesis commitments);
* ``token_step``: the replay samples the next token itself and compares step, attempt,
  token and logits digest (it never copies a token from the ledger);
* ``kv_page``: the replay's page of that block: slots used and each layer's digest (the first
  differing layer is reported); at each commit the
  pages recorded since the last commit must be exactly those the runtime records (pages
  filled, in step order, then the partially written blocks, by block);
* ``commit``: the policy demands a commit at exactly this step with this reason (and at no
  other step), and ``live_state`` equals the replay's own state; the replay keeps a
  copy-on-write fork per live commit;
* ``validation``: remembered (a replay cannot re-run a user's validator);
* ``rollback``: it follows a failed validation of a later commit, its target passed or was
  not validated, ``live_state`` is the target's, and the replay restores its own fork of the
  target and resumes under the stated attempt;
* ``end``: count, reason and live state; ``error`` only where the generation could not go on.

**Fault history.** A divergence inside a branch that a later rollback abandons is *explained*
only where a fault detector says the runtime saw a fault: some abandoned commit ``F`` failed
its ``kv-rehash`` validation (``spec.commits.REHASH_VALIDATOR``), and the divergence lies in
``F``'s *fault window*, at or after the first record of ``F``'s segment (the records after the
commit before ``F``). Everything before the window replays exactly; a branch abandoned after a
policy validator's rejection (no ``kv-rehash`` failure) replays exactly, every record. Replay
of an abandoned branch stops at its first divergence and starts again from the rollback
target. The same window explains the divergence of a live branch whose fault was detected but
not rolled back: a ledger that ends in ``error`` (the runtime gave up) or stops before the
rollback (a crash); the verdict is then ``incomplete``, never ``valid``. Any other divergence
is fatal and reported where it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from auditor import teacher
from spec import commits
from spec.commits import REHASH_VALIDATOR
from spec.constants import PAGE_TOKENS
from spec.ledger import (
    SPEC_VERSION,
    Commit,
    End,
    Genesis,
    KVEvict,
    KVPage,
    Rollback,
    TokenStep,
    Validation,
    sampling_params,
)
from spec.merkle import HASHERS

EVICTED = -1


@dataclass
class Divergence:
    """Where replay and ledger first disagree; ``layer`` names the first differing layer of a page."""

    reason: str
    message: str
    record: int | None = None
    offset: int | None = None
    step: int | None = None
    commit: int | None = None
    block: int | None = None
    page_kind: str | None = None
    layer: int | None = None
    field: str | None = None
    expected: object = None  # what the ledger says
    actual: object = None  # what the replay computed

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items()}
        for k in ("expected", "actual"):
            if isinstance(out[k], bytes):
                out[k] = out[k].hex()
        return out


@dataclass
class ReplayResult:
    """What the replay found: the first fatal divergence (None when everything matched)."""

    divergence: Divergence | None = None
    explained: list[Divergence] = field(default_factory=list)  # in abandoned branches
    tokens_replayed: int = 0
    steps_replayed: int = 0
    records_checked: int = 0
    live_tokens: list[int] = field(default_factory=list)
    text: str | None = None
    notes: list[str] = field(default_factory=list)
    unresolved_fault: int | None = None  # commit whose detected fault the records stop before resolving
    fault_history: list[dict] = field(default_factory=list)  # one entry per explained divergence


class _Fatal(Exception):
    def __init__(self, d: Divergence):
        self.d = d


@dataclass
class _Snap:
    commit: Commit
    handle: int | None  # None: taken after a divergence (cannot be restored)
    record: int = 0  # index of the commit record


class Replayer:
    """Replay ``records`` (a verified prefix) with the reference engine over ``model``."""

    def __init__(self, model, tokenizer, commitment: bytes, *, anchor_tokens=None, offsets=None,
                 progress=None, num_pages: int | None = None, replay: str = teacher.DEFAULT_MODE,
                 engine: str = "ref", device: str = "cpu"):
        self.mode = replay  # where the steps come from: auditor.teacher ("prefill" or "stepwise")
        self.engine_name, self.device = engine, device
        self.model = model
        self.tokenizer = tokenizer
        self.commitment = commitment
        self.anchor_override = None if anchor_tokens is None else [int(t) for t in anchor_tokens]
        self.offsets = offsets or {}
        self.progress = progress  # callable(n) advancing a progress bar, or None
        self.num_pages = num_pages
        self.result = ReplayResult()

    # ------------------------------------------------------------------------ helpers
    def fail(self, reason, message, **kw) -> _Fatal:
        return _Fatal(Divergence(reason, message, record=self.i, offset=self.offsets.get(self.i), **kw))

    def _diverge(self, reason, message, **kw) -> None:
        """A divergence on the current branch: fatal unless a later rollback abandons it."""
        if self.pending is None:
            self.pending = Divergence(reason, message, record=self.i, offset=self.offsets.get(self.i), **kw)

    def _pages_live_state(self, cached: int | None = None) -> bytes:
        """Return the live state of the replay's sequence with ``cached`` tokens in its cache
        (default: after the last step checked; a prefill run may have gone further)."""
        eng, h = self.engine, self.h
        if cached is None:
            cached = self.prompt_len + (self.last.step if self.last is not None else 0)
        table = eng.block_table(h)[: -(-cached // PAGE_TOKENS)]
        ctx = {b: commits.page_digest(commits.layer_digests(commits.page_layer_bytes(self.source.page_layers(
            eng.page_tensor(p), commits.filled_slots(b, cached, PAGE_TOKENS))))) for b, p in enumerate(table)
            if p != EVICTED}
        return commits.live_state(self.anchor_digests, ctx, self.hasher)

    def _layers(self, page: int) -> list[bytes]:
        """Return the layer digests of one of the replay's physical pages."""
        return commits.layer_digests(commits.page_layer_bytes(self.engine.page_tensor(page)))

    def _page_divergence(self, r: KVPage, layers: list[bytes], **kw) -> dict:
        """Return the location of the first layer whose digest differs, for a divergence."""
        k = commits.first_layer_difference(r.layer_digests, layers)
        want = r.layer_digests[k] if k < len(r.layer_digests) else None
        got = layers[k] if k < len(layers) else None
        what = (f"layer {k} digest differs" if want is not None and got is not None else
                f"the ledger has {len(r.layer_digests)} layer digests, the model {len(layers)} layers")
        return dict(message=what, block=r.block, page_kind=r.kind, layer=k, field="layer_digests", expected=want,
                    actual=got, **kw)

    # ------------------------------------------------------------------------ genesis
    def _genesis(self, g: Genesis) -> None:
        if self.engine_name == "ref":
            from fieldprint_ref.engine import RefEngine
            if not self.source.weight_cache:  # auditor.teacher: prefill runs need no float64 weight copy
                RefEngine = type("RefEngine", (RefEngine,), {"cache_weights": False})  # noqa: N806
        else:  # an engine the user asked for by name (--engine fast): loaded through the registry
            from fieldprint.engine import select_engine

            RefEngine = select_engine(self.engine_name)  # noqa: N806 - the class of the engine to replay on

        inp = g.inputs
        if g.spec_version != SPEC_VERSION:
            raise self.fail("spec-version", f"genesis names {g.spec_version!r}, this auditor checks {SPEC_VERSION!r}",
                            field="spec_version", expected=g.spec_version, actual=SPEC_VERSION)
        if g.model_commitment != self.commitment:
            raise self.fail("model-commitment", "the ledger was not produced by this model artifact",
                            field="model_commitment", expected=g.model_commitment, actual=self.commitment)
        model_window = self.model.config.sliding_window or 0
        if inp.model_window != model_window:
            raise self.fail("model-window", f"the genesis says the model's sliding window is {inp.model_window or 'none'}, "
                            f"the model commits to {model_window or 'none'}", field="inputs.model_window",
                            expected=inp.model_window, actual=model_window)
        if g.page_tokens != PAGE_TOKENS:
            raise self.fail("page-tokens", f"ledger pages hold {g.page_tokens} tokens, the spec {PAGE_TOKENS}",
                            field="page_tokens", expected=g.page_tokens, actual=PAGE_TOKENS)
        self.genesis = g
        self.hasher = HASHERS[g.hash_profile]
        self.policy = g.commit_policy
        cfg = self.model.config
        # the pages this ledger's context can need, not max_position's (a 128K model would ask for GBs)
        context = min(cfg.max_position, len(inp.anchor_tokens) + len(inp.prompt_tokens) + g.sampling.max_new_tokens)
        blocks = -(-context // PAGE_TOKENS)
        pages = self.num_pages or (3 * blocks + self.n_commits + 8)
        eos = list(inp.eos_token_ids)
        try:  # the replay needs each step's logits once: do not keep them in the records
            self.engine = RefEngine(self.model, tokenizer=self.tokenizer, num_pages=pages, eos_token_ids=eos,
                                    keep_logits=False, device=self.device)
        except TypeError:
            self.engine = RefEngine(self.model, tokenizer=self.tokenizer, num_pages=pages, eos_token_ids=eos,
                                    device=self.device)
        self.anchor_info = None
        self.anchor_digests, self.anchor_layers = [], []
        self.anchor_tokens = list(inp.anchor_tokens) if self.anchor_override is None else self.anchor_override
        if self.anchor_tokens:
            try:
                self.anchor_info = self.engine.set_anchors(list(self.anchor_tokens))
            except Exception as e:  # the engine refuses the anchor tokens (ids outside the vocabulary, ...)
                raise self.fail("replay-setup", f"the reference engine refuses the ledger's anchor tokens: {e}",
                                field="anchor_tokens") from None
            self.anchor_layers = [self._layers(p) for p in self.anchor_info.pages]
            self.anchor_digests = [commits.page_digest(ls) for ls in self.anchor_layers]
        ac = commits.anchor_commitment(self.anchor_tokens, self.anchor_digests, self.hasher)
        if g.anchor_commitment != ac:
            raise self.fail("anchor-commitment", "the anchors (tokens and the KV pages this model computes for "
                            "them) are not the anchors the ledger commits to", field="anchor_commitment",
                            expected=g.anchor_commitment, actual=ac)
        try:
            self.h = self.engine.add_sequence(
                list(inp.prompt_tokens), sampling=sampling_params(g.sampling), max_new_tokens=g.sampling.max_new_tokens,
                sequence=g.sequence, anchors=self.anchor_info, window=inp.window or None, stop=list(inp.stop_strings),
                eos_token_ids=eos)
        except Exception as e:  # the engine refuses the inputs (too long, bad ids, ...)
            raise self.fail("replay-setup", f"the reference engine refuses the ledger's inputs: {e}") from None
        self.prompt_len = len(inp.prompt_tokens)
        self.anchor_seen = 0

    # ------------------------------------------------------------------------ records
    def _evict_due(self) -> bool:
        if self.expect_evict:
            self._diverge("evict-missing", f"the replay evicted blocks {self.expect_evict} before step "
                          f"{self.last_step()}, the ledger has no kv_evict record for them", step=self.last_step(),
                          field="kv_evict", actual=str(self.expect_evict))
            return True
        return False

    def _evict(self, r: KVEvict) -> None:
        if list(r.blocks) != self.expect_evict:
            return self._diverge("replay-evict", f"kv_evict lists blocks {list(r.blocks)}, the replay evicted "
                                 f"{self.expect_evict} before step {self.last_step()}", step=self.last_step(),
                                 field="blocks", expected=str(list(r.blocks)), actual=str(self.expect_evict))
        self.expect_evict = []

    def _token(self, r: TokenStep) -> None:
        eng = self.engine
        if self._evict_due():
            return
        if self.commit_due is not None:
            step, reason = self.commit_due
            return self._diverge("commit-missing", f"the policy requires a commit ({reason}) after step {step}, "
                                 f"the ledger goes on to step {r.step}", step=step, field="commit")
        rec = self.source.next(eng, self.h, self.records, self.i)  # stepwise or teacher-forced
        if rec is None:
            return self._diverge("replay-finished", f"the replay finished ({eng.finish_reason(self.h)}) "
                                 f"before step {r.step}", step=r.step, field="token")
        self.result.steps_replayed += 1
        if self.progress:
            self.progress(1)
        self.last = rec
        if rec.step != r.step or rec.attempt != r.attempt:
            return self._diverge("replay-step", f"ledger step {r.step} attempt {r.attempt}, replay step {rec.step} "
                                 f"attempt {rec.attempt}", step=r.step, field="step")
        if rec.token != r.token:
            return self._diverge("replay-token", f"step {r.step}: the ledger has token {r.token}, the replay samples "
                                 f"{rec.token}", step=r.step, field="token", expected=r.token, actual=rec.token)
        ld = commits.logits_digest(rec.logits_bytes())
        if ld != r.logits_digest:
            return self._diverge("replay-logits", f"step {r.step}: logits digest differs (same token)", step=r.step,
                                 field="logits_digest", expected=r.logits_digest, actual=ld)
        self.generated.append(rec.token)
        self.expect_evict = sorted(rec.evicted_blocks)
        for b in rec.evicted_blocks:
            self.dirty.discard(b)
        for w in rec.writes:
            if w.full:
                self.dirty.discard(w.block)
                self.expect_pages.append((w.block, PAGE_TOKENS))
            else:
                self.dirty.add(w.block)
        finished = self.source.finished(eng, self.h)
        reason = commits.commit_reason(self.policy, step=rec.step, generated=self.generated,
                                   filled_page=any(w.full for w in rec.writes), finished=finished)
        self.commit_due = None if reason is None else (rec.step, reason)

    def _page(self, r: KVPage) -> None:
        if r.kind == "anchor":
            k = self.anchor_seen
            self.anchor_seen += 1
            if r.block != k or k >= len(self.anchor_digests):
                raise self.fail("anchor-page", f"anchor page record for block {r.block}, expected block {k} of "
                                f"{len(self.anchor_digests)}", block=r.block, page_kind="anchor", field="block")
            used = commits.anchor_slots(k, len(self.anchor_tokens), PAGE_TOKENS)
            if r.used != used:
                raise self.fail("anchor-page", f"anchor block {k}: ledger used={r.used}, replay used={used}", block=k,
                                page_kind="anchor", field="used", expected=r.used, actual=used)
            if list(r.layer_digests) != self.anchor_layers[k]:
                d = self._page_divergence(r, self.anchor_layers[k])
                raise self.fail("anchor-page", f"anchor block {k}: {d.pop('message')}", **d)
            return
        self.seen_pages.append((r.block, r.used))
        table = self.engine.block_table(self.h)
        cached = self.prompt_len + (self.last.step if self.last is not None else 0)
        held = min(len(table), -(-cached // PAGE_TOKENS))  # a prefill run may have written further
        if r.block >= held or table[r.block] == EVICTED:
            return self._diverge("replay-page", f"the ledger records context block {r.block}, which the replay does "
                                 "not hold", step=self.last_step(), block=r.block, page_kind="context", field="block")
        used = commits.filled_slots(r.block, cached, PAGE_TOKENS)
        if r.used != used:
            return self._diverge("replay-page", f"context block {r.block}: ledger says {r.used} slots used, replay "
                                 f"{used}", step=self.last_step(), block=r.block, page_kind="context", field="used",
                                 expected=r.used, actual=used)
        page = self.source.page_layers(self.engine.page_tensor(table[r.block]), used)
        layers = commits.layer_digests(commits.page_layer_bytes(page))
        if list(r.layer_digests) != layers:
            d = self._page_divergence(r, layers, step=self.last_step())
            self._diverge("replay-page", f"context block {r.block} (used {used}) after step {self.last_step()}: "
                          f"{d.pop('message')}", **d)

    def last_step(self):
        return None if self.last is None else self.last.step

    def _commit(self, r: Commit) -> None:
        if r.end_step <= r.first_step:
            raise self.fail("commit-empty", f"commit {r.commit} covers no token: the runtime commits right after "
                            "a token step", commit=r.commit, field="tokens")
        if self.pending is None and not self._evict_due():
            expected = self.expect_pages + commits.commit_partial_pages(self.dirty, self.prompt_len + self.last.step,
                                                                        PAGE_TOKENS)
            if self.seen_pages != expected:
                self._diverge("commit-pages", f"commit {r.commit}: pages recorded {self.seen_pages} (block, used), "
                              f"the runtime must record {expected}", commit=r.commit, step=r.end_step - 1, field="pages")
            elif self.commit_due is None or self.commit_due[0] != r.end_step - 1:
                self._diverge("commit-unexpected", f"commit {r.commit} after step {r.end_step - 1}: the policy "
                              "requires no commit there", commit=r.commit, step=r.end_step - 1, field="commit")
            elif self.commit_due[1] != r.reason:
                self._diverge("commit-reason", f"commit {r.commit}: reason {r.reason}, the policy says "
                              f"{self.commit_due[1]}", commit=r.commit, field="reason", expected=r.reason,
                              actual=self.commit_due[1])
            else:
                ls = self._pages_live_state()
                if ls != r.live_state:
                    self._diverge("commit-live-state", f"commit {r.commit}: live state differs from the replay's",
                                  commit=r.commit, step=r.end_step - 1, field="live_state", expected=r.live_state,
                                  actual=ls)
        handle = None
        if self.pending is None:
            handle = self.source.fork(self.engine, self.h, self.genesis.sequence, r.end_step - 1)
        self.snaps.append(_Snap(r, handle, self.i))
        self.commits[r.commit] = r
        self.commit_due = None
        self.expect_pages, self.seen_pages, self.dirty = [], [], set()

    def _validation(self, r: Validation) -> None:
        self.validations.setdefault(r.commit, []).append(r)
        if not r.passed:
            self.failed.add(r.commit)

    # ------------------------------------------------------------------------ fault history
    def _rehash_failed(self, commit: int) -> bool:
        return any(v.validator == REHASH_VALIDATOR and not v.passed for v in self.validations.get(commit, []))

    def _fault_window(self, first: int) -> tuple[int, int] | None:
        """Return (commit, first record) of the fault window of the branch ``self.snaps[first:]``:
        its earliest commit whose kv-rehash failed, and the record after the commit before it."""
        for k in range(first, len(self.snaps)):
            c = self.snaps[k].commit.commit
            if self._rehash_failed(c):
                return c, (self.snaps[k - 1].record + 1 if k > 0 else 0)
        return None

    def _unexplained(self, d: Divergence, first: int, branch: str) -> _Fatal | None:
        """Return the fatal form of divergence ``d`` of branch ``self.snaps[first:]``, or None when a
        detected fault explains it (see the module docstring)."""
        window = self._fault_window(first)
        if window is None:
            failed = sorted({v.validator for s in self.snaps[first:] for v in self.validations.get(s.commit.commit, [])
                             if not v.passed})
            d.message += (f" ({branch}; no commit of it failed a {REHASH_VALIDATOR} validation, only "
                          f"{', '.join(failed) or 'none'}: a branch rejected by a policy validator must replay exactly)")
            return _Fatal(d)
        commit, start = window
        if d.record is None or d.record < start:
            d.message += (f" ({branch}; before the fault window: the {REHASH_VALIDATOR} failure of commit {commit} "
                          f"explains divergences from "
                          f"record {start} on, the start of that commit's segment)")
            return _Fatal(d)
        return None

    def _rollback(self, r: Rollback) -> None:
        eng = self.engine
        idx = next(i for i, s in enumerate(self.snaps) if s.commit.commit == r.to_commit)
        target = self.snaps[idx]
        if target.handle is None:  # the target itself is past a divergence: report it where it is
            raise _Fatal(self.pending)
        if r.live_state != target.commit.live_state:
            raise self.fail("rollback-state", f"rollback to commit {r.to_commit} restores a state other than the "
                            "one that commit recorded", commit=r.to_commit, field="live_state",
                            expected=target.commit.live_state, actual=r.live_state)
        if r.to_commit in self.failed:
            raise self.fail("rollback-to-failed", f"rollback target commit {r.to_commit} failed its validation",
                            commit=r.to_commit, field="to_commit")
        dropped = [s.commit.commit for s in self.snaps[idx + 1:]]
        if not any(c in self.failed for c in dropped):
            raise self.fail("rollback-unexplained", f"rollback to commit {r.to_commit} although no later commit "
                            f"({dropped}) failed a validation", commit=r.to_commit, field="to_commit")
        if self.pending is not None:
            fatal = self._unexplained(self.pending, idx + 1, f"abandoned by the rollback to commit {r.to_commit}")
            if fatal is not None:
                raise fatal
            self._explain(self._fault_window(idx + 1), f"abandoned by the rollback to commit {r.to_commit}",
                          resolved_by=self.i)
        eng.release(self.h)
        for s in self.snaps[idx + 1:]:
            if s.handle is not None:
                eng.release(s.handle)
        self.snaps = self.snaps[:idx + 1]
        self.source.reset()
        self.h = eng.fork(target.handle, sequence=self.genesis.sequence)
        eng.set_attempt(self.h, r.attempt)
        ls = self._pages_live_state(self.prompt_len + r.to_step - 1)
        if ls != r.live_state:
            raise self.fail("rollback-state", "the replay's restored state differs from the rollback's live state",
                            commit=r.to_commit, field="live_state", expected=r.live_state, actual=ls)
        self.generated = self.generated[:r.to_step]
        res = eng.result(self.h)
        self.last = res.steps[-1] if res.steps else None
        self.commit_due, self.expect_pages, self.seen_pages, self.dirty = None, [], [], set()
        self.expect_evict = []

    def _resolve_pending_fault(self, how: str) -> bool:
        """Explain the live branch's divergence by a detected fault the records do not resolve;
        return False when there is none to explain."""
        if self.pending is None:
            return False
        fatal = self._unexplained(self.pending, 0, how)
        if fatal is not None:
            raise fatal
        window = self._fault_window(0)
        self._explain(window, how, resolved_by=None)
        self.result.unresolved_fault = window[0]
        return True

    def _explain(self, window: tuple[int, int], how: str, resolved_by: int | None) -> None:
        """Accept the pending divergence as the effect of the fault ``window`` names; record what is proven."""
        d, (commit, start) = self.pending, window
        d.message += f" ({how}; in the fault window of commit {commit}, whose {REHASH_VALIDATOR} failed)"
        self.result.explained.append(d)
        last = (resolved_by - 1) if resolved_by is not None else self.i
        self.result.fault_history.append(dict(
            fault_commit=commit, window_start=start, first_divergence=d.record, step=d.step, reason=d.reason,
            rollback_record=resolved_by, unverified=[d.record, last]))
        self.pending = None

    def _end(self, r: End) -> None:
        if self.pending is not None and r.reason != "error":
            raise _Fatal(self.pending)
        faulted = self._resolve_pending_fault("the generation ended in error before a rollback")
        if not faulted:
            ls = self._pages_live_state()
            if ls != r.live_state:
                raise self.fail("end-live-state", "the end record's live state differs from the replay's",
                                field="live_state", expected=r.live_state, actual=ls)
        fin = self.engine.finish_reason(self.h)
        unresolved = [c.commit.commit for c in self.snaps if c.commit.commit in self.failed]
        if r.reason == "error" and fin is not None and not unresolved:
            raise self.fail("end-reason", f"end reason error, but the replay finished ({fin}: "
                            f"{commits.end_reason(fin)}) and no live commit failed a validation", field="reason",
                            expected=r.reason, actual=commits.end_reason(fin))
        if r.reason != "error" and commits.end_reason(fin) != r.reason:
            raise self.fail("end-reason", f"end reason {r.reason}, the replay finished with {fin}", field="reason",
                            expected=r.reason, actual=commits.end_reason(fin))
        unvalidated = [c.commit.commit for c in self.snaps if c.commit.commit not in self.validations]
        if unvalidated:
            self.result.notes.append(f"live commits {unvalidated} carry no validation record")
        if r.reason == "error":
            self.result.notes.append(f"the generation ended with reason error after {r.num_tokens} tokens "
                                     f"(live commits that failed validation: {unresolved or 'none'})")
        if unresolved and r.reason != "error":
            raise self.fail("end-unresolved", f"generation ended although live commits {unresolved} failed "
                            "validation and were not rolled back", field="reason")

    # ------------------------------------------------------------------------ driver
    def run(self, records: list, *, cut: bool = False) -> ReplayResult:
        """Replay ``records`` (record 0 is the genesis); return the result (never raises for divergences).

        ``cut``: the records stop before a record the caller already rejected; a divergence still
        pending at the cut is fatal (no valid record after it can explain it)."""
        self.n_commits = sum(isinstance(r, Commit) for r in records)
        self.records, self.source = records, teacher.source(self.mode)
        self.i = 0
        self.pending: Divergence | None = None
        self.generated: list[int] = []
        self.snaps: list[_Snap] = []
        self.commits, self.validations, self.failed = {}, {}, set()
        self.commit_due, self.expect_pages, self.seen_pages, self.dirty = None, [], [], set()
        self.expect_evict: list[int] = []
        self.last = None
        self.engine = None
        try:
            for self.i, r in enumerate(records):
                self.result.records_checked = self.i + 1
                if isinstance(r, Genesis):
                    self._genesis(r)
                elif isinstance(r, TokenStep):
                    if self.pending is None:
                        self._token(r)
                elif isinstance(r, KVPage):
                    if r.kind == "anchor" or self.pending is None:
                        self._page(r)
                elif isinstance(r, KVEvict):
                    if self.pending is None:
                        self._evict(r)
                elif isinstance(r, Commit):
                    self._commit(r)
                elif isinstance(r, Validation):
                    self._validation(r)
                elif isinstance(r, Rollback):
                    self._rollback(r)
                elif isinstance(r, End):
                    self._end(r)
            if self.pending is not None and cut:  # nothing after the cut can explain it: the first divergence
                raise _Fatal(self.pending)
            if self.pending is not None and not isinstance(records[-1], End):
                self._resolve_pending_fault("the signed records stop before the rollback")
            if self.engine is not None:
                n = min(self.result.steps_replayed, len(self.generated))
                self.result.live_tokens = list(self.generated)
                self.result.tokens_replayed = n
                self.result.text = self.engine.detokenize(self.generated)
        except _Fatal as f:
            self.result.divergence = f.d
        return self.result
