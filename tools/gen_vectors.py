"""Write every language-neutral test vector under tests/vectors/ from `spec`.

Each module in tools/vectors/ owns one area and exposes `generate(out_dir: Path) -> None`,
writing `out_dir/<area>/...`. This script is the one entry point:

    python -m tools.gen_vectors                 # refresh tests/vectors/
    python -m tools.gen_vectors --out DIR       # write elsewhere (the freshness test does this)
    python -m tools.gen_vectors --area merkle   # one area only
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
from pathlib import Path

import tools.vectors

REPO = Path(__file__).resolve().parent.parent
VECTORS_DIR = REPO / "tests" / "vectors"


def areas() -> list[str]:
    """Return the name of every vector area, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(tools.vectors.__path__))


def generate(area: str, out_dir: Path) -> None:
    """Write one area's vectors under out_dir/<area>/."""
    importlib.import_module(f"tools.vectors.{area}").generate(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=VECTORS_DIR)
    parser.add_argument("--area", action="append", choices=areas())
    args = parser.parse_args(argv)
    for area in args.area or areas():
        generate(area, args.out)
        print(f"wrote {args.out / area}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
