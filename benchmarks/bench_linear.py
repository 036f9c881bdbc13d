"""Benchmark the Triton integer linear layer against bf16 ``torch.matmul`` and ``torch._int_mm``.

Shapes: 8192^3, and the linear stages of Llama-3.2-1B and Llama-3-8B (q/k/v and gate/up fused
along the output axis, as an engine runs them; the fusion is exact because row quantization
and requantization are per row and per output channel) at decode (M = 1, 16) and prefill sizes,
for every profile of ``spec.profiles.PROFILES`` with that profile's widths for the stage
(``int8``: 8-bit weights and activations; ``default``: 12-bit activations, two int8 limbs; a
profile with 16-bit operands runs three limbs).

Per case, in one run on one device:

* ``fp``     : the whole ``fieldprint_fast.kernels.linear.linear`` (int64 Q16 in, row
  quantization, matmul, requantization, int64 Q16 out), checked equal to ``spec.ops.linear``;
* ``gemm``   : the matmul kernel alone on pre-quantized limbs, int32 output;
* ``bf16``   : ``x @ W.T`` in bf16 (cuBLAS), bf16 output;
* ``int_mm`` : ``torch._int_mm`` (int8 in, int32 out; it refuses M <= 16).

Decode step (``--decode``; ``fuse`` rows: the decode step's linears of the 1B and 8B shapes,
q/k/v and gate/up with the RMSNorm in front, o and down with the residual add after, at
M = 1, 8 and 64, ``int8``, and ``default`` at M = 1; the rows int32, as the step keeps its
residual stream), each checked equal to the spec:

* ``step_ms``   : ``linear_rows`` as the decode step calls it (its hint picks the path);
* ``fused_ms``  : ``linear_rows(fuse=True)``: one launch (``_linear_rows_kernel``, M <= 16);
* ``nopf_ms``   : the same launch without the weight prefetch (``PREFETCH=0``, M <= 8);
* ``two_ms``    : ``linear_rows(fuse=False)``: the quantization launch, then the matmul with the
  residual in its epilogue (2 launches);
* ``gemm_ms``   : the matmul kernel alone on pre-quantized limbs (int32 out), as committed;
  ``gemm1_ms`` the same unsplit (``SPLIT_K=1``; M = 64, where ``split_k_hint`` now splits);
* ``bf16_ms``   : ``x @ W.T`` in bf16 (cuBLAS);
* ``hint``      : what ``linear.fuse_rows_hint`` picks for the shape (``True``: the one launch).

M <= 64 is timed as a decode step runs: CUDA-graph replays over enough weight copies (>= 256 MB,
4x the L2) that every call reads its weights from HBM. Larger M: medians of
``triton.testing.do_bench`` (L2 cleared before every call). TOP/s = 2 M N K / t; weight GB/s =
bytes of the weights / t; the copy ceiling is a 2 GiB device-to-device copy (bytes read +
written) measured in the same run. ``--sweep`` also times tile candidates of the matmul kernel
(8192^3, and the decode shapes at M = 1), each checked against the spec. Writes
benchmarks/results/linear-<GPU>-<date>.json (or --out) and prints a table.

    python benchmarks/bench_linear.py [--quick] [--sweep] [--decode] [--warm 8] [--budget 120] [--out FILE]
    python benchmarks/bench_linear.py --resources   # no GPU needed
    TRITON_INTERPRET=1 python benchmarks/bench_linear.py --smoke   # the script's logic on a CPU

``--warm N`` first runs every case and candidate once in N processes (no timing): Triton's
compilations, single-threaded per process, then come from its disk cache in the timed pass.
``--resources`` compiles the sweep's tiles for sm_90 on any machine (Triton's own ``ptxas``)
and prints each variant's registers, stack frame (spills) and shared memory from
``cuobjdump -res-usage``: the compiler's report, at no device time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import sys
import time
from pathlib import Path

import torch
import triton

from fieldprint_fast.kernels import linear as K
from spec import ops as spec_ops
from spec.constants import ACT_MAX
from spec.profiles import PROFILES

SHAPES = {  # name -> (O, K)
    "8192^3": (8192, 8192),
    "1B.qkv": (3072, 2048), "1B.o": (2048, 2048), "1B.gate_up": (16384, 2048), "1B.down": (2048, 8192),
    "1B.lm_head": (128256, 2048),
    "8B.qkv": (6144, 4096), "8B.o": (4096, 4096), "8B.gate_up": (28672, 4096), "8B.down": (4096, 14336),
    "8B.lm_head": (128256, 4096),
}
TINY = {"8192^3": (96, 160), "8B.o": (80, 300), "8B.down": (64, 520)}  # --smoke
COPY_BW: list[float] = []  # bytes/s of the device copy, measured first
DEVICE = ["cuda"]
GEMM_CANDIDATES = {  # limb pairs -> (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, EPI_SPLIT, TMA, GROUP_M) on 8192^3
    1: [(128, 256, 128, 8, 3, 4, True, 8), (128, 256, 128, 8, 4, 4, True, 8), (128, 256, 128, 8, 3, 4, True, 16),
        (128, 256, 128, 8, 3, 4, True, 4), (128, 256, 128, 8, 3, 8, True, 8), (128, 256, 64, 8, 5, 4, True, 8),
        (256, 128, 128, 8, 4, 4, True, 8), (256, 128, 128, 8, 3, 4, True, 8), (128, 128, 256, 8, 3, 1, True, 8),
        (128, 256, 128, 8, 3, 4, False, 8)],
    2: [(128, 128, 128, 8, 4, 2, True, 8), (128, 128, 128, 8, 3, 2, True, 8), (128, 128, 256, 8, 2, 2, True, 8)],
}
# decode tiles (BLOCK_N, BLOCK_K, warps, stages, K split)
SKINNY_CANDIDATES = [(64, 256, 4, 4, 1), (32, 256, 4, 4, 1), (16, 256, 4, 4, 1), (32, 512, 4, 3, 1),
                     (64, 256, 8, 4, 1), (64, 256, 4, 4, 2), (64, 256, 4, 4, 4), (32, 256, 4, 4, 2),
                     (64, 256, 4, 4, 6)]
SKINNY_SHAPES = ("8B.o", "8B.down", "8B.qkv", "1B.o", "1B.down")
FUSE_SHAPES = ("1B.qkv", "1B.o", "1B.gate_up", "1B.down", "8B.qkv", "8B.o", "8B.gate_up", "8B.down")
FUSE_M = (1, 8, 64)


def tile(bm, bn, bk, warps, stages, epi=1, tma=False, group=8, split=1):
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group, num_warps=warps, num_stages=stages,
                EPI_SPLIT=epi, TMA=tma, SPLIT_K=split)


def skinny_tile(m, bn, bk, warps, stages, split):
    return tile(16 if m <= 16 else 64, bn, bk, warps, stages, 1, False, 1, split)


def q16_rows(m: int, k: int, gen: torch.Generator) -> torch.Tensor:
    mag = torch.randint(16, 28, (m, 1), generator=gen, device=DEVICE[0])
    x = torch.randint(-ACT_MAX, ACT_MAX + 1, (m, k), generator=gen, device=DEVICE[0], dtype=torch.int64)
    return x >> (31 - mag)


def rand_weights(o: int, k: int, bits: int, gen: torch.Generator) -> torch.Tensor:
    qm = (1 << (bits - 1)) - 1
    w = torch.randint(-qm, qm + 1, (o, k), generator=gen, device=DEVICE[0], dtype=torch.int32)
    return w.to(torch.int8 if bits <= 8 else torch.int16)


def bench(fn) -> float:
    """Median milliseconds of fn (do_bench: warm-up, L2 cleared before each call)."""
    if DEVICE[0] == "cpu":
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def graph_ms(fns: list) -> float:
    """Milliseconds per call of fns (one per weight copy, > L2 in all) replayed from a CUDA graph:
    the way a decode step runs them, with no host launch overhead in the number. The warm-up runs
    on the capture stream, so the split-K workspace (one per stream) exists before the capture."""
    if DEVICE[0] == "cpu":
        return bench(lambda: [f() for f in fns]) / len(fns)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns * 2:
            f()
    side.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=side):
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
    if DEVICE[0] == "cpu":
        return 2
    return max(2, min(32, -(-(256 << 20) // nbytes)))


def weight_ms(fn, wt: torch.Tensor, m: int) -> float:
    """Milliseconds of ``fn(wt)``: decode shapes (m <= 64) from a CUDA graph rotating through
    enough copies of the weight that none is in L2 (`graph_ms`, `copies_for`), larger shapes
    by `bench`."""
    if m > 64:
        return bench(lambda: fn(wt))
    ws = [wt] + [wt.clone() for _ in range(copies_for(wt.numel() * wt.element_size()) - 1)]
    return graph_ms([(lambda f, v: lambda: f(v))(fn, v) for v in ws])


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 2 GiB device-to-device copy."""
    n = 1 << (31 if DEVICE[0] == "cuda" else 20)
    src = torch.empty(n, dtype=torch.uint8, device=DEVICE[0]).random_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    del src, dst
    return 2 * n / (ms * 1e-3)


