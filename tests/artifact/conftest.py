"""Fixtures of the artifact tests: tiny checkpoint folders (helpers in ckpts.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ckpts import hf_model, save_hf


@pytest.fixture(scope="session")
def _llama_dir(tmp_path_factory) -> Path:
    return save_hf(hf_model("llama"), tmp_path_factory.mktemp("hf") / "llama")


@pytest.fixture
def llama_dir(_llama_dir, tmp_path) -> Path:
    """A fresh copy of a tiny Llama checkpoint folder (tests may damage it)."""
    dst = tmp_path / "llama"
    shutil.copytree(_llama_dir, dst)
    return dst
