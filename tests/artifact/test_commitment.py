"""spec.commitment: checked-in vectors recompute, and any change to a model changes its root."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from spec.commitment import (CONFIG_TAG, FILE_TAG, TENSOR_TAG, commitment_of, config_leaf, encode_value, file_leaf,
                             model_leaves, tensor_leaf)
from spec.constants import NUMERICS_VERSION
from spec.merkle import leaf_hash, merkle_root

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "commitment"
DTYPES = {"int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8}
NP = {"int8": "<i1", "int16": "<i2", "int32": "<i4", "int64": "<i8", "uint8": "<u1"}


class D:
    def __init__(self, d):
        self.d = d

    def to_dict(self):
        return dict(self.d)


def _tensors(case: dict) -> dict[str, torch.Tensor]:
    import numpy as np

    def one(e):  # little-endian bytes -> native-order array -> tensor
        a = np.frombuffer(bytes.fromhex(e["data"]), dtype=NP[e["dtype"]]).astype(NP[e["dtype"]][1:])
        return torch.from_numpy(a).reshape(e["shape"])

    return {n: one(e) for n, e in case["tensors"].items()}


def _cases():
    return sorted(VECTORS.glob("*.json"))


@pytest.mark.parametrize("path", _cases(), ids=lambda p: p.stem)
def test_vector(path):
    case = json.loads(path.read_text())
    t = _tensors(case)
    for n, e in case["tensors"].items():
        assert t[n].dtype == DTYPES[e["dtype"]]
    files = {n: bytes.fromhex(h) for n, h in case["files"].items()}
    leaves = list(model_leaves(D(case["config"]), D(case["profile"]), t, files, case["numerics"]))
    assert [x.hex() for x in leaves] == case["leaves"]
    assert [leaf_hash(x).hex() for x in leaves] == case["leaf_hashes"]
    assert merkle_root(leaves).hex() == case["root"]
    assert commitment_of(D(case["config"]), D(case["profile"]), t, files, case["numerics"]).hex() == case["root"]


def test_every_mutation_changes_the_root():
    roots = {p.stem: json.loads(p.read_text())["root"] for p in _cases()}
    assert {"happy-path", "file-byte-changed", "numerics-version-changed", "config-sliding-window-set"} <= set(roots)
    assert len(set(roots.values())) == len(roots), roots


def test_tensor_leaf_layout():
    leaf = tensor_leaf("ab", torch.tensor([[1, -1]], dtype=torch.int16))
    assert leaf == TENSOR_TAG + b"\x02\0\0\0ab" + b"\x03\x02" + (1).to_bytes(8, "little") + (2).to_bytes(8, "little") \
        + b"\x01\x00\xff\xff"


def test_config_leaf_layout():
    leaf = config_leaf(D({"x": 1.5}), D({"name": "p", "on": True}), "n/1")
    body = (b"d\x03\0\0\0" + b"\x06\0\0\0config" + b"d\x01\0\0\0" + b"\x01\0\0\0x" + b"f" + struct.pack("<d", 1.5)
            + b"\x08\0\0\0numerics" + b"s\x03\0\0\0n/1"
            + b"\x07\0\0\0profile" + b"d\x02\0\0\0" + b"\x04\0\0\0name" + b"s\x01\0\0\0p" + b"\x02\0\0\0on" + b"b\x01")
    assert leaf == CONFIG_TAG + body
    assert config_leaf(D({}), D({})) == config_leaf(D({}), D({}), NUMERICS_VERSION)  # today's version by default


def test_file_leaf_layout():
    assert file_leaf("t.json", b"\xc3\xa9") == FILE_TAG + b"\x06\0\0\0t.json" + (2).to_bytes(8, "little") + b"\xc3\xa9"


def test_non_integer_tensors_refused():
    with pytest.raises((TypeError, KeyError)):
        tensor_leaf("f", torch.zeros(2))
    with pytest.raises(TypeError):
        encode_value({"x": object()})


def test_non_contiguous_tensor_commits_its_values():
    t = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    assert tensor_leaf("t", t.t()) == tensor_leaf("t", t.t().contiguous())


def test_name_order_is_utf8_bytes():
    t = {"b": torch.zeros(1, dtype=torch.int8), "B": torch.ones(1, dtype=torch.int8), "a": torch.zeros(1, dtype=torch.int8)}
    leaves = list(model_leaves(D({}), D({}), t))
    assert [x[len(TENSOR_TAG) + 4:len(TENSOR_TAG) + 5] for x in leaves[1:]] == [b"B", b"a", b"b"]


# -- any change changes the root (hypothesis) ---------------------------------------------------
INT_DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8]
CONFIG = {"arch": "llama", "hidden_size": 8, "rope_theta": 10000.0, "tie_embeddings": False}
PROFILE = {"name": "p", "a_qkv": 12}


@st.composite
def models(draw):
    n = draw(st.integers(1, 4))
    names = draw(st.lists(st.text("abcxyz.0123", min_size=1, max_size=6), min_size=n, max_size=n, unique=True))
    out = {}
    for name in names:
        dtype = draw(st.sampled_from(INT_DTYPES))
        shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
        numel = int(torch.tensor(shape).prod())
        info = torch.iinfo(dtype)
        vals = draw(st.lists(st.integers(max(info.min, -1000), min(info.max, 1000)), min_size=numel, max_size=numel))
        out[name] = torch.tensor(vals, dtype=torch.int64).to(dtype).reshape(shape)
    return out


def root(tensors, config=CONFIG, profile=PROFILE):
    return commitment_of(D(config), D(profile), tensors)


@given(models(), st.data())
def test_byte_change_changes_root(tensors, data):
    name = data.draw(st.sampled_from(sorted(tensors)))
    t = tensors[name].clone()
    flat = t.view(torch.uint8).view(-1) if t.dtype != torch.uint8 else t.view(-1)
    i = data.draw(st.integers(0, flat.numel() - 1))
    bit = data.draw(st.integers(0, 7))
    flat[i] ^= 1 << bit
    assert root({**tensors, name: t}) != root(tensors)


@given(models(), st.data())
def test_rename_changes_root(tensors, data):
    name = data.draw(st.sampled_from(sorted(tensors)))
    new = name + data.draw(st.text("qrs", min_size=1, max_size=2))
    renamed = {(new if k == name else k): v for k, v in tensors.items()}
    assert root(renamed) != root(tensors)


@given(models(), st.data())
def test_reshape_changes_root(tensors, data):
    name = data.draw(st.sampled_from(sorted(tensors)))
    t = tensors[name]
    new_shape = (t.numel(),) if t.dim() > 1 else (1, t.numel())
    assert root({**tensors, name: t.reshape(new_shape)}) != root(tensors)


@given(models(), st.data())
def test_dtype_reinterpretation_changes_root(tensors, data):
    name = data.draw(st.sampled_from(sorted(tensors)))
    t = tensors[name]
    other = torch.uint8 if t.dtype != torch.uint8 else torch.int8
    assert root({**tensors, name: t.contiguous().view(other)}) != root(tensors)


@given(models(), st.data())
def test_removal_changes_root(tensors, data):
    name = data.draw(st.sampled_from(sorted(tensors)))
    assert root({k: v for k, v in tensors.items() if k != name}) != root(tensors)


@given(models(), st.sampled_from(sorted(CONFIG)), st.data())
def test_config_field_change_changes_root(tensors, field, data):
    old = CONFIG[field]
    new = {str: "mistral", float: 10000.5, int: 9, bool: not old}[type(old)] if not isinstance(old, bool) else not old
    assert root(tensors, config={**CONFIG, field: new}) != root(tensors)
    assert root(tensors, profile={**PROFILE, "a_qkv": data.draw(st.integers(2, 11))}) != root(tensors)


@given(models(), st.binary(min_size=1, max_size=64), st.data())
def test_file_byte_change_changes_root(tensors, data_bytes, data):
    i, bit = data.draw(st.integers(0, len(data_bytes) - 1)), data.draw(st.integers(0, 7))
    flipped = bytearray(data_bytes)
    flipped[i] ^= 1 << bit
    base = commitment_of(D(CONFIG), D(PROFILE), tensors, {"tokenizer.json": data_bytes})
    assert commitment_of(D(CONFIG), D(PROFILE), tensors, {"tokenizer.json": bytes(flipped)}) != base
    assert commitment_of(D(CONFIG), D(PROFILE), tensors, {}) != base
    assert commitment_of(D(CONFIG), D(PROFILE), tensors, {"tokenizer.json": data_bytes}, "fieldprint-numerics/0") != base


@given(models())
def test_insertion_order_does_not_matter(tensors):
    assert root(dict(reversed(list(tensors.items())))) == root(tensors)


def test_real_model_commitment_matches_leaves(tmp_path, _llama_dir):
    from fieldprint.hf import load_hf_checkpoint
    from spec.commitment import model_commitment
    from spec.convert import quantize_model
    from spec.profiles import PROFILES

    ck = load_hf_checkpoint(_llama_dir)
    tok = {"tokenizer.json": ck.tokenizer_path.read_bytes()}
    q = quantize_model(ck.config, ck.state, PROFILES["default"], tok)
    assert model_commitment(q) == merkle_root(list(model_leaves(q.config, q.profile, q.tensors, tok)))
    assert model_commitment(q) != model_commitment(quantize_model(ck.config, ck.state, PROFILES["default"]))
