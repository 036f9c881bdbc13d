"""Streaming conversion (issue 12): shard by shard, tensor by tensor, one float tensor alive at a time.

`quantize_checkpoint` reads each weight from its shard when the converter asks for it, writes
each integer tensor straight to its offset in model.safetensors and keeps neither; the artifact
equals the in-memory path's (`save_artifact(quantize_model(...))`) tensor for tensor.
"""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
from safetensors.torch import load_file


@pytest.fixture(scope="module", params=[torch.bfloat16, torch.float16, torch.float32, torch.float64], ids=str)
def sharded(request, tmp_path_factory):
    """A tiny Qwen2 (biases, untied) saved in `dtype`, split into several shards."""
    from ckpts import hf_model, save_hf

    model = hf_model("qwen2", 2, False, seed=5).to(request.param)
    path = save_hf(model, tmp_path_factory.mktemp("sharded") / "hf", max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").is_file() and len(list(path.glob("*.safetensors"))) >= 3
    return path


def test_streamed_artifact_equals_in_memory(sharded, tmp_path):
    from fieldprint.artifact import load_artifact, quantize_checkpoint, save_artifact
    from fieldprint.hf import load_hf_checkpoint
    from spec.convert import quantize_model
    from spec.profiles import PROFILES

    streamed = quantize_checkpoint(sharded, tmp_path / "s", "default", progress=False)
    ck = load_hf_checkpoint(sharded)  # float32 in memory
    eager = save_artifact(quantize_model(ck.config, ck.state, PROFILES["default"]), tmp_path / "e", ck.tokenizer_path)
    assert streamed.commitment == eager.commitment
    a, b = load_file(str(tmp_path / "s" / "model.safetensors")), load_file(str(tmp_path / "e" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert load_artifact(tmp_path / "s").commitment == streamed.commitment  # the loader verifies every leaf


def test_one_float_tensor_alive_at_a_time(sharded, tmp_path, monkeypatch):
    """Each weight is read once, and the previous one is gone before the next is read."""
    import fieldprint.hf as hf
    from fieldprint.artifact import quantize_checkpoint

    reads, alive = [], []
    get = hf.LazyState.__getitem__

    def tracked(self, name):
        gc.collect()
        alive.append(sum(r() is not None for r in reads))
        t = get(self, name)
        reads.append(weakref.ref(t))
        return t

    monkeypatch.setattr(hf.LazyState, "__getitem__", tracked)
    quantize_checkpoint(sharded, tmp_path / "s", "int8", progress=False)
    assert len(reads) == len(hf.expected_shapes(hf.load_hf_checkpoint(sharded, lazy=True).config))
    assert max(alive) <= 1, alive  # a q/k/v bias is read beside its weight at most


def test_row_blocks_do_not_change_the_result(monkeypatch):
    import spec.convert as convert

    w = torch.randn(37, 11, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    whole = convert.quantize_channels(w, 8, pre=0.25)
    monkeypatch.setattr(convert, "ROW_BLOCK_ELEMENTS", 23)  # 2 rows per block
    blocked = convert.quantize_channels(w, 8, pre=0.25)
    assert torch.equal(whole[0], blocked[0]) and torch.equal(whole[1], blocked[1])


def test_interrupted_stream_leaves_nothing(sharded, tmp_path, monkeypatch):
    import fieldprint.artifact as artifact

    def boom(self, name, t):
        if name == "layers.1.up.weight":
            raise OSError("disk full (injected)")
        return real(self, name, t)

    real = artifact.TensorFileWriter.write
    monkeypatch.setattr(artifact.TensorFileWriter, "write", boom)
    with pytest.raises(OSError, match="injected"):
        artifact.quantize_checkpoint(sharded, tmp_path / "s", "default", progress=False)
    assert list(tmp_path.iterdir()) == []
