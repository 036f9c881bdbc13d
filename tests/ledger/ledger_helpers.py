"""Shared helpers of the ledger tests: hypothesis strategies for records, derived from the
wire codecs of spec.ledger, so a new field is covered without editing this file."""
from hypothesis import strategies as st

from spec.ledger import (
    RECORD_TYPES,
    Bool,
    Enum8,
    FixedBytes,
    ListOf,
    SamplingRecord,
    Struct,
    UInt,
    Utf8,
    _codec,
    _wire_fields,
)


def codec_strategy(codec):
    """Return a strategy for values of one wire codec (small lists and strings)."""
    if isinstance(codec, UInt):
        return st.one_of(st.integers(0, 3), st.integers(0, 2 ** (8 * codec.size) - 1))
    if isinstance(codec, Bool):
        return st.booleans()
    if isinstance(codec, FixedBytes):
        return st.binary(min_size=codec.size, max_size=codec.size)
    if isinstance(codec, Utf8):
        return st.text(max_size=12)
    if isinstance(codec, Enum8):
        return st.sampled_from(sorted(codec.codes))
    if isinstance(codec, ListOf):
        return st.lists(codec_strategy(codec.item), max_size=4).map(tuple)
    if isinstance(codec, Struct):
        return model_strategy(codec.model)
    raise TypeError(codec)


def _sampling():
    small = st.integers(0, 2**16)
    return st.builds(lambda t, k, p, seed, m: SamplingRecord(
        temperature_num=t.numerator, temperature_den=t.denominator, top_k=k, top_p_num=p.numerator,
        top_p_den=p.denominator, seed=seed, max_new_tokens=m),
        st.fractions(min_value=0, max_denominator=2**16).filter(lambda f: f.numerator < 2**32),
        small, st.fractions(min_value=0, max_value=1, max_denominator=2**16),
        st.integers(0, 2**64 - 1), small)


def model_strategy(model):
    """Return a strategy for instances of a record or nested structure."""
    if model is SamplingRecord:
        return _sampling()
    return st.fixed_dictionaries({n: codec_strategy(_codec(model, n)) for n in _wire_fields(model)}).map(
        lambda d: model(**d))


RECORDS = st.one_of([model_strategy(cls) for cls in RECORD_TYPES.values()])
