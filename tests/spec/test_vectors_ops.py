"""The spec reproduces every checked-in operator vector (tests/vectors/ops/<op>/<case>.json)."""
import json
from pathlib import Path

import pytest

from tools.vectors.ops import CALL, dec, enc

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "ops"
CASES = sorted(VECTORS.glob("*/*.json"))


def test_every_operator_has_vectors():
    assert {p.parent.name for p in CASES} == set(CALL)


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_spec_reproduces_vector(path):
    case = json.loads(path.read_text())
    args = {k: dec(v) for k, v in case["args"].items()}
    got = {k: v if isinstance(v, (str, list)) else enc(v) for k, v in CALL[case["op"]](args).items()}
    for name, want in case["expected"].items():
        assert got[name] == want, (
            f"{path.parent.name}/{path.name}: output {name!r} differs; if the spec change is intended, "
            f"refresh with: python -m tools.gen_vectors --area ops")
