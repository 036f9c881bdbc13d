"""Compile, for sm_90, every Triton kernel variant that a CPU test run launches.

Under ``TRITON_INTERPRET=1`` kernels run on the CPU and are never compiled, so a kernel can
pass every parity test and still fail to build for the GPU: a value whose type differs between
the branches of an ``if``, a dot below the int8 tensor cores' minimum shape, a compiler pass
that gives up. The first GPU run is then spent on compile errors. This tool finds them on the
CPU machine, with Triton's own compiler (ptxas ships with Triton; no GPU is needed):

``python -m tools.sm90_check record VARIANTS.json -- PYTEST-ARGS...`` runs pytest under the
interpreter and writes each distinct launch (kernel, argument types and specializations,
constexpr values, ``num_warps``, ``num_stages``);
``python -m tools.sm90_check compile VARIANTS.json`` compiles them (in a process without the
interpreter), prints one line per variant and exits 1 if any fails.

Run ``compile`` under the Triton version the GPU machine has (3.6 here) as well as the newest:
compiler passes differ between versions.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import time
from pathlib import Path

_DTYPES = {"int8": "i8", "uint8": "u8", "int16": "i16", "int32": "i32", "int64": "i64", "bool": "i1",
           "float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64"}
_OPTIONS = ("num_warps", "num_stages")


def _constexpr_names(fn) -> set[str]:
    out = set()
    for p in inspect.signature(fn).parameters.values():
        a = p.annotation
        if a is not inspect.Parameter.empty and "constexpr" in (a if isinstance(a, str) else getattr(a, "__name__", "")):
            out.add(p.name)
    return out


def _variant(fn, arg_names, args, kwargs) -> dict:
    """The launch as Triton's JIT would specialize it: pointers (16-byte aligned or not), ints
    (equal to 1: a constant; divisible by 16), constexprs and launch options; None for an
    argument of another kind (a TMA descriptor)."""
    import torch

    const_names = _constexpr_names(fn)
    bound = dict(zip(arg_names, args)) | {k: v for k, v in kwargs.items() if k not in _OPTIONS}
    sig, const, aligned = {}, {}, []
    for name in arg_names:
        v = bound.get(name)
        if name in const_names or v is None:
            const[name] = v if not hasattr(v, "value") else v.value
            sig[name] = "constexpr"
        elif isinstance(v, torch.Tensor):
            sig[name] = "*" + _DTYPES[str(v.dtype).removeprefix("torch.")]
            if v.data_ptr() % 16 == 0:
                aligned.append(name)
        elif isinstance(v, bool):
            sig[name] = "i1"
        elif isinstance(v, int):
            if v == 1:
                const[name], sig[name] = 1, "constexpr"
            else:
                sig[name] = "i32" if -2**31 <= v < 2**31 else "i64"
                if v % 16 == 0:
                    aligned.append(name)
        elif isinstance(v, float):
            sig[name] = "fp32"
        else:  # e.g. a TMA TensorDescriptor: not described here, the launch is left out
            return None
    return dict(kernel=f"{fn.__module__}:{fn.__qualname__}", signature=sig, constexprs=const, aligned=aligned,
                options={k: kwargs[k] for k in _OPTIONS if k in kwargs})


def _record(path: Path, pytest_args: list[str]) -> int:
    os.environ["TRITON_INTERPRET"] = "1"
    import pytest
    from triton.runtime.interpreter import InterpretedFunction

    seen: dict[str, dict] = {}
    left_out: set[str] = set()
    run = InterpretedFunction.run

    def recording(self, *args, grid, warmup, **kwargs):
        v = _variant(self.fn, self.arg_names, args, kwargs)
        if v is None:
            left_out.add(self.fn.__qualname__)
        else:
            seen.setdefault(json.dumps(v, sort_keys=True), v)
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording
    try:
        rc = pytest.main(pytest_args)
    finally:
        InterpretedFunction.run = run
        path.write_text(json.dumps(list(seen.values()), indent=1) + "\n")
    print(f"sm90_check: {len(seen)} kernel variants written to {path}"
          + (f"; left out (argument types not described): {', '.join(sorted(left_out))}" if left_out else ""))
    return int(rc)


def _compile(path: Path) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("sm90_check compile: run without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    try:
        variants = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"sm90_check: cannot read {path}: {e}", file=sys.stderr)
        return 2
    failed = 0
    for v in variants:
        mod, _, qual = v["kernel"].partition(":")
        fn = getattr(importlib.import_module(mod), qual)
        names = fn.arg_names
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in v["aligned"]}
        const = {n: c for n, c in v["constexprs"].items()}
        t0 = time.perf_counter()
        try:
            src = ASTSource(fn=fn, signature=v["signature"], constexprs=const, attrs=attrs)
            triton.compile(src, target=GPUTarget("cuda", 90, 32), options=v["options"])
            status = "ok"
        except Exception as e:  # noqa: BLE001 - every failure is reported, the rest still compile
            failed += 1
            status = "FAILED " + " ".join(str(e).split())[-300:]
        shown = {k: c for k, c in const.items() if not isinstance(c, int) or k.isupper()}
        print(f"{time.perf_counter() - t0:6.1f}s {qual} {shown} {v['options']}: {status}", flush=True)
    print(f"sm90_check: {len(variants) - failed} of {len(variants)} variants compiled for sm_90 "
          f"(triton {triton.__version__})")
    return 1 if failed else 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["record", "compile"])
    ap.add_argument("variants", type=Path)
    rest = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    a = ap.parse_args(argv)
    if a.action == "record":
        return _record(a.variants, rest)
    return _compile(a.variants)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BrokenPipeError:  # `| head` is not an error
        sys.stderr.close()
        raise SystemExit(0)
