"""Every tutorial under docs/tutorials/ runs, block by block, from an empty folder.

The harness follows the rule stated on docs/tutorials/index.md: fenced ``bash`` and ``python``
blocks run in page order in one scratch folder; a block with ``title="FILE"`` is appended to
FILE instead of run; a block right after ``<!-- tutorial: skip`` is not run. ``MODEL`` is a
tiny random artifact (built once), ``FIELDPRINT_SRC`` this checkout, and the installed
``fieldprint`` / ``fieldprint-audit`` commands come first on ``PATH``. Any non-zero exit fails
the test with the block and its output.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TUTORIALS = REPO / "docs" / "tutorials"
_FENCE = re.compile(r"(?P<skip><!-- tutorial: skip[^\n]*-->\n)?^```(?P<lang>bash|python)(?P<info>[^\n]*)\n(?P<body>.*?)^```$",
                    re.M | re.S)
_TITLE = re.compile(r'title="([^"]+)"')
PAGES = sorted(p.name for p in TUTORIALS.glob("*.md") if p.name != "index.md")


def blocks(page: Path) -> list[tuple[str, str | None, str]]:
    """Return the runnable blocks of a page: (language, file title or None, code)."""
    out = []
    for m in _FENCE.finditer(page.read_text(encoding="utf-8")):
        if not m.group("skip"):
            title = _TITLE.search(m.group("info"))
            out.append((m.group("lang"), title.group(1) if title else None, m.group("body")))
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama artifact (1 layer, vocab 64), built once through the public API."""
    pytest.importorskip("transformers")
    sys.path.insert(0, str(REPO / "tests" / "runtime"))
    import fp_fixtures

    return Path(fp_fixtures.artifact_dir(0, 1))


def test_every_tutorial_is_in_the_nav_and_the_index():
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    index = (TUTORIALS / "index.md").read_text(encoding="utf-8")
    assert len(PAGES) >= 5
    for name in PAGES:
        assert f"tutorials/{name}" in nav, f"{name} is not in the mkdocs nav"
        assert f"({name})" in index, f"{name} is not listed on docs/tutorials/index.md"
        assert blocks(TUTORIALS / name), f"{name} has no runnable block"


@pytest.mark.parametrize("name", PAGES)
def test_tutorial_runs(name, model_dir, tmp_path):
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MODEL": str(model_dir),
        "FIELDPRINT_SRC": str(REPO),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    ran = []
    for i, (lang, title, code) in enumerate(blocks(TUTORIALS / name)):
        if title:
            with open(tmp_path / title, "a", encoding="utf-8") as f:
                f.write(code)
            continue
        if lang == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", code]
        else:
            script = tmp_path / f".block{i}.py"
            script.write_text(code, encoding="utf-8")
            cmd = [sys.executable, str(script)]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        ran.append(i)
        assert proc.returncode == 0, (f"{name}, block {i} ({lang}) exited {proc.returncode}:\n{code}\n"
                                      f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")
    assert ran, f"{name}: nothing ran"
