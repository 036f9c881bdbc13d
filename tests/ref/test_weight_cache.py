"""The engine's cached float64 weights (fieldprint_ref.weights) change speed, never results."""
from __future__ import annotations

import dataclasses

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from fieldprint_ref.engine import RefEngine
from fieldprint_ref.weights import exact_view, has_exact_views, matmul_weight_names, with_exact_views
from spec import quant
from spec.attention import KVPool
from spec.model import QuantizedModel, SequenceChunk, forward
from spec.quant import EXACT_VIEW, int_matmul
from spec.sampling import SamplingParams



class Uncached(RefEngine):
    cache_weights = False


def _weighted(w: torch.Tensor) -> torch.Tensor:
    w = w.detach()
    setattr(w, EXACT_VIEW, exact_view(w))
    return w


@settings(max_examples=max(10, settings.default.max_examples))
@given(st.integers(1, 9), st.integers(1, 40), st.integers(1, 12), st.sampled_from([torch.int8, torch.int16]),
       st.integers(0, 2**32 - 1))
def test_int_matmul_with_a_view_equals_without(n, k, o, dtype, seed):
    """Random int8/int16 weights including the extreme -128/-32768 (whose int8 abs overflows)."""
    g = torch.Generator().manual_seed(seed)
    info = torch.iinfo(dtype)
    w = torch.randint(info.min, info.max + 1, (o, k), generator=g, dtype=torch.int64).to(dtype)
    w[0, 0] = info.min
    a = torch.randint(-(2**11), 2**11, (n, k), generator=g, dtype=torch.int64)
    assert torch.equal(int_matmul(a, _weighted(w)), int_matmul(a, w))
    assert torch.equal(int_matmul(a, w), a @ w.to(torch.int64).T)


def test_int_matmul_reads_the_view():
    """The cached copy is what the matmul uses (a view that lies shows it; only
    `fieldprint_ref.weights` builds views, from the tensor itself)."""
    w = torch.tensor([[1, 2], [3, 4]], dtype=torch.int8).detach()
    setattr(w, EXACT_VIEW, quant.ExactView(absmax=4, float64=torch.tensor([[1.0, 2.0], [3.0, 5.0]],
                                                                          dtype=torch.float64)))
    assert int_matmul(torch.tensor([[1, 1]]), w).tolist() == [[3, 8]]


def test_the_view_does_not_bypass_the_bound():
    """Beyond 2**53 (and with FLOAT64_MATMUL off) the cached float64 copy is not used."""
    w = _weighted(torch.full((1, 4), 2**15 - 1, dtype=torch.int16))
    a = torch.full((1, 4), 2**40 - 1, dtype=torch.int64)
    assert int(int_matmul(a, w)[0, 0]) == 4 * (2**15 - 1) * (2**40 - 1)  # > 2**53: float64 would round

    class FloatOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                self.seen.append(str(func))
            return out

    small = _weighted(torch.tensor([[3, -128]], dtype=torch.int8))
    quant.FLOAT64_MATMUL = False
    try:
        with FloatOps() as mode:
            y = int_matmul(torch.tensor([[5, 7]]), small)
    finally:
        quant.FLOAT64_MATMUL = True
    assert int(y[0, 0]) == 15 - 7 * 128 and not mode.seen, mode.seen


def test_views_cover_every_matmul_weight_and_leave_the_caller_model_alone(model):
    for tied in (False, True):
        m = model
        if tied:  # a tied head reads embed.weight
            t = {k: v for k, v in m.tensors.items() if k != "lm_head.weight"}
            m = QuantizedModel(dataclasses.replace(m.config, tie_embeddings=True), m.profile, t)
        names = matmul_weight_names(m)
        assert ("embed.weight" in names) == tied and ("lm_head.weight" in names) != tied
        assert len(names) == 7 * m.config.num_layers + 1
        c = with_exact_views(m)
        assert has_exact_views(c) and not has_exact_views(m)
        assert not [k for k, v in m.tensors.items() if hasattr(v, EXACT_VIEW)], tied
        for n in names:
            v = getattr(c.tensors[n], EXACT_VIEW)
            assert c.tensors[n].data_ptr() == m.tensors[n].data_ptr()  # no copy of the integer weights
            assert torch.equal(v.float64.to(torch.int64), m.tensors[n].to(torch.int64))
            assert v.absmax == int(m.tensors[n].to(torch.int64).abs().max())
        toks = torch.randint(0, m.config.vocab_size, (21,), generator=torch.Generator().manual_seed(5))
        outs = []
        for qm in (m, c):
            pool = KVPool.allocate(qm.config, qm.profile, 2)
            chunk = SequenceChunk(tokens=toks, start=0, block_table=torch.tensor([0, 1]))
            outs.append((forward(qm, pool, [chunk])[0], pool.data.clone()))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_cached_and_uncached_engines_generate_the_same_bytes(model):
    params = SamplingParams(temperature="7/10", top_k=20, seed=11)
    prompt = [int(t) for t in torch.randint(0, 96, (19,), generator=torch.Generator().manual_seed(2))]
    runs = []
    for cls in (RefEngine, Uncached):
        eng = cls(model, num_pages=16)
        assert has_exact_views(eng.model) == (cls is RefEngine) and not has_exact_views(model)
        res = eng.generate(prompt, sampling=params, max_new_tokens=12, release=False)
        h = 0
        runs.append((res.tokens, [r.logits for r in res.steps], eng.sequence_pages(h)))
    (ta, la, pa), (tb, lb, pb) = runs
    assert ta == tb and pa == pb and all(torch.equal(x, y) for x, y in zip(la, lb))


def test_engines_over_one_model_share_its_views_until_its_tensors_change(model):
    a, b = RefEngine(model, num_pages=4), RefEngine(model, num_pages=4)
    assert a.model is b.model and has_exact_views(a.model)
    other = dict(model.tensors)
    other["layers.0.q.weight"] = -model.tensors["layers.0.q.weight"]
    swapped = QuantizedModel(model.config, model.profile, other)
    c = RefEngine(swapped, num_pages=4)
    assert c.model is not a.model
    v = getattr(c.model.tensors["layers.0.q.weight"], EXACT_VIEW)
    assert torch.equal(v.float64, -model.tensors["layers.0.q.weight"].to(torch.float64))
    model.tensors["layers.0.q.weight"], saved = other["layers.0.q.weight"], model.tensors["layers.0.q.weight"]
    try:  # the same model object whose dict now holds another tensor: new views, never the old ones
        d = RefEngine(model, num_pages=4)
        assert torch.equal(getattr(d.model.tensors["layers.0.q.weight"], EXACT_VIEW).float64, v.float64)
    finally:
        model.tensors["layers.0.q.weight"] = saved
