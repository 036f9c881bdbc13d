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

The pool has pages past ``num_pages`` that no sequence ever holds: the scratch page that the
padding rows of a graph's batch bucket write and read, and ``STAGING_PAGES`` staging pages.

Rounds launched ahead
---------------------
A round's host work (planning, paging, the step's inputs, the records) would otherwise sit
between two graph replays, with the device idle: at batch 64 on the H200, 2.6 ms of host work
beside a 3.4 ms graph. With ``overlap`` (and always inside `generate`), `step` launches the
next round of its decode sequences *before* it reads this round's tokens back:

* the next round's inputs are all known without the tokens (position, page and slot, block
  table, the RNG draw of step + 1); the tokens go from this round's output into the next
  round's input buffer on the device (`DecodeStep.feed`);
* a sequence that finishes by length or position with this round's token is left out; one that
  samples one of its EOS ids cannot be left out (the host has not seen the token), so `feed`
  sends its K/V to the scratch page on the device: its pages never see the extra token;
* a row whose next token starts a new block writes a zeroed staging page; the next `step`
  allocates the block's page in the reference's order (with the window's evictions), then
  copies the staging page there: page ids and bytes are the reference's;
* the next `step` takes the rows it is asked for. The rows it is not asked for, and the whole
  round when any other engine call comes first (`fork`, `set_attempt`, `release`, page
  access, anchors, `teacher_force`: `settle`), are discarded: the slots they wrote are put back
  from the copy taken before the launch, so the pool is what the records say. Not launched
  ahead: a round that needs a copy-on-write page, sequences with stop strings (the text
  decides), more than EOS_MAX EOS ids, a round after a prompt's last chunk.

Reading ``engine.pool`` directly between two overlapped rounds may show the next token's K/V
slot; every engine method sees the settled pool.
"""
from __future__ import annotations

import types

import torch

import fieldprint_fast.ops as fast_ops
from fieldprint_ref.engine import RefEngine
from fieldprint_ref.errors import EngineError
from fieldprint_ref.records import PageWrite

STAGING_PAGES = 64  # rows launched ahead into a new block per round, at most (pages beyond the allocator's)


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


def _zero_pages(pool, pages) -> None:
    """`fieldprint_ref.ops.zero_pages` without a host-to-device copy of the page list: a
    blocking copy waits for all the device's queued work, a round launched ahead included."""
    for p in pages:
        pool.data[p].zero_()


# fieldprint_fast.ops, with the zeroing of new pages that never waits for the device
_OPS = types.SimpleNamespace(**{**{k: v for k, v in vars(fast_ops).items() if not k.startswith("__")},
                                "zero_pages": _zero_pages})


class FastEngine(RefEngine):
    """The `fieldprint.engine.Engine` contract over `fieldprint_fast.ops` and captured decode steps.

    Extra keywords: ``decode_loop`` (default: on for CUDA) runs one-token rounds through
    `fieldprint_fast.loop.DecodeStep` (on the CPU over `spec` ops, or the kernels under
    ``TRITON_INTERPRET=1``: the loop's tests; ``graphs=False`` skips the capture on CUDA); ``device_digests`` (default: on with the loop) also hashes each
    logits row on the device into ``StepRecord.logits_digest``; ``overlap`` (default off; always on
    inside `generate`): `step` launches the next decode round before it reads this round's tokens
    back (the module docstring, "Rounds launched ahead").
    """

    name = "fast"
    ops = _OPS
    # the Triton linear kernels read the integer weights: no float64 copies (8 bytes a parameter)
    cache_weights = False
    # the verifying runtime's hook (`fieldprint.runtime.turns`): the engine calls ``wait_hook`` on
    # its thread right before the host blocks on a decode round's results (CUDA loop only)
    calls_wait_hook = False
    wait_hook = None

    def __init__(self, model, *, decode_loop: bool | None = None, graphs: bool | None = None,
                 device_digests: bool | None = None, overlap: bool = False, **kwargs):
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
        self.calls_wait_hook = self.decode_loop and dev.type == "cuda"
        if self.decode_loop:
            # pages past the allocator's, never handed out: the scratch page that the padding rows
            # of a bucketed batch write, and the staging pages of rows launched ahead into a new block
            n = self.allocator.num_pages
            stage = min(STAGING_PAGES, n)
            self.pool = self.ops.allocate_pool(self.config, self.model.profile, n + 1 + stage, device=dev)
            self.scratch_page = n
            self.staging_pages = list(range(n + 1, n + 1 + stage))
        self._steps: dict[tuple, object] = {}
        self.overlap = bool(overlap) and self.decode_loop  # `step` launches the next round ahead
        self._generating = False  # inside `generate`, which overlaps its rounds whatever ``overlap`` says
        self._ahead = None  # the decode round launched ahead (`step`)
        # decode rows launched ahead, taken by the next step, and discarded (their slots restored)
        self.ahead_rows = {"launched": 0, "taken": 0, "discarded": 0}

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
        sequences through one captured decode step; records in the order of ``handles``.

        Overlapped (``overlap``, or inside `generate`): before reading back this round's tokens,
        the next round of its decode sequences is launched on the device, fed by the sampled
        tokens where they lie (`_launch_ahead`); the next `step` takes it."""
        if not self.decode_loop:
            return super().step(handles, chunk_size=chunk_size)
        active, feeds = self._plan_round(handles, chunk_size)
        ahead, self._ahead = self._ahead, None
        keep = []
        if ahead is not None:  # the rows of the round launched ahead that this round asks for
            live = {s.handle for s in active}
            keep = [i for i, s in enumerate(ahead.seqs) if s.handle in live]
            left = [i for i, s in enumerate(ahead.seqs) if s.handle not in live and s.finish_reason is None]
            if left:  # not stepped now: as if never launched
                self._restore(ahead, left)
        taken = {ahead.seqs[i].handle: i for i in keep}
        self.ahead_rows["taken"] += len(keep)
        chunks, fed, ones = [], [], []
        try:
            # pages are allocated in the reference's order (`_plan_round`): the same page ids. The
            # rows launched ahead too: their evictions and new pages happen now, in this order
            for s, start, take in feeds:
                i = taken.get(s.handle)
                if i is not None:
                    ahead.writes[i] = self._decode_pages(s, start)
                elif take == 1 and s.cached == len(s.context) - 1:
                    ones.append((s, self._decode_pages(s, start)))
                else:
                    chunk, writes = self._prepare_chunk(s, start, take)
                    chunks.append(chunk)
                    fed.append((s, start, take, writes))
        except BaseException:
            if keep:
                self._restore(ahead, keep)
            raise
        for i, stage in ahead.staged.items() if keep else ():  # K/V written ahead into a staging page
            if i in keep:
                s = ahead.seqs[i]
                self.ops.copy_page(self.pool, stage, s.table.pages[s.cached // self.page_tokens])
        rounds = [(ahead, keep)] if keep else []
        if ones:  # one token each: a captured decode step
            rounds.append((self._launch(*self._decode_rows(ones)), None))
        if chunks:  # prompts: the kernel forward (`spec.model.forward` over fieldprint_fast.ops)
            logits = self.ops.forward(self.model, self.pool, chunks)
            for (s, start, take, writes), lg in zip(fed, logits):
                s.writes += writes
                s.cached = start + take
                if s.cached == len(s.context):
                    s.pending_logits = lg[-1]
        if rounds and (self.overlap or self._generating):
            self._ahead = self._launch_ahead(rounds)
        got, decoding = {}, {s.handle for r, _ in rounds for s in r.seqs}
        for s in active:
            if s.handle not in decoding and s.pending_logits is not None and s.cached == len(s.context):
                got[s.handle] = self._sample(s)
        for r, rows in rounds:
            got.update(self._finish(r, rows))
        return [(s.handle, got[s.handle]) for s in active if s.handle in got]

    def generate(self, prompts, **kw):
        """The contract's `generate`, its rounds overlapped (see `step`); nothing is left
        running on the device when it returns."""
        was, self._generating = self._generating, self.decode_loop
        try:
            return super().generate(prompts, **kw)
        finally:
            self._generating = was
            self.settle()

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

    # ---------------------------------------------------------------------------- decode rounds
    # A decode round is launched (`_launch`: inputs loaded, graph replayed, its outputs copied to
    # the host asynchronously) and later finished (`_finish`: wait, then the records). Between
    # the two, `_launch_ahead` may launch the round after it, so the device works on round r+1
    # while the host builds the records of round r.

    def _decode_pages(self, s, start: int) -> list:
        """`_prepare_pages(s, start, 1)`: the page write of feeding token ``start``, without its
        general path where there is nothing to do (most rounds: a slot of a block the sequence
        alone holds, no window)."""
        pt, pages, alloc = self.page_tokens, s.table.pages, self.allocator
        b, slot = divmod(start, pt)
        if slot and (s.window is None or not self.evict):
            p = pages[b]
            if alloc.refcount[p] == 1 and not alloc.pinned[p]:
                return [PageWrite(page=p, block=b, slot_start=slot, slot_end=slot + 1, full=slot + 1 == pt)]
        return self._prepare_pages(s, start, 1)

    def _decode_rows(self, seqs):
        """Return (sequences, page writes, step rows, sampling rows) for decode-one sequences
        ``seqs`` ((sequence, its page writes), pages already prepared), each fed its last token."""
        from fieldprint_fast.sampling import SamplingRows
        from spec.attention import MAX_KEYS

        vocab = self.config.vocab_size
        out_seqs, writes, rows, samples = [], [], [], []
        for s, w in seqs:
            start = s.cached
            keys = _visible_keys(s, start)
            if keys >= MAX_KEYS:
                raise ValueError(f"attention over {keys} keys: at most {MAX_KEYS - 1} (Z < 2**48)")
            out_seqs.append(s)
            writes.append(w)
            rows.append(_step_row(s, s.context[start], start, s.table.pages))
            samples.append(SamplingRows.host_row(s.params, vocab, s.sequence, len(s.context) - s.prompt_len, s.attempt))
        return out_seqs, writes, rows, samples

    def _launch(self, seqs, writes, rows, samples, tokens=None, eos=None) -> "_Round":
        """Launch one decode step over ``rows`` and queue the copies of its results to the host.
        ``tokens``: the rows' input tokens as a device tensor (a round launched ahead; the rows'
        own tokens are placeholders), with ``eos`` each row's end-of-sequence ids or None."""
        from fieldprint_fast.loop import bucket, width_bucket

        sample = any(s.params.temperature != 0 for s in seqs)
        key = (bucket(len(rows)), width_bucket(max(len(r[3]) for r in rows)),
               0 if not any(r[4] for r in rows) else width_bucket(max(len(r[4]) for r in rows)), self.device_digests,
               sample)
        step = self._decode_step(key)
        step.load(rows, samples if sample else None, eos)
        n, saved = len(rows), None
        if tokens is not None:
            # the bytes of the slots this round writes, so that a discarded round leaves the pool
            # as it found it (`_restore`)
            pages, slots = step.i64[2, :n].clone(), step.i64[3, :n].clone()
            saved = (pages, slots, self.pool.data[pages, :, :, slots])
            step.feed(tokens, eos is not None)
        step.run()
        r = _Round(seqs, writes, step.logits[:n].clone(), step.tokens[:n].clone(), saved)
        cuda = self.device.type == "cuda"
        r.host_tokens = _to_host(r.tokens) if cuda else r.tokens
        if self.device_digests:
            r.host_digests = _to_host(step.digests[:n]) if cuda else step.digests[:n].clone()
        if cuda:
            r.event = torch.cuda.Event()
            r.event.record()
        return r

    def _launch_ahead(self, rounds) -> "_Round | None":
        """Launch the round after ``rounds`` (launched, not finished) for their sequences that
        do not finish by length or position, fed by the tokens they sample, before the host has
        read them; None where that round needs host work first: a shared page (copy-on-write),
        stop strings (the text decides), more than EOS_MAX end-of-sequence ids, more new blocks
        than staging pages. A sequence that samples one of its EOS ids finishes:
        `DecodeStep.feed` sends its K/V to the scratch page. A row that starts a new block writes
        a zeroed staging page; the next `step` allocates the block's page (`_prepare_pages`, in
        the reference's order, with the window's evictions) and copies the staging page there."""
        from fieldprint_fast.loop import EOS_MAX
        from fieldprint_fast.sampling import SamplingRows
        from fieldprint_ref.paging import EVICTED
        from spec.attention import MAX_KEYS

        pt, vocab, alloc = self.page_tokens, self.config.vocab_size, self.allocator
        seqs, rows, samples, eos, pick, k = [], [], [], [], [], 0
        stages, staged = list(self.staging_pages), {}
        for r, keep in rounds:
            for i in (range(len(r.seqs)) if keep is None else keep):
                s, start = r.seqs[i], r.seqs[i].cached + 1  # after this round: its token is fed at `start`
                a = s.anchors.length if s.anchors is not None else 0
                gen = len(s.context) + 1 - s.prompt_len
                k += 1
                if gen >= s.max_new_tokens or a + len(s.context) + 1 > self.config.max_position:
                    continue  # finishes with this round's token
                if s.stop or len(s.eos) > EOS_MAX:
                    return None
                pages = s.table.pages
                b = start // pt
                if b == len(pages):  # a new block: its page is allocated when the round is taken, in
                    if not stages:   # the reference's order; until then the K/V go to a staging page
                        return None
                    staged[len(seqs)] = stages.pop()
                    pages = pages + [staged[len(seqs)]]
                elif pages[b] == EVICTED or alloc.refcount[pages[b]] != 1 or alloc.pinned[pages[b]]:
                    return None  # copy-on-write: `_prepare_pages` must run first
                # (blocks the window frees before the round are freed when it is taken: the round's
                # queries do not read them)
                if _visible_keys(s, start) >= MAX_KEYS:
                    return None  # the regular round raises the error
                seqs.append(s)
                rows.append(_step_row(s, 0, start, pages))  # (its token is fed on the device)
                samples.append(SamplingRows.host_row(s.params, vocab, s.sequence, gen, s.attempt))
                eos.append(tuple(s.eos))
                pick.append(k - 1)
        if not seqs:
            return None
        src = torch.cat([r.tokens for r, keep in rounds]) if len(rounds) > 1 else rounds[0][0].tokens
        if len(rounds) > 1 or rounds[0][1] is not None or len(pick) < k:
            src = src[_device_index(_positions(rounds, pick), src.device)]
        self.ahead_rows["launched"] += len(seqs)
        if staged:  # a new page starts zeroed (the staging pages used are the last ones, in one range)
            self.pool.data[min(staged.values()): max(staged.values()) + 1].zero_()
        r = self._launch(seqs, [None] * len(seqs), rows, samples, tokens=src, eos=eos if any(eos) else None)
        r.staged = staged
        return r

    def _finish(self, r: "_Round", rows=None) -> dict:
        """Wait for round ``r`` and record its rows (``rows``: their indices; None: all)."""
        if r.event is not None:
            if self.wait_hook is not None:  # the host is about to block on the device
                self.wait_hook()
            r.event.synchronize()
        tokens = r.host_tokens.tolist()
        digests = r.host_digests.numpy() if r.host_digests is not None else None
        out, logits = {}, r.logits.unbind(0)  # the rows' views in one call (an index is ~1 us each)
        for i in range(len(r.seqs)) if rows is None else rows:
            s = r.seqs[i]
            s.writes += r.writes[i]
            s.cached += 1
            s.pending_logits = logits[i]
            out[s.handle] = self._sample(s, token=tokens[i],
                                         logits_digest=None if digests is None else digests[i].tobytes())
        return out

    def _restore(self, r: "_Round", rows) -> None:
        """Put back the slot bytes that round ``r`` (launched ahead) wrote for ``rows``."""
        pages, slots, saved = r.saved
        self.ahead_rows["discarded"] += len(rows)
        if len(rows) < len(r.seqs):
            idx = _device_index(rows, pages.device)
            pages, slots, saved = pages[idx], slots[idx], saved[idx]
        self.pool.data[pages, :, :, slots] = saved

    def settle(self) -> None:
        """Discard the round launched ahead, if any: the pool holds what the last records say.
        Every engine call other than the next `step` does this first."""
        r, self._ahead = self._ahead, None
        if r is not None:
            rows = [i for i, s in enumerate(r.seqs) if s.finish_reason is None]
            if rows:
                self._restore(r, rows)


