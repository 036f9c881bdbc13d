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
    if (out / MANIFEST_FILE).is_file() and _current(out):
        return out
    if not all((hf / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json")):
        _train(hf)
    quantize_checkpoint(hf, out, profile_name="default", progress=progress)
    if progress:
        _console().print(f"demo model ready: {out}")
    return out
