"""Plot every benchmark result under benchmarks/results/ as SVG, with its machine and date.

    python -m tools.plot_benchmarks                      # writes build/plots/*.svg, prints what it drew
    python -m tools.plot_benchmarks --out DIR --results benchmarks/results

The docs build calls `markdown_report` (``<!-- fieldprint:benchmarks -->`` on docs/benchmarks.md)
to put the same plots on the benchmarks page, so the page always shows the committed JSON.

The script knows no benchmark by name; it reads any JSON object:

* **machine and date**: the first of ``machine``, ``device``, ``gpu``, ``meta.device`` and the
  first of ``date``, ``meta.date`` (a result without them is plotted as "machine not recorded");
* **tables**: every list of two or more objects, and every object of two or more objects, whose
  members share numeric fields; rows are labelled by their text fields (or their keys);
* **metrics**: per table, up to two numeric fields that vary across rows, preferring rates
  (``GBps``, ``tokens_per_s``), then overheads and errors (``pct``, ``agreement``), then times;
  a file may instead name them: ``"plot": {"table": "path.to.rows", "metrics": ["field", ...]}``;
* **scalars**: the file's top-level numbers, listed in a table.

The SVG is written by hand (no plotting library is needed): a horizontal bar chart per metric.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
_PREFER = [r"GB_?ps|GBps|gbs$|GB/s|TB|tops$", r"tokens_per_s|per_s|throughput", r"speedup", r"overhead_pct|_pct$",
           r"agreement", r"delta", r"_ms$|_us$", r"_s$|seconds", r"."]
# Parameters of a row (its shape, its launch configuration), never plotted as a metric; shown in its label.
_PARAMS = re.compile(r"^(seed|n|L|M|N|K|B|H|D|T|limbs|batch|size|bytes|tokens|runs|threads|sms|cpu_cores|cores|"
                     r"block|warps|maxnreg|first_bad|shards)$|^parity_|^num_|^BLOCK_|_size$")


@dataclass
class Table:
    path: str  # where in the JSON, e.g. "cases" or "profiles"
    labels: list[str]
    rows: list[dict]
    metrics: list[str] = field(default_factory=list)


@dataclass
class Result:
    name: str
    machine: str
    date: str
    tables: list[Table]
    scalars: dict


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _first(data: dict, *paths: str) -> str | None:
    for p in paths:
        cur = data
        for part in p.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if isinstance(cur, str) and cur:
            return cur
    return None


def _label(row: dict, key: str | None) -> str:
    if key is not None:
        return key
    parts = [v for v in row.values() if isinstance(v, str)]
    parts += [f"{k}={v}" for k, v in row.items() if _number(v) and _PARAMS.search(k) and not k.startswith("parity_")]
    for v in row.values():  # a nested launch configuration: its parameters, compactly
        if isinstance(v, dict):
            parts += [f"{k.removeprefix('BLOCK_')}={x}" for k, x in v.items() if _number(x)]
    text = " ".join(parts)
    return (text[:49] + "…") if len(text) > 50 else (text or "?")


def _tables(node, path: str = "") -> list[Table]:
    """Return every table found under ``node`` (depth first)."""
    out = []
    if isinstance(node, list) and len(node) >= 2 and all(isinstance(r, dict) for r in node):
        out.append(Table(path or "rows", [_label(r, None) for r in node], node))
    elif isinstance(node, dict):
        members = {k: v for k, v in node.items() if isinstance(v, dict)}
        if len(members) >= 2 and len(members) == len(node) and any(any(_number(x) for x in v.values()) for v in members.values()):
            out.append(Table(path or "rows", list(members), list(members.values())))
        for k, v in node.items():
            out += _tables(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _tables(v, f"{path}[{i}]")
    return out


def _choose_metrics(table: Table, wanted: list[str] | None = None) -> list[str]:
    """Return up to two metrics of a table: numeric fields that at least two rows have and that vary."""
    keys = list(dict.fromkeys(k for r in table.rows for k in r))
    present = {k: [r[k] for r in table.rows if _number(r.get(k))] for k in keys}
    keys = [k for k in keys if len(present[k]) >= 2]
    if wanted:
        return [k for k in wanted if k in keys]
    varying = [k for k in keys if not _PARAMS.search(k) and len(set(present[k])) > 1]
    ranked = sorted(varying, key=lambda k: (next(i for i, p in enumerate(_PREFER) if re.search(p, k)), keys.index(k)))
    return ranked[:2]


def load(path: Path) -> Result:
    """Read one result file and find its machine, date, tables and scalars."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    machine = _first(data, "machine", "device", "gpu", "meta.device")
    if machine is None and isinstance(data.get("machine"), dict):  # {"cpu": ..., "cores": ...}
        machine = ", ".join(f"{k} {v}" for k, v in data["machine"].items() if isinstance(v, (str, int)))
    if machine is None:  # say at least what the file does record about where it ran
        known = [f"{k} {data[k]}" for k in ("cpu", "torch", "threads") if isinstance(data.get(k), (str, int))]
        machine = "machine not recorded" + (f" ({', '.join(known)})" if known else "")
    date = _first(data, "date", "meta.date") or "date not recorded"
    spec = data.get("plot") if isinstance(data.get("plot"), dict) else {}
    tables = [t for t in _tables(data) if not spec.get("table") or t.path == spec["table"]]
    for t in tables:
        t.metrics = _choose_metrics(t, spec.get("metrics"))
    scalars = {k: v for k, v in data.items() if _number(v)}
    return Result(path.stem, machine, date, [t for t in tables if t.metrics], scalars)


