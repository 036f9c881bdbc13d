"""
The GPU-resident decode step: one token for every sequence of a batch, one CUDA graph
======================================================================================

`spec.model.forward` is written for clarity: a Python loop over chunks, every op a separate
call with its own checks (some of which read values back to the host). A decode step of a
16-layer model is then ~400 kernel launches plus ~20 host round trips, and on a GPU the
Python around the kernels, not the kernels, sets the speed (1.8 tokens/s on the 1B shape).

`DecodeStep` computes the same integers for the special case that decode is: every sequence
feeds exactly one token. It is `spec.model.forward` restated over fixed-shape device buffers:

* the inputs of a step (token, RoPE position, the page and slot its K/V go to, the block
  tables, and per sequence ``(anchor length, first visible context token, visible keys)``) are
  copied into static device tensors; nothing inside the step reads a value back. A round
  launched before the host has read the previous round's tokens takes them from the device
  (`DecodeStep.feed`, with a device-side EOS check that sends a finished row's K/V to the
  scratch page);
* q/k/v and gate/up run as one linear each over the concatenated weights (the same integers:
  a linear quantizes its input row once and each output channel has its own multiplier), with
  the RMSNorm fused with the row quantization (`kernels.rowops.rms_norm_quantize`);
* RoPE, the K/V rows packed into the page format and written to their slots, and the query's
  row quantization are one launch per layer (`kernels.kv_write.rope_write_kv`);
* the attention runs the decode kernels of `kernels.attention_decode` with the launch shape
  fixed by the graph's key capacity (splits past a sequence's keys do nothing);
* the next token of every row (greedy, or `spec.sampling.sample` with temperature, top-k and
  top-p by `fieldprint_fast.sampling`, the RNG draw computed by the host ahead of the step) and,
  when asked, the BLAKE3 digest of each int64 logits row (`spec.commits.logits_digest`) are
  computed on the device, so the vocabulary row never has to cross to the host for a ledger.

The whole step is captured once per (batch bucket, block-table width, anchor width, digest,
sampling)
and replayed; batches are padded to the bucket with rows that write a scratch page no
sequence owns. Results are the integers of `spec.model.forward` (tests/fast/test_engine_loop.py
checks ``torch.equal`` on logits and page bytes), because every piece is a kernel with its own
bit-exact parity suite, composed in the spec's order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import torch
import triton

from fieldprint_fast.sampling import SamplingRows, greedy_rows, sample_rows
from spec.constants import KV_SCALE_BYTES, PAGE_TOKENS
from spec.sampling import SamplingParams

_GREEDY = SamplingParams()

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EOS_MAX = 8  # end-of-sequence ids per row that `DecodeStep.feed` checks on the device


def use_kernels(device: torch.device) -> bool:
    """Return whether the step runs the Triton kernels (CUDA, or the CPU under TRITON_INTERPRET=1).
    Otherwise it runs the same composition over `spec` ops: the CPU tests of the loop's logic."""
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def bucket(n: int, buckets=BATCH_BUCKETS) -> int:
    """Return the smallest bucket >= n (n itself beyond the last)."""
    for b in buckets:
        if b >= n:
            return b
    return n


def width_bucket(blocks: int) -> int:
    """Return the block-table width a graph is built for: a power of two >= blocks (>= 8)."""
    return max(8, triton.next_power_of_2(max(1, blocks)))


# %%
# Fused weights
# -------------
# q/k/v (and gate/up) read the same quantized row, so one launch over the concatenated output
# channels gives the same integers as three. Weights are stored as the int8 limbs the linear
# kernel reads; when the parts need different limb counts, every part is split into the widest
# count of 7-bit limbs (sum of limb_i * 2**(7 i)), so the concatenation has one limb count.

