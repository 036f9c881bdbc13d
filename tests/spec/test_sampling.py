"""spec.sampling: determinism, independent attempts, greedy ties, top-k/top-p sets, distribution."""
from fractions import Fraction

import pytest
import torch
from hypothesis import given, strategies as st

from spec.sampling import SamplingParams, keep_mask, rng_u128, sample, weights
from numeric_strategies import int_tensor


@given(int_tensor((40,), lo=-(2**24), hi=2**24), st.integers(0, 2**64 - 1), st.integers(0, 100))
def test_same_inputs_same_token(logits, seed, step):
    p = SamplingParams(temperature="0.9", top_k=10, top_p="0.95", seed=seed)
    assert sample(logits, p, 3, step, 0) == sample(logits.clone(), p, 3, step, 0)


def test_rng_counter_known_answer():
    # python -c "import blake3; print(int.from_bytes(blake3.blake3(b'fieldprint/sample/v1' + bytes(32)).digest()[:16], 'little'))"
    import blake3

    want = int.from_bytes(blake3.blake3(b"fieldprint/sample/v1" + bytes(32)).digest()[:16], "little")
    assert rng_u128(0, 0, 0, 0) == want


def test_every_counter_field_changes_the_stream():
    base = rng_u128(1, 2, 3, 4)
    assert len({base, rng_u128(9, 2, 3, 4), rng_u128(1, 9, 3, 4), rng_u128(1, 2, 9, 4), rng_u128(1, 2, 3, 9)}) == 5


def test_different_attempt_gives_different_stream():
    logits = torch.zeros(1000, dtype=torch.int64)  # uniform: tokens follow the RNG directly
    p = SamplingParams(temperature=1, seed=7)
    a = [sample(logits, p, 0, s, 0) for s in range(20)]
    b = [sample(logits, p, 0, s, 1) for s in range(20)]
    assert a != b and sum(x == y for x, y in zip(a, b)) <= 3


@given(st.integers(1, 50), st.integers(0, 49), st.integers(0, 2**31))
def test_greedy_ties_go_to_lowest_id(n, first, seed):
    logits = torch.randint(-(2**20), 2**20, (50,), generator=torch.Generator().manual_seed(seed))
    top = int(logits.max()) + 1
    ids = sorted({first} | set(range(first, 50, max(1, n))))
    logits[ids] = top
    assert sample(logits, SamplingParams(), 0, 0, 0) == ids[0]


@given(int_tensor((30,), lo=-(2**22), hi=2**22), st.integers(1, 30), st.integers(0, 2**20))
def test_top_k_picks_only_the_k_best(logits, k, seed):
    p = SamplingParams(temperature=2, top_k=k, seed=seed)
    allowed = set(torch.sort(-logits, stable=True).indices[:k].tolist())
    assert all(sample(logits, p, 0, s, 0) in allowed for s in range(5))


@given(int_tensor((30,), lo=-(2**20), hi=2**20), st.fractions(Fraction(1, 100), 1, max_denominator=1000))
def test_top_p_keeps_the_smallest_sufficient_prefix(logits, top_p):
    w = weights(logits, Fraction(1))
    keep = keep_mask(logits, w, None, top_p)
    kept, dropped = w[keep], w[~keep]
    assert int(kept.sum()) * top_p.denominator >= top_p.numerator * int(w.sum())
    if dropped.numel():
        assert int(kept.min()) >= int(dropped.max())  # only the heaviest tokens survive
        assert (int(kept.sum()) - int(kept.min())) * top_p.denominator < top_p.numerator * int(w.sum())


def test_top_p_sampling_picks_only_allowed():
    logits = torch.tensor([0, 3, 1, 3, 2, -5]) * 2**16
    p = SamplingParams(temperature=1, top_p="0.6", seed=3)
    assert {sample(logits, p, 0, s, 0) for s in range(200)} <= {1, 3}


def test_empirical_distribution_follows_probabilities():
    logits = (torch.tensor([0.0, 1.0, 2.0, -1.0]) * 2**16).to(torch.int64)
    probs = torch.softmax(logits.double() / 2**16 / 0.8, 0)
    p, n = SamplingParams(temperature="0.8", seed=11), 4000
    counts = torch.bincount(torch.tensor([sample(logits, p, 5, s, 0) for s in range(n)]), minlength=4)
    sd = torch.sqrt(probs * (1 - probs) / n)
    assert bool(((counts / n - probs).abs() < 5 * sd).all()), (counts / n, probs)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p="1.5"), dict(top_k=0),
                                 dict(seed=-1), dict(seed=2**64), dict(temperature=Fraction(1, 2**17))])
def test_invalid_params_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_params_canonical_forms():
    p = SamplingParams(temperature=0.7, top_k=5, top_p="0.90", seed=1)
    assert p.temperature == Fraction(7, 10) and p.top_p == Fraction(9, 10)
    assert SamplingParams.from_dict(p.to_dict()) == p


def test_top_p_exact_for_large_vocab():
    """200k equal weights: W ~ 2**47.6, so c * W would overflow int64 with d = 2**16."""
    logits = torch.zeros(200_000, dtype=torch.int64)
    p = Fraction(65535, 65536)
    keep = keep_mask(logits, weights(logits, Fraction(1)), None, p)
    assert int(keep.sum()) == -(-200_000 * 65535 // 65536)  # the smallest count reaching p
