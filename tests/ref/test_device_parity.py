"""A generation on a CUDA device is bit-identical to the same generation on the CPU.

The reference engine accepts any torch device; the spec's integer forward must not depend on it
(tokens, int64 logits and the KV page bytes that get hashed). Skipped without CUDA.
"""
from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from fieldprint_fast.engine import FastEngine
from fieldprint_ref.engine import RefEngine
from spec.sampling import SamplingParams


@pytest.mark.gpu
@pytest.mark.parametrize("temperature", [Fraction(0), Fraction(4, 5)])
@pytest.mark.parametrize("window", [None, 12])
def test_cuda_generation_equals_cpu(model, temperature, window):
    prompts = [[5, 17, 33, 2, 9, 71, 40, 3, 8], [11, 4], list(range(20, 58))]
    kw = dict(sampling=SamplingParams(temperature=temperature, seed=1234), window=window, max_new_tokens=12)
    runs = {}
    for cls, device in ((RefEngine, "cpu"), (RefEngine, "cuda"), (FastEngine, "cuda")):
        e = cls(model, num_pages=48, page_seed=7, device=device)
        e.set_anchors([1, 2, 3, 4, 5])
        results = e.generate(prompts, release=False, **kw)
        runs[(cls.name, device)] = (results, e.pool.data.cpu())
    ref_results, ref_pool = runs[("ref", "cpu")]
    for key, (results, pool) in runs.items():
        for r, g in zip(ref_results, results):
            assert r.tokens == g.tokens, key
            for a, b in zip(r.steps, g.steps):
                assert torch.equal(a.logits.cpu(), b.logits.cpu()), key
        assert torch.equal(ref_pool, pool), f"{key}: KV pool bytes differ from the CPU run"
