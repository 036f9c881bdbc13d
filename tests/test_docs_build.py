"""The docs site builds in strict mode, and what it renders from the code reads as the code says.

One strict build (module fixture) is shared by every test here: every page in the nav exists,
every spec docstring renders, no spec formula turns into Markdown emphasis, and the generated
pages (constants, command line) carry the values the code has.
"""
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("docs") / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


class _Article(HTMLParser):
    """Collect, from a page's article, the text of each emphasis element and the prose text."""

    def __init__(self):
        super().__init__()
        self.depth = {"article": 0, "code": 0, "pre": 0}
        self.emphasis: list[list[str]] = []
        self.open_emphasis = 0
        self.prose: list[str] = []
        self.sup: list[str] = []
        self.in_sup = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.depth:
            self.depth[tag] += 1
        if self.depth["article"] and not (self.depth["code"] or self.depth["pre"]):
            if tag in ("em", "strong"):
                self.open_emphasis += 1
                self.emphasis.append([])
            if tag == "sup":
                self.in_sup += 1
                self.sup.append("")

    def handle_endtag(self, tag):
        if tag in self.depth:
            self.depth[tag] -= 1
        if tag in ("em", "strong") and self.open_emphasis:
            self.open_emphasis -= 1
        if tag == "sup" and self.in_sup:
            self.in_sup -= 1

    def handle_data(self, data):
        if not self.depth["article"] or self.depth["code"] or self.depth["pre"]:
            return
        self.prose.append(data)
        if self.open_emphasis:
            self.emphasis[-1].append(data)
        if self.in_sup:
            self.sup[-1] += data


def _article(path: Path) -> _Article:
    parser = _Article()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _reference_pages(site):
    pages = sorted((site / "reference").glob("*/index.html"))
    assert len(pages) >= len(list((REPO / "docs" / "reference").glob("*.md")))
    return pages


def test_mkdocs_strict_build(site):
    assert (site / "reference" / "quant" / "index.html").is_file()


def test_every_spec_module_has_a_reference_page():
    pages = {p.stem for p in (REPO / "docs" / "reference").glob("*.md")}
    modules = {p.stem for p in (REPO / "spec").glob("*.py")} - {"__init__"}
    assert modules <= pages, f"add docs/reference pages for {sorted(modules - pages)}"


def test_no_formula_renders_as_emphasis(site):
    """Emphasis in normative text is only ever a few words; `**`/`*` of a formula never make one."""
    bad = []
    for page in _reference_pages(site):
        art = _article(page)
        for parts in art.emphasis:
            text = "".join(parts)
            if not re.fullmatch(r"[A-Za-z][A-Za-z ,'\-\n]*", text):
                bad.append(f"{page.parent.name}: <em>/<strong> around {text[:60]!r}")
        prose = "".join(art.prose)
        for m in re.finditer(r"\*\*", prose):
            bad.append(f"{page.parent.name}: unrendered power near {prose[max(0, m.start() - 30):m.end() + 10]!r}")
    assert not bad, "\n".join(bad[:20])


def _docstring_powers(module_path: Path) -> list[str]:
    """Return the simple powers `2**N` written in a module's docstrings, outside code spans."""
    import ast

    found = []
    for node in ast.walk(ast.parse(module_path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node)
            if doc:
                prose_lines = [l for l in doc.splitlines() if not l.startswith("    ")]
                prose = re.sub(r"`[^`]*`", "", "\n".join(prose_lines))
                found += re.findall(r"\b2\*\*(\d+)\b", prose)
    return found


def test_powers_render_as_superscripts(site):
    """Every 2**N in the docstring prose of every spec module is on its page as 2<sup>N</sup>."""
    checked, missing = [], []
    for path in sorted((REPO / "spec").glob("*.py")):
        exponents = _docstring_powers(path)
        if not exponents:
            continue
        checked.append(path.stem)
        html = (site / "reference" / path.stem / "index.html").read_text(encoding="utf-8")
        rendered = set(re.findall(r"2<sup>(\d+)</sup>", html))
        missing += [f"reference/{path.stem}: 2**{n}" for n in sorted(set(exponents) - rendered, key=int)]
    assert len(checked) >= 3, f"only {checked} have powers in their docstrings: the check lost its subject"
    assert not missing, "not rendered as powers: " + ", ".join(missing)
    attention = (site / "reference" / "attention" / "index.html").read_text(encoding="utf-8")
    assert "[0, 2<sup>30</sup>]" in attention


def test_code_keeps_its_operators(site):
    """Source listings and indented code blocks are code: `2**s` stays `2**s` there."""
    html = (site / "reference" / "quant" / "index.html").read_text(encoding="utf-8")
    assert re.search(r"<code>[^<]*round\(n / 2\*\*s\)", html), "the rounding identities' code block changed"


def test_constants_page_lists_every_value(site):
    """The generated constants table has every public constant of spec.constants with its value."""
    import spec.constants as c

    html = (site / "reference" / "constants" / "index.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", html)
    names = [n for n in vars(c) if re.fullmatch(r"[A-Z][A-Z0-9_]*", n)]
    assert names
    for name in names:
        value = getattr(c, name)
        shown = f"{value:,}" if isinstance(value, int) else repr(value)
        assert re.search(rf"\b{name}\b\s*(?:\S.*?)?\s*{re.escape(shown)}", text, re.S), f"{name} = {value!r} missing"
    from spec.commitment import CONFIG_TAG

    assert CONFIG_TAG.hex() in html


def test_cli_page_has_every_flag(site):
    """The command-line page lists every option of every subcommand of both parsers."""
    import argparse

    from auditor.cli import build_parser as audit_parser
    from fieldprint.cli import build_parser as fp_parser

    html = (site / "cli" / "index.html").read_text(encoding="utf-8")
    for parser in (fp_parser(), audit_parser()):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for sub in subs:
            for name, child in sub.choices.items():
                assert f"{parser.prog} {name}" in html
                for action in child._actions:
                    for flag in action.option_strings:
                        if flag not in ("-h", "--help"):
                            assert flag in html, f"{parser.prog} {name} {flag} not on the CLI page"


def test_every_generation_directive_was_expanded(site):
    """A `<!-- fieldprint:... -->` directive the hook did not recognise would vanish silently."""
    left = [str(p.relative_to(site)) for p in site.rglob("*.html") if "<!-- fieldprint:" in p.read_text(encoding="utf-8")]
    assert not left, f"unexpanded directives in {left}"
