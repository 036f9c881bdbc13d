"""The model commitment: one 32-byte BLAKE3 Merkle root that names a quantized model exactly.

Every signed ledger record names the model it ran by this root, so anyone holding the artifact
can recompute it from the integer tensors, the committed files (the tokenizer), the config and
the precision profile alone:

    root = MTH([config_leaf(config, profile)]
               + [file_leaf(name, data) for name in sorted file names]
               + [tensor_leaf(name, t) for name in sorted tensor names])

``MTH`` is `spec.merkle.merkle_root` (RFC 9162 shape, BLAKE3 profile), so the leaves are hashed
as ``BLAKE3(0x00 || leaf)`` and interior nodes as ``BLAKE3(0x01 || left || right)``. File and
tensor names are sorted by their UTF-8 bytes. Integers are little-endian throughout.

The leaf encodings (``u32``/``u64`` are unsigned little-endian, ``name`` is UTF-8):

* config leaf: ``CONFIG_TAG || value({"config": config.to_dict(), "numerics": NUMERICS_VERSION,
  "profile": profile.to_dict()})`` where ``value`` is the typed encoding of `encode_value` (no
  floats as decimal text: a float is its IEEE-754 binary64 bits, so every language encodes it the
  same way). The config includes the attention window the model was trained with
  (``sliding_window``) and its RoPE scaling; ``NUMERICS_VERSION`` (spec.constants) names the
  revision of the integer rules, so a numerics revision changes every commitment;
* file leaf: ``FILE_TAG || u32 len(name) || name || u64 len(data) || data``: a file the model
  needs besides its tensors, byte for byte (an artifact commits its ``tokenizer.json``, so the
  text an auditor prints is the text the engine's user saw);
* tensor leaf: ``TENSOR_TAG || u32 len(name) || name || u8 dtype code || u8 ndim ||
  ndim x u64 shape || the elements in C order, each little-endian`` (`tensor_leaf`).

Vectors: tests/vectors/commitment/ (written by tools/vectors/commitment.py).
"""
from __future__ import annotations

import struct
from typing import Iterator

import torch

from spec.constants import NUMERICS_VERSION
from spec.merkle import BLAKE3, leaf_hash, root_from_leaf_hashes

CONFIG_TAG = b"fieldprint/model-config/v1\x00"  # first bytes of the config leaf (domain separation)
TENSOR_TAG = b"fieldprint/model-tensor/v1\x00"  # first bytes of every tensor leaf
FILE_TAG = b"fieldprint/model-file/v1\x00"  # first bytes of every file leaf

# Element type codes of tensor leaves (one byte). Only integer tensors are committed.
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.uint8: 0x01,
    torch.int8: 0x02,
    torch.int16: 0x03,
    torch.int32: 0x04,
    torch.int64: 0x05,
}
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.uint8: "uint8", torch.int8: "int8", torch.int16: "int16", torch.int32: "int32", torch.int64: "int64",
}

# Type bytes of `encode_value`.
T_NONE, T_BOOL, T_INT, T_FLOAT, T_STR, T_LIST, T_DICT = b"n", b"b", b"i", b"f", b"s", b"l", b"d"


def _u32(n: int) -> bytes:
    return struct.pack("<I", n)


def encode_value(v) -> bytes:
    """Return the canonical typed encoding of a JSON-like value.

    ``None`` -> ``n``; bool -> ``b`` + one byte 0/1; int -> ``i`` + i64; float -> ``f`` +
    binary64; str -> ``s`` + u32 byte length + UTF-8; list -> ``l`` + u32 count + items;
    dict (str keys) -> ``d`` + u32 count + (u32 key length, key UTF-8, value) sorted by key bytes.
    Requires ints in [-2**63, 2**63).
    """
    if v is None:
        return T_NONE
    if isinstance(v, bool):
        return T_BOOL + bytes([int(v)])
    if isinstance(v, int):
        return T_INT + struct.pack("<q", v)
    if isinstance(v, float):
        return T_FLOAT + struct.pack("<d", v)
    if isinstance(v, str):
        b = v.encode("utf-8")
        return T_STR + _u32(len(b)) + b
    if isinstance(v, (list, tuple)):
        return T_LIST + _u32(len(v)) + b"".join(encode_value(x) for x in v)
    if isinstance(v, dict):
        items = sorted((k.encode("utf-8"), x) for k, x in v.items())
        return T_DICT + _u32(len(items)) + b"".join(_u32(len(k)) + k + encode_value(x) for k, x in items)
    raise TypeError(f"cannot encode {type(v).__name__} in a model commitment")


