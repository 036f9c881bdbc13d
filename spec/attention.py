"""Paged attention semantics: the KV page pool, anchors, windows and the exact integer softmax.

Visibility. A query at context index i (RoPE position A + i, A = anchor length) sees every anchor
token and the context tokens j with j <= i and, when a window W is set, i - j < W. Anchor and
context keys join ONE softmax over [K_anchor, K_context], [V_anchor, V_context].

Softmax and values (numerics/2). Scores s_j are exact; the row maximum m is the exact maximum
over every visible key, and the numerators e_j = exp_neg(m - s_j) lie in [0, 2**30] (the maximum
has e = 2**30 exactly); Z = sum e_j. Each V row is q_j * mv_j * 2**ev_j (int8 q_j, its page row
scale); with E = max ev_j over the visible keys, the key's integer *weight* folds the row scale in,

    w_j = round(e_j * mv_j * 2**(ev_j - E - (EXP_FRAC_BITS + SCALE_MANT_BITS - P)))  in [0, 2**P]

(P = prob_bits), so the mix is one exact integer product of weights and int8 values,
N = sum_j w_j q_j (|N| < 2**18 * 2**P * 127), and the output divides once per element:

    out = round(N * 2**k / Z),  k = E + EXP_FRAC_BITS + SCALE_MANT_BITS - P,  saturated to ACT_MAX.

m and E are exact maxima and N, Z exact integer sums, so a kernel may split the keys anywhere and
combine the parts exactly. Every rounding is half away from zero (`spec.quant`). A row sees
fewer than 2**18 keys (so Z < 2**48).
"""
from __future__ import annotations

import torch

from spec.constants import (
    ACT_FRAC_BITS, EXP_FRAC_BITS, KV_SCALE_BYTES, PAGE_TOKENS, SCALE_MANT_BITS, SCORE_FRAC_BITS, SCORE_MAX,
)
from spec.ops import exp_neg
from spec.quant import div_round_pow2, int_matmul, quantize_rows, round_shift, saturate, shift_round

MAX_KEYS = 2**18  # (= 262,144) a query sees fewer keys than this, so Z = sum e < 2**48


class KVPool:
    """Paged int8 KV cache shared by all sequences.

    `data` is ONE contiguous int8 tensor of shape
    [num_pages, num_layers, 2 (0 = K, 1 = V), PAGE_TOKENS, num_kv_heads, head_dim + 4];
    data[p] holds everything about page p for all layers. Each (layer, K|V, slot, head) row is
    head_dim int8 values q followed by 4 scale bytes: m as uint16 little-endian, e as int8, a zero
    byte; the row's Q16 values are q * m * 2**e (`spec.quant.dequantize_rows`). An empty slot is
    all zero bytes. The ledger hashes exactly these bytes: BLAKE3 of each layer slice data[p, i] in
    C order (int8: no byte order), and the page digest is their Merkle root (`spec.commits.page_digest`).
    """

    def __init__(self, data: torch.Tensor):
        assert data.dtype == torch.int8 and data.dim() == 6 and data.shape[3] == PAGE_TOKENS
        self.data = data

    @classmethod
    def allocate(cls, config, profile, num_pages: int, device="cpu") -> "KVPool":
        """Return a zeroed pool of `num_pages` pages for `config` (profile.kv_bits must be 8)."""
        if profile.kv_bits != 8:
            raise ValueError("the page format stores int8 K/V (profile.kv_bits must be 8)")
        shape = (num_pages, config.num_layers, 2, PAGE_TOKENS, config.num_kv_heads, config.head_dim + KV_SCALE_BYTES)
        return cls(torch.zeros(shape, dtype=torch.int8, device=device))

    def page_bytes(self, page: int) -> bytes:
        """Return page `page`'s canonical bytes (C order; int8 has no byte order)."""
        return self.data[page].contiguous().cpu().numpy().tobytes()

    def copy_page(self, src: int, dst: int) -> None:
        """Copy page src over page dst (copy-on-write rollback)."""
        self.data[dst].copy_(self.data[src])


def _to_byte(x: torch.Tensor) -> torch.Tensor:
    """Return the int8 whose two's-complement bits are the low 8 bits of x."""
    b = x & 255
    return (b - ((b >> 7) << 8)).to(torch.int8)


