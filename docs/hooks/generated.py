"""mkdocs hook: pages whose content is generated from the code at build time.

A page asks for generated content with a directive on a line of its own:

| directive | expands to |
|---|---|
| ``<!-- fieldprint:constants MODULE -->`` | a Name \\| Value \\| Meaning table of MODULE's public constants |
| ``<!-- fieldprint:cli MODULE -->`` | the reference of the argparse parser that ``MODULE.build_parser()`` returns |
| ``<!-- fieldprint:include PATH -->`` | the repository file PATH in a code block |
| ``<!-- fieldprint:benchmark-scripts -->`` | the scripts under ``benchmarks/`` with the first paragraph of their docstrings |
| ``<!-- fieldprint:fidelity -->`` | the profile table of the newest ``benchmarks/results/fidelity-*.json`` |
| ``<!-- fieldprint:benchmarks -->`` | one section per JSON file under ``benchmarks/results/`` (``tools/plot_benchmarks.py``) |

Values come from importing the module, definitions and meanings from its source (the right-hand
side and the trailing comment), so nothing on these pages is copied by hand and nothing drifts.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import io
import re
import sys
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mathtext import render_prose  # noqa: E402 - needs the path above

_DIRECTIVE = re.compile(r"^<!-- fieldprint:(?P<kind>[a-z-]+)(?: (?P<arg>[\w./-]+))? -->$", re.M)


# -- constants -------------------------------------------------------------------------------
def _is_plain(value) -> bool:
    """Whether a value is plain data a reader can copy: numbers, strings, bytes and their containers."""
    if isinstance(value, (bool, int, str, bytes)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_is_plain(v) for v in value.values())
    return False


def _format_value(value) -> str:
    """Return a value as Markdown: integers grouped by thousands, bytes also in hex."""
    if isinstance(value, bool):
        return f"`{value}`"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, bytes):
        return f"`{value!r}` (hex `{value.hex()}`, {len(value)} bytes)"
    if isinstance(value, str):
        return f"`{value!r}`"
    if isinstance(value, dict):
        items = ", ".join(f"{_key(k)}: {v!r}" for k, v in value.items())
        return f"`{{{items}}}`"
    return f"`{value!r}`"


def _key(k) -> str:
    return repr(k) if isinstance(k, (str, int, bytes)) else str(k)


def _comments(source: str) -> dict[int, str]:
    """Return the trailing comment of every source line that has one (line number -> text)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _block_comment(lines: list[str], lineno: int) -> str:
    """Return the comment lines directly above a line (a constant documented from above)."""
    text, i = [], lineno - 2
    while i >= 0 and lines[i].lstrip().startswith("#") and not lines[i].lstrip().startswith("# --"):
        text.insert(0, lines[i].lstrip()[1:].strip())
        i -= 1
    return " ".join(text)


