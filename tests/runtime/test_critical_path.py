"""The runtime off the engine's critical path: what the engine thread does per token and per
commit, the prefill gate, and ledgers that do not depend on how fast the workers are."""
from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

import fp_fixtures as fx
from fieldprint.runtime import writer as writer_mod
from fieldprint.runtime.validate import Validator
from spec.commits import make_policy
from spec.ledger_file import read_ledger, verify_ledger_structure


def _bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- the writer's queue ----------------------------------------------------------------------------


def test_writer_is_woken_once_per_commit_not_per_token(tmp_path, monkeypatch):
    """Per token the engine thread only appends to lists: the writer's queue gets a bounded
    number of items per commit, whatever the number of tokens in between."""
    puts = []
    real = writer_mod.LedgerSink.__init__

    def counting(self, *a, **kw):
        real(self, *a, **kw)
        put = self._q.put
        self._q.put = lambda item: (puts.append(item[0]), put(item))[1]

    monkeypatch.setattr(writer_mod.LedgerSink, "__init__", counting)
    out = fx.generate(tmp_path / "q.fpl", policy=make_policy(8), max_new_tokens=32)
    assert out.commits == 5 and len(out.tokens) == 32
    work = [k for k in puts if k not in ("flush", writer_mod._STOP)]
    # genesis; per commit: its batch and its validation records (the prefill's: records + gate);
    # the seal: end + checkpoint
    assert len(work) <= 1 + 3 * out.commits + 2, puts
    assert verify_ledger_structure(out.ledger, fx.key().verifier).status == "complete"
    assert out.timings["tokens"] == 32 and out.timings["step_s"] > 0


def test_gate_drops_until_resume(tmp_path):
    from spec.ledger import End, Genesis

    sink = writer_mod.LedgerSink(tmp_path / "g.fpl", fx.key(), fsync="none")
    rec = fx.generate(tmp_path / "src.fpl", max_new_tokens=1)
    genesis, end = read_ledger(rec.ledger).records[0], read_ledger(rec.ledger).records[-1]
    assert isinstance(genesis, Genesis) and isinstance(end, End)

    sink.append(lambda seq: genesis)
    sink.gate(lambda: True)  # passes: nothing dropped
    sink.extend([lambda seq: end.model_copy(update={"seq": seq})], checkpoint=True)
    sink.gate(lambda: False)  # fails: the next items never reach the file
    sink.extend([lambda seq: 1 / 0] * 3, checkpoint=True)  # (never built)
    sink.checkpoint()
    sink.resume()
    sink.flush()
    assert [type(r) for r in sink.records] == [Genesis, End] and sink.checkpoints == 1 and sink.dropped == 3
    sink.close()


# -- the prefill commit does not stop the engine -------------------------------------------------


def _gatekeeper(reached: threading.Event, *, reject: bool, wait: bool):
    """A validator named "gatekeeper": for commit 0, waits (``wait``) until the engine has run
    past step 2, then passes or rejects (``reject``); later commits pass."""

    def fn(view):
        if view.commit != 0:
            return True, "ok"
        if wait and not reached.wait(20):
            return False, "the engine did not go on while commit 0 was being validated"
        return (not reject), ("rejected" if reject else "ok")

    return Validator("gatekeeper", fn)


@pytest.mark.parametrize("reject", [False, True])
def test_prefill_validation_runs_while_the_engine_goes_on(tmp_path, reject):
    """The engine generates past the prefill commit while its validation runs; when that
    validation fails, the ledger is byte for byte the one of a runtime that waited for it."""
    reached = threading.Event()

    def on_step(rec):
        if rec.step >= 2:
            reached.set()

    slow = fx.generate(tmp_path / "slow.fpl", validators=[_gatekeeper(reached, reject=reject, wait=True)],
                       on_step=on_step)
    assert reached.is_set()
    fast = fx.generate(tmp_path / "fast.fpl", validators=[_gatekeeper(threading.Event(), reject=reject, wait=False)])
    assert _bytes(slow.ledger) == _bytes(fast.ledger)
    assert (slow.tokens, slow.end_reason, slow.commits) == (fast.tokens, fast.end_reason, fast.commits)
    if reject:
        assert slow.end_reason == "error" and slow.tokens == fast.tokens and len(slow.tokens) == 1
        assert "commit 0" in slow.error and slow.generation.tokens == slow.tokens
        assert verify_ledger_structure(slow.ledger, fx.key().verifier).status == "complete"
    else:
        assert slow.end_reason == "max_tokens" and fx.verify(slow.ledger).verdict == "valid"


# -- ledgers do not depend on worker timing --------------------------------------------------------


@settings(max_examples=6, deadline=None)
@given(reject=st.sets(st.integers(0, 5), max_size=2), delays=st.lists(st.sampled_from([0, 0.002, 0.02]),
                                                                        min_size=6, max_size=6))
def test_ledger_bytes_do_not_depend_on_validation_speed(tmp_path_factory, reject, delays):
    """Validations that take their time (any commit, up to 20 ms) give the same ledger as
    immediate ones, rejections and rollbacks included."""
    d = tmp_path_factory.mktemp("timing")

    def policy(slow):
        def fn(view):
            if slow:
                time.sleep(delays[view.commit % len(delays)])
            return (view.commit not in reject), "ok"
        return Validator("policy", fn)

    a = fx.generate(d / "a.fpl", validators=[policy(True)], max_new_tokens=12)
    b = fx.generate(d / "b.fpl", validators=[policy(False)], max_new_tokens=12)
    assert _bytes(a.ledger) == _bytes(b.ledger)
    assert (a.tokens, a.end_reason, len(a.rollbacks)) == (b.tokens, b.end_reason, len(b.rollbacks))
    os.remove(a.ledger)
    os.remove(b.ledger)


