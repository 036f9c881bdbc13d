"""The quantized forward performs no floating-point operation at all (float64 matmul shortcut off)."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from spec import quant
from spec.sampling import SamplingParams, sample
from numeric_models import pair, run


class DtypeAudit(TorchDispatchMode):
    """Record every aten op that touches a tensor whose dtype is not integer or bool."""

    def __init__(self):
        super().__init__()
        self.ops, self.bad = set(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func))
        for t in tree_flatten((args, kwargs, out))[0]:
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
                self.bad.append((str(func), t.dtype))
        return out


def _audit(fn):
    quant.FLOAT64_MATMUL = False
    try:
        with DtypeAudit() as audit:
            result = fn()
    finally:
        quant.FLOAT64_MATMUL = True
    return audit, result


def test_forward_is_integer_only():
    for arch, kv, tied, profile in [("llama", 2, False, "default"), ("qwen2", 4, True, "int8")]:
        _, qm = pair(arch, kv, tied, profile)
        toks = torch.arange(20) % qm.config.vocab_size
        audit, (logits, _) = _audit(lambda: run(qm, toks))
        assert not audit.bad, f"floating-point ops in forward: {sorted(set(audit.bad))[:10]}"
        assert len(audit.ops) > 20 and logits.dtype == torch.int64


def test_sampling_is_integer_only():
    logits = torch.arange(50, dtype=torch.int64) * 3000
    params = SamplingParams(temperature="0.8", top_k=20, top_p="0.9", seed=1)
    audit, tok = _audit(lambda: sample(logits, params, 0, 0, 0))
    assert not audit.bad, sorted(set(audit.bad))
    assert 0 <= tok < 50


def test_audit_catches_float():
    audit, _ = _audit(lambda: torch.ones(3) * 2)
    assert audit.bad
