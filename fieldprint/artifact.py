"""The quantized model artifact: a folder that names its model by commitment and checks itself.

Layout of an artifact folder:

| file                | content                                                                  |
|---------------------|--------------------------------------------------------------------------|
| ``model.safetensors`` | the integer tensors of the QuantizedModel (names: spec.model.tensor_specs) |
| ``manifest.json``   | format version, config (with the model's sliding window), profile, numerics version, per-tensor dtype/shape/leaf hash, per-file leaf hash, the model commitment (spec.commitment), source checkpoint hashes |
| ``tokenizer.json``  | the checkpoint's tokenizer, byte for byte (a committed file: its bytes are a leaf of the commitment) |

An artifact is written into a temporary sibling folder and renamed into place, so a reader
never sees a half-written one. `load_artifact` recomputes every tensor's leaf hash and the
commitment, and refuses the artifact (naming the tensor, file or field) on any mismatch.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import torch

from fieldprint.errors import ArtifactError, ConfigError
from spec.commitment import (DTYPE_NAMES, config_leaf, file_leaf, model_commitment, sorted_names, tensor_data,
                             tensor_leaf, tensor_leaf_head)
from spec.constants import NUMERICS_VERSION
from spec.merkle import BLAKE3, LEAF_PREFIX, leaf_hash, root_from_leaf_hashes
from spec.profiles import fidelity_record

FORMAT = "fieldprint-artifact"
FORMAT_VERSION = 2  # 2: the commitment covers the tokenizer, the sliding window and the numerics version
MODEL_FILE, MANIFEST_FILE, TOKENIZER_FILE = "model.safetensors", "manifest.json", "tokenizer.json"
_DTYPES_BY_NAME = {v: k for k, v in DTYPE_NAMES.items()}


@dataclass
class ArtifactInfo:
    """What `save_artifact` wrote."""

    path: Path
    commitment: bytes
    num_params: int
    size_bytes: int
    manifest: dict = field(default_factory=dict)


@dataclass
class LoadedArtifact:
    """A verified artifact: the model, its tokenizer, its commitment and manifest."""

    path: Path
    model: object  # spec.model.QuantizedModel
    tokenizer: object  # tokenizers.Tokenizer
    commitment: bytes
    manifest: dict


def file_hash(path: Path) -> str:
    """Return the BLAKE3 hex digest of a file's bytes (read in 1 MiB blocks)."""
    h = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# -- save ------------------------------------------------------------------------------------
def build_manifest(model, source: dict | None = None, extra: dict | None = None) -> dict:
    """Return the manifest dict of a model (computes every leaf hash and the commitment)."""
    index = {}
    for name in sorted_names(model.tensors):
        t = model.tensors[name]
        index[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                       "leaf_hash": leaf_hash(tensor_leaf(name, t), BLAKE3).hex()}
    return _manifest_of(model.config, model.profile, model.files, index, source, extra)


def _manifest_of(config, profile, files: dict[str, bytes], index: dict, source: dict | None, extra: dict | None) -> dict:
    """Return the manifest of a model given its tensor index (name -> dtype, shape, leaf hash)."""
    leaf_hashes = [leaf_hash(config_leaf(config, profile), BLAKE3)]
    entries = {}
    for name in sorted_names(files):
        lh = leaf_hash(file_leaf(name, files[name]), BLAKE3)
        leaf_hashes.append(lh)
        entries[name] = {"size": len(files[name]), "blake3": blake3.blake3(files[name]).hexdigest(), "leaf_hash": lh.hex()}
    leaf_hashes += [bytes.fromhex(index[name]["leaf_hash"]) for name in sorted_names(index)]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "commitment": root_from_leaf_hashes(leaf_hashes, BLAKE3).hex(),
        "commitment_scheme": "spec.commitment/v2 (BLAKE3 RFC 9162 Merkle root: config, files, tensors)",
        "numerics": NUMERICS_VERSION,
        "config": config.to_dict(),
        "profile": profile.to_dict(),
        "files": {name: entries[name] for name in sorted_names(entries)},
        "tensors": {name: index[name] for name in sorted_names(index)},
        "source": source or {},
    }
    ladder = fidelity_record(profile)  # informational: what this shipped profile costs (spec.profiles.FIDELITY)
    if ladder is not None:
        manifest["fidelity"] = ladder
    manifest.update(extra or {})
    return manifest


