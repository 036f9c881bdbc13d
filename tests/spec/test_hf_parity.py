"""The quantized forward tracks the float model in `transformers`.

Models: tiny random Llama (GQA and not, tied and untied) and Qwen2 with q/k/v biases, 2 layers,
hidden 64, vocab 96, built from fixed seeds with initializer_range 0.2 so that logits spread over a
few units (std ~ 1.7) and argmax is meaningful (random init at 0.02 gives near-uniform logits).

Bounds, per profile, over 48 teacher-forced positions (measured values in docs/spec/numerics.md):
- relative error ||l_int - l_float|| / ||l_float|| below REL,
- cosine similarity of every position's logit vector above COS,
- argmax agreement on at least AGREE of the positions, and on every position where the float
  model's top-1/top-2 margin exceeds MARGIN logit units (disagreements happen only at near-ties).
"""
import pytest
import torch

from numeric_models import pair, run

BOUNDS = {"default": (0.06, 0.99, 0.8), "int8": (0.10, 0.96, 0.7)}
MARGIN = {"default": 0.25, "int8": 0.5}
MODELS = [("llama", 4, False), ("llama", 2, False), ("llama", 2, True), ("qwen2", 2, False)]


def compare(arch, kv, tied, profile, n=48):
    hf, qm = pair(arch, kv, tied, profile)
    toks = torch.randint(0, qm.config.vocab_size, (n,), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ref = hf(toks[None]).logits[0].double()
    got = run(qm, toks)[0].double() / 2**16
    rel = float((got - ref).norm() / ref.norm())
    cos = float(torch.nn.functional.cosine_similarity(got, ref, dim=-1).min())
    same = got.argmax(-1) == ref.argmax(-1)
    top2 = ref.topk(2, dim=-1).values
    worst = float((top2[:, 0] - top2[:, 1])[~same].max()) if not bool(same.all()) else 0.0
    return rel, cos, float(same.double().mean()), worst


@pytest.mark.parametrize("profile", sorted(BOUNDS))
@pytest.mark.parametrize("arch,kv,tied", MODELS)
def test_quantized_logits_track_float(arch, kv, tied, profile):
    rel, cos, agree, worst_margin = compare(arch, kv, tied, profile)
    max_rel, min_cos, min_agree = BOUNDS[profile]
    assert rel < max_rel and cos > min_cos and agree >= min_agree, (rel, cos, agree)
    assert worst_margin < MARGIN[profile], f"argmax differs where the float margin is {worst_margin:.3f}"


def test_default_is_closer_than_int8():
    assert compare("llama", 2, False, "default")[0] < compare("llama", 2, False, "int8")[0]


# -- RoPE scaling (issue 12): tables match transformers past original_max_position_embeddings ----
ROPES = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    "yarn": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16, "mscale": 1.0,
             "mscale_all_dim": 0.5, "beta_fast": 16.0},
}


def _scaled_pair(rope: str, arch: str):
    """Return (hf model, its spec config read from its config.json, float state) for a scaled RoPE."""
    import dataclasses
    import json
    from pathlib import Path

    import transformers

    from fieldprint.hf import config_from_hf

    classes = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
    torch.manual_seed(0)
    hf = classes[1](classes[0](vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                               rms_norm_eps=1e-5, initializer_range=0.2,
                               rope_parameters={**ROPES[rope], "rope_theta": 10000.0})).eval()
    doc = json.loads(hf.config.to_json_string()) | {"architectures": [classes[1].__name__]}
    config, _ = config_from_hf(doc, Path("config.json"))
    assert config.rope_scaling["rope_type"] == rope and dataclasses.is_dataclass(config)
    return hf, config, {k: v.detach() for k, v in hf.state_dict().items()}


def _tail_error(hf, qm, n=112, past=48):
    """Relative logit error and argmax agreement at positions >= past (beyond the original context)."""
    toks = torch.randint(0, qm.config.vocab_size, (n,), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ref = hf(toks[None]).logits[0].double()[past:]
    got = run(qm, toks)[0].double()[past:] / 2**16
    return float((got - ref).norm() / ref.norm()), float((got.argmax(-1) == ref.argmax(-1)).double().mean())


@pytest.mark.parametrize("rope,arch", [("linear", "llama"), ("llama3", "llama"), ("yarn", "qwen2")])
def test_rope_scaling_tracks_transformers(rope, arch):
    import dataclasses

    from spec.convert import quantize_model
    from spec.profiles import PROFILES

    hf, config, state = _scaled_pair(rope, arch)
    rel, agree = _tail_error(hf, quantize_model(config, state, PROFILES["default"]))
    max_rel, _, min_agree = BOUNDS["default"]
    assert rel < max_rel and agree >= 0.9, (rel, agree)
    # the scaling is what makes it match: the same weights with plain RoPE are far off
    plain, _ = _tail_error(hf, quantize_model(dataclasses.replace(config, rope_scaling=None), state, PROFILES["default"]))
    assert plain > 10 * rel, (plain, rel)
    if rope == "yarn":  # and so is YaRN's attention factor (folded into the tables)
        assert config.rope_scaling["attention_factor"] > 1.05
        no_factor = dataclasses.replace(config, rope_scaling={**config.rope_scaling, "attention_factor": 1.0})
        assert _tail_error(hf, quantize_model(no_factor, state, PROFILES["default"]))[0] > 1.5 * rel


@pytest.mark.parametrize("rope", sorted(ROPES))
@pytest.mark.parametrize("head_dim,theta", [(16, 10000.0), (128, 500000.0)])
def test_rope_frequencies_equal_transformers(rope, head_dim, theta):
    """spec.tables.rope_frequencies (float64) equals transformers' own init functions (float32)."""
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from fieldprint.hf import config_from_hf
    from spec.tables import rope_frequencies

    cfg = transformers.LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                                   max_position_embeddings=1024, rope_parameters={**ROPES[rope], "rope_theta": theta})
    want, want_factor = ROPE_INIT_FUNCTIONS[rope](cfg, "cpu")
    doc = cfg.to_dict() | {"architectures": ["LlamaForCausalLM"], "vocab_size": 96}
    spec_cfg, _ = config_from_hf(doc, __import__("pathlib").Path("config.json"))
    got, factor = rope_frequencies(head_dim, theta, spec_cfg.rope_scaling)
    assert torch.allclose(got, want.double(), rtol=1e-6, atol=0)
    assert abs(factor - want_factor) < 1e-12


@pytest.mark.parametrize("scaling,match", [
    ({"rope_type": "dynamic", "factor": 2.0}, "rope_type 'dynamic' is not in the spec"),
    ({"rope_type": "linear"}, r"fields must be \['factor'\]"),
    ({"rope_type": "linear", "factor": -1.0}, "'factor' must be a positive float"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
      "original_max_position_embeddings": 16}, "high_freq_factor must exceed"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "attention_factor": 2.5,
      "beta_fast": 32.0, "beta_slow": 1.0, "truncate": True}, "attention_factor 2.5 must be below 2.0"),
])
def test_bad_rope_scaling_refused(scaling, match):
    from spec.tables import check_rope_scaling

    with pytest.raises(ValueError, match=match):
        check_rope_scaling(scaling)