def _visible_keys(s, start: int) -> int:
    """Return the keys the query of sequence ``s`` at context index ``start`` sees: its anchors,
    then its context from the window's start to itself."""
    a = s.anchors.length if s.anchors is not None else 0
    lo = 0 if s.window is None else max(0, start - s.window + 1)
    return a + start + 1 - lo


def _step_row(s, token: int, start: int, pages) -> tuple:
    """Return `DecodeStep.load`'s row of sequence ``s`` feeding ``token`` at context index
    ``start`` over block table ``pages``."""
    a = s.anchors.length if s.anchors is not None else 0
    return (token, start, a + start, pages, s.anchors.pages if s.anchors else (), a,
            -1 if s.window is None else s.window)


def _device_index(rows: list[int], device) -> torch.Tensor:
    """Return ``rows`` as an int64 tensor on ``device``, copied without waiting for the device."""
    t = torch.tensor(rows, dtype=torch.int64)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """Queue a copy of device tensor ``t`` into pinned host memory (read it after an event)."""
    h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    h.copy_(t, non_blocking=True)
    return h


def _positions(rounds, pick):
    """Return ``pick`` (row numbers counted over ``rounds``' kept rows) as positions in the
    concatenation of the rounds' token tensors."""
    where = [i + sum(len(q.seqs) for q, _ in rounds[:j])
             for j, (r, keep) in enumerate(rounds) for i in (range(len(r.seqs)) if keep is None else keep)]
    return [where[p] for p in pick]


class _Round:
    """A decode round launched on the device: its rows' sequences and page writes, the logits
    and tokens on the device, their host copies (ready once ``event`` has passed), and for a
    round launched ahead the slot bytes it overwrote."""

    def __init__(self, seqs, writes, logits, tokens, saved):
        self.seqs, self.writes, self.logits, self.tokens, self.saved = seqs, writes, logits, tokens, saved
        self.host_tokens = self.host_digests = self.event = None
        self.staged = {}  # row -> the staging page its K/V went to (a new block)


def _settled(name):
    """Return RefEngine method ``name`` preceded by `FastEngine.settle`: what it reads or
    changes must not race with a round launched ahead."""
    base = getattr(RefEngine, name)

    def method(self, *a, **k):
        self.settle()
        return base(self, *a, **k)

    method.__name__, method.__doc__ = name, base.__doc__
    return method


for _name in ("add_anchors", "release_anchors", "fork", "set_attempt", "release", "teacher_force", "page_bytes",
              "page_tensor", "sequence_pages"):
    setattr(FastEngine, _name, _settled(_name))