def shape_of(name: str) -> tuple[int, int]:
    return TINY.get(name, (48, 100)) if DEVICE[0] == "cpu" else SHAPES[name]


def stage_of(name: str) -> str:
    return "qkv" if name == "8192^3" else name.split(".")[1]


def run_case(name: str, m: int, profile: str, gen: torch.Generator, check: bool, timed: bool = True) -> dict:
    o, k = shape_of(name)
    if name == "8192^3":
        m = 8192 if DEVICE[0] == "cuda" else 70
    w_bits, a_bits = PROFILES[profile].linear_bits(stage_of(name))
    x = q16_rows(m, k, gen)
    w = rand_weights(o, k, w_bits, gen)
    mul = torch.randint(1 << 12, 1 << 13, (o,), generator=gen, device=DEVICE[0], dtype=torch.int32)
    shift = torch.randint(18, 26, (o,), generator=gen, device=DEVICE[0], dtype=torch.int32)
    row = dict(shape=name, profile=profile, M=m, N=o, K=k, w_bits=w_bits, a_bits=a_bits)
    y = K.linear(x, a_bits, w, mul, shift)
    if check:
        want = spec_ops.linear(x, a_bits, w, mul, shift)
        row["parity_outputs"] = want.numel()
        row["parity_mismatches"] = int((y != want).sum())
        del want
    q, qm, qe = K.quantize_rows(x, a_bits)
    if not timed:  # --warm: compile what the timed pass runs, nothing more
        K.linear_quantized(q, qm, qe, K.weight_limbs(w), mul, shift, out_dtype=torch.int32)
        return row
    row["limbs"] = [q.shape[0], K.weight_limbs(w).shape[0]]
    row["config"] = K._config(m, o, k, *row["limbs"], q.device)  # the fp (int64 output) launch
    row["gemm_config"] = K._config(m, o, k, *row["limbs"], q.device, torch.int32)
    xb = x.to(torch.float32).mul_(2.0**-16).to(torch.bfloat16)
    xi = q[-1]  # an int8 operand of the right shape for _int_mm's timing
    w8 = K.weight_limbs(w)[-1]
    peers = {
        "fp": (lambda v: K.linear(x, a_bits, v, mul, shift), w),
        "gemm": (lambda v: K.linear_quantized(q, qm, qe, v, mul, shift, out_dtype=torch.int32), K.weight_limbs(w)),
        "bf16": (lambda v: xb @ v.T, w.to(torch.bfloat16)),
        "int_mm": (lambda v: torch._int_mm(xi, v.T), w8),
    }
    row["timing"] = "cuda-graph" if m <= 64 else "do_bench"
    for key, (fn, wt) in peers.items():
        if not timed:
            if key in ("fp", "gemm"):
                fn(wt)
            continue
        try:
            if key == "int_mm" and DEVICE[0] == "cpu":
                raise RuntimeError("no _int_mm timing on the CPU")
            row[f"{key}_ms"] = weight_ms(fn, wt, m)
        except RuntimeError as err:
            row[f"{key}_ms"] = None
            row[f"{key}_error"] = str(err).splitlines()[0][:120]
    if not timed:
        return row
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


