"""docs/artifact.md and schemas/artifact-manifest.schema.json describe what save_artifact writes."""
from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "schemas" / "artifact-manifest.schema.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def artifact_dir() -> Path:
    pytest.importorskip("transformers")
    sys.path.insert(0, str(REPO / "tests" / "runtime"))
    import fp_fixtures

    return Path(fp_fixtures.artifact_dir(0, 1))


@pytest.fixture(scope="module")
def manifest(artifact_dir) -> dict:
    return json.loads((artifact_dir / "manifest.json").read_text(encoding="utf-8"))


def _validator():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    return jsonschema.Draft202012Validator(SCHEMA)


def test_written_manifest_validates(manifest):
    errors = [f"{list(e.path)}: {e.message}" for e in _validator().iter_errors(manifest)]
    assert not errors, errors


def test_schema_key_sets_are_the_dataclass_fields():
    from spec.model import ModelConfig
    from spec.profiles import PrecisionProfile

    for name, cls in (("config", ModelConfig), ("profile", PrecisionProfile)):
        d = SCHEMA["$defs"][name]
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(d["required"]) == fields == set(d["properties"]), f"schema $defs/{name} vs {cls.__name__}"


def test_schema_constants_are_the_code_constants():
    from fieldprint import artifact
    from spec.commitment import DTYPE_NAMES

    props = SCHEMA["properties"]
    assert props["format"]["const"] == artifact.FORMAT
    assert props["format_version"]["const"] == artifact.FORMAT_VERSION
    assert set(props["files"]["required"]) == {artifact.TOKENIZER_FILE}
    assert set(SCHEMA["$defs"]["tensor"]["properties"]["dtype"]["enum"]) == set(DTYPE_NAMES.values())


def test_every_written_field_is_documented(manifest):
    page = (REPO / "docs" / "artifact.md").read_text(encoding="utf-8")
    for key in manifest:
        assert key in SCHEMA["properties"], f"manifest field {key!r} is not in the schema"
        assert f"`{key}`" in page, f"manifest field {key!r} is not on docs/artifact.md"
    for key in manifest["config"]:
        assert f"`{key}`" in page


@pytest.mark.parametrize("mutate", [
    lambda m: m.pop("commitment"),
    lambda m: m.update(commitment=m["commitment"].upper()),
    lambda m: m.update(format_version=1),
    lambda m: m["config"].update(extra_field=1),
    lambda m: m["config"].pop("sliding_window"),
    lambda m: m["profile"].update(kv_bits=4),
    lambda m: m["profile"].update(w_qkv=17),
    lambda m: m["files"].update({"other.json": m["files"]["tokenizer.json"]}),
    lambda m: next(iter(m["tensors"].values())).update(dtype="float32"),
], ids=["no-commitment", "uppercase-hex", "format-1", "config-extra", "config-missing", "kv-bits",
        "width-17", "extra-file", "float-tensor"])
def test_schema_rejects(manifest, mutate):
    bad = copy.deepcopy(manifest)
    mutate(bad)
    assert list(_validator().iter_errors(bad)), "the schema accepted a manifest the loader refuses"


def test_safetensors_metadata_names_the_commitment(artifact_dir, manifest):
    from safetensors import safe_open

    with safe_open(str(artifact_dir / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "fieldprint-artifact", "commitment": manifest["commitment"]}
        assert set(f.keys()) == set(manifest["tensors"])
    assert sorted(p.name for p in artifact_dir.iterdir()) == ["manifest.json", "model.safetensors", "tokenizer.json"]