# -- SVG -------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 1:
        return f"{v:.3g}" if a < 100 else f"{v:.0f}"
    return f"{v:.3g}"


def bar_chart(title: str, subtitle: str, labels: list[str], values: list[float]) -> str:
    """Return an SVG horizontal bar chart (bars from zero; negative values to the left)."""
    bar_h, gap, left, width, right = 18, 6, 340, 360, 80
    top = 46
    height = top + len(values) * (bar_h + gap) + 12
    lo, hi = min(0.0, *values), max(0.0, *values)
    span = (hi - lo) or 1.0
    x0 = left + width * (-lo / span)
    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {left + width + right} {height}" '
           f'width="100%" role="img" font-family="sans-serif" font-size="12">',
           f"<title>{e(title)}</title>",
           f'<text x="4" y="16" font-size="14" font-weight="bold">{e(title)}</text>',
           f'<text x="4" y="34" fill="#555">{e(subtitle)}</text>',
           f'<line x1="{x0:.1f}" y1="{top - 4}" x2="{x0:.1f}" y2="{height - 8}" stroke="#999"/>']
    for i, (label, v) in enumerate(zip(labels, values)):
        y = top + i * (bar_h + gap)
        w = width * abs(v) / span
        x = x0 if v >= 0 else x0 - w
        out.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{e(label)}</text>')
        out.append(f'<rect x="{x:.1f}" y="{y}" width="{max(w, 0.5):.1f}" height="{bar_h}" fill="#3f51b5"/>')
        tx = (x + w + 4) if v >= 0 else (x - 4)
        anchor = "start" if v >= 0 else "end"
        out.append(f'<text x="{tx:.1f}" y="{y + 13}" text-anchor="{anchor}">{e(_fmt(v))}</text>')
    out.append("</svg>")
    return "".join(out)


def charts(result: Result) -> list[tuple[str, str]]:
    """Return (file stem, SVG) of every chart of one result; rows without the metric are left out."""
    out = []
    for t in result.tables:
        for m in t.metrics:
            rows = [(label, float(r[m])) for label, r in zip(t.labels, t.rows) if _number(r.get(m))]
            left_out = len(t.rows) - len(rows)
            subtitle = f"{result.machine} · {result.date}" + (f" · {left_out} rows without {m} not shown" if left_out else "")
            svg = bar_chart(f"{result.name}: {m} by {t.path}", subtitle, [l for l, _ in rows], [v for _, v in rows])
            out.append((re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{result.name}-{t.path}-{m}"), svg))
    return out


def markdown_report(results: Path = RESULTS) -> str:
    """Return the benchmarks page body: per result file, its machine and date, charts, scalars."""
    files = sorted(results.glob("*.json"))
    if not files:
        raise ValueError(f"{results}: no benchmark results")
    out = []
    for path in files:
        r = load(path)
        out.append(f"### `{path.name}`\n\n**Machine:** {r.machine}. **Date:** {r.date}.")
        for _, svg in charts(r):
            out.append(f'<div class="fp-plot">\n{svg}\n</div>')
        if r.scalars:
            rows = "\n".join(f"| `{k}` | {_fmt(v) if isinstance(v, float) else f'{v:,}'} |" for k, v in r.scalars.items())
            out.append(f"| value | |\n|---|---:|\n{rows}")
        if not r.tables and not r.scalars:
            out.append("(no numbers at the top level or in tables)")
    return "\n\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.plot_benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(RESULTS), help="folder of result JSON files")
    p.add_argument("--out", default=str(REPO / "build" / "plots"), help="folder for the SVG files")
    args = p.parse_args(argv)
    results, out = Path(args.results), Path(args.out)
    files = sorted(results.glob("*.json"))
    if not files:
        print(f"error: {results}: no *.json results", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'file':44} {'machine':36} {'charts':>6}")
    for path in files:
        try:
            r = load(path)
        except (ValueError, json.JSONDecodeError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
        made = charts(r)
        for stem, svg in made:
            (out / f"{stem}.svg").write_text(svg + "\n", encoding="utf-8")
        print(f"{path.name:44} {r.machine[:36]:36} {len(made):>6}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `| head`
        sys.exit(0)
