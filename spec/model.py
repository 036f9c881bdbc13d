"""The quantized model, its configuration, and the integer forward pass."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from spec import ops
from spec.attention import paged_attention, write_kv
from spec.constants import EXP_TABLE_BITS, SIGMOID_DOMAIN, SIGMOID_STEP_BITS
from spec.profiles import PrecisionProfile, validate_profile
from spec.tables import check_rope_scaling, exp2_table


@dataclass(frozen=True)
class ModelConfig:
    """Shape and hyper-parameters of a decoder-only transformer (Llama family)."""

    arch: str  # "llama" | "mistral" | "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position: int  # RoPE tables cover positions [0, max_position)
    tie_embeddings: bool
    qkv_bias: bool  # Qwen2-style q/k/v biases
    # The attention window the model was trained with (Mistral's sliding_window), in tokens; None =
    # full attention. Engines apply it unless the caller overrides it, and a ledger records both.
    sliding_window: int | None = None
    # The checkpoint's RoPE scaling ({"rope_type": ..., factors}) the rope.cos/rope.sin tables were
    # computed with (spec.tables.rope_tables); None = unscaled. The tables themselves are committed.
    rope_scaling: dict | None = None

    def __post_init__(self):
        w = self.sliding_window
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise ValueError(f"sliding_window must be None or an integer >= 1, got {w!r}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise ValueError(f"rope_scaling must be None or an object, got {self.rope_scaling!r}")
        check_rope_scaling(self.rope_scaling)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Return the config of `to_dict` output; missing or unknown fields are refused by name."""
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise ValueError(f"model config: missing {sorted(names - set(d))}, unknown {sorted(set(d) - names)}")
        return cls(**d)


@dataclass(frozen=True)
class AnchorRef:
    """Pinned anchor pages visible to every query of a chunk."""

    block_table: torch.Tensor  # int64 physical pages holding the anchor K/V
    length: int  # number of anchor tokens A


@dataclass
class SequenceChunk:
    """Consecutive tokens of one sequence to run through the model."""

    tokens: torch.Tensor  # int64 [T], T >= 1
    start: int  # context tokens of this sequence already in the cache
    block_table: torch.Tensor  # int64 [n_blocks]; physical page of logical block b; -1 = evicted
    anchors: AnchorRef | None = None
    window: int | None = None  # sliding window over the context (anchors always visible)


Spec = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def _weight_dtype(bits: int) -> torch.dtype:
    """Return the storage dtype of `bits`-bit weights: int8 up to 8 bits, else int16."""
    return torch.int8 if bits <= 8 else torch.int16


def _linear_specs(name: str, out_dim: int, in_dim: int, bits: int, bias: bool = False) -> Spec:
    """Return the tensors of linear `name`: weight [out, in], mul/shift [out] (+ bias [out])."""
    out = {f"{name}.weight": (_weight_dtype(bits), (out_dim, in_dim)),
           f"{name}.mul": (torch.int32, (out_dim,)), f"{name}.shift": (torch.int32, (out_dim,))}
    return out | ({f"{name}.bias": (torch.int32, (out_dim,))} if bias else {})


def _layer_specs(c: "ModelConfig", profile: PrecisionProfile, n: int) -> Spec:
    """Return the tensors of decoder layer n."""
    p, h, qd, kvd = f"layers.{n}.", c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    wq, wo = profile.linear_bits("qkv", n)[0], profile.linear_bits("o", n)[0]
    wg, wd = profile.linear_bits("gate_up", n)[0], profile.linear_bits("down", n)[0]
    out = {p + "attn_norm.gamma": (torch.int32, (h,)), p + "mlp_norm.gamma": (torch.int32, (h,))}
    for name, o, i, bits, bias in (("q", qd, h, wq, c.qkv_bias), ("k", kvd, h, wq, c.qkv_bias),
                                   ("v", kvd, h, wq, c.qkv_bias), ("o", h, qd, wo, False),
                                   ("gate", c.intermediate_size, h, wg, False), ("up", c.intermediate_size, h, wg, False),
                                   ("down", h, c.intermediate_size, wd, False)):
        out |= _linear_specs(p + name, o, i, bits, bias)
    return out