def pack_rows(x: torch.Tensor) -> torch.Tensor:
    """Quantize rows x [..., d] (Q16) to int8 with their row scale; return int8 [..., d + 4] page rows."""
    q, m, e = quantize_rows(x, 8)
    scale = torch.stack([m & 255, m >> 8, e, torch.zeros_like(e)], dim=-1)  # 2**12 < m <= 2**14, |e| < 32
    return torch.cat([_to_byte(q), _to_byte(scale)], dim=-1)


def unpack_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (q, m, e) int64 from int8 page rows [..., d + 4] (inverse of `pack_rows`)."""
    r = rows.to(torch.int64)
    d = rows.shape[-1] - KV_SCALE_BYTES
    return r[..., :d], (r[..., d] & 255) | ((r[..., d + 1] & 255) << 8), r[..., d + 2]


def _slots(block_table: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (page, offset) of logical token indices idx; refuse evicted (-1) or missing blocks."""
    blocks = idx // PAGE_TOKENS
    if idx.numel() and int(blocks.max()) >= block_table.numel():
        raise ValueError(f"block table of {block_table.numel()} blocks does not cover token {int(idx.max())}")
    pages = block_table.to(device=idx.device, dtype=torch.int64)[blocks]
    if bool((pages < 0).any()):
        raise ValueError(f"a visible block is evicted (block {int(blocks[pages < 0][0])})")
    return pages, idx % PAGE_TOKENS