def constants_table(module_name: str) -> str:
    """Return the Markdown table of a module's public module-level constants, in source order."""
    module = importlib.import_module(module_name)
    source = Path(module.__file__).read_text(encoding="utf-8")
    tree, lines, comments = ast.parse(source), source.splitlines(), _comments(source)
    rows = []
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None
        if not isinstance(target, ast.Name) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", target.id):
            continue
        value = getattr(module, target.id)
        if not _is_plain(value):
            continue
        definition = ast.get_source_segment(source, node.value).replace("\n", " ")
        definition = re.sub(r"\s+", " ", definition)
        meaning = comments.get(node.lineno) or _block_comment(lines, node.lineno)
        meaning = re.sub(r"^\(= [^)]*\)\s*", "", meaning)  # the Value column shows it
        shown = _format_value(value)
        if definition == repr(value) or definition.replace("_", "") == str(value) or len(definition) > 90:
            definition = ""
        rows.append((target.id, definition, shown, meaning))
    if not rows:
        raise ValueError(f"{module_name}: no public constants to list")
    out = ["| Name | Value | Meaning |", "|---|---|---|"]
    for name, definition, shown, meaning in rows:
        value = f"{shown} = `{definition}`" if definition else shown
        out.append(f"| `{name}` | {_cell(value)} | {_cell(render_prose(meaning))} |")
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# -- command line reference ------------------------------------------------------------------
def _actions_table(parser: argparse.ArgumentParser) -> str:
    rows = ["| argument | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(action.option_strings) or action.dest
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            name += " {" + ",".join(map(str, action.choices)) + "}"
        elif action.option_strings and action.nargs != 0:
            name += f" {action.metavar or action.dest.upper()}"
        if action.required and action.option_strings:
            name += " (required)"
        default = "" if action.default in (None, False, argparse.SUPPRESS) or action.default == [] \
            else f"`{action.default}`"
        rows.append(f"| `{name}` | {default} | {_cell(render_prose(action.help or ''))} |")
    return "\n".join(rows)


def cli_reference(module_name: str) -> str:
    """Return the Markdown reference of ``module.build_parser()``: usage, then every subcommand."""
    parser = importlib.import_module(module_name).build_parser()
    out = [f"```text\n{parser.format_usage().strip()}\n```", parser.description or ""]
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {c.dest: c.help for a in subs for c in a._choices_actions}
    for sub in subs:
        for name, child in sub.choices.items():
            out.append(f"### `{parser.prog} {name}`\n\n{render_prose(helps.get(name) or '')}")
            out.append(f"```text\n{child.format_usage().strip()}\n```")
            out.append(_actions_table(child))
            if child.epilog:
                out.append(f"```text\n{child.epilog.strip()}\n```")
    return "\n\n".join(out)


# -- benchmark scripts -----------------------------------------------------------------------
def benchmark_scripts(folder: Path) -> str:
    """Return a table of the benchmark scripts: path and the first line of each module docstring."""
    rows = ["| script | what it measures |", "|---|---|"]
    for path in sorted(folder.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        first = doc.strip().split("\n\n")[0].replace("\n", " ").removeprefix("Benchmark: ")
        first = first[:1].upper() + first[1:]
        rows.append(f"| `benchmarks/{path.name}` | {_cell(render_prose(first))} |")
    return "\n".join(rows)


# -- fidelity -------------------------------------------------------------------------------
def fidelity_table(results: Path) -> str:
    """Return the profile table of the newest fidelity run (``benchmarks/fidelity.py`` JSON)."""
    import json

    runs = []
    for path in sorted(results.glob("fidelity-*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data.get("profiles"), dict) and "sweep" not in path.name:
            runs.append((str(data.get("date", "")), path.name, data))
    if not runs:
        raise ValueError(f"{results}: no fidelity-*.json results")
    date, name, data = max(runs)
    out = [f"Measured {date[:10]} (`benchmarks/results/{name}`): {data.get('samples')} samples x "
           f"{data.get('tokens')} tokens, teacher-forced on `{data.get('checkpoint')}`"
           f"{', numerics ' + str(data['numerics']) if data.get('numerics') else ''}.", "",
           "| profile | cross-entropy vs float | argmax agreement | KL(float, quantized) |", "|---|---:|---:|---:|"]
    for pname, row in data["profiles"].items():
        if ":" in pname:  # a sweep variant
            continue
        out.append(f"| `{pname}` | {row['delta_ce_pct']:+.4f} % | {100 * row['argmax_agreement']:.1f} % | "
                   f"{row['kl_float_quant']:.2e} |")
    return "\n".join(out)


# -- mkdocs events ---------------------------------------------------------------------------
def _expand(match: re.Match) -> str:
    kind, arg = match.group("kind"), match.group("arg")
    if kind == "constants":
        return constants_table(arg)
    if kind == "cli":
        return cli_reference(arg)
    if kind == "include":
        path = (REPO / arg).resolve()
        if REPO not in path.parents or not path.is_file():
            raise ValueError(f"fieldprint:include {arg}: not a file of the repository")
        lang = {".json": "json", ".py": "python"}.get(path.suffix, "text")
        return f"```{lang}\n{path.read_text(encoding='utf-8').rstrip()}\n```"
    if kind == "benchmark-scripts":
        return benchmark_scripts(REPO / "benchmarks")
    if kind == "fidelity":
        return fidelity_table(REPO / "benchmarks" / "results")
    if kind == "benchmarks":
        sys.path.insert(0, str(REPO))
        from tools.plot_benchmarks import markdown_report

        return markdown_report(REPO / "benchmarks" / "results")
    raise ValueError(f"unknown fieldprint directive {kind!r}")


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - mkdocs' signature
    """Expand every ``<!-- fieldprint:... -->`` directive of a page."""
    return _DIRECTIVE.sub(_expand, markdown)