def fuse_case(name: str, m: int, profile: str, gen: torch.Generator, timed: bool = True) -> dict:
    """Time one decode linear the ways of the module docstring, "Decode step", each checked."""
    o, k = shape_of(name)
    stage = stage_of(name)
    normed = stage in ("qkv", "gate_up", "lm_head")
    w_bits, a_bits = PROFILES[profile].linear_bits(stage)
    la = K._num_limbs(a_bits)
    x = q16_rows(m, k, gen).to(torch.int32)  # the decode step's residual stream is int32
    w = rand_weights(o, k, w_bits, gen)
    limbs = K.weight_limbs(w)
    mul = torch.randint(1 << 12, 1 << 13, (o,), generator=gen, device=DEVICE[0], dtype=torch.int32)
    shift = torch.randint(18, 26, (o,), generator=gen, device=DEVICE[0], dtype=torch.int32)
    gamma = torch.randint(-(1 << 17), 1 << 17, (k,), generator=gen, device=DEVICE[0], dtype=torch.int32)
    eps = torch.tensor([1 << 30], device=DEVICE[0])
    norm = (gamma, eps) if normed else None
    res = None if normed else q16_rows(m, o, gen).to(torch.int32)
    if normed:
        from fieldprint_fast.kernels import rowops

        q, qm, qe = rowops.rms_norm_quantize(x, gamma, eps, a_bits)
    else:
        q, qm, qe = K.quantize_rows(x, a_bits)
    gemm_cfg = K._config(m, o, k, la, limbs.shape[0], x.device, torch.int32)
    xb = x.to(torch.float32).mul_(2.0**-16).to(torch.bfloat16)
    checked = {
        "step": lambda v: K.linear_rows(x, a_bits, v, mul, shift, residual=res, norm=norm),
        "two": lambda v: K.linear_rows(x, a_bits, v, mul, shift, residual=res, norm=norm, fuse=False),
    }
    if m <= K.ROWS_MAX_M and la <= 2 and limbs.shape[0] <= 2:
        checked["fused"] = lambda v: K.linear_rows(x, a_bits, v, mul, shift, residual=res, norm=norm, fuse=True)
        cfg = K.rows_config(m, o, k, la, limbs.shape[0], normed, x.device)
        if cfg["PREFETCH"]:
            checked["nopf"] = lambda v: K.linear_rows(x, a_bits, v, mul, shift, residual=res, norm=norm, fuse=True,
                                                      config=dict(cfg, PREFETCH=0))
        if cfg["SPLIT_K"] > 1:  # the prefetch alone: rows_config's K split left out
            checked["nosplit"] = lambda v: K.linear_rows(x, a_bits, v, mul, shift, residual=res, norm=norm, fuse=True,
                                                         config=dict(cfg, SPLIT_K=1))
        # the one launch before the prefetch and rows_config's split: _config's decode tile
        checked["old"] = lambda v: K.linear_rows(x, a_bits, v, mul, shift, residual=res, norm=norm, fuse=True,
                                                 config=dict(gemm_cfg, PREFETCH=0))
    others = {"gemm": (lambda v: K.linear_quantized(q, qm, qe, v, mul, shift, out_dtype=torch.int32), limbs),
              "bf16": (lambda v: xb @ v.T, w.to(torch.bfloat16))}
    if gemm_cfg["SPLIT_K"] > 1:
        others["gemm1"] = (lambda v: K.linear_quantized(q, qm, qe, v, mul, shift, out_dtype=torch.int32,
                                                        config=dict(gemm_cfg, SPLIT_K=1)), limbs)
    row = dict(kind="fuse", shape=name, profile=profile, M=m, N=o, K=k, w_bits=w_bits, a_bits=a_bits, normed=normed,
               limbs=[la, limbs.shape[0]], hint=K.fuse_rows_hint(m, o, k, la, limbs.shape[0], normed, 4, x.device),
               gemm_config=gemm_cfg, rows_config=K.rows_config(m, o, k, la, limbs.shape[0], normed, x.device))
    if not timed:
        for fn in checked.values():
            fn(limbs)
        for fn, wt in others.values():
            fn(wt)
        return row
    want = spec_ops.linear(spec_ops.rms_norm(x, gamma, eps) if normed else x, a_bits, w, mul, shift)
    want = want if normed else spec_ops.residual_add(res, want)
    row["parity_outputs"] = want.numel() * len(checked)
    row["parity_mismatches"] = sum(int((fn(limbs) != want).sum()) for fn in checked.values())
    del want
    for key, fn in checked.items():
        row[f"{key}_ms"] = weight_ms(fn, limbs, m)
    for key, (fn, wt) in others.items():
        row[f"{key}_ms"] = weight_ms(fn, wt, m)
    row["weight_gbs_step"] = o * k * limbs.shape[0] / (row["step_ms"] * 1e-3) / 1e9
    row["step_copy_fraction"] = row["weight_gbs_step"] * 1e9 / COPY_BW[0]
    row["step_vs_bf16"] = row["bf16_ms"] / row["step_ms"]
    return row