def write_kv(pool: KVPool, layer: int, block_table: torch.Tensor, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
    """Write K and V rows [T, kv_heads, d] (Q16) of tokens start..start+T-1 into their page slots."""
    pages, offs = _slots(block_table, torch.arange(start, start + k.shape[0], device=k.device))
    pool.data[pages, layer, 0, offs] = pack_rows(k)
    pool.data[pages, layer, 1, offs] = pack_rows(v)


def read_kv(pool: KVPool, layer: int, block_table: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Return the int8 page rows [hi - lo, 2, kv_heads, d + 4] of logical tokens lo..hi-1."""
    pages, offs = _slots(block_table, torch.arange(lo, hi, device=pool.data.device))
    return pool.data[pages, layer, :, offs]


def scores(q: torch.Tensor, q_bits: int, k_rows: torch.Tensor) -> torch.Tensor:
    """Return Q16 scores [H, T, L] of queries q [T, H, d] (Q16, 1/sqrt(d) already folded into W_q)
    against packed keys k_rows [L, G, d + 4] (GQA: head h reads kv head h // (H / G)).

    q is quantized per (token, head) to q_bits: s = qq.kq * mq * mk * 2**(eq + ek - 16), one
    `shift_round`, saturated to SCORE_MAX. Requires qmax(q_bits) * 127 * d * 2**28 < 2**61.
    """
    qq, mq, eq = quantize_rows(q, q_bits)  # [T, H, d], [T, H]
    kq, mk, ek = unpack_rows(k_rows)  # [L, G, d], [L, G]
    h, g = q.shape[1], k_rows.shape[1]
    kv = torch.arange(h, device=q.device) // (h // g)
    acc = torch.stack([int_matmul(qq[:, i], kq[:, kv[i]]) for i in range(h)])  # [H, T, L]
    prod = acc * mq.T[:, :, None] * mk.T[kv][:, None, :]
    sh = 2 * ACT_FRAC_BITS - SCORE_FRAC_BITS - eq.T[:, :, None] - ek.T[kv][:, None, :]
    return saturate(shift_round(prod, sh), SCORE_MAX)


def numerators(s: torch.Tensor, visible: torch.Tensor, exp_table: torch.Tensor) -> torch.Tensor:
    """Return the softmax numerators e [..., L] in [0, 2**30]: exact max m over the visible scores,
    e = exp_neg(m - s), 0 where not visible. Each row must see at least one key (its maximum has
    e = 2**30 exactly, so Z = sum e >= 2**30)."""
    m = torch.where(visible, s, -SCORE_MAX - 1).amax(-1, keepdim=True)
    return torch.where(visible, exp_neg(m - s, exp_table), 0)


def value_weights(e: torch.Tensor, visible: torch.Tensor, mv: torch.Tensor, ev: torch.Tensor,
                  prob_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (w, E): the integer weights w [..., L] in [0, 2**prob_bits] and the common value
    exponent E [..., 1] = max ev over the visible keys (`mv`, `ev`: V row scales broadcast to e).

    w = round(e * mv * 2**-(E - ev + EXP_FRAC_BITS + SCALE_MANT_BITS - prob_bits)): e * mv <= 2**44,
    and the shift is >= 14 (prob_bits <= 30), clamped at 62 (any larger shift gives 0 anyway)."""
    big = torch.where(visible, ev, -(1 << 62)).amax(-1, keepdim=True)
    sh = (big - ev + EXP_FRAC_BITS + SCALE_MANT_BITS - prob_bits).clamp(max=62)
    return torch.where(visible, round_shift(e * mv, sh), 0), big


def mix_values(e: torch.Tensor, visible: torch.Tensor, v_rows: torch.Tensor, prob_bits: int) -> torch.Tensor:
    """Return the Q16 output [T, H, d] = round(N * 2**k / Z), saturated, from the numerators
    e [H, T, L] (`numerators`) and the packed values v_rows [L, G, d + 4] (GQA: head h reads kv
    head h // (H / G)): w, E = `value_weights`, N = w @ q (exact, |N| < 2**(prob_bits + 25)),
    Z = sum e (< 2**48), k = E + EXP_FRAC_BITS + SCALE_MANT_BITS - prob_bits."""
    vq, mv, ev = unpack_rows(v_rows)  # [L, G, d], [L, G]
    h, g = e.shape[0], vq.shape[1]
    kv = torch.arange(h, device=e.device) // (h // g)
    vis = visible.expand_as(e)
    w, big = value_weights(e, vis, mv.T[kv][:, None, :], ev.T[kv][:, None, :], prob_bits)
    bound = (1 << prob_bits) * 127 * e.shape[-1]
    n = torch.stack([int_matmul(w[i], vq[:, kv[i]].T, bound=bound) for i in range(h)])  # [H, T, d]
    z = e.sum(-1, keepdim=True)
    k = big + EXP_FRAC_BITS + SCALE_MANT_BITS - prob_bits
    return saturate(div_round_pow2(n, z, k)).permute(1, 0, 2)


def visibility(query_idx: torch.Tensor, anchor_len: int, lo: int, hi: int, window: int | None) -> torch.Tensor:
    """Return bool [T, A + hi - lo]: anchors always; context j in [lo, hi) iff j <= i and (i - j < window)."""
    j = torch.arange(lo, hi, device=query_idx.device)
    ctx = j[None, :] <= query_idx[:, None]
    if window is not None:
        ctx &= query_idx[:, None] - j[None, :] < window
    return torch.cat([torch.ones(query_idx.numel(), anchor_len, dtype=torch.bool, device=query_idx.device), ctx], dim=1)


def visible_rows(pool: KVPool, layer: int, block_table: torch.Tensor, start: int, t: int, anchors,
                 window: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rows, vis) for queries at context indices start..start+t-1: the packed K/V rows
    [A + n, 2, kv_heads, d + 4] of the anchor tokens, then of context tokens [lo, start + t) with
    lo = max(0, start - window + 1) (0 without a window), and their `visibility` [t, A + n]."""
    lo = 0 if window is None else max(0, start - window + 1)
    rows = read_kv(pool, layer, block_table, lo, start + t)
    a = 0 if anchors is None else anchors.length
    if a:
        rows = torch.cat([read_kv(pool, layer, anchors.block_table, 0, a), rows])
    return rows, visibility(torch.arange(start, start + t, device=pool.data.device), a, lo, start + t, window)


def paged_attention(q: torch.Tensor, pool: KVPool, layer: int, block_table: torch.Tensor, start: int,
                    anchors, window: int | None, q_bits: int, prob_bits: int, exp_table: torch.Tensor) -> torch.Tensor:
    """Return the Q16 attention output [T, H, d] of queries q [T, H, d] at context indices
    start..start+T-1 over anchor pages (all visible) and context pages (causal, optional window).

    The chunk's own K/V must already be written (`write_kv`). Only context tokens
    [max(0, start - window + 1), start + T) are read, so blocks before the window may be evicted.
    """
    rows, vis = visible_rows(pool, layer, block_table, start, q.shape[0], anchors, window)
    if rows.shape[0] >= MAX_KEYS:
        raise ValueError(f"attention over {rows.shape[0]} keys: at most {MAX_KEYS - 1} (Z < 2**48)")
    e = numerators(scores(q, q_bits, rows[:, 0]), vis[None], exp_table)
    return mix_values(e, vis[None], rows[:, 1], prob_bits)
