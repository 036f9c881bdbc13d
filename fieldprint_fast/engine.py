"""The fast engine: the reference engine's loop, with decode steps as captured CUDA graphs.

Scheduling, paging, anchors, eviction and records are `fieldprint_ref.engine.RefEngine`'s (one
implementation of the contract's bookkeeping), over `fieldprint_fast.ops`. What differs is how a
round runs its forward:

* every sequence that feeds exactly one token this round (a decode step, or a one-token prompt)
  goes through `fieldprint_fast.loop.DecodeStep`: one graph replay for all of them, the
  greedy token and (``device_digests``) the BLAKE3 digest of every logits row computed on the
  device; the host reads back 8 bytes (+ 32 for the digest) per sequence;
* every other sequence (a prompt, at most ``chunk_size`` tokens of it per round) goes through
  `spec.model.forward` with the Triton kernels (`fieldprint_fast.ops.forward`), in the same
  round: continuous batching, with prefill chunks and decode tokens side by side.

Results do not depend on which path a sequence takes: both compute `spec.model.forward`'s
integers, and the spec's forward does not depend on batching (tests/fast/test_engine_loop.py
checks tokens, logits and page bytes against the reference engine).

The pool has one page more than ``num_pages``: the scratch page that the padding rows of a
graph's batch bucket write and read. No sequence ever holds it.
"""
from __future__ import annotations

import fieldprint_fast.ops as fast_ops
from fieldprint_ref.engine import RefEngine
from fieldprint_ref.errors import EngineError


def loop_supported(model) -> str | None:
    """Return why `DecodeStep` cannot run ``model`` (None when it can): its kernels' limits."""
    from fieldprint_fast.kernels.linear import MAX_K
    from fieldprint_fast.kernels.rowops import MAX_ROW

    c, p = model.config, model.profile
    acts = [p.linear_bits(s, n)[1] for s in ("qkv", "o", "gate_up", "down") for n in range(c.num_layers)]
    wts = [p.linear_bits(s, n)[0] for s in ("qkv", "o", "gate_up", "down") for n in range(c.num_layers)]
    if max(acts + [p.a_lm_head, p.q_bits]) > 16 or max(wts + [p.w_lm_head, p.embed_bits]) > 16:
        return "a linear stage wider than 16 bits"
    if p.q_bits > 15 or p.prob_bits > 20:
        return "q_bits > 15 or prob_bits > 20"
    if c.hidden_size > MAX_ROW or max(c.intermediate_size, c.num_heads * c.head_dim) > MAX_K or c.head_dim % 16:
        return "a row longer than the kernels hold"
    return None