def sweep_one(name: str, m: int, cfg: dict, la: int, gen: torch.Generator, timed: bool = True) -> dict:
    """Time the matmul kernel alone (one-limb weights, `la` activation limbs) for one tile."""
    o, k = shape_of(name)
    m = (8192 if DEVICE[0] == "cuda" else 70) if name == "8192^3" else m
    x = q16_rows(m, k, gen)
    w = torch.randint(-127, 128, (1, o, k), generator=gen, device=DEVICE[0], dtype=torch.int8)
    mul = torch.full((o,), 5000, dtype=torch.int32, device=DEVICE[0])
    shift = torch.full((o,), 22, dtype=torch.int32, device=DEVICE[0])
    bits = 8 if la == 1 else 12
    q, qm, qe = K.quantize_rows(x, bits)
    r = dict(shape=name, M=m, limbs=la, config=cfg)
    try:
        y = K.linear_quantized(q, qm, qe, w, mul, shift, config=cfg)
        if not timed:
            K.linear_quantized(q, qm, qe, w, mul, shift, out_dtype=torch.int32, config=cfg)
            return r
        want = spec_ops.linear(x, bits, w[0], mul, shift)
        r["parity_outputs"] = want.numel()
        r["parity_mismatches"] = int((y != want).sum())
        del want
        run = lambda v: K.linear_quantized(q, qm, qe, v, mul, shift, out_dtype=torch.int32, config=cfg)  # noqa: E731
        if m <= 64:
            ws = [w] + [w.clone() for _ in range(copies_for(w.numel()) - 1)]
            r["ms"] = graph_ms([(lambda v: lambda: run(v))(v) for v in ws])
        else:
            r["ms"] = bench(lambda: run(w))
        r["tops"] = 2 * m * o * k / (r["ms"] * 1e-3) / 1e12
        r["weight_gbs"] = o * k / (r["ms"] * 1e-3) / 1e9
        if COPY_BW:
            r["copy_fraction"] = r["weight_gbs"] * 1e9 / COPY_BW[0]
    except Exception as err:  # noqa: BLE001 - record and go on (out of shared memory, ...)
        r["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return r


def jobs(args) -> list[tuple]:
    """Every sweep entry and case of this run, most wanted first (the budget may stop the tail)."""
    out = []
    if args.sweep:
        for pairs, cands in GEMM_CANDIDATES.items():
            out += [("sweep", "8192^3", 8192, tile(*c), pairs) for c in cands]
        for name in SKINNY_SHAPES if DEVICE[0] == "cuda" else ("8B.o", "8B.down"):
            out += [("sweep", name, 1, skinny_tile(1, *c), 1) for c in SKINNY_CANDIDATES]
    profiles = list(PROFILES)
    fuse = [("fuse", n, m, "int8") for m in FUSE_M for n in FUSE_SHAPES] + [("fuse", n, 1, "default") for n in FUSE_SHAPES]
    if DEVICE[0] == "cpu":  # --smoke
        fuse = [j for j in fuse if j[1] in TINY or j[1] == "8B.qkv"][::3]
    if args.decode:
        return fuse
    out += fuse[: len(fuse) // 2] if args.quick else fuse
    decode8 = ["8B.qkv", "8B.o", "8B.down", "8B.gate_up", "8B.lm_head"]
    out += [("case", n, 1, p) for n in decode8 for p in profiles]
    out += [("case", "8192^3", 8192, p) for p in profiles]
    if DEVICE[0] == "cpu":  # --smoke: one of each kind
        return [j for j in out if j[0] == "sweep"][::7] + fuse + out[-2 * len(profiles):]
    if not args.quick:
        out += [("case", n, 1, p) for n in ("1B.qkv", "1B.o", "1B.down") for p in profiles]
    out += [("case", n, 16, p) for n in decode8 for p in profiles]
    if not args.quick:
        out += [("case", n, 16, p) for n in ("1B.qkv", "1B.o", "1B.down") for p in profiles]
    out += [("case", n, 4096, p) for n in decode8 for p in profiles]
    out += [("case", n, 64, p) for n in decode8 for p in profiles]
    if not args.quick:
        out += [("case", n, m, p) for n in ("1B.gate_up", "1B.lm_head") for m in (1, 16) for p in profiles]
    return out


def execute(job: tuple, gen: torch.Generator, timed: bool) -> dict:
    if job[0] == "sweep":
        return sweep_one(job[1], job[2], job[3], job[4], gen, timed)
    if job[0] == "fuse":
        return fuse_case(job[1], job[2], job[3], gen, timed)
    return run_case(job[1], job[2], job[3], gen, check=timed, timed=timed)


def _warm_worker(work: tuple[str, list[tuple]]) -> int:
    """Compile (run once, untimed) every job of a batch on a device; return how many failed."""
    DEVICE[0], batch = work
    gen = torch.Generator(device=DEVICE[0]).manual_seed(1)
    bad = 0
    for job in batch:
        try:
            execute(job, gen, timed=False)
        except Exception as err:  # noqa: BLE001 - the timed pass records it
            print(f"warm: {job[:3]}: {type(err).__name__}: {str(err)[:120]}", flush=True)
            bad += 1
        torch.cuda.empty_cache() if DEVICE[0] == "cuda" else None
    return bad


def resources() -> int:
    """Print registers / stack / shared memory of the sweep's tiles compiled for sm_90."""
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    ptr = {"a_ptr": "*i8", "w_ptr": "*i8", "m_ptr": "*i32", "e_ptr": "*i32", "mul_ptr": "*i32", "shift_ptr": "*i32",
           "bias_ptr": "*i32", "res_ptr": "*i64", "y_ptr": "*i64", "ws_ptr": "*i32", "count_ptr": "*i32"}
    ints = ["M", "N", "K", "PLANE", "SPLIT_K", "stride_al", "stride_am", "stride_wl", "stride_wn", "stride_rm",
            "stride_ym"]
    variants = [(pairs, tile(*c)) for pairs in GEMM_CANDIDATES for c in GEMM_CANDIDATES[pairs]]
    variants = [v for v in variants if not v[1]["TMA"]]  # (the TMA kernel has another signature)
    variants += [(la, tile(16, 64, 256 if la == 1 else 128, 4, 4, 1, False, 1, 2)) for la in (1, 2)]
    only = sys.argv[sys.argv.index("--resources") + 1:] if "--resources" in sys.argv else []
    for la, cfg in variants:
        cfg = dict(cfg)
        if only and f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}" not in only:
            continue
        warps, stages, split = cfg.pop("num_warps"), cfg.pop("num_stages"), cfg.pop("SPLIT_K")
        cfg.pop("TMA")
        const = dict(stride_ak=1, stride_wk=1, stride_yn=1, LA=la, LW=1, HAS_BIAS=False, HAS_RES=False, EVEN_K=True,
                     NARROW_MUL=True,
                     RAW=False, USE_SPLIT=split > 1, PARTIAL_SEM="relaxed", **cfg)
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
        print(f"limbs {la} tile {cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} warps {warps} stages {stages} "
              f"epi {cfg['EPI_SPLIT']} split {split}: {regs} shared {kern.metadata.shared}", flush=True)
    if not only or "rows" in only:  # the one-launch decode kernel: 1 and 8 rows, with and without the norm
        for rows, la, norm in ((1, 1, False), (1, 2, False), (1, 1, True), (1, 2, True), (8, 1, False), (8, 2, False),
                               (4, 2, True), (8, 1, True), (8, 2, True), (16, 2, False), (16, 1, True), (16, 2, True)):
            regs, shared = _compile_usage(cuobjdump, rows, la, norm)
            print(f"rows kernel: {rows} rows, limbs {la}x1, norm {norm}, 16x64x{256 if la == 1 else 128} warps 4 "
                  f"stages 4 split 4: {regs} shared {shared}", flush=True)
    return 0


def _compile_usage(cuobjdump, rows: int, la: int, norm: bool, row_block: int = 0,
                   norm_block: int = 0, prefetch: int = K.ROWS_PREFETCH) -> tuple[str, int]:
    """Compile `_linear_rows_kernel` for sm_90 as `linear_rows` launches it at decode; return its
    `cuobjdump -res-usage` registers / stack and its shared memory."""
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptr = {"x_ptr": "*i64", "gamma_ptr": "*i32", "eps_ptr": "*i64", "w_ptr": "*i8", "mul_ptr": "*i32",
           "shift_ptr": "*i32", "bias_ptr": "*i32", "res_ptr": "*i64", "y_ptr": "*i64", "ws_ptr": "*i32",
           "count_ptr": "*i32"}
    ints = ["M", "N", "K", "PLANE", "SPLIT_K", "stride_xm", "stride_wl", "stride_wn", "stride_rm", "stride_ym"]
    const = dict(stride_wk=1, stride_yn=1, QMAX=(1 << 11) - 1 if la == 2 else 127, LA=la, LW=1, NORM=norm,
                 HAS_BIAS=False, HAS_RES=not norm, EVEN_K=True, NARROW_MUL=True, ROWS=rows,
                 ROW_BLOCK=row_block or K.rows_step(rows, norm), NORM_BLOCK=norm_block or K.rows_step(rows, norm),
                 BLOCK_M=16, BLOCK_N=64, BLOCK_K=256 if la == 1 else 128, PREFETCH=prefetch, USE_SPLIT=True,
                 PARTIAL_SEM="relaxed")
    names = K._linear_rows_kernel.arg_names
    kinds = ptr | {n: "i32" for n in ints} | {n: "constexpr" for n in const}
    sig = {n: kinds[n] for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in list(ptr) + ints}
    src = ASTSource(fn=K._linear_rows_kernel, signature=sig, constexprs=const, attrs=attrs)
    kern = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=4))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kern.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    regs = " ".join(x for x in " ".join(usage.split()).split() if x.startswith(("REG:", "STACK:")))
    return regs, kern.metadata.shared


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="8B shapes and 8192^3 only")
    ap.add_argument("--sweep", action="store_true", help="also time tile candidates")
    ap.add_argument("--decode", action="store_true", help="only the decode-step rows (M = 1, 8, 64; 1B and 8B shapes)")
    ap.add_argument("--warm", type=int, default=0, help="compile in this many processes first")
    ap.add_argument("--budget", type=float, default=240.0, help="stop starting cases after this many seconds")
    ap.add_argument("--resources", nargs="*", default=None, help="compile for sm_90, print register use; no GPU")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1)")
    args = ap.parse_args(argv)
    if args.resources is not None:
        return resources()
    if args.smoke:
        DEVICE[0] = "cpu"
    elif not torch.cuda.is_available():
        print("bench_linear: needs a CUDA device (or --smoke under TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    todo = jobs(args)
    if args.warm > 0:
        t = time.time()
        batches = [(DEVICE[0], todo[i::args.warm]) for i in range(args.warm)]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.warm) as pool:
            bad = sum(pool.map(_warm_worker, batches, chunksize=1))
        print(f"warm: {len(todo)} jobs compiled in {time.time() - t:.0f} s by {args.warm} processes ({bad} failed)",
              flush=True)
    t0 = time.time()
    gen = torch.Generator(device=DEVICE[0]).manual_seed(0)
    dev = torch.cuda.get_device_name() if DEVICE[0] == "cuda" else "cpu-interpreter"
    COPY_BW.append(copy_bandwidth())
    res = dict(device=dev, date=datetime.date.today().isoformat(), torch=torch.__version__, triton=triton.__version__,
               copy_bandwidth_gbs=COPY_BW[0] / 1e9, gemm_tiles={str(k): v for k, v in K.GEMM_TILES.items()},
               gemm_tile_int32=K.GEMM_TILE_INT32,
               fuse_row_bytes=K.FUSE_ROW_BYTES, fuse_norm_work=K.FUSE_NORM_WORK, cases=[], sweeps=[], fuse=[])
    print(f"{dev}: copy {res['copy_bandwidth_gbs']:.0f} GB/s", flush=True)
    for job in todo:
        if time.time() - t0 > args.budget:
            res["stopped_early"] = True
            break
        row = execute(job, gen, timed=True)
        res[{"sweep": "sweeps", "fuse": "fuse"}.get(job[0], "cases")].append(row)
        print(json.dumps(row), flush=True)
        if DEVICE[0] == "cuda":
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
    for r in res["sweeps"]:
        c = r["config"]
        print(f"sweep {r['shape']:<8} M={r['M']:<5} L{r['limbs']} {c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']} "
              f"w{c['num_warps']} s{c['num_stages']} e{c['EPI_SPLIT']} g{c['GROUP_M']} k{c['SPLIT_K']}"
              f"{' tma' if c.get('TMA') else ''}: "
              f"{f(r.get('ms'), '.4f')} ms {f(r.get('tops'), '.0f')} TOP/s {f(r.get('copy_fraction'), '.2f')} copy "
              f"bad={r.get('parity_mismatches', '-')} {r.get('error', '')[:60]}")
    if res.get("fuse"):
        print(f"{'decode':<12}{'prof':<8}{'M':>3} {'step us':>8} {'fused':>7} {'nopf':>7} {'nosplit':>7} {'old':>7} {'two':>7} {'gemm':>7} "
              f"{'gemm1':>7} {'bf16':>7} {'x bf16':>6} {'copy':>5} {'hint':>5} {'bad':>4}")
    for r in res.get("fuse", []):
        us = {k: (None if r.get(f"{k}_ms") is None else r[f"{k}_ms"] * 1e3) for k in
              ("step", "fused", "nopf", "nosplit", "old", "two", "gemm", "gemm1", "bf16")}
        print(f"{r['shape']:<12}{r['profile']:<8}{r['M']:>3} {f(us['step'], '8.1f')} {f(us['fused'], '7.1f')} "
              f"{f(us['nopf'], '7.1f')} {f(us['nosplit'], '7.1f')} {f(us['old'], '7.1f')} {f(us['two'], '7.1f')} {f(us['gemm'], '7.1f')} {f(us['gemm1'], '7.1f')} "
              f"{f(us['bf16'], '7.1f')} {f(r.get('step_vs_bf16'), '6.2f')} {f(r.get('step_copy_fraction'), '5.2f')} "
              f"{str(r['hint']):>5} {r['parity_mismatches']:>4}")
    print(f"{'shape':<12}{'prof':<8}{'M':>6} {'fp ms':>8} {'gemm ms':>8} {'bf16 ms':>8} {'int_mm':>8} "
          f"{'gemm TOP/s':>10} {'g copy':>6} {'fp x':>6} {'gemm x':>6} {'bad':>4}")
    for r in res["cases"]:
        print(f"{r['shape']:<12}{r['profile']:<8}{r['M']:>6} {f(r['fp_ms'], '8.4f')} {f(r['gemm_ms'], '8.4f')} "
              f"{f(r['bf16_ms'], '8.4f')} {f(r.get('int_mm_ms'), '8.4f')} {f(r.get('gemm_tops'), '10.1f')} "
              f"{f(r.get('gemm_copy_fraction'), '6.2f')} {f(r.get('speedup_fp_vs_bf16'), '6.2f')} "
              f"{f(r.get('speedup_gemm_vs_bf16'), '6.2f')} {r.get('parity_mismatches', '-'):>4}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(0)
