"""A stand-in engine for measuring the runtime's cost without a GPU: a forward that sleeps.

A GPU decode step spends most of its time with the engine thread blocked in a device sync,
the GIL released; what the verifying runtime adds shows up as work on the engine thread
between steps, and as GIL or lock contention that delays the thread when its sync returns.
`SleepEngine` reproduces that on the CPU: it is `fieldprint_ref.engine.RefEngine` (the real
paging, copy-on-write forks, eviction and records of the Engine contract) over a fake ``ops``
whose ``forward`` writes cheap deterministic K/V bytes into the real pool and then blocks in
``time.sleep`` for ``step_ms`` (GIL released, like ``cudaStreamSynchronize``). Each record
carries its ``logits_digest``, as the fast engine's do (hashed on the device there, on the
engine thread here: the same cost with or without a ledger).

Bytes are a function of (token, position, layer) only, so a recomputation (``add_anchors``, a
scratch prefill: the runtime's repair after a rollback) rewrites exactly what was there, and the
runtime's re-hash and validation hash real pages of the model's shape: ``SleepEngine.llama_1b()``
has the page of Llama-3.2-1B (16 layers, 8 KV heads, head_dim 64: 272 KiB a page).

Not an engine for generating text: its logits are a hash-like function of the last token.
"""
from __future__ import annotations

import time
import types

import torch

import fieldprint_ref.ops as ref_ops
from fieldprint_ref.engine import RefEngine
from spec.commits import logits_digest as row_digest
from spec.model import ModelConfig
from spec.profiles import PROFILES

# %%
# The fake ops: ``fieldprint_ref.ops`` with forward and sample replaced.


def _fake_ops(step_ms: float, prefill_ms: float, vocab: int, row_shape, hook, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(-128, 128, (row_shape[0], 2, *row_shape[1:]), dtype=torch.int16, generator=g)
    lbase = torch.randint(-(1 << 20), 1 << 20, (vocab,), dtype=torch.int64, generator=g)

    def forward(model, pool, chunks):
        out = []
        for c in chunks:
            pos = torch.arange(c.start, c.start + len(c.tokens))
            mix = (c.tokens.cpu().to(torch.int16) * 7 + pos.to(torch.int16) * 13)  # [n]
            rows = ((base[None] + mix.view(-1, 1, 1, 1, 1)) & 255) - 128  # [n, L, 2, H, D]
            table = c.block_table.cpu()
            pages = table[pos // ref_ops.PAGE_TOKENS]
            pool.data[pages, :, :, pos % ref_ops.PAGE_TOKENS] = rows.to(torch.int8)
            lg = lbase[None] ^ (c.tokens.cpu().view(-1, 1) * 0x9E3779B1 + pos.view(-1, 1))
            out.append(lg)
        fn = hook()
        if fn is not None:  # the engine is about to block: `SleepEngine.wait_hook`
            fn()
        time.sleep((prefill_ms if any(len(c.tokens) > 1 for c in chunks) else step_ms) / 1e3)
        return out

    def sample(logits, params, sequence, step, attempt):
        return int(torch.argmax(logits).item())

    ops = types.SimpleNamespace(**{k: getattr(ref_ops, k) for k in dir(ref_ops) if not k.startswith("__")})
    ops.forward, ops.sample = forward, sample
    return ops


# %%
# The engine.


class SleepEngine(RefEngine):
    """`RefEngine` over a forward that writes fake K/V and sleeps ``step_ms`` (``prefill_ms`` for
    a chunk of more than one token); records carry ``logits_digest``. ``name`` is "sleep".
    ``hook=False``: the forward never calls `wait_hook` (the runtime then hands work over before
    each step)."""

    name = "sleep"
    cache_weights = False
    # ``wait_hook``: a callable run on the engine thread right before the forward blocks (where a
    # GPU engine waits for the device), or None. An engine that calls it says so with
    # ``calls_wait_hook``; the verifying runtime then hands its workers their work there.
    wait_hook = None
    calls_wait_hook = True

    def __init__(self, config: ModelConfig, *, step_ms: float = 1.9, prefill_ms: float = 10.0, hook: bool = True,
                 **kwargs):
        self.calls_wait_hook = bool(hook)
        model = types.SimpleNamespace(config=config, profile=PROFILES["default"], tensors={})
        self.ops = _fake_ops(step_ms, prefill_ms, config.vocab_size,
                             (config.num_layers, config.num_kv_heads, config.head_dim + 4), lambda: self.wait_hook if self.calls_wait_hook else None)
        self.step_ms = step_ms
        super().__init__(model, **kwargs)

    @classmethod
    def llama_1b(cls, *, layers: int = 16, **kwargs) -> "SleepEngine":
        """The page shape of Llama-3.2-1B (``layers`` of 8 KV heads x (64 + 4) bytes a slot)."""
        cfg = ModelConfig(arch="llama", vocab_size=2048, hidden_size=2048, intermediate_size=8192, num_layers=layers,
                          num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500000.0, rms_norm_eps=1e-5,
                          max_position=8192, tie_embeddings=False, qkv_bias=False)
        return cls(cfg, **kwargs)

    def _sample(self, s, token=None, logits_digest=None):
        digest = row_digest(s.pending_logits.numpy().astype("<i8").tobytes())
        return super()._sample(s, token=token, logits_digest=digest)