def config_leaf(config, profile, numerics: str = NUMERICS_VERSION) -> bytes:
    """Return the first leaf: CONFIG_TAG then the encoding of {"config", "numerics", "profile"}."""
    return CONFIG_TAG + encode_value({"config": config.to_dict(), "numerics": numerics, "profile": profile.to_dict()})


def file_leaf(name: str, data: bytes) -> bytes:
    """Return the leaf of one committed file: tag, u32 name length, name, u64 data length, data."""
    nb = name.encode("utf-8")
    return FILE_TAG + _u32(len(nb)) + nb + struct.pack("<Q", len(data)) + bytes(data)


def tensor_data(t: torch.Tensor) -> memoryview:
    """Return a view of the elements of integer tensor t in C order, each little-endian (no copy
    when t is already contiguous on a little-endian CPU)."""
    if t.dtype not in DTYPE_CODES:
        raise TypeError(f"only integer tensors are committed, got {t.dtype}")
    a = t.detach().cpu().contiguous().numpy()
    return memoryview(a.astype(a.dtype.newbyteorder("<"), copy=False)).cast("B")


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Return the elements of integer tensor t in C order, each little-endian."""
    return tensor_data(t).tobytes()


def tensor_leaf_head(name: str, t: torch.Tensor) -> bytes:
    """Return the bytes of a tensor leaf before its elements: tag, name, dtype code, ndim, shape."""
    nb = name.encode("utf-8")
    head = TENSOR_TAG + _u32(len(nb)) + nb + bytes([DTYPE_CODES[t.dtype], t.dim()])
    return head + b"".join(struct.pack("<Q", s) for s in t.shape)


def tensor_leaf(name: str, t: torch.Tensor) -> bytes:
    """Return the leaf of one tensor: tag, name, dtype code, ndim, shape, little-endian elements."""
    return tensor_leaf_head(name, t) + tensor_bytes(t)


def sorted_names(items: dict) -> list[str]:
    """Return the tensor (or file) names in commitment order (sorted by UTF-8 bytes)."""
    return sorted(items, key=lambda n: n.encode("utf-8"))


def model_leaves(config, profile, tensors: dict[str, torch.Tensor], files: dict[str, bytes] | None = None,
                 numerics: str = NUMERICS_VERSION) -> Iterator[bytes]:
    """Yield the commitment leaves in order: the config leaf, one leaf per sorted file name, then
    one leaf per sorted tensor name."""
    files = files or {}
    yield config_leaf(config, profile, numerics)
    for name in sorted_names(files):
        yield file_leaf(name, files[name])
    for name in sorted_names(tensors):
        yield tensor_leaf(name, tensors[name])


def commitment_of(config, profile, tensors: dict[str, torch.Tensor], files: dict[str, bytes] | None = None,
                  numerics: str = NUMERICS_VERSION) -> bytes:
    """Return MTH over `model_leaves` (leaves hashed one at a time, so memory stays one tensor)."""
    leaves = model_leaves(config, profile, tensors, files, numerics)
    return root_from_leaf_hashes([leaf_hash(leaf, BLAKE3) for leaf in leaves], BLAKE3)


def model_commitment(model) -> bytes:
    """Return the 32-byte commitment of a QuantizedModel: `commitment_of` its config, profile,
    tensors and committed files (``model.files``)."""
    return commitment_of(model.config, model.profile, model.tensors, model.files)
