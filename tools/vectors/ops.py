"""Integer operator vectors: `ops/<op>/<case>.json`, one case per file, computed from `spec`.

Every case holds `desc`, `op`, `args` and `expected`. A tensor is encoded as
{"dtype": "int64" | "int32" | "int8" | "bool", "shape": [...], "data": [flat C-order integers]};
int8 page rows also carry "hex": their bytes (two's complement; one byte per value, so no byte
order). Scalars are JSON integers. Inputs come from torch.Generator seeds named in each case, and
include each operator's extremes (+-ACT_MAX, zero rows, single spikes).

    python -m tools.gen_vectors --area ops
"""
from __future__ import annotations

import json
from pathlib import Path

import blake3
import torch

from spec import attention, ops, quant, sampling
from spec.convert import quantize_model
from spec.model import AnchorRef, ModelConfig, QuantizedModel, SequenceChunk, forward
from spec.profiles import PROFILES, PrecisionProfile
from spec.constants import ACT_MAX, RMS_EPS_FRAC_BITS
from spec.tables import exp2_table, rope_tables, sigmoid_table

EXP, SIG = exp2_table(), sigmoid_table()
COS, SIN = rope_tables(8, 10000.0, 16)


def enc(t) -> dict | int:
    """Encode a tensor (or pass an int through)."""
    if not isinstance(t, torch.Tensor):
        return t
    out = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "data": t.flatten().tolist()}
    if t.dtype == torch.int8:
        out["hex"] = t.contiguous().numpy().tobytes().hex()
    if t.dtype == torch.bool:
        out["data"] = [int(v) for v in out["data"]]
    return out


def dec(v):
    """Decode what `enc` wrote."""
    if not isinstance(v, dict) or "dtype" not in v:
        return v
    dtype = getattr(torch, v["dtype"])
    return torch.tensor(v["data"], dtype=torch.int64).to(dtype).reshape(v["shape"])


def _rand(seed: int, shape, lo: int, hi: int) -> torch.Tensor:
    return torch.randint(lo, hi + 1, shape, generator=torch.Generator().manual_seed(seed))