# -- the sleep engine -----------------------------------------------------------------------------


def test_sleep_engine_session_matches_the_bare_loop(tmp_path):
    """The benchmark's stand-in engine: the session over it gives the bare loop's tokens and a
    sealed, signed ledger whose kv_page digests are those of the pages it wrote."""
    from fieldprint.runtime.session import VerifyingSession
    from fieldprint.runtime.sleep_engine import SleepEngine

    eng = SleepEngine.llama_1b(layers=2, step_ms=0.2, prefill_ms=0.5, num_pages=16)
    prompt = list(range(3, 40))
    h = eng.add_sequence(prompt, max_new_tokens=20, eos_token_ids=())
    bare = []
    while eng.finish_reason(h) is None:
        bare += [r.token for _, r in eng.step([h])]
    eng.release(h)
    out = VerifyingSession(eng, key=fx.key(), ledger_path=tmp_path / "s.fpl", policy=make_policy(4),
                           max_new_tokens=20, eos_token_ids=(), model_commitment=b"\0" * 32).run(prompt)
    assert out.tokens == bare and out.end_reason == "max_tokens" and not out.rollbacks
    assert all(p for _, _, p, _ in out.validations)
    assert verify_ledger_structure(out.ledger, fx.key().verifier).status == "complete"


# -- worker turns ------------------------------------------------------------------------------------


def test_turns_gate_workers_to_windows():
    from fieldprint.runtime.turns import Turns

    t = Turns(budget_s=0.05, patience_s=0.05, enabled=True)
    start = time.perf_counter()
    t.turn()  # no window yet: waits for one, at most patience_s
    assert t.waits == 1 and time.perf_counter() - start >= 0.04
    t.open()
    t.turn()  # inside the window: at once
    assert t.waits == 1
    t = Turns(budget_s=0.0, patience_s=30.0, enabled=True)  # every window closes at once
    got = []
    th = threading.Thread(target=lambda: (t.turn(), got.append(time.perf_counter())))
    th.start()
    deadline = time.perf_counter() + 10
    while t.waits < 1 and time.perf_counter() < deadline:  # the worker waits for a window now
        time.sleep(0.001)
    opened = time.perf_counter()
    t.open()
    th.join(10)
    assert t.waits == 1 and got and got[0] >= opened
    with t.free():  # the engine thread waits for the workers: no gating
        t.turn()
    t.stop()
    t.turn()
    assert t.waits == 1


@pytest.mark.parametrize("flip", [False, True])
def test_sleep_engine_ledgers_do_not_depend_on_the_wait_hook(tmp_path, flip):
    """Workers gated to the engine's device waits (the sleep engine's wait hook) write the same
    ledger as ungated ones, a rollback after a KV bit flip included."""
    from fieldprint.runtime.faults import FaultPlan, FlipKV
    from fieldprint.runtime.session import VerifyingSession
    from fieldprint.runtime.sleep_engine import SleepEngine

    outs = []
    for hook in (True, False):
        eng = SleepEngine.llama_1b(layers=2, step_ms=0.3, prefill_ms=0.5, num_pages=16, hook=hook)
        plan = FaultPlan(flips=[FlipKV(step=9, block=1, byte=77, bit=2)] if flip else [])
        outs.append(VerifyingSession(eng, key=fx.key(), ledger_path=tmp_path / f"{hook}.fpl", policy=make_policy(4),
                                     max_new_tokens=20, eos_token_ids=(), model_commitment=b"\0" * 32,
                                     nonce=b"\3" * 32, faults=plan).run(list(range(3, 30))))
    a, b = outs
    assert _bytes(a.ledger) == _bytes(b.ledger) and a.tokens == b.tokens
    assert len(a.rollbacks) == int(flip) and a.end_reason == "max_tokens"
    assert verify_ledger_structure(a.ledger, fx.key().verifier).status == "complete"


def test_a_writer_failure_is_raised_after_the_step_not_inside_it(tmp_path, monkeypatch):
    """The wait hook runs inside ``engine.step``: an error of the hand-over (here the ledger
    writer failing) surfaces on the engine thread after the step, and the engine's pages stay
    consistent."""
    from fieldprint.runtime.session import VerifyingSession
    from fieldprint.runtime.sleep_engine import SleepEngine

    real, n = writer_mod.LedgerSink._record, [0]

    def failing(self, build):
        n[0] += 1
        if n[0] == 12:
            raise OSError("disk full")
        real(self, build)

    monkeypatch.setattr(writer_mod.LedgerSink, "_record", failing)
    eng = SleepEngine.llama_1b(layers=2, step_ms=0.3, prefill_ms=0.5, num_pages=16)
    with pytest.raises(RuntimeError, match="ledger writer failed: disk full"):
        VerifyingSession(eng, key=fx.key(), ledger_path=tmp_path / "f.fpl", policy=make_policy(4), max_new_tokens=24,
                         eos_token_ids=(), model_commitment=b"\0" * 32).run(list(range(3, 30)))
    eng.check_pages()
    assert not any(not s.released for s in eng._sequences.values())
