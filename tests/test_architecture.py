"""Imports show the architecture: spec <- fieldprint_ref <- auditor; never auditor -> fast."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Top-level packages each layer may import from this repository.
ALLOWED_LOCAL = {
    "spec": {"spec"},
    "fieldprint_ref": {"spec", "fieldprint_ref"},
    "auditor": {"spec", "fieldprint_ref", "auditor", "fieldprint"},
}
# Third-party packages the spec may use: arithmetic, hashing, signatures, schemas.
SPEC_THIRD_PARTY = {"torch", "numpy", "blake3", "cryptography", "pydantic"}
LOCAL = {"spec", "fieldprint", "fieldprint_ref", "fieldprint_fast", "auditor", "tools"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED_LOCAL))
def test_layer_imports_only_what_it_may(package):
    for path in _files(package):
        local = _imports(path) & LOCAL
        extra = local - ALLOWED_LOCAL[package]
        assert not extra, f"{path.relative_to(REPO)} imports {sorted(extra)}"


def test_spec_third_party_is_small():
    import sys

    stdlib = set(sys.stdlib_module_names)
    for path in _files("spec"):
        third = _imports(path) - stdlib - LOCAL - {"__future__"}
        extra = third - SPEC_THIRD_PARTY
        assert not extra, f"{path.relative_to(REPO)} imports {sorted(extra)}"


def test_auditor_never_reaches_fast_engine():
    for path in _files("auditor"):
        assert "fieldprint_fast" not in _imports(path), path
