"""The attention rule of numerics/1, frozen for one purpose: measuring a numerics revision against
it in the same fidelity run (`python -m benchmarks.fidelity --baseline-attention`). Not normative,
not used by any engine; the rule in force is `spec.attention`.

numerics/1: p_j = floor(e_j * 2**P / Z) on the grid 2**-P, V dequantized to Q16 per element,
out = round(sum_j p_j v_j * 2**-P).
"""
from __future__ import annotations

import torch

from spec.attention import numerators, scores, unpack_rows, visible_rows
from spec.quant import absmax, dequantize_rows, floor_div, int_matmul, round_shift


def softmax_v1(s, visible, exp_table, prob_bits):
    """Return the numerics/1 probabilities floor(e * 2**P / sum e) (0 where not visible)."""
    e = numerators(s, visible, exp_table)
    return floor_div(e << prob_bits, e.sum(-1, keepdim=True))


def mix_values_v1(p, v_rows, prob_bits):
    """Return the numerics/1 output round(sum_j p_j v_j * 2**-P), v_j dequantized to Q16."""
    vq, mv, ev = unpack_rows(v_rows)
    v = dequantize_rows(vq, mv, ev)
    h, g = p.shape[0], v.shape[1]
    kv = torch.arange(h, device=p.device) // (h // g)
    bound = (1 << prob_bits) * absmax(v)
    out = torch.stack([int_matmul(p[i], v[:, kv[i]].T, bound=bound) for i in range(h)], dim=1)
    return round_shift(out, prob_bits)


def paged_attention_v1(q, pool, layer, block_table, start, anchors, window, q_bits, prob_bits, exp_table):
    """`spec.attention.paged_attention` with the numerics/1 softmax and value mixing."""
    rows, vis = visible_rows(pool, layer, block_table, start, q.shape[0], anchors, window)
    p = softmax_v1(scores(q, q_bits, rows[:, 0]), vis[None], exp_table, prob_bits)
    return mix_values_v1(p, rows[:, 1], prob_bits)
