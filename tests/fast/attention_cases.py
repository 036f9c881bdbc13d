"""Random paged-attention problems for the kernel parity suites (tests/fast/test_attention_*.py).

A problem is a KV pool whose every slot holds a valid page row (`spec.attention.pack_rows` of
random Q16 rows whose magnitudes differ by up to 2**31 from row to row, so the V row exponents
and the common exponent E vary), sequences whose block tables are random permutations of the
pool's pages, optional anchor pages shared by all sequences, and queries whose magnitude is drawn
too: small magnitudes give flat softmaxes, large ones saturated scores and one-hot softmaxes.
"""
from __future__ import annotations

import torch
from hypothesis import strategies as st

from spec.attention import KVPool, paged_attention, pack_rows
from spec.model import AnchorRef
from spec.tables import exp2_table

EXP = exp2_table()
PAGE = 16


def random_rows(shape, gen: torch.Generator, spread: int, top: int = 31) -> torch.Tensor:
    """Q16 rows [..., d] with per-row magnitude 2**u - 1, u uniform in [top - spread, top]."""
    u = torch.randint(top - spread, top + 1, shape[:-1] + (1,), generator=gen)
    amp = (1 << u) - 1
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).mul(amp).round().to(torch.int64)


@st.composite
def problems(draw, decode: bool, max_ctx: int, max_anchor: int, heads=(1, 2, 4), kv=(1, 2), dims=(16, 64, 128)):
    """Draw one problem: (pool, layer, sequences, q_bits, prob_bits, seed); a sequence is a dict
    (start, window, T, table) and the anchors (anchor_table, anchor_len) are common."""
    g = draw(st.sampled_from(kv))
    group = draw(st.sampled_from(heads))
    d = draw(st.sampled_from(dims))
    layers = draw(st.integers(1, 2))
    n_seq = draw(st.integers(1, 3)) if decode else 1
    anchor_len = draw(st.sampled_from([0, 0, 1, PAGE - 1, PAGE, PAGE + 1, draw(st.integers(0, max_anchor))]))
    seqs = []
    for _ in range(n_seq):
        t = 1 if decode else draw(st.integers(1, max_ctx))
        start = draw(st.integers(0, max_ctx - t))
        window = draw(st.one_of(st.none(), st.integers(1, max_ctx)))
        seqs.append(dict(start=start, window=window, t=t))
    a_blocks = -(-anchor_len // PAGE)
    need = [-(-(s["start"] + s["t"]) // PAGE) for s in seqs]
    n_pages = a_blocks + sum(need) + draw(st.integers(0, 3))
    seed = draw(st.integers(0, 2**31))
    gen = torch.Generator().manual_seed(seed)
    spread = draw(st.sampled_from([0, 4, 12, 31]))
    x = random_rows((n_pages, layers, 2, PAGE, g, d), gen, spread)
    pool = pack_rows(x).contiguous()
    perm = torch.randperm(n_pages, generator=gen)
    anchor_table, used = perm[:a_blocks], a_blocks
    for s, nb in zip(seqs, need):
        s["table"], used = perm[used:used + nb], used + nb
        lo = 0 if s["window"] is None else max(0, s["start"] - s["window"] + 1)
        s["table"] = s["table"].clone()
        s["table"][: lo // PAGE] = -1  # blocks wholly before the window may be evicted
    q_amp = draw(st.sampled_from([4, 16, 24, 31]))
    for s in seqs:
        s["q"] = random_rows((s["t"], g * group, d), gen, 2, q_amp)
    q_bits = draw(st.sampled_from([8, 12, 15]))
    prob_bits = draw(st.sampled_from([15, 15, 13, 20]))
    return dict(pool=pool, layer=draw(st.integers(0, layers - 1)), seqs=seqs, anchor_table=anchor_table,
                anchor_len=anchor_len, q_bits=q_bits, prob_bits=prob_bits)


def spec_outputs(p: dict) -> list[torch.Tensor]:
    """Return `spec.attention.paged_attention` of every sequence of problem p."""
    pool = KVPool(p["pool"])
    anchors = AnchorRef(p["anchor_table"], p["anchor_len"]) if p["anchor_len"] else None
    return [paged_attention(s["q"], pool, p["layer"], s["table"], s["start"], anchors, s["window"],
                            p["q_bits"], p["prob_bits"], EXP) for s in p["seqs"]]


def to_device(p: dict, device: str) -> dict:
    """Return p with its tensors on device."""
    out = dict(p, pool=p["pool"].to(device), anchor_table=p["anchor_table"].to(device))
    out["seqs"] = [dict(s, q=s["q"].to(device), table=s["table"].to(device)) for s in p["seqs"]]
    return out
