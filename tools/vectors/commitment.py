"""Model commitment vectors: `commitment/<case>.json`, one tiny model per file.

`happy-path.json` is a tiny model of six integer tensors (int8, int16, int32, int64, uint8),
given as little-endian hex bytes, and one committed file (a tokenizer.json), with its config
and profile dicts, the numerics version, every leaf (hex), every leaf hash and the root. Every
other case changes the model in one named way (a byte, a name, a shape, a dtype, a config or
profile field, the sliding window, the numerics version, a tokenizer byte, a missing tensor or
file) and records the new root, which must differ from happy-path's. The config and profile are fixed literals here (not today's
spec.profiles), so the vectors pin the encoding of spec.commitment and nothing else.

    python -m tools.gen_vectors --area commitment
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from spec.commitment import DTYPE_NAMES, commitment_of, model_leaves
from spec.merkle import leaf_hash

CONFIG = {"arch": "llama", "vocab_size": 4, "hidden_size": 3, "intermediate_size": 6, "num_layers": 1,
          "num_heads": 1, "num_kv_heads": 1, "head_dim": 3, "rope_theta": 10000.0, "rms_norm_eps": 1e-05,
          "max_position": 16, "tie_embeddings": True, "qkv_bias": False, "sliding_window": None,
          "rope_scaling": None}
NUMERICS = "fieldprint-numerics/1"  # a literal: the vectors pin the encoding, not today's version
# A committed file: tokenizer bytes with a multi-byte UTF-8 token (the leaf carries bytes, not text).
TOKENIZER = '{"model": {"vocab": {"<s>": 0, "a": 1, "b": 2, "\u00e9": 3}}}\n'.encode("utf-8")
PROFILE = {"name": "vectors", "w_qkv": 8, "a_qkv": 12, "prob_bits": 15, "edge_layers": 0}


class _Dicts:
    """Stand-in for ModelConfig / PrecisionProfile: the commitment only reads to_dict()."""

    def __init__(self, d: dict):
        self.d = d

    def to_dict(self) -> dict:
        return dict(self.d)


def tiny_tensors() -> dict[str, torch.Tensor]:
    """Return the happy-path tensors: small, every integer dtype, negative values, a 3-d shape."""
    return {
        "embed.weight": (torch.arange(12, dtype=torch.int8) - 6).reshape(4, 3),
        "layers.0.q.mul": torch.tensor([16384, 20000, 32767], dtype=torch.int32),
        "layers.0.q.shift": torch.tensor([-3, 0, 40], dtype=torch.int32),
        "rms.eps": torch.tensor([281475], dtype=torch.int64),
        "Table.u8": torch.arange(8, dtype=torch.uint8).reshape(2, 2, 2),
        "w16": torch.tensor([[-32767, 1], [256, -2]], dtype=torch.int16),
    }


def _case(desc: str, tensors: dict, config: dict = CONFIG, profile: dict = PROFILE,
          files: dict | None = None, numerics: str = NUMERICS) -> dict:
    c, p = _Dicts(config), _Dicts(profile)
    files = {"tokenizer.json": TOKENIZER} if files is None else files
    leaves = list(model_leaves(c, p, tensors, files, numerics))
    return {
        "desc": desc,
        "numerics": numerics,
        "config": config,
        "profile": profile,
        "files": {n: data.hex() for n, data in files.items()},
        "tensors": {n: {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data": t.contiguous().numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes().hex()}
                    for n, t in tensors.items()},
        "leaves": [leaf.hex() for leaf in leaves],
        "leaf_hashes": [leaf_hash(leaf).hex() for leaf in leaves],
        "root": commitment_of(c, p, tensors, files, numerics).hex(),
        "want_err": False,
    }


def cases() -> dict[str, dict]:
    """Return every case by file stem."""
    t = tiny_tensors()

    def edit(**changes):
        out = dict(t)
        for k, v in changes.items():
            out[k.replace("__", ".")] = v
        return out

    flipped = t["embed.weight"].clone()
    flipped.view(-1)[5] ^= 1 << 3
    renamed = {("embed.weights" if k == "embed.weight" else k): v for k, v in t.items()}
    return {
        "happy-path": _case("tiny model: six tensors, int8/int16/int32/int64/uint8, a tokenizer.json", t),
        "tensor-bit-flip-@5-bit-3": _case("bit 3 of element 5 of embed.weight flipped",
                                          edit(embed__weight=flipped)),
        "tensor-renamed": _case("embed.weight renamed embed.weights (same bytes)", renamed),
        "tensor-reshaped": _case("embed.weight viewed as [3, 4] (same bytes)",
                                 edit(embed__weight=t["embed.weight"].reshape(3, 4))),
        "tensor-dtype-changed": _case("embed.weight bytes reinterpreted as uint8",
                                      edit(embed__weight=t["embed.weight"].view(torch.uint8))),
        "tensor-removed": _case("rms.eps removed", {k: v for k, v in t.items() if k != "rms.eps"}),
        "config-field-changed": _case("config rope_theta 10000.0 -> 500000.0", t,
                                      config={**CONFIG, "rope_theta": 500000.0}),
        "config-int-vs-float": _case("config rope_theta given as the integer 10000 (types are encoded)", t,
                                     config={**CONFIG, "rope_theta": 10000}),
        "profile-field-changed": _case("profile a_qkv 12 -> 11", t, profile={**PROFILE, "a_qkv": 11}),
        "config-sliding-window-set": _case("config sliding_window None -> 8 (the model's attention window)", t,
                                           config={**CONFIG, "sliding_window": 8}),
        "numerics-version-changed": _case("numerics fieldprint-numerics/1 -> fieldprint-numerics/2", t,
                                          numerics="fieldprint-numerics/2"),
        "file-byte-changed": _case("tokenizer.json with the strings of tokens 1 and 2 swapped", t,
                                   files={"tokenizer.json": TOKENIZER.replace(b'"a": 1, "b": 2', b'"b": 1, "a": 2')}),
        "file-removed": _case("tokenizer.json removed (no committed files)", t, files={}),
    }


def generate(out_dir: Path) -> None:
    """Write out_dir/commitment/<case>.json."""
    d = Path(out_dir) / "commitment"
    d.mkdir(parents=True, exist_ok=True)
    for stem, case in cases().items():
        (d / f"{stem}.json").write_text(json.dumps(case, indent=1) + "\n")
