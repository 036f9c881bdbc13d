"""schemas/ must equal what tools/export_schemas.py writes from today's spec.ledger models."""
import json

from tools import export_schemas


def test_schemas_up_to_date(tmp_path):
    written = export_schemas.write(tmp_path)
    for path in written:
        checked_in = export_schemas.SCHEMAS_DIR / path.name
        assert checked_in.exists() and checked_in.read_text() == path.read_text(), (
            f"schemas/{path.name} is stale; refresh with: python -m tools.export_schemas")


def test_union_schema_names_every_record_type():
    schema = json.loads((export_schemas.SCHEMAS_DIR / "ledger-record.schema.json").read_text())
    assert set(schema["discriminator"]["mapping"]) == {
        "genesis", "token_step", "kv_page", "commit", "validation", "rollback", "end", "kv_evict"}
