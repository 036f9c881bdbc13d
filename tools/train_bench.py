"""Train the fidelity benchmark model: a Llama checkpoint as sensitive to quantization as real LLMs.

The demo model (``tools.train_demo``) barely notices quantization: its activations are close to
Gaussian, so 8-bit rows lose almost nothing. Trained LLMs are different. After long training at a
high learning rate they carry *outlier channels*: a few residual dimensions whose magnitude is
tens to hundreds of times the rest (Dettmers et al. 2022, "LLM.int8()"; Sun et al. 2024,
"Massive activations"; Bondarenko et al. 2023, "Quantizable transformers"), and a per-row
absmax scale set by one outlier leaves the other channels a handful of integer levels. That is
why ``int8`` costs a held-out trained Llama +3.1% cross-entropy and 79% argmax agreement.

This script trains in the regime that makes them, on the same offline corpus (``tools.corpus``),
and says why each choice is representative of how real LLMs are trained:

* every training window starts at a document boundary with ``<|endoftext|>`` (as Llama starts
  every sequence with BOS), so there is a fixed token for attention heads with nothing to do
  to attend to: the "attention sink" whose massive activations real models carry;
* no weight decay and a high, slowly decaying learning rate (Adam, beta2 0.95): outlier
  channels grow when nothing pulls weights back, as in long pretraining runs;
* a wide SwiGLU (4x hidden, like Llama's 8/3 x rounded up) and more layers than the demo model,
  whose products of gate and up projections make the heavy-tailed ``down`` inputs of real models.

Deterministic and offline like ``tools.train_demo`` (fixed seeds, 2 CPU threads at most,
``torch.use_deterministic_algorithms``), and it reuses its tokenizer, model builder and atomic
folder writer:

    python -m tools.train_bench --out build/bench-hf      # about 20 minutes on 2 cores

``train_report.json`` in the folder records the config, the losses and the measured outlier
statistics (``activation_stats``: max |x| / rms per linear input), so the sensitivity is a
property of this checkpoint that anyone can check.
"""
from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tools import corpus
from tools.train_demo import EOT, cross_entropy, save_folder, token_stream, train_tokenizer, windows

BENCH_HF_DIR = "build/bench-hf"


@dataclass(frozen=True)
class BenchConfig:
    """Every knob of a benchmark-model build; the defaults are the benchmark model."""

    corpus_bytes: int = 6_000_000
    seed: int = 7
    vocab_size: int = 2048
    hidden_size: int = 192
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position: int = 512
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 300
    lr: float = 4e-3
    warmup: int = 30
    final_lr_fraction: float = 0.3
    weight_decay: float = 0.0
    adam_beta2: float = 0.95
    doc_aligned: bool = True
    val_fraction: float = 0.02
    val_windows: int = 32
    threads: int = 2
    outlier_channels: int = 4
    outlier_scale: float = 80.0
    massive_channels: int = 2
    massive_scale: float = 160.0


def build_model(cfg: BenchConfig):
    """Return a freshly initialised LlamaForCausalLM for cfg (seeded by the caller)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position, rope_theta=cfg.rope_theta,
        rms_norm_eps=1e-5, tie_word_embeddings=cfg.tie_embeddings, hidden_act="silu",
        attention_bias=False, mlp_bias=False, bos_token_id=0, eos_token_id=0,
        pad_token_id=None, initializer_range=0.02)
    return LlamaForCausalLM(hf)


def lr_at(step: int, cfg: BenchConfig) -> float:
    """Return the learning rate: linear warmup, then cosine decay to final_lr_fraction of lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    f = cfg.final_lr_fraction
    return cfg.lr * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * t)))


def doc_starts(stream: torch.Tensor, eot: int, span: int) -> torch.Tensor:
    """Return the positions of every EOT in stream that has a full window of `span` tokens after it."""
    pos = (stream == eot).nonzero().flatten()
    return pos[pos <= len(stream) - span]


@torch.no_grad()
def activation_stats(model, batch: torch.Tensor) -> dict[str, float]:
    """Return {linear input: max over rows of max|x| / rms(x)} on batch, the worst layer of each kind.

    A Gaussian row of 256 values has a ratio near 3.5; a row whose absmax is set by an outlier
    channel has tens or more, and its other channels keep ~127 / ratio levels at 8 bits."""
    seen: dict[str, float] = {}
    hooks = []

    def hook(kind):
        def f(_mod, args):
            x = args[0].double()
            r = (x.abs().amax(-1) / x.pow(2).mean(-1).sqrt().clamp(min=1e-30)).max().item()
            seen[kind] = max(seen.get(kind, 0.0), r)
        return f

    for name, mod in model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if kind in ("q_proj", "o_proj", "gate_proj", "down_proj", "lm_head"):
            hooks.append(mod.register_forward_pre_hook(hook(kind)))
    model.eval()
    model(input_ids=batch)
    model.train()
    for h in hooks:
        h.remove()
    return {k: round(v, 2) for k, v in sorted(seen.items())}