def _limbs(ws: list[torch.Tensor]) -> torch.Tensor:
    from fieldprint_fast.kernels.linear import weight_limbs

    parts = [weight_limbs(w) for w in ws]
    if any(p is None for p in parts):
        raise ValueError("a weight needs more than two int8 limbs")
    n = max(p.shape[0] for p in parts)
    if any(p.shape[0] != n for p in parts):  # mixed: every part as n 7-bit limbs, the top one signed
        parts = [_as_limbs(w.to(torch.int32), n) for w in ws]
    return torch.cat(parts, dim=1).contiguous()


def _as_limbs(w: torch.Tensor, n: int) -> torch.Tensor:
    """Return w [O, K] as n int8 limbs: w & 127, (w >> 7) & 127, ..., the last w >> 7 (n - 1)."""
    return torch.stack([((w >> (7 * i)) & 127 if i < n - 1 else w >> (7 * i)).to(torch.int8) for i in range(n)])


@dataclass
class _Linear:
    """A linear layer as the kernel reads it: limbs [L, O, K], mul/shift [O], bias [O] or None."""

    limbs: torch.Tensor | None  # the kernel's operand (None on the spec backend)
    weight: torch.Tensor | None  # the integer weight (the spec backend's operand; None with kernels)
    mul: torch.Tensor
    shift: torch.Tensor
    bias: torch.Tensor | None
    act_bits: int

    @classmethod
    def of(cls, t: dict, names: list[str], act_bits: int, kernels: bool) -> "_Linear":
        weights = [t[f"{n}.weight"] if f"{n}.weight" in t else t["embed.weight"] for n in names]
        bias = [t.get(f"{n}.bias") for n in names]
        wide = max(w.element_size() for w in weights)
        return cls(limbs=_limbs(weights) if kernels else None,
                   weight=None if kernels else torch.cat([w.to(torch.int16) if wide > 1 else w for w in weights]),
                   mul=torch.cat([t[f"{n}.mul"] for n in names]).contiguous(),
                   shift=torch.cat([t[f"{n}.shift"] for n in names]).contiguous(),
                   bias=None if bias[0] is None else torch.cat(bias).contiguous(), act_bits=act_bits)

    def rows(self, x, residual=None, out_dtype=torch.int64):
        """Return the linear's output rows of input rows x (Q16); with ``residual``,
        ``residual_add(residual, ...)``. The kernels quantize the rows inside the linear's launch
        where that pays (`kernels.linear.linear_rows`) and add the residual in its epilogue.
        ``out_dtype`` int32 holds the same values (|y| <= ACT_MAX) in half the bytes for the
        next launches to read (the spec backend returns int64)."""
        if self.limbs is None:
            from spec.ops import linear, residual_add

            y = linear(x, self.act_bits, self.weight, self.mul, self.shift, self.bias)
            return y if residual is None else residual_add(residual, y)
        from fieldprint_fast.kernels.linear import linear_rows

        return linear_rows(x, self.act_bits, self.limbs, self.mul, self.shift, self.bias, residual=residual,
                           out_dtype=out_dtype)

    def normed(self, x, gamma, eps, residual=None, out_dtype=torch.int64):
        """Return ``rows(rms_norm(x, gamma, eps), residual)``; the kernels run the norm and the row
        quantization in front of the matmul (one launch where that pays, else two)."""
        if self.limbs is None:
            from spec.ops import rms_norm

            return self.rows(rms_norm(x, gamma, eps), residual)
        from fieldprint_fast.kernels.linear import linear_rows

        return linear_rows(x, self.act_bits, self.limbs, self.mul, self.shift, self.bias, residual=residual,
                           norm=(gamma, eps), out_dtype=out_dtype)

    def gated(self, gate_up, table, residual=None, out_dtype=torch.int64):
        """Return ``rows(swiglu(gate, up, table), residual)`` of the gate/up output [gate | up];
        the kernels read the two halves in place and quantize the swiglu in the launch that
        computes it, or in the linear's (`kernels.linear.linear_gated`): two launches."""
        inter = gate_up.shape[1] // 2
        if self.limbs is None:
            from spec.ops import swiglu

            return self.rows(swiglu(gate_up[:, :inter], gate_up[:, inter:], table), residual)
        from fieldprint_fast.kernels.linear import linear_gated

        return linear_gated(gate_up, table, self.act_bits, self.limbs, self.mul, self.shift, self.bias,
                            residual=residual, out_dtype=out_dtype)


