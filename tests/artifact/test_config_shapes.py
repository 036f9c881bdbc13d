"""The checkpoints people run, in miniature (issue 12): same config fields, scaled-down sizes.

Each case is the config.json of a published checkpoint with its width, depth, vocabulary and
context scaled down (the head-count ratio, tying, biases, RoPE base and RoPE scaling type kept;
RoPE's original_max_position_embeddings scaled to 16 so that a short test runs past it). Each
is built with `transformers`, quantized by `fieldprint quantize`'s streaming path, generated with
a signed ledger, audited VALID, and compared with `transformers` on teacher-forced logits.
"""
from __future__ import annotations

import pytest
import torch

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
SHAPES = {  # name: (architecture, config fields)
    "llama-3.2-1b": ("llama", dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True,
                                   rope_parameters={**LLAMA3_ROPE, "rope_theta": 500000.0})),
    "llama-3.1-8b": ("llama", dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
                                   rope_parameters={**LLAMA3_ROPE, "factor": 8.0, "rope_theta": 500000.0})),
    "qwen2.5-0.5b": ("qwen2", dict(num_attention_heads=7, num_key_value_heads=1, hidden_size=112, tie_word_embeddings=True,
                                   rope_theta=1000000.0, use_sliding_window=False, sliding_window=None)),
    "qwen2.5-7b-yarn": ("qwen2", dict(num_attention_heads=7, num_key_value_heads=1, hidden_size=112,
                                      tie_word_embeddings=False, use_sliding_window=False, sliding_window=None,
                                      rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1000000.0,
                                                       "original_max_position_embeddings": 16})),
    "mistral-7b-v0.3": ("mistral", dict(num_attention_heads=4, num_key_value_heads=1, sliding_window=None,
                                        rope_theta=1000000.0, tie_word_embeddings=False)),
    "smollm2-135m": ("llama", dict(num_attention_heads=3, num_key_value_heads=1, hidden_size=48, tie_word_embeddings=True,
                                   rope_theta=100000.0)),
}


def _build(name: str, path):
    import transformers
    from ckpts import save_hf

    arch, fields = SHAPES[name]
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
    kw = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, max_position_embeddings=4096,
              rms_norm_eps=1e-5, initializer_range=0.2, bos_token_id=0, eos_token_id=0) | fields
    torch.manual_seed(sum(map(ord, name)))
    model = cls[1](cls[0](**kw)).eval()
    if arch == "qwen2":
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
    save_hf(model, path, max_shard_size="40KB")
    return model


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_quantizes_generates_audits_and_tracks_transformers(name, tmp_path):
    from auditor.verify import verify_ledger
    from fieldprint.artifact import load_artifact, quantize_checkpoint
    from fieldprint.engine import load_engine
    from fieldprint.runtime.session import VerifyingSession
    from spec.attention import KVPool
    from spec.keys import SigningKey
    from spec.model import SequenceChunk, forward

    hf = _build(name, tmp_path / "hf")
    quantize_checkpoint(tmp_path / "hf", tmp_path / "art", "default", progress=False, max_position=128)
    art = load_artifact(tmp_path / "art")
    toks = torch.randint(1, 40, (48,), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():  # teacher-forced logits, past original_max_position_embeddings where RoPE is scaled
        ref = hf(toks[None]).logits[0].double()
    pool = KVPool.allocate(art.model.config, art.model.profile, 3)
    rows = forward(art.model, pool, [SequenceChunk(tokens=toks, start=0, block_table=torch.arange(3))])[0].double() / 2**16
    first = load_engine("ref", art, num_pages=16).generate(toks.tolist(), max_new_tokens=1).steps[0].logits
    assert torch.equal(rows[-1], first.double() / 2**16)  # the engine runs the spec's forward
    rel = float((rows - ref).norm() / ref.norm())
    agree = float((rows.argmax(-1) == ref.argmax(-1)).double().mean())
    assert rel < 0.06 and agree >= 0.8, (name, rel, agree)
    key = SigningKey("shapes.test", bytes(range(32)))
    VerifyingSession(load_engine("ref", art, num_pages=16), key=key, ledger_path=tmp_path / "l.fpl",
                     max_new_tokens=8, fsync="none").run(toks.tolist())
    rep = verify_ledger(tmp_path / "l.fpl", model=art, trusted_key=key.verifier)
    assert rep.verdict == "valid", (name, rep.reason, rep.message)
