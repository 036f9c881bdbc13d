"""Benchmark the Triton integer linear layer against bf16 ``torch.matmul`` and ``torch._int_mm``.

Shapes: 8192^3, and the linear stages of Llama-3.2-1B and Llama-3-8B (q/k/v and gate/up fused
along the output axis, as an engine runs them; the fusion is exact because row quantization
and requantization are per row and per output channel) at M = 1, 8, 64, 4096, for the ``int8``
profile (8-bit activations) and the ``default`` one (12-bit activations: two int8 limbs).

Per case, in one run on one device:

* ``fp``     : the whole ``fieldprint_fast.kernels.linear.linear`` (int64 Q16 in, row
  quantization, matmul, requantization, int64 Q16 out), checked equal to ``spec.ops.linear``;
* ``gemm``   : the matmul kernel alone on pre-quantized limbs, int32 output;
* ``bf16``   : ``x @ W.T`` in bf16 (cuBLAS), bf16 output;
* ``int_mm`` : ``torch._int_mm`` (int8 in, int32 out; it refuses M <= 16).

Times are medians of ``triton.testing.do_bench`` (which clears the L2 before every call, so
weights come from HBM). TOP/s = 2 M N K / t; weight GB/s = bytes of the weights / t; the copy
ceiling is a 2 GiB device-to-device copy (bytes read + written) measured in the same run.
Writes benchmarks/results/linear-<GPU>-<date>.json (or --out) and prints a table.

    python benchmarks/bench_linear.py [--quick] [--out FILE] [--sweep]
    python benchmarks/bench_linear.py --resources   # no GPU needed

``--resources`` compiles the sweep's tiles for sm_90 on any machine (Triton's own ``ptxas``)
and prints each variant's registers, stack frame (spills) and shared memory from
``cuobjdump -res-usage``: the compiler's report, at no device time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
import triton

from fieldprint_fast.kernels import linear as K
from spec import ops as spec_ops
from spec.constants import ACT_MAX

SHAPES = {  # name -> (O, K)
    "8192^3": (8192, 8192),
    "1B.qkv": (3072, 2048), "1B.o": (2048, 2048), "1B.gate_up": (16384, 2048), "1B.down": (2048, 8192),
    "1B.lm_head": (128256, 2048),
    "8B.qkv": (6144, 4096), "8B.o": (4096, 4096), "8B.gate_up": (28672, 4096), "8B.down": (4096, 14336),
    "8B.lm_head": (128256, 4096),
}
PROFILE_ACT_BITS = {"int8": 8, "default": 12}
COPY_BW: list[float] = []  # bytes/s of the device copy, measured first
GEMM_CANDIDATES = {  # limbs -> tiles tried on 8192^3 with --sweep
    1: [(128, 64, 128, 4, 4), (128, 64, 128, 4, 5), (128, 128, 64, 8, 4), (64, 128, 128, 4, 4),
        (128, 128, 128, 8, 3), (256, 64, 128, 8, 4)],
    2: [(128, 128, 128, 8, 4), (128, 64, 128, 8, 4), (64, 128, 128, 4, 4), (128, 128, 64, 8, 4)],
}
SKINNY_CANDIDATES = [(64, 256, 1), (64, 256, 2), (64, 256, 4), (32, 256, 4), (128, 256, 2), (64, 512, 2)]


def tile(bm, bn, bk, warps, stages, split=1, group=8):
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group, num_warps=warps, num_stages=stages, SPLIT_K=split)


def q16_rows(m: int, k: int, gen: torch.Generator) -> torch.Tensor:
    mag = torch.randint(16, 28, (m, 1), generator=gen, device="cuda")
    x = torch.randint(-ACT_MAX, ACT_MAX + 1, (m, k), generator=gen, device="cuda", dtype=torch.int64)
    return x >> (31 - mag)


def bench(fn) -> float:
    """Median milliseconds of fn (do_bench: warm-up, L2 cleared before each call)."""
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def graph_ms(fns: list) -> float:
    """Milliseconds per call of fns (one per weight copy, > L2 in all) replayed from a CUDA graph:
    the way a decode step runs them, with no host launch overhead in the number."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns * 2:
            f()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(fns))
    return sorted(times)[len(times) // 2]


def copies_for(nbytes: int) -> int:
    """Weight copies to rotate through so that one pass over them is >= 256 MB (4x the L2)."""
    return max(2, min(32, -(-(256 << 20) // nbytes)))


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 2 GiB device-to-device copy."""
    src = torch.empty(1 << 31, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    del src, dst
    return 2 * (1 << 31) / (ms * 1e-3)


def run_case(name: str, m: int, profile: str, gen: torch.Generator, check: bool) -> dict:
    o, k = SHAPES[name]
    if name == "8192^3":
        m = 8192
    bits = PROFILE_ACT_BITS[profile]
    x = q16_rows(m, k, gen)
    w = torch.randint(-127, 128, (o, k), generator=gen, device="cuda", dtype=torch.int8)
    mul = torch.randint(1 << 12, 1 << 13, (o,), generator=gen, device="cuda", dtype=torch.int32)
    shift = torch.randint(18, 26, (o,), generator=gen, device="cuda", dtype=torch.int32)
    row = dict(shape=name, profile=profile, M=m, N=o, K=k)
    y = K.linear(x, bits, w, mul, shift)
    if check:
        want = spec_ops.linear(x, bits, w, mul, shift)
        row["parity_outputs"] = want.numel()
        row["parity_mismatches"] = int((y != want).sum())
        del want
    q, qm, qe = K.quantize_rows(x, bits)
    xb = x.to(torch.float32).mul_(2.0**-16).to(torch.bfloat16)
    xi = q[0] if bits <= 8 else q[1]  # an int8 operand of the right shape for _int_mm's timing
    peers = {
        "fp": lambda w: K.linear(x, bits, w, mul, shift),
        "gemm": lambda w: K.linear_quantized(q, qm, qe, w.unsqueeze(0), mul, shift, out_dtype=torch.int32),
        "bf16": lambda w: xb @ w.T,
        "int_mm": lambda w: torch._int_mm(xi, w.T),
    }
    row["timing"] = "cuda-graph" if m <= 64 else "do_bench"
    for key, fn in peers.items():
        try:
            if m <= 64:
                wt = w.to(torch.bfloat16) if key == "bf16" else w
                ws = [wt] + [wt.clone() for _ in range(copies_for(wt.numel() * wt.element_size()) - 1)]
                row[f"{key}_ms"] = graph_ms([(lambda f, v: lambda: f(v))(fn, v) for v in ws])
                del ws
            else:
                wt = w.to(torch.bfloat16) if key == "bf16" else w
                row[f"{key}_ms"] = bench(lambda: fn(wt))
        except RuntimeError as err:
            row[f"{key}_ms"] = None
            row[f"{key}_error"] = str(err).splitlines()[0][:120]
    ops, wbytes = 2 * m * o * k, o * k
    for key in ("fp", "gemm", "bf16", "int_mm"):
        ms = row[f"{key}_ms"]
        if ms is not None:
            row[f"{key}_tops"] = ops / (ms * 1e-3) / 1e12
            row[f"{key}_weight_gbs"] = wbytes * (2 if key == "bf16" else 1) / (ms * 1e-3) / 1e9
    if row["bf16_ms"] and row["fp_ms"] and row["gemm_ms"]:
        row["speedup_fp_vs_bf16"] = row["bf16_ms"] / row["fp_ms"]
        row["speedup_gemm_vs_bf16"] = row["bf16_ms"] / row["gemm_ms"]
        row["fp_copy_fraction"] = row["fp_weight_gbs"] * 1e9 / COPY_BW[0]
        row["gemm_copy_fraction"] = row["gemm_weight_gbs"] * 1e9 / COPY_BW[0]
    return row


def sweep(name: str, m: int, candidates: list[dict], la: int, gen: torch.Generator) -> list[dict]:
    """Time the matmul kernel alone for each tile candidate (compile errors are recorded)."""
    o, k = SHAPES[name]
    x = q16_rows(m, k, gen)
    w = torch.randint(-127, 128, (1, o, k), generator=gen, device="cuda", dtype=torch.int8)
    mul = torch.full((o,), 5000, dtype=torch.int32, device="cuda")
    shift = torch.full((o,), 22, dtype=torch.int32, device="cuda")
    q, qm, qe = K.quantize_rows(x, 8 if la == 1 else 12)
    want = spec_ops.linear(x, 8 if la == 1 else 12, w[0], mul, shift) if m * o <= 1 << 26 else None
    out = []
    for cfg in candidates:
        r = dict(shape=name, M=m, limbs=la, config=cfg)
        try:
            y = K.linear_quantized(q, qm, qe, w, mul, shift, config=cfg)
            if want is not None:
                r["parity_mismatches"] = int((y != want).sum())
            run = lambda v: K.linear_quantized(q, qm, qe, v, mul, shift, out_dtype=torch.int32, config=cfg)  # noqa: E731
            if m <= 64:
                ws = [w] + [w.clone() for _ in range(copies_for(w.numel()) - 1)]
                r["ms"] = graph_ms([(lambda v: lambda: run(v))(v) for v in ws])
            else:
                r["ms"] = bench(lambda: run(w))
            r["tops"] = 2 * m * o * k / (r["ms"] * 1e-3) / 1e12
            r["weight_gbs"] = o * k / (r["ms"] * 1e-3) / 1e9
        except Exception as err:  # noqa: BLE001 - record and go on (out of shared memory, ...)
            r["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        print(json.dumps(r), flush=True)
        out.append(r)
    return out


def resources() -> int:
    """Print registers / stack / shared memory of the sweep's tiles compiled for sm_90."""
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    ptr = {"a_ptr": "*i8", "w_ptr": "*i8", "m_ptr": "*i32", "e_ptr": "*i32", "mul_ptr": "*i32", "shift_ptr": "*i32",
           "bias_ptr": "*i32", "y_ptr": "*i64", "ws_ptr": "*i32", "count_ptr": "*i32"}
    ints = ["M", "N", "K", "PLANE", "stride_al", "stride_am", "stride_wl", "stride_wn", "stride_ym"]
    variants = [(la, tile(*c)) for la in (1, 2) for c in GEMM_CANDIDATES[la]]
    variants += [(la, tile(16, 64, 256 if la == 1 else 128, 4, 4, 1, 1)) for la in (1, 2)]
    for la, cfg in variants:
        cfg = dict(cfg)
        warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
        const = dict(stride_ak=1, stride_wk=1, stride_yn=1, LA=la, LW=1, HAS_BIAS=False, EVEN_K=True, NARROW_MUL=True,
                     **cfg)
        kinds = ptr | {n: "i32" for n in ints} | {n: "constexpr" for n in const}
        names = K._linear_kernel.arg_names  # the signature in parameter order (attrs index it)
        sig = {n: kinds[n] for n in names}
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in list(ptr) + ints}  # as a launch on aligned data
        src = ASTSource(fn=K._linear_kernel, signature=sig, constexprs=const, attrs=attrs)
        kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kern.asm["cubin"])
            f.flush()
            usage = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
        regs = " ".join(x for x in " ".join(usage.split()).split() if x.startswith(("REG:", "STACK:")))
        print(f"limbs {la} tile {cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} warps {warps} stages {stages}: "
              f"{regs} shared {kern.metadata.shared}", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="8B shapes and 8192^3 only")
    ap.add_argument("--sweep", action="store_true", help="also time tile candidates")
    ap.add_argument("--budget", type=float, default=240.0, help="stop starting cases after this many seconds")
    ap.add_argument("--resources", action="store_true", help="compile for sm_90 and print register use; no GPU")
    args = ap.parse_args(argv)
    if args.resources:
        return resources()
    if not torch.cuda.is_available():
        print("bench_linear: needs a CUDA device", file=sys.stderr)
        return 2
    t0 = time.time()
    gen = torch.Generator(device="cuda").manual_seed(0)
    dev = torch.cuda.get_device_name()
    COPY_BW.append(copy_bandwidth())
    res = dict(device=dev, date=datetime.date.today().isoformat(), torch=torch.__version__, triton=triton.__version__,
               copy_bandwidth_gbs=COPY_BW[0] / 1e9, cases=[], sweeps=[])
    print(f"{dev}: copy {res['copy_bandwidth_gbs']:.0f} GB/s", flush=True)
    if args.sweep:
        for la in (1, 2):
            res["sweeps"] += sweep("8192^3", 8192, [tile(*c) for c in GEMM_CANDIDATES[la]], la, gen)
        for name in ("8B.down", "8B.o"):
            res["sweeps"] += sweep(name, 1, [tile(16, bn, bk, 4, 4, split, 1) for bn, bk, split in SKINNY_CANDIDATES],
                                   1, gen)
    names = sorted((n for n in SHAPES if not args.quick or not n.startswith("1B")), key=lambda n: n.startswith("1B"))
    cases = [("8192^3", 8192)] + [(n, m) for n in names if n != "8192^3" for m in (1, 8, 64, 4096)]
    for name, m in cases:
        for profile in PROFILE_ACT_BITS:
            if time.time() - t0 > args.budget:
                res["stopped_early"] = True
                break
            row = run_case(name, m, profile, gen, check=True)
            res["cases"].append(row)
            print(json.dumps(row), flush=True)
            torch.cuda.empty_cache()
    out = args.out or Path(__file__).parent / "results" / (
        f"linear-{dev.replace(' ', '_')}-{res['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print_table(res)
    return 0


def print_table(res: dict) -> None:
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    print(f"\n{res['device']} {res['date']}  copy {res['copy_bandwidth_gbs']:.0f} GB/s")
    print(f"{'shape':<12}{'prof':<8}{'M':>6} {'fp ms':>8} {'gemm ms':>8} {'bf16 ms':>8} {'int_mm':>8} "
          f"{'fp TOP/s':>9} {'fp wGB/s':>9} {'x bf16':>7} {'bad':>4}")
    for r in res["cases"]:
        print(f"{r['shape']:<12}{r['profile']:<8}{r['M']:>6} {f(r['fp_ms'], '8.4f')} {f(r['gemm_ms'], '8.4f')} "
              f"{f(r['bf16_ms'], '8.4f')} {f(r.get('int_mm_ms'), '8.4f')} {f(r.get('fp_tops'), '9.1f')} "
              f"{f(r.get('fp_weight_gbs'), '9.0f')} {f(r.get('speedup_fp_vs_bf16'), '7.2f')} "
              f"{r.get('parity_mismatches', '-'):>4}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(0)
