"""Verify many ledgers on a Ray cluster: ``fieldprint-audit verify DIR --ray ADDRESS``.

``--jobs N`` fans ledgers out over the processes of one machine (``auditor.verify.verify_many``);
when one machine is not enough, ``--ray ADDRESS`` sends one task per ledger to a Ray cluster
(``pip install 'fieldprint[ray]'``) and prints the same reports, in the same order, with the
same exit code. ADDRESS is what ``ray.init`` takes (``ray://head:10001``, ``auto`` for the
cluster this machine belongs to) or ``local`` for a Ray instance started on this machine.

Each task carries the bytes of its ledger, so the ledgers need not be visible to the workers;
the model artifact is named by its path, which must be readable on every node (a shared
filesystem; artifacts are large, and each worker process loads one once). A worker verifies
exactly as ``verify_ledger`` does; a ledger the driver cannot read is reported from the driver.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from auditor.report import Report
from auditor.verify import verify_ledger
from spec.keys import Verifier


class RayUnavailable(RuntimeError):
    """``--ray`` without the ``ray`` package, or a cluster that cannot be reached."""


def _verify_bytes(name: str, data: bytes, kw: dict) -> Report:
    """Verify the ledger ``data`` (read from ``name`` on the driver) in a worker."""
    with tempfile.TemporaryDirectory(prefix="fieldprint-audit-") as d:
        tmp = os.path.join(d, Path(name).name or "ledger.fpl")
        with open(tmp, "wb") as f:
            f.write(data)
        report = verify_ledger(tmp, **kw)
    report.ledger = name
    report.message = report.message.replace(tmp, name) if report.message else report.message
    return report


def verify_on_ray(paths, address: str, **kw) -> list[Report]:
    """Verify ``paths`` on the Ray cluster at ``address`` (``local``: start one here); return
    their Reports in order. Raises RayUnavailable when Ray is missing or unreachable."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs the ray package: pip install 'fieldprint[ray]'") from None
    kw = dict(kw, progress=False)
    if isinstance(kw.get("trusted_key"), Verifier):
        kw["trusted_key"] = kw["trusted_key"].to_string()
    if isinstance(kw.get("model"), os.PathLike):
        kw["model"] = os.fspath(kw["model"])
    started = False
    if not ray.is_initialized():
        env = {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}
        try:
            ray.init(address=None if address == "local" else address, runtime_env=env, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR")
        except Exception as e:  # ConnectionError, a bad address, a version mismatch ...
            raise RayUnavailable(f"--ray {address}: cannot connect to the Ray cluster: {e}") from None
        started = True
    try:
        task = ray.remote(_verify_bytes)
        out: list = []
        for p in paths:
            try:
                data = Path(p).read_bytes()
            except OSError:
                out.append(verify_ledger(p, **kw))  # unreadable here: the same report as without Ray
                continue
            out.append(task.remote(os.fspath(p), data, kw))
        return [r if isinstance(r, Report) else ray.get(r) for r in out]
    finally:
        if started:
            ray.shutdown()
