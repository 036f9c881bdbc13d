"""
BLAKE3 over a batch of pages, in one Triton launch
==================================================

Hashes ``N`` messages of ``L`` bytes each (KV-cache pages, typically 4, 16 or 64 KiB) and
returns one 32-byte digest per message, bit for bit equal to ``blake3.blake3(msg).digest()``
(plain hash), ``blake3.blake3(msg, key=k)`` (keyed hash) or
``blake3.blake3(msg, derive_key_context=ctx)`` (key derivation), for any ``L >= 0``.

The algorithm is the one of the BLAKE3 paper (https://github.com/BLAKE3-team/BLAKE3-specs,
``blake3.pdf``) and of its reference implementation (``reference_impl/reference_impl.rs`` in
https://github.com/BLAKE3-team/BLAKE3); the helpers below carry the reference's names
(``_g``, ``_round``, ``_permute``, ``_compress``). Every message is a full BLAKE3 tree:

* the message is cut into 1024-byte *chunks* (the last one may be partial; an empty message
  is one empty chunk); a chunk is compressed block by block (64-byte blocks, the last block
  zero-padded, its true length in ``block_len``), starting from the key, with the chunk's
  index as the counter and the flags ``CHUNK_START`` / ``CHUNK_END`` on its first / last block;
* chunk chaining values (CVs) are merged pairwise into *parent* nodes
  (``compress(key, left || right, 0, 64, PARENT)``). The tree is left-full: merging level by
  level, pairing nodes ``(2i, 2i+1)`` and promoting an odd last node unchanged, builds exactly
  the tree of the paper (left subtree = largest power of two of chunks, section 2.1);
* the last compression (the root parent, or the last block of a one-chunk message) also
  carries ``ROOT``; its first 8 output words, little-endian, are the 32-byte digest.

Parallel layout
---------------
One *lane* is one chunk. Lanes of message ``n`` are ``n * SPAN .. n * SPAN + SPAN - 1``, where
``SPAN`` is the number of chunks rounded up to a power of two (the padding lanes are idle).
A program owns ``BLOCK`` consecutive lanes (a power of two), so it holds either
``BLOCK / SPAN`` whole messages or one aligned, power-of-two group of chunks of one message.

1. *Chunk stage* (``_chunk_kernel``): every lane runs its chunk's 16 block compressions, all
   lanes in lock step (vectors of ``BLOCK`` 32-bit words, one per chunk, as SIMD BLAKE3 does on
   CPUs). Block words are loaded as a ``[BLOCK, 16]`` tile (row = 64 bytes of one chunk) and
   split into 16 column vectors, see ``_unpack16``.
2. *Merge in the program* (``_merge``): ``log2(min(SPAN, BLOCK))`` levels of parent
   compressions; at level ``l`` the lane at node position ``p`` (a multiple of ``2**(l+1)``)
   takes the node of lane ``p + 2**l`` through a per-lane scratch slot. The parent made at
   level ``ceil(log2(chunks))`` carries ``ROOT`` and is the digest; when a message spans
   several programs each program ends with the CV of a full subtree of ``BLOCK`` chunks.
3. *Parent stage* (``_parent_kernel``), only for messages longer than ``BLOCK`` chunks: the
   same merge over the subtree CVs, repeated until one node per message is left.

All arithmetic is on ``tl.uint32``: ``+`` wraps modulo 2**32, ``>>`` is a logical shift, and
rotations are ``(x >> n) | (x << (32 - n))``, which LLVM turns into funnel shifts.

Inputs are read in place: a message is row ``n`` of a 2-D byte tensor, or row
``index[n]`` of a page pool (``HAS_INDEX``), so KV pages are hashed through a block table
without a gather. When ``L`` and the row stride are multiples of 4 the kernel loads 32-bit
words (``WORDS``), otherwise bytes, assembled little-endian.

A program can also loop over several tiles of ``BLOCK`` lanes (``max_programs``), which
bounds the SMs hashing holds while another stream runs.

Limits: fewer than 2**31 lanes per launch (2 TiB); 32-byte output only (no extended output).
Measured on an H100: about 1.2 TB/s for 16 KiB pages, at ~90 % of the INT32 ALU ceiling
(BLAKE3 is compute-bound on the GPU); method, numbers and the ceiling are in
``docs/fast/blake3.md``.

Run ``python -m fieldprint_fast.kernels.blake3`` on a CUDA machine for a short benchmark.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

# %%
# Constants (BLAKE3 paper, section 2.1 and table 3; reference_impl.rs)
# --------------------------------------------------------------------

# Module globals read by @triton.jit code must be tl.constexpr; host code reads `.value`.
OUT_LEN = tl.constexpr(32)  # bytes of a digest (= 8 words)
KEY_LEN = tl.constexpr(32)  # bytes of a key (= 8 words)
BLOCK_LEN = tl.constexpr(64)  # bytes per compression (= 16 words)
CHUNK_LEN = tl.constexpr(1024)  # bytes per chunk (= 16 blocks)

CHUNK_START = tl.constexpr(1 << 0)  # (= 1)
CHUNK_END = tl.constexpr(1 << 1)  # (= 2)
PARENT = tl.constexpr(1 << 2)  # (= 4)
ROOT = tl.constexpr(1 << 3)  # (= 8)
KEYED_HASH = tl.constexpr(1 << 4)  # (= 16)
DERIVE_KEY_CONTEXT = tl.constexpr(1 << 5)  # (= 32)
DERIVE_KEY_MATERIAL = tl.constexpr(1 << 6)  # (= 64)

IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
MSG_PERMUTATION = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)


# %%
# Helpers: the compression function
# ---------------------------------
# Straight transcriptions of reference_impl.rs (`g`, `round`, `permute`, `compress`) on
# vectors of uint32, one element per lane.


@triton.jit
def _g(a, b, c, d, mx, my):
    """The mixing function G (reference_impl.rs `g`).

    ``(x >> n) | (x << (32 - n))`` is a right rotation of uint32 ``x`` by ``n`` (written out
    rather than a helper: the interpreter pays per call, and LLVM emits one funnel shift).
    """
    a = a + b + mx
    d = d ^ a
    d = (d >> 16) | (d << 16)
    c = c + d
    b = b ^ c
    b = (b >> 12) | (b << 20)
    a = a + b + my
    d = d ^ a
    d = (d >> 8) | (d << 24)
    c = c + d
    b = b ^ c
    b = (b >> 7) | (b << 25)
    return a, b, c, d


@triton.jit
def _round(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15,
           m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15):
    """One round: G on the four columns, then on the four diagonals (reference `round`)."""
    # -- columns ----
    s0, s4, s8, s12 = _g(s0, s4, s8, s12, m0, m1)
    s1, s5, s9, s13 = _g(s1, s5, s9, s13, m2, m3)
    s2, s6, s10, s14 = _g(s2, s6, s10, s14, m4, m5)
    s3, s7, s11, s15 = _g(s3, s7, s11, s15, m6, m7)
    # -- diagonals ----
    s0, s5, s10, s15 = _g(s0, s5, s10, s15, m8, m9)
    s1, s6, s11, s12 = _g(s1, s6, s11, s12, m10, m11)
    s2, s7, s8, s13 = _g(s2, s7, s8, s13, m12, m13)
    s3, s4, s9, s14 = _g(s3, s4, s9, s14, m14, m15)
    return s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15


@triton.jit
def _permute(m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15):
    """Reorder the message words by MSG_PERMUTATION (reference `permute`); free at run time."""
    return m2, m6, m3, m10, m7, m0, m4, m13, m1, m11, m12, m5, m9, m14, m15, m8


@triton.jit
def _compress(h0, h1, h2, h3, h4, h5, h6, h7,
              m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15,
              counter_lo, counter_hi, block_len, flags):
    """Return the first 8 output words of compress(cv, block, counter, block_len, flags).

    These are the new chaining value, or the digest when ``flags`` has ROOT (reference
    `compress` followed by `first_8_words`). All arguments are uint32 vectors of one shape.
    """
    s0, s1, s2, s3, s4, s5, s6, s7 = h0, h1, h2, h3, h4, h5, h6, h7
    s8 = tl.full(counter_lo.shape, 0x6A09E667, tl.uint32)  # IV[0..4]
    s9 = tl.full(counter_lo.shape, 0xBB67AE85, tl.uint32)
    s10 = tl.full(counter_lo.shape, 0x3C6EF372, tl.uint32)
    s11 = tl.full(counter_lo.shape, 0xA54FF53A, tl.uint32)
    s12, s13, s14, s15 = counter_lo, counter_hi, block_len, flags
    for r in tl.static_range(7):
        s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15 = _round(
            s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15,
            m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15)
        if r < 6:
            m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15 = _permute(
                m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15)
    return s0 ^ s8, s1 ^ s9, s2 ^ s10, s3 ^ s11, s4 ^ s12, s5 ^ s13, s6 ^ s14, s7 ^ s15


# %%
# Helpers: loading blocks
# -----------------------
# A block of every lane arrives as one [BLOCK, 16] tile of words (64 contiguous bytes per
# row, so the load is wide and coalesced along rows); `_unpack16` then splits the 16 columns
# into 16 vectors by halving the last axis four times (tl.split takes a trailing axis of 2).


@triton.jit
def _unpack16(x, BLOCK: tl.constexpr):
    """Split a [BLOCK, 16] tile into its 16 columns, returned in column order."""
    a, b = tl.split(tl.reshape(x, [BLOCK, 8, 2]))  # a: words 0,2,..,14   b: 1,3,..,15
    a0, a1 = tl.split(tl.reshape(a, [BLOCK, 4, 2]))  # a0: 0,4,8,12        a1: 2,6,10,14
    b0, b1 = tl.split(tl.reshape(b, [BLOCK, 4, 2]))  # b0: 1,5,9,13        b1: 3,7,11,15
    a00, a01 = tl.split(tl.reshape(a0, [BLOCK, 2, 2]))  # 0,8     4,12
    a10, a11 = tl.split(tl.reshape(a1, [BLOCK, 2, 2]))  # 2,10    6,14
    b00, b01 = tl.split(tl.reshape(b0, [BLOCK, 2, 2]))  # 1,9     5,13
    b10, b11 = tl.split(tl.reshape(b1, [BLOCK, 2, 2]))  # 3,11    7,15
    w0, w8 = tl.split(a00)
    w4, w12 = tl.split(a01)
    w2, w10 = tl.split(a10)
    w6, w14 = tl.split(a11)
    w1, w9 = tl.split(b00)
    w5, w13 = tl.split(b01)
    w3, w11 = tl.split(b10)
    w7, w15 = tl.split(b11)
    return w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15


@triton.jit
def _load_block(src_ptr, row_off, byte_off, lane_ok, L, BLOCK: tl.constexpr, WORDS: tl.constexpr,
                FULL: tl.constexpr):
    """Load bytes [byte_off, byte_off + 64) of every lane's message as a [BLOCK, 16] uint32 tile.

    ``row_off`` is each lane's message start (in words if WORDS, else in bytes) and ``L`` its
    message length (a [BLOCK] vector); bytes at or past ``L`` read as zero (BLAKE3 pads the
    last block with zeros). ``FULL``: every block is whole (L a multiple of 64), so a lane's
    mask is enough (one predicate per lane instead of one compare per word).
    """
    if WORDS:
        j = tl.arange(0, 16)
        ptrs = src_ptr + (row_off + byte_off // 4)[:, None] + j[None, :]
        if FULL:
            mask = lane_ok[:, None]  # broadcast over the 16 words by tl.load
        else:
            mask = lane_ok[:, None] & ((byte_off[:, None] + 4 * j[None, :]) < L[:, None])
        x = tl.load(ptrs, mask=mask, other=0).to(tl.uint32, bitcast=True)
    else:
        j = tl.arange(0, 64)
        pos = byte_off[:, None] + j[None, :]
        mask = lane_ok[:, None] & (pos < L[:, None])
        x = tl.load(src_ptr + row_off[:, None] + pos, mask=mask, other=0).to(tl.uint32)
        # little-endian: byte 4w + k of the block is bits 8k..8k+7 of word w
        e, o = tl.split(tl.reshape(x, [BLOCK, 16, 2, 2]))  # e: bytes 0,2   o: bytes 1,3
        b0, b2 = tl.split(e)
        b1, b3 = tl.split(o)
        x = b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)
    return x


# %%
# Helpers: merging chaining values
# --------------------------------
# Level by level, node pairs (2i, 2i+1) become one parent; a left node whose right sibling
# does not exist (the odd last node of a level) moves up unchanged. Level `lvl` pairs the
# lanes `pos` and `pos + 2**lvl` of one message, where `pos` is the lane's node index in its
# message (2**(lvl+1) divides `pos`); the right node's words pass through a per-lane scratch
# slot in global memory (written, barrier, read, barrier). The loop over levels is a run-time
# loop, so the kernel holds two copies of the compression (chunks, parents) whatever the
# page size: unrolled levels made compile times grow to minutes.


@triton.jit
def _store8(out_ptr, node, mask, c0, c1, c2, c3, c4, c5, c6, c7):
    """Store 8 words per node at out[node, 0:8] (int32 buffer)."""
    base = out_ptr + node.to(tl.int64) * 8
    tl.store(base + 0, c0.to(tl.int32, bitcast=True), mask=mask)
    tl.store(base + 1, c1.to(tl.int32, bitcast=True), mask=mask)
    tl.store(base + 2, c2.to(tl.int32, bitcast=True), mask=mask)
    tl.store(base + 3, c3.to(tl.int32, bitcast=True), mask=mask)
    tl.store(base + 4, c4.to(tl.int32, bitcast=True), mask=mask)
    tl.store(base + 5, c5.to(tl.int32, bitcast=True), mask=mask)
    tl.store(base + 6, c6.to(tl.int32, bitcast=True), mask=mask)
    tl.store(base + 7, c7.to(tl.int32, bitcast=True), mask=mask)


@triton.jit
def _load8(ptr, node, mask):
    """Load 8 words per node from ptr[node, 0:8] (int32 buffer) as uint32 vectors."""
    base = ptr + node.to(tl.int64) * 8
    c0 = tl.load(base + 0, mask=mask, other=0).to(tl.uint32, bitcast=True)
    c1 = tl.load(base + 1, mask=mask, other=0).to(tl.uint32, bitcast=True)
    c2 = tl.load(base + 2, mask=mask, other=0).to(tl.uint32, bitcast=True)
    c3 = tl.load(base + 3, mask=mask, other=0).to(tl.uint32, bitcast=True)
    c4 = tl.load(base + 4, mask=mask, other=0).to(tl.uint32, bitcast=True)
    c5 = tl.load(base + 5, mask=mask, other=0).to(tl.uint32, bitcast=True)
    c6 = tl.load(base + 6, mask=mask, other=0).to(tl.uint32, bitcast=True)
    c7 = tl.load(base + 7, mask=mask, other=0).to(tl.uint32, bitcast=True)
    return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def _merge(c0, c1, c2, c3, c4, c5, c6, c7, lane, pos, count, top,
           k0, k1, k2, k3, k4, k5, k6, k7, scratch_ptr, LEVELS, FLAGS):
    """Merge ``LEVELS`` levels; afterwards the lanes with ``pos % 2**LEVELS == 0`` hold the nodes.

    ``lane`` is the global lane (its scratch slot), ``pos`` the lane's node index in its
    message, ``count`` the message's number of nodes, and ``top`` the level of the message's
    root (ceil(log2(chunks))): the parent made at that level gets ROOT.
    """
    zero = tl.zeros_like(c0)
    for lvl in range(0, LEVELS):
        stride = 1 << lvl
        has_right = ((pos & (2 * stride - 1)) == 0) & (pos + stride < count)
        _store8(scratch_ptr, lane, pos < count, c0, c1, c2, c3, c4, c5, c6, c7)
        tl.debug_barrier()  # the right node's words are in scratch
        r0, r1, r2, r3, r4, r5, r6, r7 = _load8(scratch_ptr, lane + stride, has_right)
        tl.debug_barrier()  # read before the next level overwrites
        flags = (tl.where(top == lvl + 1, ROOT | PARENT, PARENT) | FLAGS).to(tl.uint32)
        p0, p1, p2, p3, p4, p5, p6, p7 = _compress(
            zero + k0, zero + k1, zero + k2, zero + k3, zero + k4, zero + k5, zero + k6, zero + k7,
            c0, c1, c2, c3, c4, c5, c6, c7, r0, r1, r2, r3, r4, r5, r6, r7,
            zero, zero, zero + BLOCK_LEN, flags)
        c0 = tl.where(has_right, p0, c0)
        c1 = tl.where(has_right, p1, c1)
        c2 = tl.where(has_right, p2, c2)
        c3 = tl.where(has_right, p3, c3)
        c4 = tl.where(has_right, p4, c4)
        c5 = tl.where(has_right, p5, c5)
        c6 = tl.where(has_right, p6, c6)
        c7 = tl.where(has_right, p7, c7)
    return c0, c1, c2, c3, c4, c5, c6, c7


# %%
# Compute kernels
# ---------------


@triton.jit
def _load_key(key_ptr):
    """Load the 8 key words (IV, the key, or the derived context key)."""
    k0 = tl.load(key_ptr + 0).to(tl.uint32, bitcast=True)
    k1 = tl.load(key_ptr + 1).to(tl.uint32, bitcast=True)
    k2 = tl.load(key_ptr + 2).to(tl.uint32, bitcast=True)
    k3 = tl.load(key_ptr + 3).to(tl.uint32, bitcast=True)
    k4 = tl.load(key_ptr + 4).to(tl.uint32, bitcast=True)
    k5 = tl.load(key_ptr + 5).to(tl.uint32, bitcast=True)
    k6 = tl.load(key_ptr + 6).to(tl.uint32, bitcast=True)
    k7 = tl.load(key_ptr + 7).to(tl.uint32, bitcast=True)
    return k0, k1, k2, k3, k4, k5, k6, k7


# Integer arguments are not specialized (Triton would otherwise compile a variant per
# "== 1" / "multiple of 16" pattern of N, L, strides and levels: dozens of compiles).
@triton.jit(do_not_specialize=["N", "L", "row_stride", "NB", "FLAGS", "LOG2_SPAN", "LEVELS", "TILES"])
def _chunk_kernel(
    # -- pointers ----
    src_ptr,  # uint8 (or int32 if WORDS) base of the messages
    index_ptr,  # int64 [N]: row of message n (HAS_INDEX) or its start in src (RAGGED)
    len_ptr,  # int64 [N]: bytes of message n (RAGGED only)
    key_ptr,  # int32 [8] key words
    out_ptr,  # int32 [N, 8] digests, or [N * SPAN // BLOCK, 8] subtree CVs
    scratch_ptr,  # int32 [lanes, 8] for the merge
    # -- dimensions ----
    N,  # number of messages
    L,  # bytes per message (not RAGGED)
    row_stride,  # elements of src between rows (not RAGGED)
    NB,  # blocks to run per chunk: min(16, max(1, ceil(max length / 64)))
    FLAGS,  # mode flags: 0, KEYED_HASH, DERIVE_KEY_CONTEXT or DERIVE_KEY_MATERIAL
    LOG2_SPAN,  # lanes per message = SPAN = 2**LOG2_SPAN >= chunks of the longest message
    LEVELS,  # merge levels in a program: log2(min(SPAN, BLOCK))
    TILES,  # tiles of BLOCK lanes: ceil(N * SPAN / BLOCK)
    # -- meta-parameters ----
    BLOCK: tl.constexpr,  # lanes per program, a power of two
    HAS_INDEX: tl.constexpr,  # message n is row index[n]
    RAGGED: tl.constexpr,  # message n is bytes index[n] .. index[n] + len[n] of src
    WORDS: tl.constexpr,  # src is int32 words (L and row_stride multiples of 4)
    FULL: tl.constexpr,  # WORDS and L a positive multiple of BLOCK_LEN: no partial block
):
    # -- persistent loop: program p takes tiles p, p + programs, ... (one tile each unless the
    #    launcher caps the grid, e.g. to leave SMs to a main stream) ----
    for tile in range(tl.program_id(0), TILES, tl.num_programs(0)):
        # -- lanes: one chunk each (see `Parallel layout` in the module docstring) ----
        lane = (tile * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)  # < 2**31 lanes (2 TiB)
        msg = lane >> LOG2_SPAN
        chunk = (lane & ((1 << LOG2_SPAN) - 1)).to(tl.int32)
        if RAGGED:
            row_off = tl.load(index_ptr + msg, mask=msg < N, other=0)
            length = tl.load(len_ptr + msg, mask=msg < N, other=0)
        else:
            if HAS_INDEX:
                row = tl.load(index_ptr + msg, mask=msg < N, other=0)
            else:
                row = msg
            row_off = row.to(tl.int64) * row_stride
            length = tl.zeros([BLOCK], tl.int64) + L
        n_chunks = tl.maximum((length + CHUNK_LEN - 1) // CHUNK_LEN, 1).to(tl.int32)
        lane_ok = (msg < N) & (chunk < n_chunks)
        chunk_len = tl.minimum(tl.maximum(length - chunk * CHUNK_LEN, 0), CHUNK_LEN).to(tl.int32)
        n_blocks = tl.maximum((chunk_len + BLOCK_LEN - 1) // BLOCK_LEN, 1)
        # level of the message's root in the merge: ceil(log2(n_chunks)); 0 = the chunk is the root
        top = tl.zeros([BLOCK], tl.int32)
        for k in range(0, LOG2_SPAN):
            top += (n_chunks > (1 << k)).to(tl.int32)

        k0, k1, k2, k3, k4, k5, k6, k7 = _load_key(key_ptr)
        zero = tl.zeros([BLOCK], tl.uint32)
        h0, h1, h2, h3 = zero + k0, zero + k1, zero + k2, zero + k3
        h4, h5, h6, h7 = zero + k4, zero + k5, zero + k6, zero + k7
        counter_lo = chunk.to(tl.uint32)
        end_flags = (top == 0).to(tl.int32) * ROOT + CHUNK_END  # the last block of a lone chunk is the root

        # -- chunk stage: up to 16 blocks per chunk; the next block's load is issued first ----
        chunk_off = chunk.to(tl.int64) * CHUNK_LEN
        tile = _load_block(src_ptr, row_off, chunk_off, lane_ok, length, BLOCK, WORDS, FULL)
        for b in range(0, NB):
            m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15 = _unpack16(tile, BLOCK)
            tile = _load_block(src_ptr, row_off, chunk_off + (b + 1) * BLOCK_LEN,
                               lane_ok & (b + 1 < n_blocks), length, BLOCK, WORDS, FULL)
            block_len = tl.minimum(tl.maximum(chunk_len - b * BLOCK_LEN, 0), BLOCK_LEN)
            flags = tl.where(b == 0, CHUNK_START, 0) | tl.where(b == n_blocks - 1, end_flags, 0) | FLAGS
            g0, g1, g2, g3, g4, g5, g6, g7 = _compress(
                h0, h1, h2, h3, h4, h5, h6, h7,
                m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15,
                counter_lo, zero, block_len.to(tl.uint32), flags.to(tl.uint32))
            live = b < n_blocks  # a short last chunk stops early
            h0 = tl.where(live, g0, h0)
            h1 = tl.where(live, g1, h1)
            h2 = tl.where(live, g2, h2)
            h3 = tl.where(live, g3, h3)
            h4 = tl.where(live, g4, h4)
            h5 = tl.where(live, g5, h5)
            h6 = tl.where(live, g6, h6)
            h7 = tl.where(live, g7, h7)

        # -- merge stage: parents inside the program ----
        h0, h1, h2, h3, h4, h5, h6, h7 = _merge(
            h0, h1, h2, h3, h4, h5, h6, h7, lane, chunk, n_chunks, top,
            k0, k1, k2, k3, k4, k5, k6, k7, scratch_ptr, LEVELS, FLAGS)
        # one node per 2**LEVELS lanes: the message's digest if SPAN <= BLOCK, else a subtree CV
        keep = (msg < N) & ((chunk & ((1 << LEVELS) - 1)) == 0)
        _store8(out_ptr, lane >> LEVELS, keep, h0, h1, h2, h3, h4, h5, h6, h7)


@triton.jit(do_not_specialize=["N", "COUNT", "FLAGS", "LOG2_SPAN", "LEVELS", "ROOT_LEVEL"])
def _parent_kernel(
    # -- pointers ----
    nodes_ptr,  # int32 [N * SPAN, 8] subtree CVs, SPAN per message
    key_ptr,  # int32 [8] key words
    out_ptr,  # int32 [N, 8] digests, or [N * SPAN // BLOCK, 8] CVs
    scratch_ptr,  # int32 [lanes, 8] for the merge
    # -- dimensions ----
    N,  # number of messages
    COUNT,  # subtrees that exist per message (the rest of SPAN is padding)
    FLAGS,  # mode flags
    LOG2_SPAN,  # nodes per message: SPAN = 2**LOG2_SPAN >= 2
    LEVELS,  # merge levels in a program: log2(min(SPAN, BLOCK))
    ROOT_LEVEL,  # LEVELS when a program holds whole messages, else LEVELS + 1 (never)
    # -- meta-parameters ----
    BLOCK: tl.constexpr,
):
    lane = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    msg = lane >> LOG2_SPAN
    pos = (lane & ((1 << LOG2_SPAN) - 1)).to(tl.int32)
    h0, h1, h2, h3, h4, h5, h6, h7 = _load8(nodes_ptr, lane, (msg < N) & (pos < COUNT))
    k0, k1, k2, k3, k4, k5, k6, k7 = _load_key(key_ptr)
    count = tl.zeros([BLOCK], tl.int32) + COUNT
    top = tl.zeros([BLOCK], tl.int32) + ROOT_LEVEL
    h0, h1, h2, h3, h4, h5, h6, h7 = _merge(
        h0, h1, h2, h3, h4, h5, h6, h7, lane, pos, count, top,
        k0, k1, k2, k3, k4, k5, k6, k7, scratch_ptr, LEVELS, FLAGS)
    keep = (msg < N) & ((pos & ((1 << LEVELS) - 1)) == 0)
    _store8(out_ptr, lane >> LEVELS, keep, h0, h1, h2, h3, h4, h5, h6, h7)


# %%
# Launcher
# --------


# Launch shape (benchmarks/results/blake3-H100-*.json, 16 KiB pages, 1 GiB): 128 lanes, 4 warps,
# registers capped at 128 (as fast as uncapped, ~196; a cap of 96 spills and loses 12 %).
MAXNREG = 128


def _next_pow2(x: int) -> int:
    return 1 << (x - 1).bit_length()


# Key words live on the device and are cached: a host-to-device copy from pageable memory
# would block the host until the stream drains, serializing a side stream with its caller.
_KEYS: dict[tuple, torch.Tensor] = {}


def _cached(kind: str, value: bytes, device, make) -> torch.Tensor:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    k = (kind, value, str(device))
    if k not in _KEYS:
        if len(_KEYS) > 256:
            _KEYS.clear()
        _KEYS[k] = make(device)
    return _KEYS[k]


def _iv_words(device) -> torch.Tensor:
    return _cached("iv", b"", device, lambda d: torch.from_numpy(np.array(IV, dtype=np.uint32).view(np.int32)).to(d))


def key_words(key: bytes, device) -> torch.Tensor:
    """Return the 32-byte ``key`` as int32 [8] little-endian words on ``device`` (cached)."""
    if len(key) != KEY_LEN.value:
        raise ValueError(f"a BLAKE3 key is {KEY_LEN.value} bytes, got {len(key)}")
    return _cached("key", bytes(key), device, lambda d: torch.frombuffer(bytearray(key), dtype=torch.int32).to(d))


def _as_rows(pages: torch.Tensor) -> torch.Tensor:
    """View ``pages`` [N, ...] as uint8 [N, L] without copying when rows are contiguous."""
    rows = pages.reshape(pages.shape[0], -1)
    if rows.shape[1] and rows.stride(1) != 1:
        rows = rows.contiguous()
    return rows.view(torch.uint8) if rows.dtype != torch.uint8 else rows


def _log2(x: int) -> int:
    return x.bit_length() - 1


def _launch(src, index, lengths, key, flags, N, L, row_stride, max_len, words, block, num_warps, maxnreg,
            max_programs):
    """Run the chunk stage and as many parent stages as needed; return int32 [N, 8] digests."""
    device = src.device
    C = max(1, -(-max_len // CHUNK_LEN.value))
    SPAN = _next_pow2(C)
    NB = min(CHUNK_LEN.value // BLOCK_LEN.value, max(1, -(-max_len // BLOCK_LEN.value)))
    groups = max(1, SPAN // block)
    tiles = triton.cdiv(N * SPAN, block)
    # (2) allocate the digests, the merge scratch, and subtree CVs when a message spans programs
    out = torch.empty((N, 8), dtype=torch.int32, device=device)
    scratch = torch.empty((tiles * block, 8), dtype=torch.int32, device=device)
    nodes = out if groups == 1 else torch.empty((N * groups, 8), dtype=torch.int32, device=device)
    # (3) launch the chunk stage, then parent stages until one node per message is left
    dummy = out  # stands for the pointers a variant does not read
    opts = {} if maxnreg is None else {"maxnreg": maxnreg}
    grid = tiles if max_programs is None else max(1, min(tiles, max_programs))
    _chunk_kernel[(grid,)](
        src, dummy if index is None else index, dummy if lengths is None else lengths, key, nodes, scratch,
        N, L, row_stride, NB, flags, _log2(SPAN), _log2(min(SPAN, block)), tiles,
        BLOCK=block, HAS_INDEX=index is not None and lengths is None, RAGGED=lengths is not None,
        WORDS=words, FULL=words and lengths is None and L % BLOCK_LEN.value == 0, num_warps=num_warps, **opts)
    span, count = groups, -(-C // block)
    while span > 1:
        levels, groups = _log2(min(span, block)), max(1, span // block)
        nxt = out if groups == 1 else torch.empty((N * groups, 8), dtype=torch.int32, device=device)
        _parent_kernel[(triton.cdiv(N * span, block),)](
            nodes, key, nxt, scratch, N, count, flags, _log2(span), levels,
            levels if groups == 1 else levels + 1, BLOCK=block, num_warps=num_warps, **opts)
        nodes, span, count = nxt, groups, -(-count // block)
    return out


def blake3_rows(rows: torch.Tensor, *, index: torch.Tensor | None = None,
                key: torch.Tensor | None = None, flags: int = 0,
                block: int = 128, num_warps: int = 4, maxnreg: int | None = MAXNREG,
                max_programs: int | None = None) -> torch.Tensor:
    """Hash rows of a uint8 [R, L] tensor (rows ``index`` if given, else all); return int32 [N, 8].

    ``key`` is an int32 [8] tensor of key words on the rows' device (IV when None) and
    ``flags`` the mode flags. ``max_programs`` caps the grid of the chunk stage (each program
    then loops over tiles), which bounds the SMs hashing takes from other streams.
    Requires ``rows.stride(1) == 1``. Runs on the current stream.
    """
    # (1) check the shape constraints
    assert rows.dim() == 2 and rows.dtype == torch.uint8, "rows must be uint8 [R, L]"
    assert rows.shape[1] <= 1 or rows.stride(1) == 1, "rows must be contiguous along L"
    assert block >= 2 and block & (block - 1) == 0, "block must be a power of two"
    R, L = rows.shape
    N = R if index is None else index.numel()
    key = _iv_words(rows.device) if key is None else key
    if N == 0:
        return torch.empty((0, 8), dtype=torch.int32, device=rows.device)
    if index is not None:
        index = index.to(device=rows.device, dtype=torch.int64).contiguous()
    src, row_stride, words = rows, rows.stride(0), False
    if L > 0 and L % 4 == 0 and row_stride % 4 == 0 and rows.data_ptr() % 4 == 0:
        src, row_stride, words = rows.view(torch.int32), row_stride // 4, True
    return _launch(src, index, None, key, flags, N, L, row_stride, L, words, block, num_warps, maxnreg,
                   max_programs)


def blake3_ragged(data: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, *,
                  key: torch.Tensor | None = None, flags: int = 0,
                  block: int = 128, num_warps: int = 4, maxnreg: int | None = MAXNREG) -> torch.Tensor:
    """Hash messages ``data[starts[n] : starts[n] + lengths[n]]`` of a flat uint8 tensor; return int32 [N, 8].

    Messages of any lengths share one launch; the program width grows to hold the longest
    message (at least ``block`` lanes), so this suits many short messages, not huge ones.
    """
    assert data.dim() == 1 and data.dtype == torch.uint8, "data must be flat uint8"
    N = starts.numel()
    assert lengths.numel() == N
    key = _iv_words(data.device) if key is None else key
    if N == 0:
        return torch.empty((0, 8), dtype=torch.int32, device=data.device)
    starts = starts.to(device=data.device, dtype=torch.int64).contiguous()
    lengths = lengths.to(device=data.device, dtype=torch.int64).contiguous()
    max_len = int(lengths.max())
    block = max(block, _next_pow2(max(1, -(-max_len // CHUNK_LEN.value))))
    return _launch(data, starts, lengths, key, flags, N, 0, 0, max_len, False, block, num_warps, maxnreg, None)


def context_key(context: str | bytes, device, *, block: int = 128) -> torch.Tensor:
    """Return the derive-key context key, hash(context) in DERIVE_KEY_CONTEXT mode, as int32 [8] (cached)."""
    data = context.encode("utf-8") if isinstance(context, str) else bytes(context)

    def make(d):
        row = torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(1, -1).to(d) if data \
            else torch.empty((1, 0), dtype=torch.uint8, device=d)
        return blake3_rows(row, flags=DERIVE_KEY_CONTEXT.value, block=block).reshape(8)

    return _cached("context", data, device, make)


def mode(key: bytes | None, derive_key_context: str | bytes | None, device, block: int = 128):
    """Return (key words, flags) for plain hash, keyed hash or derive-key, as the blake3 package."""
    if key is not None and derive_key_context is not None:
        raise ValueError("give at most one of key and derive_key_context")
    if key is not None:
        return key_words(bytes(key), device), KEYED_HASH.value
    if derive_key_context is not None:
        return context_key(derive_key_context, device, block=block), DERIVE_KEY_MATERIAL.value
    return _iv_words(device), 0


def blake3(pages: torch.Tensor, *, index: torch.Tensor | None = None, key: bytes | None = None,
           derive_key_context: str | bytes | None = None, block: int = 128,
           num_warps: int = 4, maxnreg: int | None = MAXNREG, max_programs: int | None = None) -> torch.Tensor:
    """Return the BLAKE3 digests, uint8 [N, 32], of the byte images of ``pages[n]`` (or ``pages[index[n]]``).

    Matches ``blake3.blake3(bytes(page), key=key, derive_key_context=...).digest()``; at most
    one of ``key`` and ``derive_key_context``. Requires ``pages`` with a leading page axis;
    each page is read as its C-order little-endian bytes. Runs on the current stream.
    """
    rows = _as_rows(pages)
    kw, flags = mode(key, derive_key_context, rows.device, block)
    out = blake3_rows(rows, index=index, key=kw, flags=flags, block=block, num_warps=num_warps,
                      maxnreg=maxnreg, max_programs=max_programs)
    return out.view(torch.uint8)


# %%
# Benchmark
# ---------
# GB/s of message bytes for 64 MiB of 4, 16 and 64 KiB pages; `benchmarks/bench_blake3.py`
# runs the full comparison (CPU package, SHA-256 strawman, side-stream overlap).


def bench(total: int = 64 << 20, page_sizes=(4096, 16384, 65536), block: int = 128, num_warps: int = 4):
    """Print GB/s of `blake3` over `total` bytes of pages of each size (needs CUDA)."""
    from triton.testing import do_bench

    for L in page_sizes:
        n = total // L
        copies = max(2, -(-(100 << 20) // total))  # rotate buffers past the 50 MB L2
        bufs = [torch.randint(0, 256, (n, L), dtype=torch.uint8, device="cuda") for _ in range(copies)]
        it = iter(range(1 << 62))
        ms = do_bench(lambda: blake3(bufs[next(it) % copies], block=block, num_warps=num_warps),
                      warmup=100, rep=500, return_mode="median")
        print(f"blake3 pages of {L:>6} B x {n:>6}: {total / ms / 1e6:8.1f} GB/s ({ms:.3f} ms)")


if __name__ == "__main__":
    bench()
