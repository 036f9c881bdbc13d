"""Export the JSON Schemas of the ledger's JSON forms to schemas/, from the pydantic models in spec.

    python -m tools.export_schemas            # refresh schemas/
    python -m tools.export_schemas --out DIR  # write elsewhere (the freshness test does this)

Writes `ledger-record.schema.json` (any record: a union keyed by `type`) and one
`ledger-<type>.schema.json` per record type.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import TypeAdapter

from spec.ledger import RECORD_ADAPTER, RECORD_TYPES, SPEC_VERSION

REPO = Path(__file__).resolve().parent.parent
SCHEMAS_DIR = REPO / "schemas"
BASE_ID = "https://fieldprint.invalid/schemas/"  # a name, not a reachable address


def schemas() -> dict[str, dict]:
    """Return {file name: JSON Schema} for every exported schema."""
    out = {}
    union = RECORD_ADAPTER.json_schema(mode="serialization")
    out["ledger-record.schema.json"] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": BASE_ID + "ledger-record.schema.json",
        "title": "Fieldprint ledger record", "description": f"JSON form of any {SPEC_VERSION} record.", **union}
    for cls in RECORD_TYPES.values():
        name = cls.model_fields["type"].default
        schema = TypeAdapter(cls).json_schema(mode="serialization")
        out[f"ledger-{name.replace('_', '-')}.schema.json"] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": BASE_ID + f"ledger-{name.replace('_', '-')}.schema.json", **schema}
    return out


def write(out_dir: Path) -> list[Path]:
    """Write every schema under ``out_dir``; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in schemas().items():
        path = out_dir / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=False) + "\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SCHEMAS_DIR)
    args = parser.parse_args(argv)
    for p in write(args.out):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