class DecodeWeights:
    """The model's tensors arranged for `DecodeStep` (made once per model and device)."""

    def __init__(self, model):
        c, p, t = model.config, model.profile, model.tensors
        self.config, self.profile, self.tensors = c, p, t
        self.kernels = kernels = use_kernels(t["embed.weight"].device)
        self.layers = []
        for n in range(c.num_layers):
            pre = f"layers.{n}."
            self.layers.append(dict(
                attn_norm=t[pre + "attn_norm.gamma"], mlp_norm=t[pre + "mlp_norm.gamma"],
                qkv=_Linear.of(t, [pre + "q", pre + "k", pre + "v"], p.linear_bits("qkv", n)[1], kernels),
                o=_Linear.of(t, [pre + "o"], p.linear_bits("o", n)[1], kernels),
                gate_up=_Linear.of(t, [pre + "gate", pre + "up"], p.linear_bits("gate_up", n)[1], kernels),
                down=_Linear.of(t, [pre + "down"], p.linear_bits("down", n)[1], kernels),
            ))
        self.lm_head = _Linear.of(t, ["lm_head"], p.a_lm_head, kernels)
        self.exp_table = t["exp2.table"].to(torch.int32).contiguous()


_WEIGHTS_ATTR = "_fieldprint_decode_weights"


def decode_weights(model) -> DecodeWeights:
    """Return the model's DecodeWeights, made on the first call and kept on the model object."""
    w = getattr(model, _WEIGHTS_ATTR, None)
    if w is None or w.tensors is not model.tensors:
        w = DecodeWeights(model)
        setattr(model, _WEIGHTS_ATTR, w)
    return w


# %%
# Attention over device-side sequence metadata
# --------------------------------------------
# `kernels.attention_decode.decode_attention` takes the context lengths as host lists (it
# builds its metadata tensor and picks its split from them). Inside a graph they live on the
# device, so the launch shape comes from the graph's page capacity instead: a split beyond a
# sequence's pages adds "no key" maxima and zero sums to its exact accumulator, which changes
# nothing (the spec's sums and maxima do not depend on where the keys are split).

def _attention(q, pool, layer, tables, anchor_tables, meta, *, n_max, q_bits, prob_bits, exp_table):
    """`kernels.attention_decode.launch`: the decode attention with its metadata already on the
    device (``meta`` [B, 4] int32: anchor length, lo, start, virtual pages) and the launch shape of
    ``n_max`` virtual pages (the graph's capacity). ``q``: the queries already quantized to
    ``q_bits``, ``(limbs [L, B H, d], m, e)`` as `kernels.linear.quantize_rows` returns them (here
    from `kernels.kv_write.rope_write_kv`). The exp table's packed form is cached by the warm-up,
    before any capture."""
    from fieldprint_fast.kernels.attention_decode import launch

    limbs, mq, eq = q
    return launch(limbs, mq, eq, pool, layer, tables, anchor_tables, meta, n_max, q_bits, prob_bits, exp_table)


def _spec_attention(q, pool, layer, tables, anchor_tables, meta, q_bits, prob_bits, exp_table):
    """The spec backend of `_attention`: `spec.attention.paged_attention` row by row over the
    Q16 queries q [B, H, d] (reads the metadata back to the host; the CPU tests only)."""
    from spec.attention import KVPool, paged_attention
    from spec.model import AnchorRef

    out = []
    kv = KVPool(pool)
    for b, (a, lo, start, _) in enumerate(meta.tolist()):
        anchors = AnchorRef(block_table=anchor_tables[b].to(torch.int64), length=a) if a else None
        window = None if lo == 0 else start - lo + 1  # lo > 0 only under a window, then W = start - lo + 1
        out.append(paged_attention(q[b:b + 1], kv, layer, tables[b].to(torch.int64), start, anchors, window, q_bits,
                                   prob_bits, exp_table)[0])
    return torch.stack(out)


