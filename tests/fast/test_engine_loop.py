"""The fast engine's decode loop (fieldprint_fast.loop) against the reference engine.

Tokens, logits, page writes, block tables, pool bytes and the device logits digests must be
identical to the reference engine's for the same requests, whatever batch bucket, block-table
width or mix of prefill and decode a round has. On the CPU the step runs its composition over
`spec` ops (the loop's logic: fused weights, K/V packing and scatter, padding rows, metadata);
on CUDA the same tests run the kernels inside captured graphs.
"""
from __future__ import annotations

import os
from fractions import Fraction

import torch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spec.commits import logits_digest

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"

from fieldprint_fast.engine import FastEngine  # noqa: E402
from fieldprint_fast.loop import bucket, width_bucket  # noqa: E402
from fieldprint_fast.synthetic import random_model  # noqa: E402
from fieldprint_ref.engine import RefEngine  # noqa: E402
from spec.model import ModelConfig  # noqa: E402
from spec.sampling import SamplingParams  # noqa: E402

TINY = ModelConfig(arch="llama", vocab_size=96, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5, max_position=256,
                   tie_embeddings=False, qkv_bias=False)
_MODELS: dict = {}


def model(profile: str):
    if profile not in _MODELS:
        _MODELS[profile] = random_model(TINY, profile, device="cpu", seed=3)
    return _MODELS[profile]


def run(cls, m, prompts, **kw):
    """Generate with engine ``cls``; return (results, pool bytes, engine)."""
    opts = dict(num_pages=40, page_seed=11, device=DEVICE)
    if cls is FastEngine:
        opts["decode_loop"] = True
    e = cls(m, **opts)
    e.set_anchors(kw.pop("anchors", None))
    res = e.generate(prompts, release=False, **kw)
    return res, e.pool.data[: e.allocator.num_pages].cpu(), e


def assert_same(ref, fast):
    (rr, rp, _), (fr, fp, _) = ref, fast
    assert torch.equal(rp, fp)
    for r, f in zip(rr, fr):
        assert r.tokens == f.tokens and r.block_table == f.block_table and r.finish_reason == f.finish_reason
        for a, b in zip(r.steps, f.steps):
            assert a.writes == b.writes and a.evicted == b.evicted and a.fed_tokens == b.fed_tokens
            assert torch.equal(a.logits.cpu(), b.logits.cpu())
            if b.logits_digest is not None:  # hashed on the device: the spec's digest of the row
                assert b.logits_digest == logits_digest(a.logits_bytes())


def test_buckets():
    assert [bucket(n) for n in (1, 2, 3, 5, 9, 64, 65)] == [1, 2, 4, 8, 16, 64, 128]
    assert [width_bucket(n) for n in (1, 8, 9, 100)] == [8, 8, 16, 128]


