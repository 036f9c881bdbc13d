"""tools/plot_benchmarks.py draws any result file: one bar per row, its machine and date on each chart."""
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tools import plot_benchmarks as pb

REPO = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"

rows = st.lists(st.fixed_dictionaries({
    "what": st.text("abcdef <&>", min_size=1, max_size=12),
    "GBps": st.floats(-1e4, 1e4, allow_nan=False),
    "ms": st.floats(0, 1e3, allow_nan=False),
}), min_size=2, max_size=8).filter(lambda r: len({x["GBps"] for x in r}) > 1)


@settings(max_examples=25, deadline=None)
@given(rows)
def test_any_table_becomes_one_bar_per_row(tmp_path_factory, table):
    path = tmp_path_factory.mktemp("res") / "bench-X.json"
    path.write_text(json.dumps({"machine": "Test GPU", "date": "2026-12-02", "rows": table}))
    result = pb.load(path)
    made = pb.charts(result)
    assert made, "no chart for a table with a varying rate"
    for _, svg in made:
        root = ET.fromstring(svg)  # well-formed XML, labels escaped
        assert len(root.findall(f"{SVG}rect")) == len(table)
        texts = [t.text for t in root.iter(f"{SVG}text")]
        assert "Test GPU · 2026-12-02" in texts
    gbps = next(svg for stem, svg in made if stem.endswith("GBps"))
    shown = [t.text for t in ET.fromstring(gbps).iter(f"{SVG}text")][2:]
    assert shown[1::2] == [pb._fmt(r["GBps"]) for r in table]  # label, value, label, value, ...


def test_every_committed_result_loads_with_machine_and_date():
    files = sorted((REPO / "benchmarks" / "results").glob("*.json"))
    assert files
    for path in files:
        r = pb.load(path)
        assert r.machine and r.date, path.name
    report = pb.markdown_report()
    for path in files:
        assert f"`{path.name}`" in report


def test_cli_writes_svg_files(tmp_path, capsys):
    assert pb.main(["--out", str(tmp_path)]) == 0
    assert list(tmp_path.glob("*.svg"))
    assert pb.main(["--results", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2


def test_rows_without_the_metric_are_left_out_and_counted(tmp_path):
    rows = [{"shape": "a", "M": 1, "tops": 3.0}, {"shape": "b", "M": 2, "error": "did not compile"},
            {"shape": "c", "M": 4, "tops": 5.5}]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"device": "GPU X", "date": "2026-12-02", "sweeps": rows}))
    result = pb.load(path)
    assert result.tables[0].metrics == ["tops"]  # M is a parameter, never a metric
    (_, svg), = pb.charts(result)
    root = ET.fromstring(svg)
    assert len(root.findall(f"{SVG}rect")) == 2
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "GPU X · 2026-12-02 · 1 rows without tops not shown" in texts
    assert "a M=1" in texts and "c M=4" in texts