def _extreme_rows(k: int) -> torch.Tensor:
    """Rows: +-ACT_MAX everywhere, zeros, a single spike, alternating extremes."""
    spike = torch.zeros(k, dtype=torch.int64)
    spike[k // 2] = ACT_MAX
    alt = torch.tensor([ACT_MAX if i % 2 else -ACT_MAX for i in range(k)])
    return torch.stack([torch.full((k,), ACT_MAX), torch.full((k,), -ACT_MAX), torch.zeros(k, dtype=torch.int64), spike, alt])


# -- an end-to-end case: a tiny random model, anchors, a window, chunked prefill and decode ------
TINY = ModelConfig(arch="qwen2", vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=4, rope_theta=10000.0, rms_norm_eps=1e-5, max_position=48,
                   tie_embeddings=False, qkv_bias=True)


def _tiny_state(c: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Return float32 weights (HF Llama names) drawn N(0, 0.3) from one generator, in a fixed order."""
    g, st = torch.Generator().manual_seed(seed), {}
    kvd, qd = c.num_kv_heads * c.head_dim, c.num_heads * c.head_dim

    def put(name, *shape, mean=0.0):
        st[name] = torch.randn(*shape, generator=g) * 0.3 + mean

    put("model.embed_tokens.weight", c.vocab_size, c.hidden_size)
    for n in range(c.num_layers):
        p = f"model.layers.{n}."
        for s_, o in (("q", qd), ("k", kvd), ("v", kvd)):
            put(f"{p}self_attn.{s_}_proj.weight", o, c.hidden_size)
            put(f"{p}self_attn.{s_}_proj.bias", o)
        put(f"{p}self_attn.o_proj.weight", c.hidden_size, qd)
        put(f"{p}mlp.gate_proj.weight", c.intermediate_size, c.hidden_size)
        put(f"{p}mlp.up_proj.weight", c.intermediate_size, c.hidden_size)
        put(f"{p}mlp.down_proj.weight", c.hidden_size, c.intermediate_size)
        put(f"{p}input_layernorm.weight", c.hidden_size, mean=1.0)
        put(f"{p}post_attention_layernorm.weight", c.hidden_size, mean=1.0)
    put("model.norm.weight", c.hidden_size, mean=1.0)
    put("lm_head.weight", c.vocab_size, c.hidden_size)
    return st


def _chunk_json(tokens, start, table, anchor_table=None, anchor_len=0, window=None) -> dict:
    return {"tokens": tokens, "start": start, "block_table": table, "anchor_block_table": anchor_table,
            "anchor_length": anchor_len, "window": window}


def run_forward(a: dict) -> dict:
    """Run `calls` (a list of forward calls, each a list of chunks) on a fresh pool; return every
    call's logits and the BLAKE3 of every page afterwards."""
    tensors = {k: dec(v) for k, v in a["tensors"].items()}
    model = QuantizedModel(ModelConfig.from_dict(a["config"]), PrecisionProfile.from_dict(a["profile"]), tensors)
    pool = attention.KVPool.allocate(model.config, model.profile, a["num_pages"])
    logits = []
    for call in a["calls"]:
        chunks = [SequenceChunk(torch.tensor(c["tokens"]), c["start"], torch.tensor(c["block_table"]),
                                AnchorRef(torch.tensor(c["anchor_block_table"]), c["anchor_length"]) if c["anchor_length"] else None,
                                c["window"]) for c in call]
        logits += forward(model, pool, chunks)
    pages = [blake3.blake3(pool.page_bytes(p)).hexdigest() for p in range(a["num_pages"])]
    return {f"logits_{i}": t for i, t in enumerate(logits)} | {"page_blake3": pages}


def _forward_args(profile: str) -> dict:
    model = quantize_model(TINY, _tiny_state(TINY, 20), PROFILES[profile])
    toks = _rand(21, (40,), 0, TINY.vocab_size - 1).tolist()
    calls = [  # anchors (5 tokens) into page 3; two sequences over pages [0, 1] and [2, 4]
        [_chunk_json(toks[:5], 0, [3])],
        [_chunk_json(toks[5:22], 0, [0, 1], [3], 5, None), _chunk_json(toks[22:30], 0, [2, 4], [3], 5, 6)],
        [_chunk_json(toks[30:31], 17, [0, 1], [3], 5, None), _chunk_json(toks[31:40], 8, [2, 4], [3], 5, 6)],
    ]
    return {"config": TINY.to_dict(), "profile": model.profile.to_dict(), "num_pages": 5, "calls": calls,
            "tensors": {k: enc(v) for k, v in sorted(model.tensors.items())}}


# -- how each operator is called: args dict -> expected dict ------------------------------------
CALL = {
    "round_shift": lambda a: {"y": quant.round_shift(a["x"], a["s"])},
    "shift_round": lambda a: {"y": quant.shift_round(a["x"], a["s"])},
    "div_round": lambda a: {"y": quant.div_round(a["n"], a["d"])},
    "isqrt": lambda a: {"y": quant.isqrt(a["v"])},
    "quantize_rows": lambda a: dict(zip(("q", "m", "e"), quant.quantize_rows(a["x"], a["bits"]))),
    "dequantize_rows": lambda a: {"y": quant.dequantize_rows(a["q"], a["m"], a["e"])},
    "int_matmul": lambda a: {"y": quant.int_matmul(a["a"], a["w"])},
    "requantize": lambda a: {"y": quant.requantize(a["acc"], a["m"], a["e"], a["mul"], a["shift"])},
    "embed": lambda a: {"y": ops.embed(a["tokens"], a["weight"], a["mul"], a["shift"])},
    "linear": lambda a: {"y": ops.linear(a["x"], a["act_bits"], a["weight"], a["mul"], a["shift"], a.get("bias"))},
    "residual_add": lambda a: {"y": ops.residual_add(a["x"], a["y"])},
    "rms_norm": lambda a: {"y": ops.rms_norm(a["x"], a["gamma"], a["eps_q48"])},
    "sigmoid": lambda a: {"y": ops.sigmoid(a["x"], a["table"])},
    "swiglu": lambda a: {"y": ops.swiglu(a["gate"], a["up"], a["table"])},
    "rope": lambda a: {"y": ops.rope(a["x"], a["pos"], a["cos"], a["sin"])},
    "exp_neg": lambda a: {"y": ops.exp_neg(a["d"], a["table"])},
    "pack_rows": lambda a: {"rows": attention.pack_rows(a["x"])},
    "scores": lambda a: {"s": attention.scores(a["q"], a["q_bits"], a["k_rows"])},
    "numerators": lambda a: {"e": attention.numerators(a["s"], a["visible"], a["table"])},
    "mix_values": lambda a: {"o": attention.mix_values(a["e"], a["visible"], a["v_rows"], a["prob_bits"])},
    "tables": lambda a: {"exp2": exp2_table(), "sigmoid": sigmoid_table()},
    "rng_u128": lambda a: {"u_hex": format(sampling.rng_u128(a["seed"], a["sequence"], a["step"], a["attempt"]), "032x")},
    "forward": run_forward,
    "sample": lambda a: {"token": sampling.sample(a["logits"], sampling.SamplingParams.from_dict(a["params"]),
                                                  a["sequence"], a["step"], a["attempt"])},
}


def _cases() -> dict[str, dict[str, tuple[str, dict]]]:
    """Return op -> case name -> (desc, args)."""
    x5 = _extreme_rows(6)
    rnd = _rand(1, (4, 24), -(2**22), 2**22)
    krows = attention.pack_rows(_rand(5, (7, 2, 8), -(2**19), 2**19))
    vrows = attention.pack_rows(_rand(6, (7, 2, 8), -(2**19), 2**19))
    s = _rand(7, (4, 3, 7), -(2**20), 2**20)
    vis = attention.visibility(torch.arange(4, 7), 2, 0, 5, None)[None].expand(4, 3, 7)
    e = attention.numerators(s, vis, EXP)
    eps = torch.tensor([round(1e-5 * 2**RMS_EPS_FRAC_BITS)])
    w8 = _rand(3, (5, 24), -127, 127)
    mul, shift = _rand(4, (5,), 2**12, 2**13 - 1), torch.tensor([20, 25, 30, 0, -3])
    return {
        "round_shift": {
            "ties": ("ties round away from zero", dict(x=torch.tensor([-5, -3, -1, 1, 3, 5, 0, 2**62, -(2**62)]), s=1)),
            "random-s20": ("random values, s = 20", dict(x=_rand(10, (16,), -(2**40), 2**40), s=20)),
        },
        "shift_round": {
            "both-signs": ("per-element shifts -62..62; left shifts saturate at 2**62",
                           dict(x=torch.tensor([7, -7, 2**40, -(2**40), 5, -5, 1, -1]), s=torch.tensor([2, 2, -30, -30, -62, 62, 0, -1]))),
        },
        "div_round": {
            "ties-and-random": ("n / d half away from zero", dict(n=torch.tensor([-3, -1, 1, 3, 7, -7, 0, 2**50]), d=torch.tensor([2, 2, 2, 2, 3, 3, 5, 7]))),
        },
        "isqrt": {
            "boundaries": ("squares, squares - 1, 2**63 - 1", dict(v=torch.tensor([0, 1, 2, 3, 4, 15, 16, 2**62, 2**62 - 1, 2**63 - 1]))),
        },
        "quantize_rows": {
            "extremes-12bit": ("saturated, zero, spike and alternating rows", dict(x=x5, bits=12)),
            "random-8bit": ("random rows", dict(x=rnd, bits=8)),
            "random-16bit": ("random rows", dict(x=rnd, bits=16)),
        },
        "dequantize_rows": {
            "random": ("q * m * 2**e rounded", dict(q=_rand(11, (3, 5), -2047, 2047), m=torch.tensor([4097, 8192, 16384]), e=torch.tensor([-20, 0, 5]))),
        },
        "int_matmul": {
            "int8-by-12bit": ("exact product", dict(a=_rand(12, (3, 24), -2047, 2047), w=w8)),
            "beyond-2-53": ("partial sums above 2**53 (int64 path)", dict(a=torch.full((1, 4), 2**29 - 1), w=torch.full((1, 4), 2**29 + 1))),
        },
        "requantize": {
            "mixed-shifts": ("one rounding, saturated", dict(acc=_rand(13, (2, 5), -(2**30), 2**30), m=torch.tensor([5000, 16384]), e=torch.tensor([-5, 3]), mul=mul, shift=shift)),
        },
        "embed": {
            "int8-rows": ("token rows to Q16", dict(tokens=torch.tensor([0, 3, 3, 1]), weight=_rand(14, (4, 6), -127, 127),
                                                  mul=_rand(15, (4,), 2**12, 2**13 - 1), shift=torch.tensor([10, 15, 20, 25]))),
        },
        "linear": {
            "extremes-12bit": ("extreme rows, bias +-ACT_MAX", dict(x=_extreme_rows(24), act_bits=12, weight=w8, mul=mul, shift=shift,
                                                                    bias=torch.tensor([ACT_MAX, -ACT_MAX, 0, 1, -1]))),
            "random-8bit": ("random rows, no bias", dict(x=rnd, act_bits=8, weight=w8, mul=mul, shift=torch.tensor([20, 21, 22, 23, 24]))),
        },
        "residual_add": {"saturate": ("saturating add", dict(x=x5[:, :4], y=x5[[0, 0, 2, 3, 1], :4]))},
        "rms_norm": {
            "extremes": ("extreme rows, eps 1e-5", dict(x=x5, gamma=torch.tensor([65536, -65536, 3 * 65536, 1, 0, 2**31 - 1]), eps_q48=eps)),
            "random": ("random rows", dict(x=rnd, gamma=_rand(16, (24,), 0, 2**17), eps_q48=eps)),
        },
        "sigmoid": {"sweep": ("-20..20 and both table ends", dict(x=torch.tensor([-ACT_MAX, -(16 << 16), -(16 << 16) + 1, -65536, 0, 1, 65535, 16 << 16, ACT_MAX] + list(range(-(20 << 16), 20 << 16, 99991))), table=SIG))},
        "swiglu": {"extremes": ("gate and up at extremes", dict(gate=x5, up=x5[[4, 3, 2, 1, 0]], table=SIG))},
        "rope": {"positions": ("positions 0..15, head_dim 8", dict(x=_rand(17, (4, 2, 8), -ACT_MAX, ACT_MAX), pos=torch.tensor([0, 1, 7, 15]), cos=COS, sin=SIN))},
        "exp_neg": {"sweep": ("0..40 in Q16 and beyond the clamp", dict(d=torch.tensor([0, 1, 255, 256, 65535, 65536, 45426, 2**21, 2**40] + list(range(0, 40 << 16, 77777))), table=EXP))},
        "pack_rows": {"extremes": ("KV page rows: 8 int8 values + m (u16 LE) + e (i8) + 0", dict(x=_extreme_rows(8).reshape(5, 1, 8)))},
        "scores": {"gqa": ("4 query heads over 2 kv heads, 7 keys", dict(q=_rand(18, (3, 4, 8), -(2**19), 2**19), q_bits=12, k_rows=krows))},
        "numerators": {"anchors-and-causal": ("2 anchors + 5 context keys, causal rows", dict(s=s, visible=vis, table=EXP))},
        "mix_values": {"gqa": ("weights with the V row scales folded in, int8 values, one division per output",
                               dict(e=e, visible=vis, v_rows=vrows, prob_bits=15))},
        "tables": {"exp2-sigmoid": ("the 2**-f and sigmoid tables", {})},
        "forward": {
            "tiny-qwen2-default": ("2-layer qwen2 (biases, GQA 4/2): anchors, a window of 6, batched chunked prefill, decode",
                                   _forward_args("default")),
            "tiny-qwen2-int8": ("the same calls under the int8 profile", _forward_args("int8")),
        },
        "rng_u128": {"counters": ("counter (seed, sequence, step, attempt)", dict(seed=2**64 - 1, sequence=1, step=2, attempt=3))},
        "sample": {
            "greedy-tie": ("ties go to the lowest id", dict(logits=torch.tensor([5, 9, 9, -1]), params=sampling.SamplingParams().to_dict(), sequence=0, step=0, attempt=0)),
            "top-k-top-p": ("temperature 7/10, top_k 3, top_p 9/10", dict(logits=_rand(19, (20,), -(2**18), 2**18),
                             params=sampling.SamplingParams("0.7", 3, "0.9", 42).to_dict(), sequence=1, step=5, attempt=0)),
        },
    }


def case_json(op: str, desc: str, args: dict) -> dict:
    """Return the JSON object of one case: inputs and what the spec computes from them."""
    expected = {k: v if isinstance(v, (str, list)) else enc(v) for k, v in CALL[op](args).items()}
    enc_args = {k: enc(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    return {"desc": desc, "op": op, "args": enc_args, "expected": expected}


def generate(out_dir: Path) -> None:
    """Write ops/<op>/<case>.json under out_dir."""
    for op, cases in _cases().items():
        folder = out_dir / "ops" / op
        folder.mkdir(parents=True, exist_ok=True)
        for name, (desc, args) in cases.items():
            text = json.dumps(case_json(op, desc, args), separators=(",", ":"), sort_keys=True)
            (folder / f"{name}.json").write_text(text + "\n")