class FastEngine(RefEngine):
    """The `fieldprint.engine.Engine` contract over `fieldprint_fast.ops` and captured decode steps.

    Extra keywords: ``decode_loop`` (default: on for CUDA) runs one-token rounds through
    `fieldprint_fast.loop.DecodeStep` (on the CPU over `spec` ops, or the kernels under
    ``TRITON_INTERPRET=1``: the loop's tests; ``graphs=False`` skips the capture on CUDA); ``device_digests`` (default: on with the loop) also hashes each
    logits row on the device into ``StepRecord.logits_digest``.
    """

    name = "fast"
    ops = fast_ops
    # the Triton linear kernels read the integer weights: no float64 copies (8 bytes a parameter)
    cache_weights = False

    def __init__(self, model, *, decode_loop: bool | None = None, graphs: bool | None = None,
                 device_digests: bool | None = None, **kwargs):
        super().__init__(model, **kwargs)
        dev = self.device
        self.decode_loop = (dev.type == "cuda") if decode_loop is None else bool(decode_loop)
        if self.decode_loop:
            why = loop_supported(self.model)
            if why:
                if decode_loop:
                    raise EngineError(f"decode_loop: cannot run this model ({why})")
                self.decode_loop = False
        self.graphs = (dev.type == "cuda") if graphs is None else bool(graphs) and dev.type == "cuda"
        self.device_digests = self.decode_loop if device_digests is None else bool(device_digests) and self.decode_loop
        if self.decode_loop:
            # one extra page, never handed out: the padding rows of a bucketed batch write it
            n = self.allocator.num_pages
            self.pool = self.ops.allocate_pool(self.config, self.model.profile, n + 1, device=dev)
            self.scratch_page = n
        self._steps: dict[tuple, object] = {}

    def add_sequence(self, prompt, **kw) -> int:
        """The contract's `add_sequence`; with graphs, also captures the batch-1 decode steps the
        sequence will need, now: a capture later, while the verifying runtime's hasher thread
        uses the device, could collide with it."""
        from fieldprint_fast.loop import width_bucket

        h = super().add_sequence(prompt, **kw)
        if self.decode_loop and self.graphs:
            s = self._sequences[h]
            a = s.anchors.length if s.anchors is not None else 0
            pt = self.page_tokens
            lo, hi = width_bucket(-(-(s.prompt_len + 1) // pt)), width_bucket(-(-(s.prompt_len + s.max_new_tokens) // pt))
            aw = 0 if not a else width_bucket(-(-a // pt))
            w = lo
            while w <= hi:
                self._decode_step((1, w, aw, self.device_digests, s.params.temperature != 0))
                w *= 2
        return h

    # ---------------------------------------------------------------------------- rounds
    def step(self, handles, *, chunk_size: int | None = None):
        """One round (the contract's `step`): prompts through the kernel forward, one-token
        sequences through one captured decode step; records in the order of ``handles``."""
        if not self.decode_loop:
            return super().step(handles, chunk_size=chunk_size)
        # pages are allocated in the reference's order (`_plan_round`): the same page ids
        active, feeds = self._plan_round(handles, chunk_size)
        chunks, fed, ones = [], [], []
        for s, start, take in feeds:
            if take == 1 and s.cached == len(s.context) - 1:
                ones.append((s, self._prepare_pages(s, start, 1)))
            else:
                chunk, writes = self._prepare_chunk(s, start, take)
                chunks.append(chunk)
                fed.append((s, start, take, writes))
        if chunks:  # prompts: the kernel forward (`spec.model.forward` over fieldprint_fast.ops)
            logits = self.ops.forward(self.model, self.pool, chunks)
            for (s, start, take, writes), lg in zip(fed, logits):
                s.writes += writes
                s.cached = start + take
                if s.cached == len(s.context):
                    s.pending_logits = lg[-1]
        got, decoding = {}, {s.handle for s, _ in ones}
        for s in active:
            if s.handle not in decoding and s.pending_logits is not None and s.cached == len(s.context):
                got[s.handle] = self._sample(s)
        if ones:  # one token each: a captured decode step
            got.update(self._decode_round(ones))
        return [(s.handle, got[s.handle]) for s in active if s.handle in got]

    def prepare_decode(self, batch: int, context: int, anchors: int = 0, sample: bool = False) -> int:
        """Capture ahead of time the decode steps that ``batch`` sequences of up to ``context``
        tokens (and ``anchors`` anchor tokens; ``sample``: not all greedy) will use, so that no
        round pays for a capture; return how many were built."""
        from fieldprint_fast.loop import bucket, width_bucket

        if not self.decode_loop:
            return 0
        pt, made = self.page_tokens, 0
        a = 0 if not anchors else width_bucket(-(-anchors // pt))
        w = width_bucket(1)
        while True:
            key = (bucket(batch), w, a, self.device_digests, sample)
            made += key not in self._steps
            self._decode_step(key)
            if w * pt >= context:
                return made
            w *= 2

    def _decode_step(self, key):
        """Return the DecodeStep of ``key`` (batch bucket, table width, anchor width, digest,
        sampling), built and captured on first use."""
        from fieldprint_fast.loop import DecodeStep

        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = DecodeStep(self.model, self.pool, batch=key[0], blocks=key[1],
                                                 anchor_blocks=key[2], scratch_page=self.scratch_page,
                                                 digest=key[3], sample=key[4], graph=self.graphs)
        return step

    def _decode_round(self, seqs) -> dict:
        """Feed the one uncached token of every sequence of ``seqs`` ((sequence, its page writes),
        pages already prepared) through a DecodeStep; sample on the device."""
        from fieldprint_fast.loop import bucket, width_bucket
        from fieldprint_fast.sampling import SamplingRows
        from spec.attention import MAX_KEYS

        rows, samples = [], []
        vocab = self.config.vocab_size
        writes = [w for _, w in seqs]
        seqs = [s for s, _ in seqs]
        for s in seqs:
            start = s.cached
            a = s.anchors.length if s.anchors is not None else 0
            lo = 0 if s.window is None else max(0, start - s.window + 1)
            if a + start + 1 - lo >= MAX_KEYS:
                raise ValueError(f"attention over {a + start + 1 - lo} keys: at most {MAX_KEYS - 1} (Z < 2**48)")
            rows.append((s.context[start], start, a + start, list(s.table.pages),
                         list(s.anchors.pages) if s.anchors is not None else [], a,
                         -1 if s.window is None else s.window))
            samples.append(SamplingRows.host_row(s.params, vocab, s.sequence, len(s.context) - s.prompt_len, s.attempt))
        sample = any(s.params.temperature != 0 for s in seqs)
        key = (bucket(len(rows)), width_bucket(max(len(r[3]) for r in rows)),
               0 if not any(r[4] for r in rows) else width_bucket(max(len(r[4]) for r in rows)), self.device_digests,
               sample)
        step = self._decode_step(key)
        step.load(rows, samples if sample else None)
        step.run()
        n = len(rows)
        logits = step.logits[:n].clone()  # the graph's buffer is overwritten by the next replay
        tokens = step.tokens[:n].tolist()  # the round's one host sync
        digests = None
        if self.device_digests:
            digests = step.digests[:n].cpu().numpy()
        out = {}
        for i, s in enumerate(seqs):
            s.writes += writes[i]
            s.cached += 1
            s.pending_logits = logits[i]
            out[s.handle] = self._sample(s, token=tokens[i],
                                         logits_digest=None if digests is None else digests[i].tobytes())
        return out
