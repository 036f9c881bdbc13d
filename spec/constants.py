"""Every named constant of the Fieldprint numeric protocol, named once.

Derived values carry their result in a `(= ...)` annotation. Real numbers are fixed point:
a value `v` with `F` fractional bits is the integer `round(v * 2**F)`.
"""

# -- paged KV cache -------------------------------------------------------------------------
PAGE_TOKENS = 2**4  # (= 16) tokens per KV page
KV_SCALE_BYTES = 4  # trailing bytes per (token, kv head) row of a page: scale mantissa u16 LE, exponent i8, zero pad

# -- fixed-point formats ----------------------------------------------------------------------
ACT_FRAC_BITS = 16  # residual stream / inter-op activations: int32 with 16 fractional bits
ACT_MAX = 2**31 - 1  # (= 2,147,483,647) saturation bound of activations (symmetric)
LOGIT_FRAC_BITS = 16  # logits share the activation format
SCORE_FRAC_BITS = 16  # attention scores q.k/sqrt(d) before softmax
SCORE_MAX = 2**31 - 1  # (= 2,147,483,647) saturation bound of scores
SCALE_MANT_BITS = 14  # dynamic per-row scale mantissa: 2**12 < m <= 2**14
WEIGHT_MANT_BITS = 13  # static per-channel weight multiplier: 2**12 <= m < 2**13
ROPE_FRAC_BITS = 30  # RoPE cos/sin tables
SIGMOID_FRAC_BITS = 16  # sigmoid table values
SIGMOID_DOMAIN = 2**4  # (= 16) sigmoid table covers [-16, 16]
SIGMOID_STEP_BITS = 6  # table step 2**-6 (= 1/64): 2*16*64 + 1 (= 2,049) entries
EXP_FRAC_BITS = 30  # 2**-f table values (softmax numerators)
EXP_TABLE_BITS = 8  # 2**8 + 1 (= 257) entries over f in [0, 1]
LOG2E_Q30 = 1549082005  # round(log2(e) * 2**30); exact integer derivation in spec.tables
PROB_BITS = 15  # softmax probabilities on the grid 2**-15 (= 1/32,768)
RMS_EPS_FRAC_BITS = 48  # epsilon of RMSNorm stored as round(eps * 2**48)
RMS_NORM_BITS = 23  # RMSNorm rescales each row so its largest magnitude has 23 bits
MAX_HIDDEN = 2**16  # (= 65,536) widest row RMSNorm accepts (keeps sum of squares < 2**62)
FLOAT64_EXACT = 2**53  # (= 9,007,199,254,740,992) integers below this are exact in float64

# -- sampling ---------------------------------------------------------------------------------
SAMPLE_DOMAIN = b"fieldprint/sample/v1"  # BLAKE3 domain tag of the sampling RNG

# -- versions ---------------------------------------------------------------------------------
# The revision of the integer numerics (every rule of spec.ops, spec.attention, spec.quant,
# spec.tables). It is part of the model commitment's config leaf, so a numerics revision changes
# every commitment: a ledger made under one revision never verifies against another.
NUMERICS_VERSION = "fieldprint-numerics/2"
