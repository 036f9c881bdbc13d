"""docs/hooks/mathtext.py: Python arithmetic in docstrings renders as math that means the same."""
import html
import importlib.util
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

markdown = pytest.importorskip("markdown")

_PATH = Path(__file__).resolve().parents[2] / "docs" / "hooks" / "mathtext.py"
_spec = importlib.util.spec_from_file_location("fieldprint_mathtext", _PATH)
mathtext = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mathtext)


def _unrender(rendered_html: str) -> str:
    """Turn the rendered HTML back into a Python expression: <sup>x</sup> is **(x)."""
    body = re.sub(r"</?p>", "", rendered_html).strip()
    body = body.replace("<sup>", "**(").replace("</sup>", ")")
    assert "<" not in body.replace("&lt;", ""), f"unexpected markup in {rendered_html!r}"
    return html.unescape(body)


digits = st.integers(1, 9).map(str)
small_exponent = st.one_of(
    digits, digits.map(lambda d: "-" + d),
    st.tuples(digits, digits).map(lambda t: f"({t[0]} + {t[1]})"),
    st.tuples(digits, digits).map(lambda t: f"-({t[0]} - {t[1]})"),
)
power = st.tuples(digits, st.sampled_from(["**", " ** "]), small_exponent).map("".join)


def _expr(children):
    return st.one_of(
        st.tuples(children, st.sampled_from([" + ", " * ", "*", " - ", " / "]), children).map("".join),
        children.map(lambda c: f"({c})"),
    )


expressions = st.recursive(st.one_of(digits, power), _expr, max_leaves=6)


@given(expressions)
def test_rendered_formula_means_the_same(expr):
    """Any product/power expression renders without emphasis, and reads back to the same value."""
    rendered = markdown.markdown(mathtext.render_math(expr))
    assert "<em>" not in rendered and "<strong>" not in rendered, rendered
    assert "**" not in rendered.replace("**(", "")
    back = _unrender(rendered)
    try:
        want = eval(expr)  # noqa: S307 - digits and operators only, drawn above
    except ZeroDivisionError:
        return
    assert eval(back) == want, (expr, rendered, back)  # noqa: S307


def test_powers_become_superscripts():
    assert mathtext.render_math("in [0, 2**30] (e = 2**30)") == "in [0, 2<sup>30</sup>] (e = 2<sup>30</sup>)"
    assert mathtext.render_math("2**(-j / 2**EXP_TABLE_BITS)") == "2<sup>-j / 2<sup>EXP_TABLE_BITS</sup></sup>"
    assert mathtext.render_math("(2**-6)**2 / 8") == "(2<sup>-6</sup>)<sup>2</sup> / 8"
    assert mathtext.render_math("2**-(E - ev)") == "2<sup>-(E - ev)</sup>"


def test_code_lists_and_word_emphasis_are_kept():
    text = ("A *dynamic row scale*, see `a**b` and 2*16:\n\n"
            "    round(n / 2**s) = x * y\n\n* item one\n* item 2**3")
    out = mathtext.render_math(text)
    assert out == ("A *dynamic row scale*, see `a**b` and 2\\*16:\n\n"
                   "    round(n / 2**s) = x * y\n\n* item one\n* item 2<sup>3</sup>")
    rendered = markdown.markdown(out)
    assert "<em>dynamic row scale</em>" in rendered and rendered.count("<li>") == 2
    assert "<code>round(n / 2**s) = x * y" in rendered


def test_fenced_code_is_untouched():
    text = "x**2\n```python\ny = a**b * c\n```\nz**2"
    assert mathtext.render_math(text) == "x<sup>2</sup>\n```python\ny = a**b * c\n```\nz<sup>2</sup>"
