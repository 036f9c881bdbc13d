"""Train the embedded demo model: a small Llama-family checkpoint built offline from our own text.

The demo model lets the Quickstart run without downloading anything. Everything is derived from
fixed seeds, so two builds on the same software stack produce the same checkpoint:

1. ``tools.corpus`` writes a few MB of English-like text (stories, dialogue, sums, lists);
2. a byte-level BPE tokenizer (``tokenizers``) is trained on it, vocabulary ``VOCAB_SIZE``;
3. a ``transformers.LlamaForCausalLM`` (4 layers, hidden 256, 4 heads, 2 KV heads: GQA) is
   trained on CPU with 2 threads and ``torch.use_deterministic_algorithms(True)``;
4. the Hugging Face folder (config.json, model.safetensors, tokenizer.json, train_report.json)
   is written to a temporary directory next to the output and renamed into place, so a
   half-written checkpoint never exists.

    python -m tools.train_demo --out build/demo-hf          # about 3 minutes on 2 cores

Documents are separated by the ``<|endoftext|>`` token (id 0), which is also BOS/EOS: the
tokenizer prepends it when special tokens are added, so a prompt looks like a document start.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tools import corpus

EOT = "<|endoftext|>"


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a demo build; the defaults are the shipped demo model."""

    corpus_bytes: int = 4_000_000
    seed: int = 0
    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position: int = 512
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 420
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.1
    val_fraction: float = 0.02
    val_windows: int = 32
    threads: int = 2


def train_tokenizer(docs: list[str], vocab_size: int):
    """Return a byte-level BPE tokenizer trained on docs, with EOT as token 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs, trainer=trainer)
    # Like a Llama BOS: encode(text) starts with EOT, as every training document does.
    tok.post_processor = processors.TemplateProcessing(single=f"{EOT} $A", special_tokens=[(EOT, 0)])
    return tok


def token_stream(tok, docs: list[str]) -> torch.Tensor:
    """Return all documents as one int64 stream, each document preceded by EOT."""
    eot = tok.token_to_id(EOT)
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.append(eot)
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.int64)


def build_model(cfg: TrainConfig):
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


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Return the learning rate: linear warmup, then cosine decay to 10%."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def windows(stream: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """Return stream[s : s + length] for every s in starts, stacked."""
    idx = starts[:, None] + torch.arange(length)[None, :]
    return stream[idx]


@torch.no_grad()
def cross_entropy(model, batch: torch.Tensor) -> float:
    """Return the mean next-token cross-entropy (nats) of model on batch."""
    model.eval()
    loss = model(input_ids=batch, labels=batch).loss.item()
    model.train()
    return loss


def train(cfg: TrainConfig, out: Path, log=print, on_step=None) -> dict:
    """Build the demo checkpoint into out (atomically) and return the training report.

    log(text) receives progress lines; on_step(step, steps, loss), if given, is called after
    every optimizer step (fieldprint.demo drives a progress bar with it).
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(cfg, Path(out), log, on_step)
    finally:  # leave the process as we found it (tests train in-process)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(cfg: TrainConfig, out: Path, log, on_step) -> dict:
    t0 = time.time()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    docs = corpus.documents(cfg.corpus_bytes, cfg.seed)
    n_val = max(1, int(len(docs) * cfg.val_fraction))
    train_docs, val_docs = docs[:-n_val], docs[-n_val:]
    tok = train_tokenizer(train_docs, cfg.vocab_size)
    train_ids, val_ids = token_stream(tok, train_docs), token_stream(tok, val_docs)
    log(f"corpus: {len(docs)} documents, {len(train_ids)} train / {len(val_ids)} val tokens "
        f"({time.time() - t0:.1f}s)")

    model = build_model(cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    val_gen = torch.Generator().manual_seed(cfg.seed + 2)
    span = cfg.seq_len + 0  # labels are shifted inside the model
    val_batch = windows(val_ids, torch.randint(0, len(val_ids) - span, (cfg.val_windows,),
                                               generator=val_gen), span)
    model.train()
    loss_ema = None
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        starts = torch.randint(0, len(train_ids) - span, (cfg.batch_size,), generator=gen)
        batch = windows(train_ids, starts, span)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if on_step is not None:
            on_step(step + 1, cfg.steps, loss.item())
        if step % 50 == 0 or step == cfg.steps - 1:
            log(f"step {step:4d}/{cfg.steps}  loss {loss.item():.3f}  ema {loss_ema:.3f}  "
                f"({time.time() - t0:.0f}s)")

    train_ce = cross_entropy(model, windows(train_ids, torch.randint(
        0, len(train_ids) - span, (cfg.val_windows,), generator=val_gen), span))
    val_ce = cross_entropy(model, val_batch)
    report = {"train_ce": round(train_ce, 4), "val_ce": round(val_ce, 4),
              "train_tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len,
              "seconds": round(time.time() - t0, 1), "torch": torch.__version__,
              "config": asdict(cfg)}
    log(f"final: train CE {train_ce:.4f}, val CE {val_ce:.4f} nats/token ({report['seconds']}s)")
    save_folder(model, tok, report, out)
    return report


def save_folder(model, tok, report: dict, out: Path) -> None:
    """Write the HF folder to a temporary sibling of out, then rename it into place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT,
             "model_max_length": model.config.max_position_embeddings}, indent=2) + "\n")
        (tmp / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)  # mkdtemp makes it private; the checkpoint is an ordinary folder
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("build/demo-hf"))
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    args = p.parse_args(argv)
    train(TrainConfig(steps=args.steps, seed=args.seed), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