def _spec_rope_write_kv(qkv, pos, page, slot, data, layer, cos, sin, heads, q_bits):
    """The spec backend of `kernels.kv_write.rope_write_kv`: `spec.ops.rope` of q and k,
    `spec.attention.pack_rows` of k and v scattered to their slots; return the rotated Q16
    queries [B, H, d] (`spec.attention.paged_attention` quantizes them itself, so q_bits is unused)."""
    from spec.attention import pack_rows
    from spec.ops import rope

    g, d = data.shape[4], data.shape[5] - KV_SCALE_BYTES
    qk = rope(qkv[:, :(heads + g) * d].reshape(-1, heads + g, d), pos, cos, sin)
    kv = torch.stack([qk[:, heads:], qkv[:, (heads + g) * d:].reshape(-1, g, d)], dim=1)  # [B, K|V, G, d]
    data[page, layer, :, slot] = pack_rows(kv)
    return qk[:, :heads]


def _pack_rows(x: torch.Tensor) -> torch.Tensor:
    """`spec.attention.pack_rows` of rows x [N, d] on the device: int8 values, then m (uint16 LE),
    e, 0, from the kernel's 8-bit row quantization (one limb = the int8 values)."""
    if not use_kernels(x.device):
        from spec.attention import pack_rows

        return pack_rows(x)
    from fieldprint_fast.kernels.linear import quantize_rows

    q, m, e = quantize_rows(x, 8)
    # the 4 scale bytes as one little-endian int32 word: m (< 2**15) in bytes 0-1, e's byte, 0
    word = (m | ((e & 255) << 16)).view(torch.int8).view(-1, 4)
    return torch.cat([q[0], word], dim=-1)


# %%
# The step
# --------