def _check_out_dir(out: Path) -> None:
    """Refuse to replace a folder that exists and is neither empty nor a Fieldprint artifact."""
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise ArtifactError(f"{out}: folder exists and is not a Fieldprint artifact (no {MANIFEST_FILE}); "
                            f"refusing to replace it")


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished tmp folder to out; an old artifact at out is replaced, never mixed."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old / out.name, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _model_files(files: dict[str, bytes], out: Path) -> dict[str, bytes]:
    """Return the committed files of an artifact: exactly its tokenizer."""
    if TOKENIZER_FILE not in files:
        raise ArtifactError(f"{out}: an artifact needs a tokenizer (pass tokenizer_path)")
    unknown = sorted(set(files) - {TOKENIZER_FILE})
    if unknown:
        raise ArtifactError(f"{out}: cannot save committed file {unknown[0]!r} (an artifact holds {TOKENIZER_FILE} only)")
    return files


def _write_folder(out: Path, files: dict[str, bytes], write_model) -> dict:
    """Write an artifact folder atomically: ``write_model(tmp)`` writes model.safetensors into the
    temporary folder and returns the manifest; then the committed files and the manifest (last:
    its presence marks a complete folder), then the folder replaces ``out``. Returns the manifest."""
    _check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = write_model(tmp)
        _fsync(tmp / MODEL_FILE)
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        _write_json(tmp / MANIFEST_FILE, manifest)
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)  # mkdtemp makes it private; an artifact is an ordinary readable folder
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _info(out: Path, manifest: dict) -> ArtifactInfo:
    return ArtifactInfo(path=out, commitment=bytes.fromhex(manifest["commitment"]),
                        num_params=sum(math.prod(e["shape"]) for e in manifest["tensors"].values()),
                        size_bytes=sum(f.stat().st_size for f in out.iterdir()), manifest=manifest)


