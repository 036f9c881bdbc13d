"""spec.profiles and QuantizedModel validation: widths, overflow bounds, tensor names and dtypes."""
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from spec import constants
from spec.model import ModelConfig, QuantizedModel
from spec.profiles import ACC_LIMIT, PROFILES, PrecisionProfile, ProfileError, stage_bounds, validate_profile
from numeric_models import pair

DEMO = ModelConfig("llama", 2048, 256, 768, 4, 4, 2, 64, 10000.0, 1e-5, 512, True, False)
LLAMA_7B = ModelConfig("llama", 32000, 4096, 11008, 32, 32, 32, 128, 10000.0, 1e-5, 4096, False, False)


@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize("config", [DEMO, LLAMA_7B])
def test_shipped_profiles_fit_real_dims(name, config):
    validate_profile(PROFILES[name], config)
    assert max(stage_bounds(PROFILES[name], config).values()) < ACC_LIMIT


@pytest.mark.parametrize("change", [dict(w_down=16, a_down=16), dict(w_qkv=14, a_qkv=16), dict(a_qkv=1), dict(w_o=17),
                                    dict(kv_bits=4), dict(prob_bits=31), dict(edge_layers=1, w_edge=16, a_edge=16)])
def test_overflowing_or_invalid_profiles_are_refused(change):
    bad = dataclasses.replace(PROFILES["default"], **change)
    with pytest.raises(ProfileError):
        validate_profile(bad, LLAMA_7B)


def test_refusal_names_the_stage():
    bad = dataclasses.replace(PROFILES["int8"], a_down=16, w_down=12)
    with pytest.raises(ProfileError, match="down"):
        validate_profile(bad, LLAMA_7B)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_dict_round_trip(name):
    assert PrecisionProfile.from_dict(PROFILES[name].to_dict()) == PROFILES[name]


def test_config_dict_round_trip():
    assert ModelConfig.from_dict(DEMO.to_dict()) == DEMO


def test_model_refuses_missing_wrong_dtype_or_shape():
    qm = pair("llama", 2, False, "int8")[1]
    t = dict(qm.tensors)
    with pytest.raises(ValueError, match="missing"):
        QuantizedModel(qm.config, qm.profile, {k: v for k, v in t.items() if k != "layers.0.q.weight"})
    with pytest.raises(ValueError, match="layers.0.q.weight"):
        QuantizedModel(qm.config, qm.profile, {**t, "layers.0.q.weight": t["layers.0.q.weight"].to(torch.int16)})
    with pytest.raises(ValueError, match="rope.cos"):
        QuantizedModel(qm.config, qm.profile, {**t, "rope.cos": t["rope.cos"][:-1]})
    with pytest.raises(ValueError, match="exp2"):
        QuantizedModel(qm.config, qm.profile, {**t, "exp2.table": t["exp2.table"] + 1})


def test_all_model_tensors_are_integer():
    for tied in (False, True):
        qm = pair("llama", 2, tied, "default")[1]
        assert all(not v.is_floating_point() for v in qm.tensors.values())
        assert ("lm_head.weight" in qm.tensors) != tied


def test_constant_annotations_are_correct():
    """Every `(= N)` annotation in spec/constants.py equals the constant's value."""
    text = Path(constants.__file__).read_text()
    found = re.findall(r"^(\w+) = .*?# \(= ([\d,]+)\)", text, flags=re.M)
    assert len(found) >= 5
    for name, shown in found:
        assert getattr(constants, name) == int(shown.replace(",", "")), name


def test_from_dict_refuses_unknown_or_missing_fields():
    with pytest.raises(ProfileError):
        PrecisionProfile.from_dict({**PROFILES["int8"].to_dict(), "w_foo": 8})
    with pytest.raises(ProfileError):
        PrecisionProfile.from_dict({**PROFILES["int8"].to_dict(), "a_o": 8.0})
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig.from_dict({k: v for k, v in DEMO.to_dict().items() if k != "vocab_size"})
