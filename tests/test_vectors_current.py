"""Checked-in vectors must equal what the generators write from today's spec."""
import filecmp
from pathlib import Path

import pytest

from tools import gen_vectors


def _diff(a: Path, b: Path) -> list[str]:
    """Return the relative paths of files that differ or exist on one side only."""
    cmp = filecmp.dircmp(a, b)
    out = [str(Path(a.name) / n) for n in cmp.left_only + cmp.right_only + cmp.diff_files]
    for sub in cmp.common_dirs:
        out += [str(Path(a.name) / p) for p in _diff(a / sub, b / sub)]
    return out


@pytest.mark.parametrize("area", gen_vectors.areas())
def test_checked_in_vectors_up_to_date(area, tmp_path):
    gen_vectors.generate(area, tmp_path)
    fresh, checked_in = tmp_path / area, gen_vectors.VECTORS_DIR / area
    assert checked_in.is_dir(), f"no vectors checked in for {area}: run python -m tools.gen_vectors --area {area}"
    # READMEs are written by hand beside the generated files.
    stale = [p for p in _diff(fresh, checked_in) if not p.endswith("README.md")]
    assert not stale, (
        f"tests/vectors/{area} is stale ({len(stale)} files differ, e.g. {stale[:3]}); "
        f"refresh with: python -m tools.gen_vectors --area {area}"
    )
