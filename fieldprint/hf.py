"""Read a Hugging Face Llama-family checkpoint folder into a ModelConfig and float32 tensors.

A checkpoint folder holds ``config.json``, the weights (``model.safetensors``, or shards listed
in ``model.safetensors.index.json``) and ``tokenizer.json``. Supported architectures:

| ``architectures[0]``  | arch      | notes                                            |
|-----------------------|-----------|--------------------------------------------------|
| ``LlamaForCausalLM``  | llama     | no biases                                        |
| ``MistralForCausalLM``| mistral   | no biases; ``sliding_window`` committed          |
| ``Qwen2ForCausalLM``  | qwen2     | q/k/v biases                                     |

Anything else is refused by name, and so is every feature the integer spec does not implement
(RoPE scalings other than linear, llama3 and yarn, an o_proj or MLP bias, an activation other
than SiLU, pre-quantized weights). Supported RoPE scalings become the committed RoPE tables.
Every safetensors file is checked (header length, header JSON, dtypes, offsets, file size)
before any tensor is read, so a truncated download is reported with the file's name.
"""
from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fieldprint.errors import CheckpointError, UnsupportedArchitectureError
from spec.model import ModelConfig

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}

# safetensors element sizes (bytes) by header dtype name
ST_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
             "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
ST_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format caps the header at 100 MB

# Buffers that older transformers versions saved but that carry no weights.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclass
class HFCheckpoint:
    """A loaded checkpoint: spec config, float32 weights (HF Llama names), tokenizer path."""

    config: ModelConfig
    state: Mapping[str, torch.Tensor]  # a dict of float32 tensors, or a LazyState
    tokenizer_path: Path
    path: Path
    weight_files: list[Path] = field(default_factory=list)
    sliding_window: int | None = None  # Mistral-style window (= config.sliding_window, committed)
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    hf_config: dict = field(default_factory=dict)


