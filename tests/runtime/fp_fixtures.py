"""Shared by tests/runtime and tests/auditor: a tiny model artifact, a key, real ledgers.

The model is a random Llama of 1 layer (or ``layers``; vocab 64, hidden 32) quantized through
``spec.convert.quantize_model`` and saved with ``fieldprint.artifact.save_artifact`` next to a
64-word WordLevel tokenizer ("w0" .. "w63"); tiny so the CPU reference engine replays a
24-token ledger in about a second.
"""
from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import torch

PROMPT = list(range(1, 20))  # 19 prompt tokens: one full page and a partial one
ANCHORS = list(range(40, 60))  # 20 anchor tokens: two anchor pages
KEY_NAME = "engine.test.example/fieldprint"


def _tokenizer_file(path: Path, vocab: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    out = path / "tokenizer.json"
    tok.save(str(out))
    return out


def quantized_tiny(seed: int = 0, vocab: int = 64, layers: int = 1):
    from transformers import LlamaConfig, LlamaForCausalLM

    from spec.convert import quantize_model
    from spec.model import ModelConfig
    from spec.profiles import PROFILES

    hf = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                     rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.15)
    torch.manual_seed(seed)
    state = {k: v.detach().float().clone() for k, v in LlamaForCausalLM(hf).state_dict().items()}
    config = ModelConfig(arch="llama", vocab_size=vocab, hidden_size=32, intermediate_size=64, num_layers=layers,
                         num_heads=2, num_kv_heads=1, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5,
                         max_position=128, tie_embeddings=False, qkv_bias=False)
    return quantize_model(config, state, PROFILES["default"])


@functools.lru_cache(maxsize=None)
def artifact_dir(seed: int = 0, layers: int = 1) -> str:
    """Build (once per process) and return the folder of the tiny artifact for ``seed``."""
    from fieldprint.artifact import save_artifact

    root = Path(tempfile.mkdtemp(prefix=f"fp-tiny-{seed}-{layers}-"))
    tok = _tokenizer_file(root, 64)
    save_artifact(quantized_tiny(seed, layers=layers), root / "artifact", tok)
    return str(root / "artifact")


@functools.lru_cache(maxsize=None)
def artifact(seed: int = 0, layers: int = 1):
    from fieldprint.artifact import load_artifact

    return load_artifact(artifact_dir(seed, layers))


@functools.lru_cache(maxsize=None)
def key(name: str = KEY_NAME):
    from spec.keys import SigningKey

    seed = {KEY_NAME: b"\x11" * 32}.get(name, b"\x22" * 32)
    return SigningKey(name, seed)


def engine(art=None, **kw):
    from fieldprint_ref.engine import RefEngine

    art = art or artifact()
    kw.setdefault("num_pages", 48)
    return RefEngine(art.model, tokenizer=art.tokenizer, **kw)


def generate(path, *, anchors=ANCHORS, prompt=PROMPT, seed_model: int = 0, layers: int = 1, signing_key=None, **kw):
    """Run a VerifyingSession with the tiny artifact; return its SessionResult."""
    from spec.commits import make_policy
    from fieldprint.runtime.session import VerifyingSession
    from spec.sampling import SamplingParams

    art = artifact(seed_model, layers)
    eng = engine(art)
    if anchors:
        eng.set_anchors(list(anchors))
    kw.setdefault("policy", make_policy(4))
    kw.setdefault("sampling", SamplingParams(temperature="4/5", seed=7))
    kw.setdefault("max_new_tokens", 16)
    kw.setdefault("nonce", b"\x07" * 32)
    kw.setdefault("fsync", "none")
    s = VerifyingSession(eng, key=signing_key or key(), ledger_path=path, model_commitment=art.commitment, **kw)
    out = s.run(list(prompt))
    eng.check_pages()
    return out


def verify(path, **kw):
    from auditor.verify import verify_ledger

    kw.setdefault("model", artifact())
    kw.setdefault("trusted_key", key().verifier)
    return verify_ledger(path, **kw)


def reference_tokens(prompt, schedule, *, anchors=ANCHORS, max_new_tokens=16, sampling=None, window=None):
    """Tokens of a fault-free run whose RNG attempt becomes ``a`` from step ``s`` on for each
    ``(s, a)`` in ``schedule`` (the attempt rule the runtime follows after a rollback)."""
    from spec.sampling import SamplingParams

    eng = engine()
    if anchors:
        eng.set_anchors(list(anchors))
    h = eng.add_sequence(list(prompt), sampling=sampling or SamplingParams(temperature="4/5", seed=7),
                         max_new_tokens=max_new_tokens, sequence=0, window=window)
    sched = dict(schedule)
    tokens = []
    while eng.finish_reason(h) is None:
        if len(tokens) in sched:
            eng.set_attempt(h, sched[len(tokens)])
        for _, rec in eng.step([h]):
            tokens.append(rec.token)
    return tokens
