"""Benchmark: end-to-end decode speed and time to first token of the fast engine against float peers.

``python benchmarks/bench_e2e.py [--quick] [--shapes llama-3.2-1b,llama-3-8b] [--batches 1,8,64]
[--prompt 512] [--new-tokens 128,1024] [--profiles int8,default]`` prints a table and writes
``benchmarks/results/e2e-<gpu>-<date>.json`` (or ``--out``). Needs a CUDA device.

Models have random weights (speed does not depend on the values) and are built where they run:
the integer model by `fieldprint_fast.synthetic.random_model` directly on the GPU, the float
peers as bf16 modules of the same shape. Every cell is one (shape, batch, new tokens); greedy
decoding, prompts of ``--prompt`` random tokens, no early stop. In the same run:

* ``fieldprint``: `FastEngine` (``engine.generate``; decode rounds are captured CUDA graphs),
  per profile, ledger off; with ``--ledger`` also a `VerifyingSession` (signed ledger, commit
  every 8 tokens, device hashing) on the same request at batch 1 (the runtime writes one
  sequence per ledger). TTFT is the time until every sequence has its first token; decode rate
  is ``batch * (new - 1)`` tokens over the time from there to the last token; the ledger rows
  also give ``after_last_token_ms``, the final commit's validation and sealing.
* ``ceiling``: a bf16 Llama written here for decode: fused q/k/v and gate/up weights, a
  contiguous static KV cache, torch SDPA (GQA as ``H / G`` queries per KV head), the whole
  decode step captured in one CUDA graph and replayed back to back: what a careful PyTorch user
  gets without custom kernels.
* ``transformers``: ``LlamaForCausalLM`` bf16 ``generate`` with its static cache (eager, SDPA);
  decode rate from ``generate`` of ``--peer-tokens`` and of 1 new token.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def _sync():
    torch.cuda.synchronize()


# %%
# The float ceiling
# -----------------

class FloatLlama:
    """A bf16 Llama decode with a contiguous static cache and a CUDA-graph decode step."""

    def __init__(self, cfg, batch: int, max_len: int, seed: int = 0):
        dev = "cuda"
        g = torch.Generator(device=dev).manual_seed(seed)
        bf = torch.bfloat16
        h, d, nh, nk, inter = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size

        def w(o, i):
            return (torch.randn(o, i, generator=g, device=dev, dtype=torch.float32) / math.sqrt(i)).to(bf)

        self.cfg, self.batch, self.max_len = cfg, batch, max_len
        self.embed = w(cfg.vocab_size, h)
        self.lm = self.embed if cfg.tie_embeddings else w(cfg.vocab_size, h)
        self.layers = [dict(qkv=w((nh + 2 * nk) * d, h), o=w(h, nh * d), gu=w(2 * inter, h), down=w(h, inter),
                            n1=torch.ones(h, device=dev, dtype=bf), n2=torch.ones(h, device=dev, dtype=bf))
                       for _ in range(cfg.num_layers)]
        self.norm = torch.ones(h, device=dev, dtype=bf)
        self.k = torch.zeros(cfg.num_layers, batch, nk, max_len, d, device=dev, dtype=bf)
        self.v = torch.zeros_like(self.k)
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
        ang = torch.arange(max_len, device=dev, dtype=torch.float32)[:, None] * inv[None, :]
        self.cos, self.sin = ang.cos().to(bf), ang.sin().to(bf)
        self.tokens = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.pos = torch.zeros(1, dtype=torch.int64, device=dev)
        self.graph = None

    @staticmethod
    def _rms(x, g):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * g

    def _rope(self, x, pos):  # x [B, heads, T, d], pos [T]
        c, s = self.cos[pos][None, None], self.sin[pos][None, None]
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

    def forward(self, tokens, pos, prefill: bool):
        """tokens [B, T] at positions pos [T]; returns the greedy next tokens [B]."""
        cfg = self.cfg
        b, t = tokens.shape
        nh, nk, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        grp = nh // nk
        x = self.embed[tokens]
        mask = None if prefill else (torch.arange(self.max_len, device=x.device) <= pos[-1])[None, None, None, :]
        for n, L in enumerate(self.layers):
            qkv = self._rms(x, L["n1"]) @ L["qkv"].T
            q, k, v = qkv.split([nh * d, nk * d, nk * d], dim=-1)
            q = self._rope(q.view(b, t, nh, d).transpose(1, 2), pos)
            k = self._rope(k.view(b, t, nk, d).transpose(1, 2), pos)
            v = v.view(b, t, nk, d).transpose(1, 2)
            self.k[n].index_copy_(2, pos, k)
            self.v[n].index_copy_(2, pos, v)
            if prefill:
                a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                a = a.transpose(1, 2).reshape(b, t, nh * d)
            else:  # GQA decode: the H / G query heads of a KV head as its queries
                qg = q.reshape(b, nk, grp, d)
                a = torch.nn.functional.scaled_dot_product_attention(qg, self.k[n], self.v[n], attn_mask=mask)
                a = a.reshape(b, 1, nh * d)
            x = x + a @ L["o"].T
            gu = self._rms(x, L["n2"]) @ L["gu"].T
            gt, up = gu.chunk(2, dim=-1)
            x = x + (torch.nn.functional.silu(gt) * up) @ L["down"].T
        logits = self._rms(x[:, -1], self.norm) @ self.lm.T
        return logits.argmax(-1)

    def capture(self):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                self.out = self.forward(self.tokens[:, None], self.pos, prefill=False)
        torch.cuda.current_stream().wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self.forward(self.tokens[:, None], self.pos, prefill=False)

    def run(self, prompt: torch.Tensor, new: int) -> tuple[float, float]:
        """Return (TTFT s, decode s for new - 1 tokens)."""
        _sync()
        t0 = time.perf_counter()
        first = self.forward(prompt, torch.arange(prompt.shape[1], device="cuda"), prefill=True)
        _sync()
        t1 = time.perf_counter()
        self.tokens.copy_(first)
        for i in range(new - 1):
            self.pos.fill_(prompt.shape[1] + i)
            self.graph.replay()
            self.tokens.copy_(self.out)
        _sync()
        return t1 - t0, time.perf_counter() - t1


def bench_ceiling(cfg, batch, prompt_len, new, runs):
    m = FloatLlama(cfg, batch, prompt_len + new)
    m.capture()
    prompt = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device="cuda")
    m.run(prompt, min(new, 8))  # warm-up
    res = [m.run(prompt, new) for _ in range(runs)]
    del m
    torch.cuda.empty_cache()
    return _row("ceiling", "bf16", batch, new, res)


# %%
# transformers
# ------------

def bench_transformers(cfg, batch, prompt_len, new, runs):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                     num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                     num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rope_theta=cfg.rope_theta,
                     max_position_embeddings=cfg.max_position, tie_word_embeddings=cfg.tie_embeddings)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(hf, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    prompt = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device="cuda")
    kw = dict(do_sample=False, cache_implementation="static", eos_token_id=None, pad_token_id=0)

    def gen(n):
        _sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kw)
        _sync()
        return time.perf_counter() - t0

    gen(new)  # warm-up: the static cache's first generate compiles (it took 20 s inside the timed window once)
    gen(1)
    res = []
    for _ in range(runs):
        one, full = gen(1), gen(new)
        res.append((one, full - one))
    del model
    torch.cuda.empty_cache()
    return _row("transformers", "bf16", batch, new, res)


# %%
# Fieldprint
# ----------

def bench_fieldprint(model, batch, prompt_len, new, runs, chunk):
    from fieldprint_fast.engine import FastEngine

    pages = batch * (-(-(prompt_len + new) // 16) + 1) + 8
    eng = FastEngine(model, device="cuda", num_pages=pages, keep_logits=False)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, model.config.vocab_size, (prompt_len,), generator=g).tolist() for _ in range(batch)]

    def once(n):
        stamps = []
        _sync()
        t0 = time.perf_counter()
        eng.generate(prompts, max_new_tokens=n, chunk_size=chunk, on_step=lambda i, r: stamps.append((r.step, time.perf_counter())))
        _sync()
        end = time.perf_counter()
        first = max(t for s, t in stamps if s == 0)
        return first - t0, end - first

    once(min(new, 40))  # warm-up: compiles the kernels
    eng.prepare_decode(batch, prompt_len + new)  # captures the graphs of every block-table width used
    res = [once(new) for _ in range(runs)]
    del eng
    torch.cuda.empty_cache()
    return _row("fieldprint", model.profile.name, batch, new, res)


def bench_ledger(model, prompt_len, new, runs):
    """Batch 1 with and without the signed ledger, alternating (same request)."""
    from fieldprint.runtime.session import VerifyingSession
    from fieldprint_fast.engine import FastEngine
    from spec.commits import make_policy
    from spec.keys import SigningKey

    eng = FastEngine(model, device="cuda", num_pages=-(-(prompt_len + new) // 16) + 64, keep_logits=False)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, model.config.vocab_size, (prompt_len,), generator=g).tolist()
    key = SigningKey("bench.example/e2e", b"\x07" * 32)
    out = {"off": [], "on": []}

    def plain():
        stamps = []
        _sync()
        t0 = time.perf_counter()
        eng.generate(prompt, max_new_tokens=new, on_step=lambda i, r: stamps.append(time.perf_counter()))
        _sync()
        return stamps[0] - t0, stamps[-1] - stamps[0], time.perf_counter() - stamps[-1]

    def ledger(path):
        stamps = []
        _sync()
        t0 = time.perf_counter()
        VerifyingSession(eng, key=key, ledger_path=path, policy=make_policy(8), max_new_tokens=new,
                         model_commitment=b"\0" * 32, on_step=lambda *a: stamps.append(time.perf_counter())).run(prompt)
        _sync()
        return stamps[0] - t0, stamps[-1] - stamps[0], time.perf_counter() - stamps[-1]

    eng.prepare_decode(1, prompt_len + new)
    with tempfile.TemporaryDirectory() as tmp:
        ledger(f"{tmp}/warm.fpl")
        plain()
        for i in range(runs):
            out["off"].append(plain())
            out["on"].append(ledger(f"{tmp}/run{i}.fpl"))
    del eng
    torch.cuda.empty_cache()
    return _row("fieldprint", model.profile.name, 1, new, out["off"]), _row("fieldprint+ledger", model.profile.name, 1,
                                                                           new, out["on"])


def _row(engine, profile, batch, new, res):
    """A table row from runs of (TTFT s, decode s for new - 1 tokens[, s after the last token
    until the call returned: the ledger's final validation and sealing])."""
    ttft = statistics.median(r[0] for r in res)
    dec = statistics.median(r[1] for r in res)
    row = dict(engine=engine, profile=profile, batch=batch, new_tokens=new, ttft_ms=round(ttft * 1e3, 2),
               decode_tokens_per_s=round(batch * (new - 1) / dec, 1), step_ms=round(dec / (new - 1) * 1e3, 3))
    if len(res[0]) > 2:
        row["after_last_token_ms"] = round(statistics.median(r[2] for r in res) * 1e3, 2)
    return row


# %%
# Driver
# ------

def save(path, a, gpu, rows, skipped):
    """Write the JSON (after every cell, so that a run cut short keeps what it measured)."""
    done = [r for r in rows if "error" not in r]  # a failed cell has no numbers to compare
    for r in done:
        if r["engine"].startswith("fieldprint"):
            for peer in ("ceiling", "transformers"):
                p = [q for q in done if q["engine"] == peer and q["shape"] == r["shape"] and q["batch"] == r["batch"]
                     and (peer == "transformers" or q["new_tokens"] == r["new_tokens"])]
                if p:
                    r[f"vs_{peer}"] = round(r["decode_tokens_per_s"] / p[0]["decode_tokens_per_s"], 3)
    out = dict(
        what="end-to-end decode tokens/s and TTFT: fieldprint fast engine vs bf16 CUDA-graph ceiling and transformers",
        date=date.today().isoformat(), machine=f"{gpu}, torch {torch.__version__}, Python {platform.python_version()}",
        command="python benchmarks/bench_e2e.py " + " ".join(sys.argv[1:]),
        prompt_tokens=a.prompt, rows=[r for r in rows if "error" not in r], errors=[r for r in rows if "error" in r],
        skipped_for_time=skipped, plot={"table": "rows", "metrics": ["decode_tokens_per_s", "ttft_ms"]},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1B shape, 128 new tokens, 1 run")
    ap.add_argument("--shapes", default="llama-3.2-1b,llama-3-8b")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new-tokens", default="128,1024")
    ap.add_argument("--profiles", default="int8,default")
    ap.add_argument("--peers", default="ceiling,transformers")
    ap.add_argument("--peer-tokens", type=int, default=64, help="new tokens of a transformers run")
    ap.add_argument("--ledger", action="store_true", help="also batch 1 with the ledger on")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=0, help="start no new cell after this many seconds")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_e2e: needs a CUDA device", file=sys.stderr)
        return 2
    from fieldprint_fast.synthetic import random_model, shape_config

    if a.quick:
        a.shapes, a.new_tokens, a.runs = "llama-3.2-1b", "128", 1
    shapes = a.shapes.split(",")
    batches = [int(b) for b in a.batches.split(",")]
    news = [int(n) for n in a.new_tokens.split(",")]
    peers = [p for p in a.peers.split(",") if p]
    rows = []
    gpu = torch.cuda.get_device_name()

    def emit(r, shape):
        r = dict(shape=shape) | r
        rows.append(r)
        print(f"{shape:13} {r['engine']:18} {r['profile']:8} B={r['batch']:<3} new={r['new_tokens']:<5} "
              f"TTFT {r['ttft_ms']:9.1f} ms  decode {r['decode_tokens_per_s']:10.1f} tok/s  step {r['step_ms']:8.3f} ms",
              flush=True)

    t_start = time.perf_counter()
    path = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"e2e-{gpu.replace(' ', '_')}-{date.today()}.json"
    skipped = []

    def task(what, fn, shape):
        """Run one measurement unless the time budget is spent; a failure is recorded, not fatal."""
        if a.budget_s and time.perf_counter() - t_start > a.budget_s:
            skipped.append(f"{shape} {what}")
            return
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - the other cells still run; the JSON says what failed
            print(f"{shape} {what}: FAILED {type(e).__name__}: {e}", flush=True)
            rows.append(dict(shape=shape, engine=what, error=f"{type(e).__name__}: {e}"))
            torch.cuda.empty_cache()
            return
        for r in out if isinstance(out, tuple) else (out,):
            emit(r, shape)
        save(path, a, gpu, rows, skipped)

    models = {}

    def model_of(cfg, prof):
        if (cfg, prof) not in models:
            models.clear()
            torch.cuda.empty_cache()
            models[(cfg, prof)] = random_model(cfg, prof, device="cuda", seed=0)
        return models[(cfg, prof)]

    profiles = a.profiles.split(",")
    for shape in shapes:  # in order of importance: a budget cut drops the least important cells
        cfg = shape_config(shape, max_position=max(4096, a.prompt + max(news) + 16))
        plan = []
        for i, prof in enumerate(profiles):
            for b in batches:
                for n in news:
                    plan.append((f"fieldprint {prof} B={b} new={n}", lambda c=cfg, p=prof, b=b, n=n: bench_fieldprint(
                        model_of(c, p), b, a.prompt, n, a.runs, max(16, 4096 // b))))
            if i == 0:
                for b in batches:
                    for n in news:
                        if "ceiling" in peers:
                            plan.append((f"ceiling B={b} new={n}", lambda c=cfg, b=b, n=n: bench_ceiling(c, b, a.prompt, n, a.runs)))
                    if "transformers" in peers:
                        plan.append((f"transformers B={b}", lambda c=cfg, b=b: bench_transformers(
                            c, b, a.prompt, min(a.peer_tokens, max(news)), 1)))
            if a.ledger:
                plan.append((f"ledger {prof}", lambda c=cfg, p=prof: bench_ledger(model_of(c, p), a.prompt, min(news), a.runs)))
        for what, fn in plan:
            task(what, fn, shape)
        models.clear()
        torch.cuda.empty_cache()
    save(path, a, gpu, rows, skipped)  # with the ratios against the peers of the same cell
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
