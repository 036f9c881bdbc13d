"""tools.sm90_check: a launch is described as Triton would specialize it, and a described
variant compiles for sm_90 on a machine without a GPU (or its failure is reported, exit 1)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tools.sm90_check import _variant

ROOT = Path(__file__).resolve().parents[2]


def _kernel(x_ptr, y_ptr, out_ptr, numel, BLOCK: "tl.constexpr"):  # noqa: F821 - annotation only
    pass


def test_a_launch_is_described_as_the_jit_specializes_it():
    x = torch.zeros(64, dtype=torch.int64)
    v = _variant(_kernel, ["x_ptr", "y_ptr", "out_ptr", "numel", "BLOCK"], (x, x[1:], x, 48),
                 dict(BLOCK=64, num_warps=2))
    assert v["signature"] == {"x_ptr": "*i64", "y_ptr": "*i64", "out_ptr": "*i64", "numel": "i32", "BLOCK": "constexpr"}
    assert v["constexprs"] == {"BLOCK": 64} and v["options"] == {"num_warps": 2}
    assert "y_ptr" not in v["aligned"] and {"x_ptr", "numel"} <= set(v["aligned"])  # x[1:] is 8 bytes off
    one = _variant(_kernel, ["x_ptr", "y_ptr", "out_ptr", "numel", "BLOCK"], (x, x, x, 1), dict(BLOCK=64))
    assert one["constexprs"]["numel"] == 1 and one["signature"]["numel"] == "constexpr"  # 1 is specialized
    assert _variant(_kernel, ["x_ptr", "y_ptr", "out_ptr", "numel", "BLOCK"], (x, x, object(), 4), {}) is None


def _compile(tmp_path, variants) -> subprocess.CompletedProcess:
    path = tmp_path / "v.json"
    path.write_text(json.dumps(variants))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "tools.sm90_check", "compile", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_variants_compile_for_sm90_and_failures_exit_1(tmp_path):
    good = dict(kernel="fieldprint_fast.kernels.rowops:_residual_add_kernel",
                signature={"x_ptr": "*i64", "y_ptr": "*i64", "out_ptr": "*i64", "numel": "i32", "BLOCK": "constexpr"},
                constexprs={"BLOCK": 256}, aligned=["x_ptr", "y_ptr", "out_ptr"], options={"num_warps": 4})
    out = _compile(tmp_path, [good])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 of 1 variants compiled for sm_90" in out.stdout
    bad = good | dict(constexprs={"BLOCK": 100})  # tl.arange needs a power of two
    out = _compile(tmp_path, [good, bad])
    assert out.returncode == 1 and "FAILED" in out.stdout and "1 of 2 variants" in out.stdout