@settings(max_examples=max(2, settings.default.max_examples // 10), deadline=None)
@given(
    lens=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    profile=st.sampled_from(["int8", "default"]),
    temperature=st.sampled_from([Fraction(0), Fraction(7, 10)]),
    window=st.one_of(st.none(), st.integers(5, 30)),
    anchors=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_loop_equals_ref(lens, profile, temperature, window, anchors, seed):
    """Batched greedy or sampled generation, anchors, sliding windows: byte-identical to ref."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 96, (n,), generator=g).tolist() for n in lens]
    kw = dict(sampling=SamplingParams(temperature=temperature, seed=seed), max_new_tokens=4, window=window,
              anchors=[5, 6, 7] if anchors else None, chunk_size=16)
    m = model(profile)
    assert_same(run(RefEngine, m, prompts, **dict(kw)), run(FastEngine, m, prompts, **dict(kw)))


def test_continuous_batching():
    """Sequences that join while others decode (a round mixes a prefill chunk and decode tokens)."""
    m = model("default")
    outs = {}
    for cls in (RefEngine, FastEngine):
        e = cls(m, num_pages=40, device=DEVICE, **({"decode_loop": True} if cls is FastEngine else {}))
        a = e.add_sequence(list(range(3, 20)), max_new_tokens=6)
        e.step([a])  # a prefills and samples
        b = e.add_sequence(list(range(30, 70)), max_new_tokens=3)
        live = [a, b]
        while live:
            e.step(live, chunk_size=16)  # b's prompt goes in chunks while a decodes
            live = [h for h in live if e.finish_reason(h) is None]
        outs[cls.name] = ([e.result(h) for h in (a, b)], e.pool.data[: e.allocator.num_pages].cpu(), e)
    assert_same(outs["ref"], outs["fast"])


def test_scratch_page_is_never_handed_out():
    m = model("int8")
    e = FastEngine(m, num_pages=8, device=DEVICE, decode_loop=True)
    assert e.scratch_page == 8 and e.staging_pages == list(range(9, 17)) and e.pool.data.shape[0] == 17
    res = e.generate([[1, 2, 3], [4, 5]], max_new_tokens=20, release=False)  # bucket 2, then padding none
    assert all(p < 8 for r in res for p in r.block_table)
    e.check_pages()


@pytest.mark.skipif(not (CUDA or os.environ.get("TRITON_INTERPRET") == "1"), reason="needs CUDA or TRITON_INTERPRET=1")
def test_pack_rows_kernel_path_is_the_spec_page_format():
    """The decode step's K/V packing (the linear kernels' 8-bit row quantization, the scale
    bytes as one int32 word) gives `spec.attention.pack_rows`' bytes, zero rows included."""
    from fieldprint_fast.loop import _pack_rows
    from spec.attention import pack_rows

    g = torch.Generator().manual_seed(4)
    dev = "cuda" if CUDA else "cpu"
    for mag in (0, 3, 16, 30):
        x = torch.randint(-2**31 + 1, 2**31, (37, 16), generator=g, dtype=torch.int64) >> (31 - mag)
        assert torch.equal(_pack_rows(x.to(dev)).cpu(), pack_rows(x)), mag


@pytest.mark.skipif(not (CUDA or os.environ.get("TRITON_INTERPRET") == "1"), reason="needs CUDA or TRITON_INTERPRET=1")
def test_write_kv_stage_op_equals_spec():
    """`fieldprint_fast.ops.write_kv` (the prefill path's K/V write, a StageOps operator) writes
    the bytes `spec.attention.write_kv` writes, chunks crossing page boundaries included."""
    from fieldprint_fast import ops as fast_ops
    from spec.attention import KVPool, write_kv

    g = torch.Generator().manual_seed(6)
    dev = "cuda" if CUDA else "cpu"
    for start, t in ((0, 1), (5, 30), (16, 16), (31, 2)):
        ref = KVPool(torch.zeros(9, 2, 2, 16, 2, 20, dtype=torch.int8))
        fast = KVPool(ref.data.clone().to(dev))
        table = torch.tensor([3, 7, 1, 8, 0])
        k, v = (torch.randint(-2**31 + 1, 2**31, (t, 2, 16), generator=g, dtype=torch.int64) >> s for s in (9, 3))
        write_kv(ref, 1, table, start, k, v)
        fast_ops.write_kv(fast, 1, table.to(dev), start, k.to(dev), v.to(dev))
        assert torch.equal(ref.data, fast.data.cpu()), (start, t)


# %%
# Rounds launched ahead (FastEngine overlap)
# ------------------------------------------
# With ``overlap``, a step launches the next decode round before the host reads the tokens it
# feeds. A schedule of joins, finishes (length, EOS), skipped handles, retries (set_attempt),
# forks and page reads between rounds must give the reference's records and pool bytes.

def _same_records(a, b):
    assert a.tokens == b.tokens and a.block_table == b.block_table and a.finish_reason == b.finish_reason
    assert len(a.steps) == len(b.steps)
    for x, y in zip(a.steps, b.steps):
        assert (x.step, x.attempt, x.fed_start, x.fed_end, x.fed_tokens, x.writes, x.evicted, x.evicted_blocks,
                x.token) == (y.step, y.attempt, y.fed_start, y.fed_end, y.fed_tokens, y.writes, y.evicted,
                             y.evicted_blocks, y.token)
        assert torch.equal(x.logits.cpu(), y.logits.cpu())
        if y.logits_digest is not None:
            assert y.logits_digest == logits_digest(x.logits_bytes())


def _drive(cls, m, plan):
    """Run ``plan`` on a new engine of class ``cls``; return (results by name, pool bytes, engine)."""
    opts = dict(num_pages=64, page_seed=5, device=DEVICE, eos_token_ids=plan["eos"])
    if cls is FastEngine:
        opts.update(decode_loop=True, overlap=True)
    e = cls(m, **opts)
    if plan["anchors"]:
        e.set_anchors([5, 6, 7, 8])
    names, handles = [], {}
    for rnd in range(200):
        for j, (prompt, new, join, params) in enumerate(plan["seqs"]):
            if join == rnd:
                handles[f"s{j}"] = e.add_sequence(prompt, max_new_tokens=new, sampling=params, window=plan["window"])
                names.append(f"s{j}")
        act = plan["acts"].get(rnd)
        live = [n for n in names if e.finish_reason(handles[n]) is None]
        if act is not None and live:
            kind, pick = act
            n = live[pick % len(live)]
            if kind == "attempt":
                e.set_attempt(handles[n], rnd + 1)
            elif kind == "fork" and e.result(handles[n]).steps:
                handles[f"{n}f{rnd}"] = e.fork(handles[n], sequence=100 + rnd)
                names.append(f"{n}f{rnd}")
            elif kind == "peek":
                table = e.block_table(handles[n])
                if table and table[-1] >= 0:
                    e.page_bytes(table[-1])
            elif kind == "skip":
                live = [x for x in live if x != n]
        live = [n for n in live if e.finish_reason(handles[n]) is None]
        if not live and rnd > max(j for *_, j, _ in plan["seqs"]):
            break
        if live:
            e.step([handles[n] for n in live], chunk_size=plan["chunk"])
    res = {n: e.result(handles[n]) for n in names}
    pages = torch.stack([torch.frombuffer(bytearray(e.page_bytes(p)), dtype=torch.uint8)
                         for p in range(e.allocator.num_pages)])
    return res, pages, e


@st.composite
def plans(draw):
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    temp = draw(st.sampled_from([Fraction(0), Fraction(7, 10)]))
    seqs = [(torch.randint(0, 96, (draw(st.integers(1, 24)),), generator=g).tolist(), draw(st.integers(1, 22)),
             draw(st.integers(0, 6)), SamplingParams(temperature=temp, seed=draw(st.integers(0, 99))))
            for _ in range(draw(st.integers(1, 3)))]
    acts = draw(st.dictionaries(st.integers(0, 30), st.tuples(st.sampled_from(["attempt", "fork", "peek", "skip"]),
                                                              st.integers(0, 5)), max_size=4))
    return dict(seqs=seqs, acts=acts, eos=draw(st.lists(st.integers(0, 95), max_size=3)),
                window=draw(st.one_of(st.none(), st.integers(6, 30))), anchors=draw(st.booleans()),
                chunk=draw(st.sampled_from([None, 8])))


@settings(max_examples=max(3, settings.default.max_examples // 8), deadline=None)
@given(plan=plans(), profile=st.sampled_from(["int8", "default"]))
def test_rounds_ahead_equal_ref(plan, profile):
    """Joins, length and EOS finishes, skipped handles, set_attempt, fork and page reads between
    overlapped rounds: the reference's records, block tables and every page's bytes."""
    m = model(profile)
    (rr, rp, _), (fr, fp, fe) = _drive(RefEngine, m, plan), _drive(FastEngine, m, plan)
    assert rr.keys() == fr.keys()
    for n in rr:
        _same_records(rr[n], fr[n])
    assert torch.equal(rp, fp)
    fe.check_pages()
    assert fe.ahead_rows["taken"] + fe.ahead_rows["discarded"] <= fe.ahead_rows["launched"]


def test_rounds_ahead_are_taken():
    """A plain batched generation: every decode round after the first is launched ahead and taken, those that
    start a new block included (staging pages); EOS finishes discard nothing (their K/V go to
    the scratch page)."""
    m = model("int8")
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9] * 11]
    ref = run(RefEngine, m, prompts, max_new_tokens=20)
    eos = ref[0][1].tokens[9]  # sequence 1 stops at its 10th token (or earlier)
    ref = run(RefEngine, m, prompts, max_new_tokens=20, eos_token_ids=[eos])
    fast = run(FastEngine, m, prompts, max_new_tokens=20, eos_token_ids=[eos])
    assert_same(ref, fast)
    e = fast[2]
    rows = sum(len(r.steps) - 2 for r in fast[0])  # decode steps but the first (after the prompt's round)
    assert e.ahead_rows["taken"] == rows and e.ahead_rows["discarded"] == 0 and e._ahead is None


def test_rounds_ahead_discarded_before_fork():
    """A fork (copy-on-write) while a round is ahead: the round is discarded, its slots restored,
    and both sequences go on as in the reference."""
    m = model("default")
    out = {}
    for cls in (RefEngine, FastEngine):
        kw = {"decode_loop": True, "overlap": True} if cls is FastEngine else {}
        e = cls(m, num_pages=40, page_seed=3, device=DEVICE, **kw)
        a = e.add_sequence(list(range(3, 12)), max_new_tokens=12)
        for _ in range(4):
            e.step([a])
        b = e.fork(a, sequence=9)
        while e.finish_reason(a) is None:
            e.step([a, b])
        pages = [e.page_bytes(p) for p in range(40)]
        out[cls.name] = ([e.result(h) for h in (a, b)], pages, e)
    for r, f in zip(out["ref"][0], out["fast"][0]):
        _same_records(r, f)
    assert out["ref"][1] == out["fast"][1]
    assert out["fast"][2].ahead_rows["discarded"] > 0