def save_artifact(model, out_dir, tokenizer_path=None, source: dict | None = None, extra: dict | None = None) -> ArtifactInfo:
    """Write model + manifest + tokenizer to out_dir atomically and return what was written.

    The tokenizer is ``tokenizer_path`` when given, else the model's committed ``tokenizer.json``;
    it is committed with the model (so the saved commitment covers its bytes)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    files = dict(model.files)
    if tokenizer_path is not None:
        tokenizer_path = Path(tokenizer_path)
        if not tokenizer_path.is_file():
            raise ArtifactError(f"{tokenizer_path}: tokenizer file not found")
        files[TOKENIZER_FILE] = tokenizer_path.read_bytes()
    model = copy.copy(model)
    model.files = _model_files(files, out)

    def write_model(tmp: Path) -> dict:
        manifest = build_manifest(model, source, extra)
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.tensors.items()}
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": FORMAT, "commitment": manifest["commitment"]})
        return manifest

    return _info(out, _write_folder(out, model.files, write_model))


class TensorFileWriter:
    """Write a safetensors file tensor by tensor, in any order, holding one tensor at a time.

    The header is laid out up front from the names, dtypes and shapes a QuantizedModel must have
    (`spec.model.tensor_specs`; data in sorted-name order, header padded to 8 bytes), so each
    tensor goes straight to its offset. ``write`` checks a tensor against its spec and returns
    its commitment leaf hash; ``close`` checks that every tensor was written and stores the
    commitment in the header's metadata (the placeholder has the same length)."""

    ST_NAMES = {torch.int8: "I8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64", torch.uint8: "U8"}

    def __init__(self, path: Path, specs: dict):
        self.path, self.specs, self.offsets, self.written = path, specs, {}, set()
        pos = 0
        for name in sorted_names(specs):
            dtype, shape = specs[name]
            n = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
            self.offsets[name] = (pos, pos + n)
            pos += n
        self.data_size = pos
        self.header = self._header("0" * 64)
        self.f = open(path, "wb")
        self.f.write(self.header)
        self.f.truncate(len(self.header) + self.data_size)

    def _header(self, commitment: str) -> bytes:
        entries = {name: {"dtype": self.ST_NAMES[self.specs[name][0]], "shape": list(self.specs[name][1]),
                          "data_offsets": list(self.offsets[name])} for name in sorted_names(self.specs)}
        text = json.dumps({"__metadata__": {"format": FORMAT, "commitment": commitment}, **entries},
                          separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        return len(text).to_bytes(8, "little") + text

    def write(self, name: str, t: torch.Tensor) -> bytes:
        if name not in self.specs or name in self.written:
            raise ArtifactError(f"{self.path}: tensor '{name}' is not expected here (or written twice)")
        dtype, shape = self.specs[name]
        if t.dtype != dtype or tuple(t.shape) != tuple(shape):
            raise ArtifactError(f"{self.path}: tensor '{name}' is {t.dtype} {list(t.shape)}, want {dtype} {list(shape)}")
        data = tensor_data(t)  # little-endian, C order: what the file and the leaf both hold
        begin, end = self.offsets[name]
        assert data.nbytes == end - begin
        self.f.seek(len(self.header) + begin)
        self.f.write(data)
        self.written.add(name)
        h = blake3.blake3(bytes([LEAF_PREFIX]))  # = spec.merkle.leaf_hash(tensor_leaf(name, t)), without copies
        h.update(tensor_leaf_head(name, t))
        h.update(data)
        return h.digest()

    def close(self, commitment: str) -> None:
        missing = sorted(set(self.specs) - self.written)
        if missing:
            raise ArtifactError(f"{self.path}: tensor '{missing[0]}' was never written")
        final = self._header(commitment)
        assert len(final) == len(self.header)
        self.f.seek(0)
        self.f.write(final)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


# -- load ------------------------------------------------------------------------------------
def _manifest(root: Path) -> dict:
    from fieldprint.hf import read_json

    path = root / MANIFEST_FILE
    m = read_json(path, ArtifactError)
    if not isinstance(m, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    if m.get("format") != FORMAT:
        raise ArtifactError(f"{path}: field 'format' is {m.get('format')!r}, expected {FORMAT!r}")
    if m.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: field 'format_version' is {m.get('format_version')!r}; this Fieldprint "
                            f"reads version {FORMAT_VERSION}")
    for key, kind in (("commitment", str), ("numerics", str), ("config", dict), ("profile", dict), ("files", dict),
                      ("tensors", dict)):
        if not isinstance(m.get(key), kind):
            raise ArtifactError(f"{path}: field '{key}' missing or not a {kind.__name__}")
    return m


def _config_profile(m: dict, path: Path):
    from spec.model import ModelConfig
    from spec.profiles import PrecisionProfile

    try:
        config = ModelConfig.from_dict(m["config"])
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{path}: field 'config' is not a valid model config ({e})") from None
    try:
        profile = PrecisionProfile.from_dict(m["profile"])
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{path}: field 'profile' is not a valid precision profile ({e})") from None
    return config, profile


def _check_tensors(tensors: dict, m: dict, root: Path) -> None:
    """Refuse tensors that differ from the manifest index: names, dtype, shape, leaf hash."""
    index, mf = m["tensors"], root / MODEL_FILE
    for name in sorted(set(index) - set(tensors)):
        raise ArtifactError(f"{mf}: tensor '{name}' listed in {MANIFEST_FILE} is missing")
    for name in sorted(set(tensors) - set(index)):
        raise ArtifactError(f"{mf}: unexpected tensor '{name}' (not in {MANIFEST_FILE})")
    for name in sorted_names(index):
        t, e = tensors[name], index[name]
        if not isinstance(e, dict):
            raise ArtifactError(f"{root / MANIFEST_FILE}: field 'tensors.{name}' must be an object")
        if DTYPE_NAMES.get(t.dtype) != e.get("dtype") or list(t.shape) != e.get("shape"):
            raise ArtifactError(f"{mf}: tensor '{name}' is {t.dtype} {list(t.shape)}, manifest says "
                                f"{e.get('dtype')} {e.get('shape')}")
        if leaf_hash(tensor_leaf(name, t), BLAKE3).hex() != e.get("leaf_hash"):
            raise ArtifactError(f"{mf}: tensor '{name}' does not match its leaf hash in {MANIFEST_FILE} "
                                f"(the file was modified or corrupted)")


def _read_files(m: dict, root: Path) -> dict[str, bytes]:
    """Return the committed files (the tokenizer) after checking each against its manifest leaf hash."""
    mp = root / MANIFEST_FILE
    if set(m["files"]) != {TOKENIZER_FILE}:
        raise ArtifactError(f"{mp}: field 'files' must list exactly {TOKENIZER_FILE}, got {sorted(m['files'])}")
    files = {}
    for name, e in m["files"].items():
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{path}: file not found")
        data = path.read_bytes()
        if not isinstance(e, dict) or leaf_hash(file_leaf(name, data), BLAKE3).hex() != e.get("leaf_hash"):
            raise ArtifactError(f"{path}: does not match its leaf hash in {MANIFEST_FILE} field 'files.{name}' "
                                f"(the file was modified or corrupted)")
        files[name] = data
    return files


def load_artifact(path) -> LoadedArtifact:
    """Return the verified artifact at path; raise ArtifactError naming the file/field/tensor."""
    from tokenizers import Tokenizer

    from fieldprint.hf import load_safetensors
    from spec.model import QuantizedModel

    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: artifact folder not found")
    m = _manifest(root)
    if m["numerics"] != NUMERICS_VERSION:
        raise ArtifactError(f"{root / MANIFEST_FILE}: field 'numerics' is {m['numerics']!r}; this Fieldprint "
                            f"implements {NUMERICS_VERSION!r} (quantize the checkpoint again)")
    config, profile = _config_profile(m, root / MANIFEST_FILE)
    if not (root / MODEL_FILE).is_file():
        raise ArtifactError(f"{root / MODEL_FILE}: file not found")
    tensors = load_safetensors(root / MODEL_FILE, ArtifactError)
    _check_tensors(tensors, m, root)
    files = _read_files(m, root)
    try:
        model = QuantizedModel(config, profile, tensors, files)
    except ValueError as e:
        raise ArtifactError(f"{root / MODEL_FILE}: not a valid quantized model for its manifest ({e})") from None
    commitment = model_commitment(model)
    if commitment.hex() != m["commitment"]:
        raise ArtifactError(f"{root / MANIFEST_FILE}: field 'commitment' is {m['commitment']}, but the model "
                            f"commits to {commitment.hex()} (its config, sliding window, profile or a "
                            f"leaf hash was changed)")
    tok_path = root / TOKENIZER_FILE
    try:
        tokenizer = Tokenizer.from_file(str(tok_path))
    except Exception as e:  # tokenizers raises a bare Exception
        raise ArtifactError(f"{tok_path}: not a valid tokenizers file ({str(e).splitlines()[0]})") from None
    return LoadedArtifact(path=root, model=model, tokenizer=tokenizer, commitment=commitment, manifest=m)


# -- quantize --------------------------------------------------------------------------------
class _Stages:
    """A rich progress display of named stages on stderr (silent when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.bar, self.task = enabled, total, None, None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                console=Console(stderr=True))
            self.bar.__enter__()
            self.task = self.bar.add_task("quantize", total=self.total)
        return self

    def stage(self, text: str, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=text, completed=done)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.update(self.task, completed=self.total, description="done")
            self.bar.__exit__(*exc)
        return False


def quantize_checkpoint(hf_dir, out_dir, profile_name: str = "default", progress: bool = True,
                        max_position: int | None = None) -> ArtifactInfo:
    """Quantize a HF checkpoint with a named profile into an artifact, streaming, and save it atomically.

    Conversion streams: each float weight is read from its shard when needed (bf16, fp16 or fp32
    safetensors, `fieldprint.hf.LazyState`), quantized (`spec.convert.quantize_tensors`), written
    to its place in model.safetensors (`TensorFileWriter`) and dropped, so peak memory is a small
    multiple of the largest tensor, not of the model. The artifact equals the one `save_artifact`
    writes for `spec.convert.quantize_model` of the same checkpoint (same tensors, same commitment).

    ``max_position`` (default: the checkpoint's ``max_position_embeddings``) limits the positions
    the artifact serves: its RoPE tables and the engines' default KV pool scale with it, so a
    short demo of a 128K-context model need not cost gigabytes. It may not exceed the checkpoint's."""
    from fieldprint.hf import load_hf_checkpoint
    from spec.convert import quantize_tensors
    from spec.model import check_rope_tables, tensor_specs
    from spec.profiles import PROFILES, validate_profile
    from spec.tables import exp2_table

    if profile_name not in PROFILES:
        raise ConfigError(f"profile: unknown precision profile {profile_name!r} "
                          f"(choose one of {', '.join(sorted(PROFILES))})")
    profile, out = PROFILES[profile_name], Path(out_dir)
    ckpt = load_hf_checkpoint(hf_dir, lazy=True)
    trained_positions = ckpt.config.max_position
    if max_position is not None:
        ckpt.config = _limit_positions(ckpt.config, max_position, Path(hf_dir) / "config.json")
    config = ckpt.config
    try:
        validate_profile(profile, config)
    except ValueError as e:  # spec.profiles.ProfileError
        raise ConfigError(f"profile {profile_name!r} cannot run {Path(hf_dir) / 'config.json'}: {e}") from None
    specs = tensor_specs(config, profile)
    files = {TOKENIZER_FILE: Path(ckpt.tokenizer_path).read_bytes()}
    source = {"files": {f.name: file_hash(f) for f in [ckpt.path / "config.json", *ckpt.weight_files]},
              "max_position_embeddings": trained_positions}
    extra = {"eos_token_ids": ckpt.eos_token_ids or None, "bos_token_id": ckpt.bos_token_id}

    def write_model(tmp: Path) -> dict:
        index, rope = {}, {}
        writer = TensorFileWriter(tmp / MODEL_FILE, specs)
        try:
            with _Stages(progress and sys.stderr.isatty(), len(specs)) as st:
                for done, (name, t) in enumerate(quantize_tensors(config, ckpt.state, profile)):
                    st.stage(f"quantizing {name} ({profile_name} profile)", done)
                    if name == "exp2.table" and not torch.equal(t, exp2_table()):
                        raise ArtifactError("tensor exp2.table differs from spec.tables.exp2_table()")
                    if name in ("rope.cos", "rope.sin"):
                        rope[name] = t
                        if len(rope) == 2:
                            try:
                                check_rope_tables(rope.pop("rope.cos"), rope.pop("rope.sin"))
                            except ValueError as e:
                                raise ConfigError(f"{Path(hf_dir) / 'config.json'}: cannot be quantized ({e})") from None
                    index[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                                   "leaf_hash": writer.write(name, t).hex()}
                    del t
            manifest = _manifest_of(config, profile, files, index, source, extra)
            writer.close(manifest["commitment"])
        except BaseException:
            writer.f.close()
            raise
        return manifest

    return _info(out, _write_folder(out, files, write_model))


def _limit_positions(config, max_position, cfg_path: Path):
    """Return config with max_position lowered to ``max_position`` (refusing a value out of range)."""
    import dataclasses

    if isinstance(max_position, bool) or not isinstance(max_position, int) or not 1 <= max_position <= config.max_position:
        raise ConfigError(f"--max-position: {max_position!r} must be an integer in [1, {config.max_position}] "
                          f"(max_position_embeddings of {cfg_path})")
    return dataclasses.replace(config, max_position=max_position)
