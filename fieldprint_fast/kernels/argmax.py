"""
Greedy tokens: the largest int64 logit of every row, the lowest id among ties, in one launch
===========================================================================================

`spec.sampling.greedy` (rule 1 of `spec.sampling`): the id of the largest logit; among equal
logits, the lowest id. torch does it as two reductions and an elementwise step over the int64
rows (``amax``, then ``where(logits == max, ids, V).amin``): three launches, each reading the
whole [B, V] block, one program per row for the reductions at batch 1 (41 us on the H200 for
a 128K vocabulary, most of it one SM reading 1 MB).

Here the row is split over ``SPLITS`` programs so that the whole GPU reads it:

* program (row, split) scans its part of the row block by block, keeping ``(best, at)``: the
  largest value so far and the lowest id holding it. Blocks are visited in ascending id order,
  so a later block replaces the pair only when its maximum is larger (or equal with a lower id,
  which only a row of nothing but the int64 minimum needs);
* it writes its pair to a workspace and adds one to its row's counter (an atomic with release
  and acquire semantics); the program that brings the counter to ``SPLITS`` is the last of its
  row: it reads every split's pair (volatile loads: after the acquire, from L2) and reduces them
  by the same rule (splits are in ascending id order too), writes the token and resets the
  counter to 0 for the next launch (a captured graph replays the kernel with the same buffers).

The CPU interpreter runs the programs one after another, so the last program there is simply
the last one; no program waits for another, so nothing can deadlock.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

INT64_MIN = tl.constexpr(-(2**63))  # padding lanes: below every logit but the int64 minimum itself
NO_ID = tl.constexpr(2**31 - 1)  # an id past every row


# %%
# Kernel
# ------

@triton.jit
def _better(v, i, best, at):
    """Whether (v, i) beats (best, at) by rule 1: a larger value, or the same value at a lower id."""
    return (v > best) | ((v == best) & (i < at))


@triton.jit
def _greedy_kernel(
    # -- pointers --------------------------------------------------------------------------
    logits_ptr, out_ptr, part_val_ptr, part_at_ptr, count_ptr,
    # -- dimensions and strides -----------------------------------------------------------
    V, stride_row, CHUNK,
    # -- meta-parameters ------------------------------------------------------------------
    SPLITS: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    lo = split * CHUNK
    hi = tl.minimum(lo + CHUNK, V)
    # -- this split's (best, at) ------------------------------------------------------------
    best = tl.full((), INT64_MIN, tl.int64)
    at = tl.full((), NO_ID, tl.int32)
    offs = tl.arange(0, BLOCK)
    for start in range(lo, hi, BLOCK):
        ids = start + offs
        ok = ids < hi
        x = tl.load(logits_ptr + row.to(tl.int64) * stride_row + ids, mask=ok, other=INT64_MIN)
        m = tl.max(x, axis=0)
        i = tl.min(tl.where(ok & (x == m), ids, NO_ID), axis=0)
        take = _better(m, i, best, at)
        best = tl.where(take, m, best)
        at = tl.where(take, i, at)
    tl.store(part_val_ptr + row * SPLITS + split, best)
    tl.store(part_at_ptr + row * SPLITS + split, at)
    # -- the last split of the row reduces the pairs ----------------------------------------
    done = tl.atomic_add(count_ptr + row, 1, sem="acq_rel")
    if done == SPLITS - 1:
        s = tl.arange(0, SPLITS)
        vals = tl.load(part_val_ptr + row * SPLITS + s, volatile=True)
        ats = tl.load(part_at_ptr + row * SPLITS + s, volatile=True)
        m = tl.max(vals, axis=0)
        i = tl.min(tl.where(vals == m, ats, NO_ID), axis=0)
        tl.store(out_ptr + row, i.to(tl.int64))
        tl.store(count_ptr + row, 0)


# %%
# Launcher
# --------

def splits_for(rows: int, vocab: int, block: int) -> int:
    """Return the number of programs per row: about 256 programs in all, a power of two, each
    with at least one block of the row."""
    s = triton.next_power_of_2(max(1, 256 // max(1, rows)))
    return max(1, min(s, triton.next_power_of_2(triton.cdiv(vocab, block)), 128))


def greedy(logits: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Return the greedy token of every row of int64 logits [B, V] (int64 [B]): the largest
    logit, the lowest id among ties (`spec.sampling.greedy` of each row)."""
    # (1) checks
    if logits.dim() != 2 or logits.dtype != torch.int64 or logits.stride(1) != 1:
        raise ValueError(f"greedy: logits must be int64 [B, V] with unit column stride, got "
                         f"{tuple(logits.shape)} {logits.dtype}")
    b, v = logits.shape
    if not 0 < v < 2**31 or b == 0:
        raise ValueError(f"greedy: {b} rows of {v} logits (need B >= 1, 1 <= V < 2**31)")
    # (2) allocation: the counters start at 0 (and the last program of a row puts 0 back)
    splits = splits_for(b, v, block)
    chunk = triton.cdiv(triton.cdiv(v, splits), block) * block
    out = torch.empty(b, dtype=torch.int64, device=logits.device)
    part_val = torch.empty(b, splits, dtype=torch.int64, device=logits.device)
    part_at = torch.empty(b, splits, dtype=torch.int32, device=logits.device)
    count = torch.zeros(b, dtype=torch.int32, device=logits.device)
    # (3) launch
    _greedy_kernel[(b, splits)](logits, out, part_val, part_at, count, v, logits.stride(0), chunk,
                                SPLITS=splits, BLOCK=block)
    return out


def bench(rows=(1, 64), vocab: int = 128256) -> None:
    """Print microseconds per call of `greedy` and of torch's three-launch form (CUDA)."""
    from fieldprint_fast.sampling import greedy_rows

    for b in rows:
        x = torch.randint(-2**40, 2**40, (b, vocab), dtype=torch.int64, device="cuda")
        for name, fn in (("triton", greedy), ("torch", lambda t: greedy_rows(t, kernel=False))):
            ms = triton.testing.do_bench(lambda: fn(x))
            print(f"B={b:<3} {name:6} {ms * 1e3:8.1f} us")


if __name__ == "__main__":
    bench()