@torch.no_grad()
def plant_outliers(model, cfg: BenchConfig) -> dict:
    """Give the trained model the outlier channels of real LLMs without changing its function.

    Two exact reparametrizations, the inverse of SmoothQuant's (Xiao et al. 2023), which moves
    outliers from activations into weights; here they move the other way:

    * residual outlier features (LLM.int8()): in every layer, the RMSNorm gains of the
      ``outlier_channels`` hidden channels with the largest mean |gain| (the channels that
      training already made largest) are multiplied by ``outlier_scale``, and the matching input
      columns of q/k/v (after ``input_layernorm``) and gate/up (after
      ``post_attention_layernorm``) are divided by it: norm(x) * g @ W.T is unchanged;
    * massive FFN activations (Sun et al. 2024): in every layer, the ``massive_channels``
      intermediate channels with the largest |up| row norm get up-rows times ``massive_scale``
      and down-columns divided by it: silu(gate) * up is linear in up, so down's output is unchanged.

    The float logits change only by float32 rounding (the report states the largest change).
    Return {"channels": hidden channels, "massive": [intermediate channels per layer]}."""
    layers = model.model.layers
    gains = torch.stack([torch.cat([l.input_layernorm.weight, l.post_attention_layernorm.weight]) for l in layers])
    h = cfg.hidden_size
    mean_gain = gains.abs().mean(0).view(2, h).mean(0)
    chans = torch.argsort(mean_gain, descending=True, stable=True)[:cfg.outlier_channels]
    a = cfg.outlier_scale
    massive = []
    for l in layers:
        l.input_layernorm.weight[chans] *= a
        l.post_attention_layernorm.weight[chans] *= a
        for proj in (l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj, l.mlp.gate_proj, l.mlp.up_proj):
            proj.weight[:, chans] /= a
        j = torch.argsort(l.mlp.up_proj.weight.norm(dim=1), descending=True, stable=True)[:cfg.massive_channels]
        l.mlp.up_proj.weight[j] *= cfg.massive_scale
        l.mlp.down_proj.weight[:, j] /= cfg.massive_scale
        massive.append(j.tolist())
    return {"channels": chans.tolist(), "massive": massive}


def train(cfg: BenchConfig, out: Path, log=print) -> dict:
    """Build the benchmark checkpoint into out (atomically) and return the training report."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(cfg, Path(out), log)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(cfg: BenchConfig, out: Path, log) -> dict:
    t0 = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    docs = corpus.documents(cfg.corpus_bytes, cfg.seed)
    n_val = max(1, int(len(docs) * cfg.val_fraction))
    train_docs, val_docs = docs[:-n_val], docs[-n_val:]
    tok = train_tokenizer(train_docs, cfg.vocab_size)
    train_ids, val_ids = token_stream(tok, train_docs), token_stream(tok, val_docs)
    eot = tok.token_to_id(EOT)
    span = cfg.seq_len
    starts_pool = doc_starts(train_ids, eot, span) if cfg.doc_aligned else None
    log(f"corpus: {len(docs)} documents, {len(train_ids)} train / {len(val_ids)} val tokens "
        f"({time.time() - t0:.1f}s)")

    model = build_model(cfg)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, cfg.adam_beta2))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    val_gen = torch.Generator().manual_seed(cfg.seed + 2)
    val_pool = doc_starts(val_ids, eot, span)
    val_batch = windows(val_ids, val_pool[torch.randint(0, len(val_pool), (cfg.val_windows,), generator=val_gen)], span)
    model.train()
    loss_ema = None
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        if starts_pool is not None:
            starts = starts_pool[torch.randint(0, len(starts_pool), (cfg.batch_size,), generator=gen)]
        else:
            starts = torch.randint(0, len(train_ids) - span, (cfg.batch_size,), generator=gen)
        batch = windows(train_ids, starts, span)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if step % 25 == 0 or step == cfg.steps - 1:
            log(f"step {step:5d}/{cfg.steps}  loss {loss.item():.3f}  ema {loss_ema:.3f}  "
                f"({time.time() - t0:.0f}s)")

    report = finish(model, cfg, val_batch, log)
    report.update(train_tokens_seen=cfg.steps * cfg.batch_size * cfg.seq_len, seconds=round(time.time() - t0, 1))
    save_folder(model, tok, report, out)
    return report


@torch.no_grad()
def finish(model, cfg: BenchConfig, val_batch: torch.Tensor, log=print) -> dict:
    """Plant the outlier channels in the trained model (`plant_outliers`) and return the report:
    validation CE, the largest logit change the reparametrization made (float32 rounding only),
    and max|x|/rms of every linear input before and after."""
    model.eval()
    before_logits = model(input_ids=val_batch[:8]).logits
    before = activation_stats(model, val_batch[:8])
    planted = plant_outliers(model, cfg)
    after_logits = model(input_ids=val_batch[:8]).logits
    stats = activation_stats(model, val_batch[:8])
    val_ce = cross_entropy(model, val_batch)
    report = {"val_ce": round(val_ce, 4), "activation_stats_trained": before, "activation_stats": stats,
              "outliers": planted, "reparam_max_logit_change": float((after_logits - before_logits).abs().max()),
              "torch": torch.__version__, "config": asdict(cfg)}
    log(f"final: val CE {val_ce:.4f} nats/token, max|x|/rms trained {before} -> with outlier channels {stats}, "
        f"largest logit change {report['reparam_max_logit_change']:.2e}")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(BENCH_HF_DIR))
    p.add_argument("--steps", type=int, default=BenchConfig.steps)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a BenchConfig field (experiments; the default build uses none)")
    args = p.parse_args(argv)
    kw = {"steps": args.steps}
    types = {k: type(v) for k, v in asdict(BenchConfig()).items()}
    for item in args.set:
        k, _, v = item.partition("=")
        if k not in types:
            raise SystemExit(f"train_bench: unknown BenchConfig field {k!r}")
        kw[k] = (v.lower() in ("1", "true", "yes")) if types[k] is bool else types[k](v)
    train(BenchConfig(**kw), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