# -- JSON ---------------------------------------------------------------------------------------
def read_json(path: Path, error=CheckpointError):
    """Return the parsed JSON of path; missing file or bad JSON raise `error` naming file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a JSON file") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


# -- config ------------------------------------------------------------------------------------
def _field(cfg: dict, name: str, path: Path, kind=int, default=..., positive=True):
    """Return cfg[name] checked to be of `kind`; raise naming the file and field otherwise."""
    if name not in cfg or cfg[name] is None:
        if default is ...:
            raise CheckpointError(f"{path}: missing field '{name}'")
        return default
    v = cfg[name]
    accepted = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}[kind]  # JSON 10000 is a float too
    if not isinstance(v, accepted) or (kind is not bool and isinstance(v, bool)):
        raise CheckpointError(f"{path}: field '{name}' must be {kind.__name__}, got {v!r}")
    if positive and kind in (int, float) and not v > 0:
        raise CheckpointError(f"{path}: field '{name}' must be > 0, got {v!r}")
    return kind(v)


def _arch(cfg: dict, path: Path) -> str:
    archs = cfg.get("architectures")
    if archs is None:
        mt = cfg.get("model_type")
        if mt in MODEL_TYPES:
            return MODEL_TYPES[mt]
        raise UnsupportedArchitectureError(
            f"unsupported architecture: {path} has no field 'architectures' and model_type {mt!r} "
            f"(supported: {', '.join(ARCHITECTURES)})")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise CheckpointError(f"{path}: field 'architectures' must be a non-empty list of strings, got {archs!r}")
    if len(archs) != 1 or archs[0] not in ARCHITECTURES:
        bad = next((a for a in archs if a not in ARCHITECTURES), archs[0])
        raise UnsupportedArchitectureError(
            f"unsupported architecture '{bad}' in {path.name}: field 'architectures' "
            f"(supported: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[archs[0]]


def _unsupported(path: Path, name: str, value, why: str):
    return UnsupportedArchitectureError(f"unsupported feature in {path.name}: field '{name}' = {value!r} ({why})")


def _rope(cfg: dict, path: Path) -> tuple[float, dict | None]:
    """Return (rope_theta, the spec's RoPE scaling dict or None) of a config.json.

    Reads the old field 'rope_scaling' or the new 'rope_parameters' (transformers 5). The types
    'linear', 'llama3' and 'yarn' become spec tables (spec.tables.rope_frequencies), with every
    default resolved here, as transformers resolves it; 'dynamic', 'longrope' and anything else
    are refused by name."""
    from spec.tables import check_rope_scaling

    given = {}
    for name in ("rope_parameters", "rope_scaling"):
        v = cfg.get(name)
        if v is not None and not isinstance(v, dict):
            raise CheckpointError(f"{path}: field '{name}' must be an object, got {v!r}")
        if v is not None:
            given[name] = v
    scaled = {k: v for k, v in given.items() if v.get("rope_type", v.get("type", "default")) != "default"}
    if len(scaled) == 2 and {k: v for k, v in scaled["rope_parameters"].items() if k != "rope_theta"} != \
            {k: v for k, v in scaled["rope_scaling"].items() if k != "rope_theta"}:
        raise CheckpointError(f"{path}: fields 'rope_parameters' and 'rope_scaling' give different RoPE scalings")
    field = next(iter(scaled), next(iter(given), None))
    if field is None:
        return _field(cfg, "rope_theta", path, float, default=10000.0), None
    rp = given[field]
    theta = _field(rp, "rope_theta", path, float) if "rope_theta" in rp else \
        _field(cfg, "rope_theta", path, float, default=10000.0)
    kind = rp.get("rope_type", rp.get("type", "default"))
    if rp.get("partial_rotary_factor", 1.0) != 1.0:
        raise _unsupported(path, f"{field}.partial_rotary_factor", rp["partial_rotary_factor"],
                           "partial rotary embeddings are not in the spec")
    if kind == "default":
        return theta, None
    if kind in ("dynamic", "longrope"):
        raise _unsupported(path, f"{field}.rope_type", kind, "its frequencies depend on the sequence length, so "
                           "they cannot be committed tables (the spec has linear, llama3 and yarn)")
    if kind not in ("linear", "llama3", "yarn"):
        raise _unsupported(path, f"{field}.rope_type", kind, "not in the spec (it has linear, llama3 and yarn)")

    def get(name, kind_of=float, default=...):
        try:
            return _field(rp, name, path, kind_of, default=default)
        except CheckpointError as e:  # name the nested field
            raise CheckpointError(str(e).replace(f"field '{name}'", f"field '{field}.{name}'")) from None

    out = {"rope_type": kind}
    if kind in ("llama3", "yarn"):
        out["original_max_position_embeddings"] = get("original_max_position_embeddings", int)
    if kind == "yarn":
        factor = get("factor", default=None)
        out["factor"] = factor if factor is not None else \
            _field(cfg, "max_position_embeddings", path) / out["original_max_position_embeddings"]
        mscale, mscale_all = get("mscale", default=None), get("mscale_all_dim", default=None)

        def yarn_mscale(scale: float, m: float = 1.0) -> float:  # transformers' get_mscale
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attention = get("attention_factor", default=None)
        if attention is None:
            attention = (yarn_mscale(out["factor"], mscale) / yarn_mscale(out["factor"], mscale_all)
                         if mscale and mscale_all else yarn_mscale(out["factor"]))
        out.update(attention_factor=float(attention), beta_fast=get("beta_fast", default=32.0),
                   beta_slow=get("beta_slow", default=1.0), truncate=get("truncate", bool, default=True))
    else:
        out["factor"] = get("factor")
    if kind == "llama3":
        out.update(low_freq_factor=get("low_freq_factor"), high_freq_factor=get("high_freq_factor"))
    try:
        check_rope_scaling(out)
    except ValueError as e:
        raise CheckpointError(f"{path}: field '{field}': {e}") from None
    return theta, out


def config_from_hf(cfg: dict, path: Path) -> tuple[ModelConfig, int | None]:
    """Return (ModelConfig, sliding_window) for a parsed config.json, refusing unsupported features."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    arch = _arch(cfg, path)
    if cfg.get("quantization_config") is not None:
        raise _unsupported(path, "quantization_config", cfg["quantization_config"].get("quant_method", "?")
                           if isinstance(cfg["quantization_config"], dict) else cfg["quantization_config"],
                           "pre-quantized checkpoints are not supported; give the float checkpoint")
    act = cfg.get("hidden_act", cfg.get("hidden_activation", "silu"))
    if act != "silu":
        raise _unsupported(path, "hidden_act", act, "only 'silu' (SwiGLU) is in the spec")
    if cfg.get("mlp_bias"):
        raise _unsupported(path, "mlp_bias", cfg["mlp_bias"], "MLP biases are not in the spec")
    if arch in ("llama", "mistral") and cfg.get("attention_bias"):
        raise _unsupported(path, "attention_bias", cfg["attention_bias"],
                           "attention bias on o_proj is not in the spec (only Qwen2-style q/k/v biases)")
    sliding = None
    if arch == "mistral" and cfg.get("sliding_window") is not None:
        sliding = _field(cfg, "sliding_window", path)
    if arch == "qwen2" and cfg.get("use_sliding_window"):
        raise _unsupported(path, "use_sliding_window", True, "Qwen2 per-layer sliding windows are not in the spec")
    theta, rope_scaling = _rope(cfg, path)
    heads = _field(cfg, "num_attention_heads", path)
    hidden = _field(cfg, "hidden_size", path)
    kv = _field(cfg, "num_key_value_heads", path, default=heads)
    if heads % kv:
        raise CheckpointError(f"{path}: field 'num_key_value_heads' ({kv}) must divide num_attention_heads ({heads})")
    head_dim = _field(cfg, "head_dim", path, default=None)
    if head_dim is None:
        if hidden % heads:
            raise CheckpointError(f"{path}: field 'hidden_size' ({hidden}) not divisible by num_attention_heads ({heads})")
        head_dim = hidden // heads
    config = ModelConfig(
        arch=arch,
        vocab_size=_field(cfg, "vocab_size", path),
        hidden_size=hidden,
        intermediate_size=_field(cfg, "intermediate_size", path),
        num_layers=_field(cfg, "num_hidden_layers", path),
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        rope_theta=theta,
        rms_norm_eps=_field(cfg, "rms_norm_eps", path, float, default=1e-6),
        max_position=_field(cfg, "max_position_embeddings", path),
        tie_embeddings=_field(cfg, "tie_word_embeddings", path, bool, default=False, positive=False),
        qkv_bias=arch == "qwen2",
        sliding_window=sliding,
        rope_scaling=rope_scaling,
    )
    return config, sliding


def expected_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Return the HF tensor name -> shape of every weight a checkpoint for c must hold."""
    h, d, q, kv = c.hidden_size, c.head_dim, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    out = {"model.embed_tokens.weight": (c.vocab_size, h), "model.norm.weight": (h,)}
    for n in range(c.num_layers):
        p = f"model.layers.{n}."
        out.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (c.intermediate_size, h), p + "mlp.up_proj.weight": (c.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, c.intermediate_size),
        })
        if c.qkv_bias:
            out.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                        p + "self_attn.v_proj.bias": (kv,)})
    if not c.tie_embeddings:
        out["lm_head.weight"] = (c.vocab_size, h)
    return out


# -- safetensors ---------------------------------------------------------------------------------
def check_safetensors(path: Path, error=CheckpointError) -> dict[str, dict]:
    """Return the tensor entries of a safetensors file after checking its structure.

    Checks, naming the file: at least 8 bytes; header length within the file; header is a JSON
    object; every entry has a known dtype, a shape and offsets with end - begin = numel * size;
    entries tile the data area exactly and the file ends where the data ends (not truncated).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise error(f"{path}: truncated safetensors file ({size} bytes, no header length)")
            (n,) = struct.unpack("<Q", head)
            if n > ST_MAX_HEADER or 8 + n > size:
                raise error(f"{path}: truncated or corrupt safetensors file (header length {n}, file size {size})")
            raw = f.read(n)
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise error(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    spans = []
    for name, e in header.items():
        try:
            dt, shape, (b, end) = e["dtype"], e["shape"], e["data_offsets"]
            numel = 1
            for s in shape:
                numel *= int(s)
        except (KeyError, TypeError, ValueError):
            raise error(f"{path}: corrupt safetensors entry for tensor '{name}'") from None
        if dt not in ST_DTYPES:
            raise error(f"{path}: tensor '{name}' has unknown dtype {dt!r}")
        if not (isinstance(b, int) and isinstance(end, int) and 0 <= b <= end) or end - b != numel * ST_DTYPES[dt]:
            raise error(f"{path}: tensor '{name}' has bad data_offsets {[b, end]} for {dt} {shape}")
        spans.append((b, end, name))
    spans.sort()
    pos = 0
    for b, end, name in spans:
        if b != pos:
            raise error(f"{path}: corrupt safetensors file (tensor '{name}' starts at {b}, expected {pos})")
        pos = end
    data = size - 8 - n
    if data < pos:
        cut = next(name for b, end, name in spans if end > data)
        raise error(f"{path}: truncated safetensors file ({data} data bytes, header needs {pos}; "
                    f"tensor '{cut}' is cut off)")
    if data > pos:
        raise error(f"{path}: corrupt safetensors file ({data - pos} trailing bytes after the last tensor)")
    return header


def load_safetensors(path: Path, error=CheckpointError) -> dict[str, torch.Tensor]:
    """Return every tensor of a checked safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(path, error)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise error(f"{path}: cannot read safetensors file ({e})") from None


def weight_files(root: Path) -> tuple[list[Path], dict[str, str] | None]:
    """Return (weight files, index weight_map or None) of a checkpoint folder."""
    index = root / "model.safetensors.index.json"
    if index.exists():
        idx = read_json(index)
        wm = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise CheckpointError(f"{index}: field 'weight_map' must map tensor names to file names")
        files = sorted(set(wm.values()))
        for f in files:
            if not (root / f).is_file():
                raise CheckpointError(f"{root / f}: file not found (listed in {index.name})")
        return [root / f for f in files], wm
    single = root / "model.safetensors"
    if single.is_file():
        return [single], None
    found = sorted(root.glob("*.safetensors"))
    if found:
        return found, None
    hint = " (pytorch_model.bin is not supported; convert it to safetensors)" if (root / "pytorch_model.bin").exists() else ""
    raise CheckpointError(f"{root}: no model.safetensors (or *.safetensors shards) found{hint}")


FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


class LazyState(Mapping):
    """The float weights of a checkpoint, read tensor by tensor from their shards on access.

    Built from the checked safetensors headers only (`_index_state`), so it holds no weights:
    ``state[name]`` reads exactly that tensor's bytes from its shard (no memory map, so nothing
    else of the shard is paged in) as a tensor of its stored dtype (bf16, fp16 or fp32; fp64 is
    given as float32, as the in-memory path does) and keeps nothing. Conversion (spec.convert)
    reads each tensor once, so converting from a LazyState costs about one tensor of memory."""

    def __init__(self, where: dict[str, tuple[Path, str, list[int], int, int]], error=CheckpointError):
        self._where, self._error = where, error  # name -> (file, dtype, shape, begin, end)

    def __getitem__(self, name: str) -> torch.Tensor:
        f, dtype, shape, begin, end = self._where[name]
        try:
            with open(f, "rb") as h:
                (n,) = struct.unpack("<Q", h.read(8))
                h.seek(8 + n + begin)
                buf = bytearray(end - begin)
                if h.readinto(buf) != len(buf):
                    raise OSError("file is shorter than its header says")
        except OSError as e:
            raise self._error(f"{f}: cannot read tensor '{name}' ({e})") from None
        t = torch.frombuffer(buf, dtype=FLOAT_DTYPES[dtype]) if buf else torch.empty(0, dtype=FLOAT_DTYPES[dtype])
        t = t.reshape(shape)
        return t.to(torch.float32) if t.dtype == torch.float64 else t

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _index_state(root: Path, config: ModelConfig) -> tuple[dict[str, tuple], list[Path]]:
    """Return (tensor name -> shard file, shard files) after checking every shard's header:
    names, shapes and dtypes against config.json and the index; no tensor data is read."""
    files, wm = weight_files(root)
    want = expected_shapes(config)
    where: dict[str, Path] = {}
    state: dict[str, tuple] = {}
    for f in files:
        for name, e in check_safetensors(f).items():
            if name.endswith(IGNORED_SUFFIXES):
                continue
            if name in where:
                raise CheckpointError(f"{f}: tensor '{name}' also appears in {where[name].name}")
            if wm is not None and wm.get(name) != f.name:
                raise CheckpointError(f"{f}: tensor '{name}' is not listed for this file in model.safetensors.index.json")
            where[name] = f
            if name == "lm_head.weight" and config.tie_embeddings:
                continue  # tied: the lm_head reads the embedding, as in transformers
            if name not in want:
                raise CheckpointError(f"{f}: unexpected tensor '{name}' (not part of a {config.arch} model "
                                      f"with this config.json)")
            if tuple(e["shape"]) != want[name]:
                raise CheckpointError(f"{f}: tensor '{name}' has shape {list(e['shape'])}, "
                                      f"config.json implies {list(want[name])}")
            if e["dtype"] not in FLOAT_DTYPES:
                raise CheckpointError(f"{f}: tensor '{name}' has dtype {e['dtype']}, expected a float dtype "
                                      f"({', '.join(FLOAT_DTYPES)})")
            state[name] = (f, e["dtype"], list(e["shape"]), *e["data_offsets"])
    if wm is not None:
        for name, fname in wm.items():
            if name not in where and not name.endswith(IGNORED_SUFFIXES):
                raise CheckpointError(f"{root / fname}: tensor '{name}' listed in model.safetensors.index.json is missing")
    missing = sorted(set(want) - set(state))
    if missing:
        raise CheckpointError(f"{root}: missing tensor '{missing[0]}'"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return state, files


def _load_state(root: Path, config: ModelConfig, lazy: bool = False) -> tuple[Mapping[str, torch.Tensor], list[Path]]:
    """Return (the float weights, shard files): a LazyState, or every tensor as float32 in memory."""
    where, files = _index_state(root, config)
    lazy_state = LazyState(where)
    if lazy:
        return lazy_state, files
    state = {}
    for f in files:  # one shard at a time, each read whole (load_safetensors checks it again)
        names = [n for n, w in where.items() if w[0] == f]
        if names:
            tensors = load_safetensors(f)
            state.update({n: tensors[n].to(torch.float32) for n in names})
    return state, files


def _token_ids(v) -> list[int]:
    if v is None:
        return []
    vs = v if isinstance(v, list) else [v]
    return [int(x) for x in vs if isinstance(x, int) and not isinstance(x, bool)]


def load_hf_checkpoint(path, *, lazy: bool = False) -> HFCheckpoint:
    """Return the checkpoint in folder `path`: config, float state, tokenizer path.

    The state is float32 tensors in memory, or with ``lazy`` a `LazyState` that reads each
    tensor from its shard when asked (streaming conversion).

    Raises CheckpointError / UnsupportedArchitectureError naming the file and field or tensor.
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint folder not found")
    cfg_path = root / "config.json"
    hf_cfg = read_json(cfg_path)
    config, sliding = config_from_hf(hf_cfg, cfg_path)
    tok = root / "tokenizer.json"
    if not tok.is_file():
        raise CheckpointError(f"{tok}: file not found (the checkpoint needs a fast tokenizer, tokenizer.json)")
    _check_tokenizer(tok, config)
    state, files = _load_state(root, config, lazy)
    gen = read_json(root / "generation_config.json") if (root / "generation_config.json").is_file() else {}
    eos = _token_ids(gen.get("eos_token_id") if isinstance(gen, dict) and gen.get("eos_token_id") is not None
                     else hf_cfg.get("eos_token_id"))
    bos = hf_cfg.get("bos_token_id")
    return HFCheckpoint(config=config, state=state, tokenizer_path=tok, path=root, weight_files=files,
                        sliding_window=sliding, bos_token_id=bos if isinstance(bos, int) else None,
                        eos_token_ids=eos, hf_config=hf_cfg)


def _check_tokenizer(tok: Path, config: ModelConfig) -> None:
    """Refuse a tokenizer.json that does not parse or whose ids exceed the model's vocabulary."""
    from tokenizers import Tokenizer

    read_json(tok)  # bad JSON -> file and line
    try:
        t = Tokenizer.from_file(str(tok))
    except Exception as e:  # tokenizers raises a bare Exception on a malformed model
        raise CheckpointError(f"{tok}: not a valid tokenizers file ({str(e).splitlines()[0]})") from None
    n = t.get_vocab_size(with_added_tokens=True)
    if n > config.vocab_size:
        raise CheckpointError(f"{tok}: tokenizer has {n} tokens but config.json field 'vocab_size' is {config.vocab_size}")
