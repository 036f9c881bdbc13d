"""The fidelity ladder: the `high` profile is additive, fits real model sizes and the fast kernels,
its recorded rungs are the committed benchmark result, and artifacts state their rung."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spec.constants import NUMERICS_VERSION
from spec.model import ModelConfig
from spec.profiles import (ACC_LIMIT, FIDELITY, FIDELITY_BENCHMARK, PROFILES, ProfileError, fidelity_record,
                           stage_bounds, validate_profile)

REPO = Path(__file__).resolve().parents[2]

# The widths of the two profiles that existed before `high`: adding a rung must not move them
# (their vectors and commitments in tests/vectors depend on every field).
INT8 = dict(name="int8", embed_bits=8, w_qkv=8, a_qkv=8, w_o=8, a_o=8, w_gate_up=8, a_gate_up=8, w_down=8, a_down=8,
            w_lm_head=8, a_lm_head=8, edge_layers=0, w_edge=8, a_edge=8, q_bits=8, kv_bits=8, prob_bits=15)
DEFAULT = dict(INT8, name="default", a_qkv=12, a_o=12, a_gate_up=12, a_down=12, a_lm_head=12, edge_layers=1,
               w_edge=10, a_edge=12, q_bits=12)

# Real model dimensions (config.json of each): hidden, intermediate, layers, heads, kv heads, head_dim.
REAL = {
    "Llama-3.2-1B": ModelConfig("llama", 128256, 2048, 8192, 16, 32, 8, 64, 500000.0, 1e-5, 4096, True, False),
    "Llama-3.1-8B": ModelConfig("llama", 128256, 4096, 14336, 32, 32, 8, 128, 500000.0, 1e-5, 4096, False, False),
    "Mistral-7B-v0.3": ModelConfig("mistral", 32768, 4096, 14336, 32, 32, 8, 128, 1e6, 1e-5, 4096, False, False),
    "Qwen2.5-0.5B": ModelConfig("qwen2", 151936, 896, 4864, 24, 14, 2, 64, 1e6, 1e-6, 4096, True, True),
}


def test_int8_and_default_are_unchanged():
    assert PROFILES["int8"].to_dict() == INT8
    assert PROFILES["default"].to_dict() == DEFAULT


@pytest.mark.parametrize("model", sorted(REAL))
def test_high_fits_real_models(model):
    validate_profile(PROFILES["high"], REAL[model])
    assert max(stage_bounds(PROFILES["high"], REAL[model]).values()) < ACC_LIMIT


def test_high_states_its_limit():
    """A dot product longer than the widths allow is refused by name, not run into overflow."""
    long_k = dataclasses.replace(REAL["Llama-3.1-8B"], intermediate_size=65536)
    with pytest.raises(ProfileError, match="down"):
        validate_profile(PROFILES["high"], long_k)


def test_high_widths_run_on_the_fast_kernels():
    """Every width of `high` takes at most two int8 limbs, so fieldprint_fast runs it in Triton."""
    pytest.importorskip("triton")
    from fieldprint_fast.kernels.linear import _num_limbs

    p = PROFILES["high"]
    for stage in ("qkv", "o", "gate_up", "down", "lm_head"):
        w, a = p.linear_bits(stage)
        assert 1 <= _num_limbs(w) <= 2 and 1 <= _num_limbs(a) <= 2, stage
    assert p.q_bits <= 15 and p.prob_bits <= 20  # fieldprint_fast.ops.paged_attention's kernel range


def _results() -> dict:
    return json.loads((REPO / FIDELITY_BENCHMARK["results"]).read_text(encoding="utf-8"))


def test_ladder_is_the_committed_result():
    """spec.profiles.FIDELITY holds the numbers of its results file, measured under this numerics."""
    rep = _results()
    assert FIDELITY_BENCHMARK["numerics"] == rep["numerics"] == NUMERICS_VERSION
    assert set(FIDELITY) == set(PROFILES)
    for name, rung in FIDELITY.items():
        row = rep["profiles"][name]
        assert row["profile"] == PROFILES[name].to_dict(), name
        for key, value in rung.items():
            assert value == pytest.approx(row[key], rel=1e-3, abs=1e-6), (name, key)


def test_ladder_discriminates_and_high_meets_its_bar():
    """The benchmark model tells the rungs apart, and `high` reaches <= 0.1% ΔCE, >= 95% agreement."""
    lo, hi = FIDELITY["int8"], FIDELITY["high"]
    assert lo["delta_ce_pct"] >= 10 * max(hi["delta_ce_pct"], 0.01)
    assert hi["delta_ce_pct"] <= 0.1 and hi["argmax_agreement"] >= 0.95
    assert lo["kl_float_quant"] > FIDELITY["default"]["kl_float_quant"] > hi["kl_float_quant"]


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(sorted(PROFILES)), field=st.sampled_from(["w_qkv", "a_down", "embed_bits", "q_bits"]),
       delta=st.sampled_from([-1, 1]))
def test_fidelity_record_only_for_shipped_widths(name, field, delta):
    rec = fidelity_record(PROFILES[name])
    assert rec["profile"] == name and rec["ladder"] == FIDELITY
    assert rec["delta_ce_pct"] == FIDELITY[name]["delta_ce_pct"]
    changed = dataclasses.replace(PROFILES[name], **{field: getattr(PROFILES[name], field) + delta})
    assert fidelity_record(changed) is None  # another profile under a shipped name states no rung
