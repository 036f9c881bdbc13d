"""The embedded demo model: built on first use, offline, from text the project writes itself.

`ensure_demo_model` returns the demo artifact folder, building what is missing:

1. ``build/demo-hf``: a Hugging Face Llama checkpoint trained by ``tools.train_demo`` (about
   3 minutes on 2 CPU cores; deterministic);
2. ``build/demo``: that checkpoint quantized with the default precision profile.

Relative folders are resolved against the repository root (where ``tools/`` lives), so the
demo works from any working directory. Both steps write atomically, so an interrupted build
leaves nothing half-written and simply restarts.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_DIR = "build/demo"
DEMO_HF_DIR = "build/demo-hf"

# The sources each build step depends on: a change to any of them rebuilds that step, so a
# checkout never reuses a demo model made by an older spec or trainer.
_TRAIN_SOURCES = ("tools/train_demo.py", "tools/corpus.py")
_QUANTIZE_SOURCES = ("spec/*.py", "fieldprint/artifact.py", "fieldprint/hf.py")


def _resolve(p) -> Path:
    p = Path(p)
    return p if p.is_absolute() else REPO / p


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _train(hf_dir: Path) -> None:
    """Train the demo checkpoint into hf_dir with a rich progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from fieldprint.errors import ConfigError

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        from tools.train_demo import TrainConfig, train
    except ImportError as e:
        raise ConfigError(f"demo model: cannot import tools.train_demo from {REPO} ({e}); "
                          f"run from a source checkout or pass --model") from None
    console = _console()
    console.print(f"[bold]Building the demo model[/bold] (first use only): training {hf_dir} on CPU, ~3 min")
    with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("train", total=TrainConfig.steps, loss="-")
        report = train(TrainConfig(), hf_dir, log=lambda s: None,
                       on_step=lambda i, n, loss: bar.update(task, completed=i, loss=f"{loss:.3f}"))
    console.print(f"trained: val cross-entropy {report['val_ce']:.3f} nats/token ({report['seconds']}s)")


def _source_stamp(patterns) -> str:
    """Return a BLAKE3 hex digest over the named source files (path and bytes, sorted by path)."""
    import blake3

    h = blake3.blake3()
    for path in sorted(p for pat in patterns for p in REPO.glob(pat)):
        data = path.read_bytes()
        h.update(f"{path.relative_to(REPO).as_posix()}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


def _stamp_file(folder: Path) -> Path:
    return folder.with_name(folder.name + ".sources")


def _stamped(folder: Path, patterns) -> bool:
    stamp = _stamp_file(folder)
    return stamp.is_file() and stamp.read_text().strip() == _source_stamp(patterns)


def _write_stamp(folder: Path, patterns) -> None:
    stamp = _stamp_file(folder)
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(_source_stamp(patterns) + "\n")
    tmp.replace(stamp)


def _current(out: Path) -> bool:
    """Return whether the artifact at out loads and was quantized with today's default profile."""
    from fieldprint.artifact import load_artifact
    from fieldprint.errors import FieldprintError
    from spec.profiles import PROFILES

    try:
        return load_artifact(out).manifest["profile"] == PROFILES["default"].to_dict()
    except FieldprintError:
        return False  # stale (an older format or spec): quantize again, the checkpoint is kept


def ensure_demo_model(build_dir=DEMO_DIR, hf_dir=DEMO_HF_DIR, progress: bool = True) -> Path:
    """Return the demo artifact folder, training and quantizing it first if it is missing."""
    from fieldprint.artifact import MANIFEST_FILE, quantize_checkpoint

    out, hf = _resolve(build_dir), _resolve(hf_dir)
    trained = _stamped(hf, _TRAIN_SOURCES) and all(
        (hf / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))
    if trained and _stamped(out, _QUANTIZE_SOURCES) and (out / MANIFEST_FILE).is_file() and _current(out):
        return out
    if not trained:
        _train(hf)
        _write_stamp(hf, _TRAIN_SOURCES)
    quantize_checkpoint(hf, out, profile_name="default", progress=progress)
    _write_stamp(out, _QUANTIZE_SOURCES)
    if progress:
        _console().print(f"demo model ready: {out}")
    return out
