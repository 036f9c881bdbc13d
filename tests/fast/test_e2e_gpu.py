"""The fast engine on the GPU, end to end: graphs, device tokens and digests, a ledger audited on the CPU.

* a batched generation (five sequences: a padded batch bucket, prompts of different lengths
  crossing page boundaries, anchors) by the fast engine on CUDA is byte-identical to the
  reference engine on the CPU: tokens, logits, device logits digests, page bytes;
* a fast-engine ledger written on CUDA, with a KV bit flip injected and rolled back, verifies
  VALID with the CPU auditor (full replay by the reference engine), greedy (tokens and digests
  from the device) and sampled.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

pytestmark = pytest.mark.gpu


def test_batched_fast_cuda_equals_ref_cpu():
    from fieldprint_fast.engine import FastEngine
    from fieldprint_fast.synthetic import random_model
    from fieldprint_ref.engine import RefEngine
    from spec.commits import logits_digest
    from spec.model import ModelConfig

    cfg = ModelConfig(arch="llama", vocab_size=4096, hidden_size=512, intermediate_size=1024, num_layers=3,
                      num_heads=8, num_kv_heads=2, head_dim=64, rope_theta=10000.0, rms_norm_eps=1e-5,
                      max_position=512, tie_embeddings=False, qkv_bias=False)
    for profile in ("int8", "default"):
        m = random_model(cfg, profile, device="cpu", seed=5)
        g = torch.Generator().manual_seed(9)
        prompts = [torch.randint(0, 4096, (n,), generator=g).tolist() for n in (1, 15, 16, 40, 77)]
        out = {}
        for cls, dev in ((RefEngine, "cpu"), (FastEngine, "cuda")):
            e = cls(m, num_pages=96, page_seed=3, device=dev)
            e.set_anchors([7, 8, 9, 10, 11])
            res = e.generate(prompts, max_new_tokens=24, chunk_size=32, release=False)
            out[cls.name] = (res, e.pool.data[:96].cpu())
        (rr, rp), (fr, fp) = out["ref"], out["fast"]
        assert torch.equal(rp, fp)
        for r, f in zip(rr, fr):
            assert r.tokens == f.tokens and r.block_table == f.block_table
            for a, b in zip(r.steps, f.steps):
                assert torch.equal(a.logits, b.logits.cpu()) and a.writes == b.writes
                if b.step > 0:  # decode rounds ran on the device, digest included
                    assert b.logits_digest == logits_digest(a.logits_bytes())


@pytest.mark.parametrize("sampling", ["greedy", "sampled"])
def test_fast_cuda_ledger_with_fault_verifies_on_cpu(tmp_path, sampling):
    import fp_fixtures as fx

    from fieldprint.runtime.faults import FaultPlan, FlipKV
    from fieldprint.runtime.session import VerifyingSession
    from fieldprint_fast.engine import FastEngine
    from spec.commits import make_policy
    from spec.sampling import SamplingParams

    art = fx.artifact()
    eng = FastEngine(art.model, tokenizer=art.tokenizer, num_pages=48, device="cuda")
    assert eng.decode_loop and eng.graphs and eng.device_digests
    eng.set_anchors(list(fx.ANCHORS))
    params = SamplingParams() if sampling == "greedy" else SamplingParams(temperature="4/5", seed=7)
    s = VerifyingSession(eng, key=fx.key(), ledger_path=tmp_path / "gpu.fpl", model_commitment=art.commitment,
                         policy=make_policy(4), sampling=params, max_new_tokens=16, nonce=b"\x07" * 32, fsync="none",
                         faults=FaultPlan(flips=[FlipKV(step=2, block=1, byte=5, bit=1)]))
    out = s.run(list(fx.PROMPT))
    eng.check_pages()
    assert out.rollbacks, "the injected flip was not caught"
    rep = fx.verify(out.ledger)  # the CPU auditor: full replay by the reference engine
    assert rep.verdict == "valid", rep.message
    assert out.tokens == fx.reference_tokens(fx.PROMPT, [(out.rollbacks[0].to_step, 1)], sampling=params)
