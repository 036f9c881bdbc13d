"""Render the Python-style arithmetic of spec docstrings as math, before Markdown sees it.

The spec's docstrings are normative text written for people who read code: powers are
``2**30``, products ``a * b``. Markdown reads ``**`` and ``*`` as emphasis, so
``[0, 2**30] (the maximum has e = 2**30 exactly)`` would render as bold text with the
exponents gone. This module rewrites the prose parts of a docstring (never code spans,
fenced or indented code blocks) so that:

* a power ``b**e`` becomes ``b<sup>e</sup>``; the exponent is a signed name or number
  (``2**-shift``, ``2**SCALE_MANT_BITS``) or one parenthesised group, whose parentheses are
  dropped unless a sign precedes them (``2**(s-1)`` becomes 2<sup>s-1</sup>,
  ``2**-(a + b)`` becomes 2<sup>-(a + b)</sup>); nested powers are rewritten inside out;
* every other ``*`` is escaped (so ``2*16*64`` stays a product), except list markers and
  deliberate emphasis of words (``*round half away from zero*``), which keep their meaning.

The ``MathDocstrings`` class is the Griffe extension that applies this to every docstring
mkdocstrings renders (``extensions:`` in ``mkdocs.yml``); ``docs/hooks/generated.py`` uses
`render_math` for the text it generates (the constants table).
"""
from __future__ import annotations

import re

try:  # the Griffe extension is optional: the module also serves the mkdocs hook
    import griffe
except ImportError:  # pragma: no cover - mkdocstrings always brings griffe
    griffe = None

# An exponent: one parenthesised group without nested parentheses, or a signed name/number.
_POWER = re.compile(r" ?\*\* ?(?:(?P<sign>[-+]?)\((?P<group>[^()]*)\)|(?P<atom>[-+]?[A-Za-z0-9_]+(?:\.[0-9]+)?))")
# Deliberate emphasis: *words* (letters, spaces, hyphens, commas), not touching other words.
_EMPHASIS = re.compile(r"(?<![\w*\\])\*([A-Za-z][A-Za-z ,'\-\n]*[A-Za-z])\*(?![\w*])")
_BULLET = re.compile(r"^[ \t]*\*(?=[ \t])", re.M)  # a list item's marker
_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1", re.S)
_FENCE = re.compile(r"^\s*(```|~~~)")


def _power(match: re.Match) -> str:
    if match.group("group") is None:
        return f"<sup>{match.group('atom')}</sup>"
    sign, group = match.group("sign"), match.group("group").strip()
    return f"<sup>{sign}({group})</sup>" if sign else f"<sup>{group}</sup>"


def render_prose(text: str) -> str:
    """Return one stretch of prose (no code in it) with powers as superscripts, stray ``*`` escaped."""
    while True:  # inside out: 2**(-j / 2**EXP_TABLE_BITS) needs two passes
        rewritten = _POWER.sub(_power, text)
        if rewritten == text:
            break
        text = rewritten
    kept: list[str] = []

    def keep(match: re.Match) -> str:
        kept.append(match.group(0))
        return f"\x00{len(kept) - 1}\x00"

    text = _EMPHASIS.sub(keep, text)
    text = _BULLET.sub(keep, text)
    text = re.sub(r"(?<!\\)\*", r"\\*", text)
    return re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], text)


def _render_prose_block(block: str) -> str:
    """Rewrite the prose of consecutive lines, leaving their inline code spans as they are."""
    out, pos = [], 0
    for span in _CODE_SPAN.finditer(block):
        out.append(render_prose(block[pos:span.start()]))
        out.append(span.group(0))
        pos = span.end()
    out.append(render_prose(block[pos:]))
    return "".join(out)


def render_math(text: str) -> str:
    """Return Markdown text with the prose rewritten by `render_prose`; code is left byte for byte.

    Code is a fenced block, an indented block (four spaces, after a blank line or more code)
    or an inline code span. Prose is handled a paragraph at a time, so emphasis and code spans
    may cross line breaks.
    """
    out: list[str] = []
    prose: list[str] = []
    in_fence = in_indented = False
    previous_blank = True

    def flush() -> None:
        if prose:
            out.append(_render_prose_block("\n".join(prose)))
            prose.clear()

    for line in text.split("\n"):
        blank = not line.strip()
        if _FENCE.match(line) or in_fence:
            flush()
            if _FENCE.match(line):
                in_fence = not in_fence
            out.append(line)
        elif line.startswith("    ") and not blank and (previous_blank or in_indented):
            flush()
            in_indented = True
            out.append(line)
        elif blank:
            flush()
            out.append(line)
        else:
            in_indented = False
            prose.append(line)
        previous_blank = blank
    flush()
    return "\n".join(out)


if griffe is not None:

    class MathDocstrings(griffe.Extension):
        """Griffe extension: rewrite every loaded docstring with `render_math`."""

        def on_object(self, *, obj, loader, **kwargs) -> None:  # noqa: ARG002 - Griffe's signature
            if obj.docstring is not None and not getattr(obj.docstring, "_fieldprint_math", False):
                obj.docstring.value = render_math(obj.docstring.value)
                obj.docstring._fieldprint_math = True