class DecodeStep:
    """A captured decode step for ``batch`` rows, block tables of ``blocks`` entries and anchor
    tables of ``anchor_blocks`` entries. ``digest``: also hash each logits row on the device.

    Use: ``load(...)`` the step's inputs (host tensors), optionally ``feed(tokens)`` the input
    tokens from the device, ``run()``, then read ``logits``
    [batch, vocab] int64, ``tokens`` (greedy) and ``digests`` (uint8 [batch, 32]) on the device.
    """

    def __init__(self, model, pool, *, batch: int, blocks: int, anchor_blocks: int, scratch_page: int,
                 digest: bool = False, sample: bool = False, graph: bool = True):
        self.w = decode_weights(model)
        self.pool = pool
        self.batch, self.blocks, self.anchor_blocks = batch, blocks, anchor_blocks
        self.scratch_page = scratch_page
        self.digest, self.sample = digest, sample
        dev = pool.data.device
        self.device = dev
        self.n_max = anchor_blocks + blocks  # virtual pages (anchor pages, then context pages) a row reads at most
        # -- static inputs ---------------------------------------------------------------------
        self.i64 = torch.zeros(4, batch, dtype=torch.int64, device=dev)  # token, position, page, slot
        self.tables = torch.full((batch, blocks), scratch_page, dtype=torch.int32, device=dev)
        self.anchor_tables = torch.full((batch, max(1, anchor_blocks)), scratch_page, dtype=torch.int32, device=dev)
        self.meta = torch.zeros(batch, 4, dtype=torch.int32, device=dev)  # a, lo, start, virtual pages
        self.samp = torch.tensor([SamplingRows.host_row(_GREEDY, 1, 0, 0, 0)] * batch, dtype=torch.int64, device=dev)
        self.meta[:, 3] = 1
        self.i64[2] = scratch_page
        self.eos = torch.full((batch, EOS_MAX), -1, dtype=torch.int64, device=dev)  # `feed`'s end-of-sequence ids
        # two sets of pinned host buffers, used in turn: with a round launched ahead (`feed`), a
        # load may come before the previous load's copies have run (each set waits for its own
        # last copies, which in a steady loop have long finished)
        pin = dev.type == "cuda"
        self._host = [self._host_buffers(pin) for _ in range(2)]
        self._copied = [None, None]  # CUDA event after each set's last copies
        self._turn = 0
        greedy = torch.tensor(SamplingRows.host_row(_GREEDY, 1, 0, 0, 0), dtype=torch.int64)
        self._np_greedy = greedy.numpy()
        self.graph = None
        self._forward()  # compile (and, on CUDA, warm up) outside any capture
        if graph and dev.type == "cuda":
            torch.cuda.synchronize(dev)
            g = torch.cuda.CUDAGraph()
            # thread_local: another thread (the runtime's hasher) may use the device meanwhile
            with torch.cuda.graph(g, capture_error_mode="thread_local"):
                self._forward()
            self.graph = g

    def _host_buffers(self, pin: bool) -> tuple:
        """Return one set of host buffers for `load` (pinned on CUDA): the tensors, and numpy
        views of them (a tensor element write costs microseconds, a numpy one ~0.1 us)."""
        ts = tuple(torch.zeros(t.shape, dtype=t.dtype, pin_memory=pin)
                   for t in (self.i64, self.tables, self.anchor_tables, self.meta, self.samp, self.eos))
        return ts, tuple(t.numpy() for t in ts)

    def load(self, rows: list[tuple], samples: list[list[int]] | None = None,
             eos: list[tuple[int, ...]] | None = None) -> None:
        """Set the step's rows: (token, context index, RoPE position, block table, anchor table,
        anchor length, window or -1) per sequence; rows past ``len(rows)`` are padding.
        ``samples``: each row's `SamplingRows.host_row` (a step built with ``sample``).
        ``eos``: each row's end-of-sequence ids (at most EOS_MAX), for `feed`."""
        n = len(rows)
        if n > self.batch:
            raise ValueError(f"{n} rows for a step of batch {self.batch}")
        turn, self._turn = self._turn, self._turn ^ 1
        (h_i64, h_tables, h_anchor, h_meta, h_samp, h_eos), (hi, ht, ha, hm, hs, he) = self._host[turn]
        if self._copied[turn] is not None:
            self._copied[turn].synchronize()  # the copies that last read this set have run
        hi[0], hi[1], hi[2], hi[3] = 0, 0, self.scratch_page, 0
        ht.fill(self.scratch_page)
        ha.fill(self.scratch_page)
        hm.fill(0)
        hm[:, 3] = 1
        for r, (tok, start, pos, table, anchors, a, window) in enumerate(rows):
            lo = 0 if window < 0 else max(0, start - window + 1)
            if len(table) > self.blocks or len(anchors) > self.anchor_blocks:
                raise ValueError("block table wider than the step was built for")
            hi[0, r], hi[1, r], hi[2, r], hi[3, r] = tok, pos, table[start // PAGE_TOKENS], start % PAGE_TOKENS
            ht[r, : len(table)] = table
            if anchors:
                ha[r, : len(anchors)] = anchors
            hm[r, 0], hm[r, 1], hm[r, 2] = a, lo, start
            hm[r, 3] = -(-a // PAGE_TOKENS) + start // PAGE_TOKENS - lo // PAGE_TOKENS + 1
        nb = self.device.type == "cuda"
        if self.sample:
            hs[:] = self._np_greedy
            for r, row in enumerate(samples or []):
                hs[r] = row
            self.samp.copy_(h_samp, non_blocking=nb)
        if eos is not None:
            he.fill(-1)
            for r, ids in enumerate(eos):
                if len(ids) > EOS_MAX:
                    raise ValueError(f"{len(ids)} end-of-sequence ids: at most {EOS_MAX}")
                he[r, : len(ids)] = ids
            self.eos.copy_(h_eos, non_blocking=nb)
        self.i64.copy_(h_i64, non_blocking=nb)
        self.tables.copy_(h_tables, non_blocking=nb)
        self.anchor_tables.copy_(h_anchor, non_blocking=nb)
        self.meta.copy_(h_meta, non_blocking=nb)
        if nb:
            ev = self._copied[turn] = self._copied[turn] or torch.cuda.Event()
            ev.record()

    def feed(self, tokens: torch.Tensor, eos: bool = False) -> None:
        """Make the device tokens ``tokens`` (int64 [n], a previous step's samples) the first n
        rows' input tokens, after `load` and before `run`: a round launched before the host has
        read the tokens it feeds. ``eos``: a row whose token is one of its `load`ed
        end-of-sequence ids writes its K/V into the scratch page instead of its own: its
        sequence has finished, and the round's result for it is thrown away."""
        n = tokens.shape[0]
        self.i64[0, :n].copy_(tokens)
        if eos:
            done = (tokens[:, None] == self.eos[:n]).any(dim=1)
            self.i64[2, :n] = torch.where(done, self.scratch_page, self.i64[2, :n])

    def run(self) -> None:
        """Run the step on the loaded rows (a graph replay on CUDA)."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self._forward()

    def _forward(self) -> None:
        """`spec.model.forward` of one token per row, over the static buffers (`spec.model`'s
        `_attention_block` and `_mlp_block`, in their order)."""
        if self.w.kernels:
            from fieldprint_fast.kernels import rowops as ops
            from fieldprint_fast.kernels.kv_write import rope_write_kv
            attention = partial(_attention, n_max=self.n_max)
        else:
            from spec import ops
            rope_write_kv = _spec_rope_write_kv
            attention = _spec_attention
        w, c, p = self.w, self.w.config, self.w.profile
        t = w.tensors
        data = self.pool.data
        tokens, pos, page, slot = self.i64
        h, d = c.num_heads, c.head_dim
        qd = h * d
        eps = t["rms.eps"]
        x = ops.embed(tokens, t["embed.weight"], t["embed.mul"], t["embed.shift"])
        for n, L in enumerate(w.layers):
            # -- attention: norm + q/k/v (one linear); RoPE, K/V into their slots and the query's
            #    quantization (one launch); attend; o -------------------------------------------------
            qkv = L["qkv"].normed(x, L["attn_norm"], eps)
            q = rope_write_kv(qkv, pos, page, slot, data, n, t["rope.cos"], t["rope.sin"], h, p.q_bits)
            o = attention(q, data, n, self.tables, self.anchor_tables, self.meta, q_bits=p.q_bits,
                          prob_bits=p.prob_bits, exp_table=w.exp_table)
            # residual_add(x, o(...)) in the epilogue; the residual stream (and gate/up) as int32:
            # the same values, half the bytes for every statistics pass and residual read
            x = L["o"].rows(o.reshape(-1, qd), residual=x, out_dtype=torch.int32)
            # -- MLP: norm + gate/up (one linear), SwiGLU, down ---------------------------------------
            gu = L["gate_up"].normed(x, L["mlp_norm"], eps, out_dtype=torch.int32)
            x = L["down"].gated(gu, t["sigmoid.table"], residual=x, out_dtype=torch.int32)
        self.logits = w.lm_head.normed(x, t["final_norm.gamma"], eps)
        if self.sample:  # every row by its own parameters (greedy rows included)
            self.tokens = sample_rows(self.logits, SamplingRows.from_tensor(self.samp), w.exp_table)
        else:
            self.tokens = greedy_rows(self.logits)  # the largest logit, the lowest id among ties
        if self.digest:  # uint8 [batch, 32]: BLAKE3 of each row's int64 LE bytes
            if w.kernels and self.device.type == "cuda":
                from fieldprint_fast.kernels.blake3 import blake3

                self.digests = blake3(self.logits)
            else:
                from fieldprint_fast.hashing import hash_pages

                self.digests = hash_pages(self.logits).digests
