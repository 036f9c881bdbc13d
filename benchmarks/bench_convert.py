"""Benchmark: peak memory and time of checkpoint conversion, streaming against in-memory.

``python benchmarks/bench_convert.py [--layers 22] [--hidden 2048] [--dtype bf16] [--out FILE]``
builds a sharded Llama checkpoint here (random weights in the shape of TinyLlama-1.1B by
default: hidden 2048, MLP 5632, 22 layers, vocab 32000, 4 KV heads: 1.1 B parameters, 2.2 GB of
bf16 in ~500 MB shards), then converts it in two fresh processes, one after the other:

1. **streaming**: ``fieldprint.artifact.quantize_checkpoint`` (each weight read from its shard,
   quantized and written to its place in model.safetensors, then dropped);
2. **in memory** (the previous path): ``load_hf_checkpoint`` (every weight as float32),
   ``spec.convert.quantize_model``, ``save_artifact``.

Each process reports its peak RSS (``VmHWM`` of /proc/self/status: ``ru_maxrss`` would carry over
the parent's resident size across fork and exec) and wall time; both artifacts must have the
same commitment (checked). Prints a rich table and writes
``benchmarks/results/convert-<date>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

_STREAM = """
from fieldprint.artifact import quantize_checkpoint
info = quantize_checkpoint(HF, OUT, "default", progress=False)
commitment = info.commitment.hex()
"""
_EAGER = """
from fieldprint.artifact import save_artifact
from fieldprint.hf import load_hf_checkpoint
from spec.convert import quantize_model
from spec.profiles import PROFILES
ck = load_hf_checkpoint(HF)
info = save_artifact(quantize_model(ck.config, ck.state, PROFILES["default"]), OUT, ck.tokenizer_path)
commitment = info.commitment.hex()
"""


def build_checkpoint(path: Path, *, layers: int, hidden: int, inter: int, vocab: int, heads: int, kv_heads: int,
                     dtype: str, shard_bytes: int) -> int:
    """Write a random Llama checkpoint (config, shards, index, tokenizer) one tensor at a time; return its bytes."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    path.mkdir(parents=True)
    d, kv = hidden // heads, kv_heads * (hidden // heads)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for n in range(layers):
        p = f"model.layers.{n}."
        shapes |= {p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                   p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                   p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                   p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                   p + "post_attention_layernorm.weight": (hidden,)}
    g = torch.Generator().manual_seed(0)
    tdtype = getattr(torch, DTYPES[dtype])
    shard, size, total, weight_map, k = {}, 0, 0, {}, 0

    def flush():
        nonlocal shard, size, k
        if shard:
            k += 1
            name = f"model-{k:05d}.safetensors"
            save_file(shard, str(path / name), metadata={"format": "pt"})
            weight_map.update({t: name for t in shard})
            shard, size = {}, 0

    for name, shape in shapes.items():
        t = (torch.randn(shape, generator=g) * (0.02 if len(shape) == 2 else 1.0) + (0 if len(shape) == 2 else 1.0))
        t = t.to(tdtype)
        if size and size + t.numel() * t.element_size() > shard_bytes:
            flush()
        shard[name] = t
        size += t.numel() * t.element_size()
        total += t.numel() * t.element_size()
    flush()
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": d, "max_position_embeddings": 2048, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": DTYPES[dtype]}))
    words = ["<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(997)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    return total


def run_mode(code: str, hf: Path, out: Path) -> dict:
    """Run one conversion in a fresh Python process; return its seconds, peak RSS and commitment."""
    script = (f"import json, sys, time\nsys.path.insert(0, {str(ROOT)!r})\n"
              f"HF, OUT = {str(hf)!r}, {str(out)!r}\nt0 = time.perf_counter()\n{code}\n"
              "hwm = next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:'))\n"
              "print(json.dumps({'seconds': round(time.perf_counter() - t0, 2), 'commitment': commitment, "
              "'peak_rss_bytes': hwm * 1024}))\n")
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--shard-mb", type=int, default=500)
    ap.add_argument("--skip-eager", action="store_true", help="measure the streaming path only")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch
    from rich.console import Console
    from rich.table import Table

    work = Path(tempfile.mkdtemp(prefix="fp-bench-convert-"))
    try:
        t0 = time.perf_counter()
        size = build_checkpoint(work / "hf", layers=args.layers, hidden=args.hidden, inter=args.inter, vocab=args.vocab,
                                heads=args.hidden // 64, kv_heads=4, dtype=args.dtype, shard_bytes=args.shard_mb << 20)
        build_seconds = round(time.perf_counter() - t0, 1)
        shards = len(list((work / "hf").glob("*.safetensors")))
        largest = max(args.vocab * args.hidden, args.inter * args.hidden) * (4 if args.dtype == "fp32" else 2)
        rows = {"streaming": run_mode(_STREAM, work / "hf", work / "stream")}
        shutil.rmtree(work / "stream")
        if not args.skip_eager:
            rows["in memory"] = run_mode(_EAGER, work / "hf", work / "eager")
            if rows["in memory"]["commitment"] != rows["streaming"]["commitment"]:
                raise SystemExit("the two conversions disagree: different commitments")
        result = {
            "benchmark": "convert", "date": date.today().isoformat(),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")},
            "checkpoint": {"shape": f"llama hidden {args.hidden}, MLP {args.inter}, {args.layers} layers, vocab "
                                    f"{args.vocab}", "dtype": args.dtype, "bytes": size, "shards": shards,
                           "largest_tensor_bytes": largest, "build_seconds": build_seconds},
            "rows": rows,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = Table(title=f"conversion of a {size / 2**30:.2f} GiB {args.dtype} checkpoint ({shards} shards; largest "
                        f"tensor {largest / 2**20:.0f} MiB)")
    for col in ("path", "seconds", "peak RSS", "peak RSS / checkpoint"):
        table.add_column(col, justify="right")
    for name, r in rows.items():
        table.add_row(name, f"{r['seconds']:.1f}", f"{r['peak_rss_bytes'] / 2**30:.2f} GiB",
                      f"{r['peak_rss_bytes'] / size:.2f}")
    Console().print(table)
    out = args.out or ROOT / "benchmarks" / "results" / f"convert-{result['date']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
