"""What each precision profile costs on the GPU: its linear stages at Llama-3.1-8B sizes, in Triton.

A profile's widths decide how many int8 limbs each operand takes in
``fieldprint_fast.kernels.linear`` (8 bits: one; 9 to 15 bits: two), so the number of int8
tensor-core products per output is ``limbs(act) * limbs(weight)``: 1 for ``int8``, 2 for
``default`` (12-bit activations; its 10-bit first layer: 4) and 4 for ``high`` (12-bit
activations, 10-bit weights). The weights of a 10-bit layer are int16 in memory (two limb planes
in the kernel), so decode, which streams the weights once per token, reads twice the bytes.

Per profile, for the five linear stages of one Llama-3.1-8B decoder layer (q/k/v and gate/up fused
as an engine runs them; lm_head reported apart) at decode (M = 1) and prefill (M = 4096) sizes:
``fp`` is the whole ``linear`` (Q16 in, row quantization, matmul, requantization), checked equal
to ``spec.ops.linear`` on every case; ``bf16`` is ``x @ W.T`` in bf16 (cuBLAS) measured in the same
run as the peer. Timing helpers are ``benchmarks/bench_linear.py``'s (CUDA-graph replay over
weight copies larger than the L2 at M <= 64, ``triton.testing.do_bench`` otherwise).

    python benchmarks/bench_profiles.py [--out FILE] [--m 1 4096]

Writes benchmarks/results/profiles-<GPU>-<date>.json and prints a table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_linear import q16_rows, weight_ms  # noqa: E402
from fieldprint_fast.kernels import linear as K  # noqa: E402
from spec import ops as spec_ops  # noqa: E402
from spec.profiles import PROFILES  # noqa: E402

STAGES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
          "lm_head": (128256, 4096)}  # Llama-3.1-8B: name -> (O, K)


def weights(o: int, k: int, bits: int, gen: torch.Generator) -> torch.Tensor:
    """Random symmetric `bits`-bit integer weights, stored as the converter stores them."""
    qm = (1 << (bits - 1)) - 1
    dtype = torch.int8 if bits <= 8 else torch.int16
    return torch.randint(-qm, qm + 1, (o, k), generator=gen, device="cuda", dtype=dtype)


def run_case(profile: str, stage: str, m: int, gen: torch.Generator) -> dict:
    o, k = STAGES[stage]
    w_bits, a_bits = PROFILES[profile].linear_bits(stage, layer=None)
    if stage == "lm_head":  # a tied head reads the embedding rows at embed_bits
        w_bits = max(w_bits, PROFILES[profile].embed_bits)
    x = q16_rows(m, k, gen)
    w = weights(o, k, w_bits, gen)
    mul = torch.randint(1 << 12, 1 << 13, (o,), generator=gen, device="cuda", dtype=torch.int32)
    shift = torch.randint(18 + (w_bits - 8), 26 + (w_bits - 8), (o,), generator=gen, device="cuda", dtype=torch.int32)
    row = dict(profile=profile, stage=stage, M=m, N=o, K=k, w_bits=w_bits, a_bits=a_bits,
               limbs=K._num_limbs(a_bits) * K._num_limbs(w_bits))
    y = K.linear(x, a_bits, w, mul, shift)
    want = spec_ops.linear(x, a_bits, w, mul, shift)
    row["parity_outputs"], row["parity_mismatches"] = want.numel(), int((y != want).sum())
    del y, want
    xb = x.to(torch.float32).mul_(2.0**-16).to(torch.bfloat16)
    wb = w.to(torch.bfloat16)
    peers = {"fp": (lambda v: K.linear(x, a_bits, v, mul, shift), w), "bf16": (lambda v: xb @ v.T, wb)}
    for key, (fn, wt) in peers.items():
        row[f"{key}_ms"] = weight_ms(fn, wt, m)
    row["fp_vs_bf16"] = row["bf16_ms"] / row["fp_ms"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--m", type=int, nargs="+", default=[1, 4096])
    args = ap.parse_args(argv)
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for m in args.m:
        for profile in PROFILES:
            for stage in STAGES:
                r = run_case(profile, stage, m, gen)
                print(json.dumps(r), flush=True)
                rows.append(r)
    layer = {}
    for r in rows:
        if r["stage"] != "lm_head":
            key = f"{r['profile']}@M={r['M']}"
            t = layer.setdefault(key, {"profile": r["profile"], "M": r["M"], "fp_ms": 0.0, "bf16_ms": 0.0})
            t["fp_ms"] += r["fp_ms"]
            t["bf16_ms"] += r["bf16_ms"]
    for t in layer.values():
        t["vs_int8"] = t["fp_ms"] / layer[f"int8@M={t['M']}"]["fp_ms"]
        t["fp_vs_bf16"] = t["bf16_ms"] / t["fp_ms"]
    name = torch.cuda.get_device_name().replace(" ", "_")
    date = datetime.date.today().isoformat()
    out = args.out or REPO / "benchmarks" / "results" / f"profiles-{name}-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "date": date, "torch": torch.__version__,
                               "model": "Llama-3.1-8B linear stages", "rows": rows,
                               "decoder_layer": list(layer.values())}, indent=2) + "\n")
    print(f"\n{'profile':<9}{'M':>6} {'layer ms':>9} {'bf16 ms':>9} {'vs int8':>8} {'x bf16':>7}")
    for t in layer.values():
        print(f"{t['profile']:<9}{t['M']:>6} {t['fp_ms']:9.4f} {t['bf16_ms']:9.4f} {t['vs_int8']:8.2f} {t['fp_vs_bf16']:7.2f}")
    bad = sum(r["parity_mismatches"] for r in rows)
    print(f"parity: {bad} mismatches over {sum(r['parity_outputs'] for r in rows)} outputs; wrote {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