def tensor_specs(config: "ModelConfig", profile: PrecisionProfile) -> Spec:
    """Return the name -> (dtype, shape) of every tensor of a QuantizedModel (the normative list).

    A linear `X` stores `X.weight` [out, in] (int8 when its width is <= 8 bits, else int16),
    `X.mul` and `X.shift` [out] int32 (multiplier mul * 2**-shift, see `spec.quant`), and for
    q/k/v with qkv_bias `X.bias` [out] int32 Q16. Norm gains are int32 Q16. `lm_head.weight` is
    absent when embeddings are tied (the lm_head then reads `embed.weight`).
    """
    c, v = config, config.vocab_size
    out = {"embed.weight": (_weight_dtype(profile.embed_bits), (v, c.hidden_size)),
           "embed.mul": (torch.int32, (v,)), "embed.shift": (torch.int32, (v,))}
    for n in range(c.num_layers):
        out |= _layer_specs(c, profile, n)
    out["final_norm.gamma"] = (torch.int32, (c.hidden_size,))
    out |= _linear_specs("lm_head", v, c.hidden_size, profile.w_lm_head)
    if c.tie_embeddings:
        del out["lm_head.weight"]
    out["rope.cos"] = out["rope.sin"] = (torch.int32, (c.max_position, c.head_dim // 2))
    out["sigmoid.table"] = (torch.int32, (2 * SIGMOID_DOMAIN * (1 << SIGMOID_STEP_BITS) + 1,))
    out["exp2.table"] = (torch.int32, ((1 << EXP_TABLE_BITS) + 1,))
    out["rms.eps"] = (torch.int64, (1,))
    return out


def check_rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Refuse RoPE tables with |cos| + |sin| >= 2**32 anywhere: `spec.ops.rope` needs
    |x1 cos - x2 sin| < 2**63 for |x| <= ACT_MAX (tables may exceed 2**30 when a YaRN attention
    factor > 1 is folded into them)."""
    worst = int((cos.to(torch.int64).abs() + sin.to(torch.int64).abs()).max()) if cos.numel() else 0
    if worst >= 1 << 32:
        raise ValueError(f"tensor rope.cos/rope.sin: |cos| + |sin| reaches {worst} >= 2**32")


class QuantizedModel:
    """Everything the integer forward needs; integer tensors only (names: `tensor_specs`).

    ``files`` are the files the model is committed with besides its tensors, by name (an
    artifact's ``tokenizer.json``); `spec.commitment.model_commitment` covers them byte for byte.
    """

    def __init__(self, config: ModelConfig, profile: PrecisionProfile, tensors: dict[str, torch.Tensor],
                 files: dict[str, bytes] | None = None):
        validate_profile(profile, config)
        files = dict(files or {})
        for name, data in files.items():
            if not isinstance(name, str) or not name or not isinstance(data, (bytes, bytearray)):
                raise ValueError(f"model file {name!r}: a committed file needs a non-empty name and bytes")
        want = tensor_specs(config, profile)
        missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
        if missing or extra:
            raise ValueError(f"model tensors: missing {missing[:5]}, unexpected {extra[:5]}")
        for name, (dtype, shape) in want.items():
            t = tensors[name]
            if t.dtype != dtype or tuple(t.shape) != shape:
                raise ValueError(f"tensor {name}: want {dtype} {list(shape)}, got {t.dtype} {list(t.shape)}")
        if not torch.equal(tensors["exp2.table"], exp2_table()):
            raise ValueError("tensor exp2.table differs from spec.tables.exp2_table()")
        check_rope_tables(tensors["rope.cos"], tensors["rope.sin"])
        self.config, self.profile, self.tensors = config, profile, tensors
        self.files = {k: bytes(v) for k, v in files.items()}

    def linear(self, name: str, x: torch.Tensor, act_bits: int, op=ops.linear) -> torch.Tensor:
        """Apply linear `name` to rows x (Q16) with inputs quantized to act_bits (`op`: `spec.ops.linear`
        or an engine's exact replacement, see `forward`)."""
        t = self.tensors
        return op(x, act_bits, t[f"{name}.weight"], t[f"{name}.mul"], t[f"{name}.shift"], t.get(f"{name}.bias"))


def _positions(chunk: SequenceChunk) -> torch.Tensor:
    """Return the RoPE positions A + start + t of a chunk's tokens (A = anchor length)."""
    a = 0 if chunk.anchors is None else chunk.anchors.length
    return torch.arange(chunk.tokens.numel(), dtype=torch.int64, device=chunk.tokens.device) + a + chunk.start


class StageOps:
    """The stage operators `forward` calls: the spec's own, or where `kernels` (an engine's op
    module) defines one of the same name, that one. A replacement has the spec function's
    signature and must return the same integers (engines check it with parity suites)."""

    NAMES = ("linear", "lm_head", "paged_attention", "write_kv", "rms_norm", "rope", "swiglu", "residual_add", "embed")

    def __init__(self, kernels=None):
        self.linear = getattr(kernels, "linear", ops.linear)
        self.lm_head = getattr(kernels, "lm_head", ops.lm_head)
        self.paged_attention = getattr(kernels, "paged_attention", paged_attention)
        self.write_kv = getattr(kernels, "write_kv", write_kv)
        for name in ("rms_norm", "rope", "swiglu", "residual_add", "embed"):
            setattr(self, name, getattr(kernels, name, getattr(ops, name)))


def _attention_block(model: QuantizedModel, pool, n: int, x: torch.Tensor, pos: torch.Tensor,
                     chunks: list[SequenceChunk], st: StageOps) -> torch.Tensor:
    """Return layer n's attention output rows [N, H] (Q16): norm, q/k/v, RoPE, write K/V, attend, o."""
    c, t, p = model.config, model.tensors, model.profile
    h = st.rms_norm(x, t[f"layers.{n}.attn_norm.gamma"], t["rms.eps"])
    a_bits = p.linear_bits("qkv", n)[1]
    q, k, v = (model.linear(f"layers.{n}.{s}", h, a_bits, st.linear) for s in "qkv")
    q = st.rope(q.view(-1, c.num_heads, c.head_dim), pos, t["rope.cos"], t["rope.sin"])
    k = st.rope(k.view(-1, c.num_kv_heads, c.head_dim), pos, t["rope.cos"], t["rope.sin"])
    v = v.view(-1, c.num_kv_heads, c.head_dim)
    outs, r = [], 0
    for ch in chunks:  # each chunk's K/V is written before it attends (its queries see themselves)
        rows = slice(r, r + ch.tokens.numel())
        st.write_kv(pool, n, ch.block_table, ch.start, k[rows], v[rows])
        outs.append(st.paged_attention(q[rows], pool, n, ch.block_table, ch.start, ch.anchors, ch.window,
                                    p.q_bits, p.prob_bits, t["exp2.table"]))
        r = rows.stop
    o = torch.cat(outs).reshape(x.shape[0], c.num_heads * c.head_dim)
    return model.linear(f"layers.{n}.o", o, p.linear_bits("o", n)[1], st.linear)


def _mlp_block(model: QuantizedModel, n: int, x: torch.Tensor, st: StageOps) -> torch.Tensor:
    """Return layer n's MLP output rows (Q16): norm, gate/up, SwiGLU, down."""
    t, p = model.tensors, model.profile
    h = st.rms_norm(x, t[f"layers.{n}.mlp_norm.gamma"], t["rms.eps"])
    a_bits = p.linear_bits("gate_up", n)[1]
    g, u = model.linear(f"layers.{n}.gate", h, a_bits, st.linear), model.linear(f"layers.{n}.up", h, a_bits, st.linear)
    return model.linear(f"layers.{n}.down", st.swiglu(g, u, t["sigmoid.table"]), p.linear_bits("down", n)[1], st.linear)


def _check_chunks(model: QuantizedModel, chunks: list[SequenceChunk]) -> None:
    """Refuse empty chunks, tokens out of the vocabulary and positions beyond the RoPE tables."""
    c = model.config
    for ch in chunks:
        if ch.tokens.dtype != torch.int64 or ch.tokens.dim() != 1 or ch.tokens.numel() < 1:
            raise ValueError("chunk tokens must be a non-empty int64 vector")
        if int(ch.tokens.min()) < 0 or int(ch.tokens.max()) >= c.vocab_size:
            raise ValueError(f"token id outside [0, {c.vocab_size})")
        if ch.start < 0 or int(_positions(ch)[-1]) >= c.max_position:
            raise ValueError(f"positions beyond max_position {c.max_position}")
        if ch.window is not None and ch.window < 1:
            raise ValueError("window must be >= 1")


def forward(model: QuantizedModel, pool, chunks: list[SequenceChunk], kernels=None) -> list[torch.Tensor]:
    """Run every chunk through the model; write each chunk's K/V into its pages; return integer
    logits (int64 [T_i, vocab], Q16) for every position of every chunk.

    `kernels` (engines only; not normative) is a module or object whose stage operators
    (`StageOps.NAMES`), where it has them, replace the spec's, e.g. `fieldprint_fast.ops`.

    Linear layers run on the concatenated rows of all chunks; every row-wise operator depends on its
    row only and attention is exact, so results do not depend on batching or chunking. Chunks of one
    call must not share pages they write.
    """
    _check_chunks(model, chunks)
    t, p, st = model.tensors, model.profile, StageOps(kernels)
    x = st.embed(torch.cat([ch.tokens for ch in chunks]), t["embed.weight"], t["embed.mul"], t["embed.shift"])
    pos = torch.cat([_positions(ch) for ch in chunks])
    for n in range(model.config.num_layers):
        x = st.residual_add(x, _attention_block(model, pool, n, x, pos, chunks, st))
        x = st.residual_add(x, _mlp_block(model, n, x, st))
    h = st.rms_norm(x, t["final_norm.gamma"], t["rms.eps"])
    w = t["embed.weight"] if model.config.tie_embeddings else t["lm_head.weight"]
    logits = st.lm_head(h, p.a_lm_head, w, t["lm_head.mul"], t["lm_head.shift"])
    return list(logits.split([ch.tokens.numel() for ch in chunks]))
