"""BENCHMARKS.md is generated from benchmarks/results/*.json and cannot drift from them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _render  # noqa: E402

FIELDS = {"name", "question", "command", "machine", "commit", "date", "figures", "markdown"}


def test_benchmarks_md_is_the_rendering_of_the_results():
    assert (ROOT / "BENCHMARKS.md").read_text() == _render.render(), (
        "BENCHMARKS.md differs from the results: run `python -m benchmarks render`")


def test_benchmarks_md_is_short():
    """The current figures, not a log: sections show only the lines the README quotes or a reader needs first."""
    assert len((ROOT / "BENCHMARKS.md").read_text().splitlines()) <= 400


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "results").glob("*.json")), ids=lambda p: p.stem)
def test_every_result_names_its_command_machine_commit_and_date(path):
    result = json.loads(path.read_text())
    assert FIELDS <= result.keys() and result["name"] == path.stem
    assert all(str(result[k]).strip() for k in ("question", "command", "machine", "commit", "date", "markdown"))
    assert isinstance(result["figures"], dict) and result["figures"], "a result keeps its raw figures"


def _result(folder: Path, name: str, **extra) -> None:
    data = {"name": name, "question": f"what {name} says", "command": f"python benchmarks/bench_{name}.py --record",
            "machine": "a CPU", "cpu_flags": ["avx2"], "commit": "abc", "date": "2026-01-01 00:00 UTC",
            "figures": {"x": 1}, "markdown": f"| {name} |\n|---|\n", **extra}
    (folder / f"{name}.json").write_text(json.dumps(data))


def test_sections_follow_the_fixed_order_with_unknown_names_last(tmp_path):
    for name in ("zeta", "faults", "alpha", "quickstart", "deploy"):
        _result(tmp_path, name)
    text = _render.render(tmp_path)
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["Quickstart", "Deploy per runtime", "Faults", "alpha", "zeta"]
    assert "[Deploy per runtime](#deploy-per-runtime)" in text  # the contents link to each heading


def test_a_carried_over_or_quick_result_says_so(tmp_path):
    _result(tmp_path, "sample", source="carried over from the earlier log", mode="quick")
    text = _render.render(tmp_path)
    assert "carried over from the earlier log" in text.lower() and "a `--quick` run" in text.lower()
    assert "commit `abc`" in text and "2026-01-01 00:00 UTC" in text and "CPU flags: avx2" in text


def test_write_result_writes_what_render_reads(tmp_path, monkeypatch):
    from benchmarks import _record

    monkeypatch.setattr(_record, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "bench_sample.py"), "--record"])
    monkeypatch.setattr(_record, "machine_line", lambda threads=None, extra="": "a test machine")
    path = _record.record("How fast is sampling", "ignored", "a shared machine", "| a | b |\n|---|---|\n| 1 | 2 |",
                          figures={"subnets_per_min": 51.0})
    result = json.loads(path.read_text())
    assert path == tmp_path / "sample.json" and result["figures"] == {"subnets_per_min": 51.0}
    assert result["machine"].startswith("a shared machine; load average ") and result["commit"] and result["date"]
    assert "## Sampling" in _render.render(tmp_path)


def test_a_long_result_is_cut_with_a_link_to_the_whole(tmp_path):
    _result(tmp_path, "faults", markdown="\n".join(f"line {i}" for i in range(200)) + "\n")
    _result(tmp_path, "other", markdown="\n".join(f"row {i}" for i in range(200)) + "\n")
    text = _render.render(tmp_path)
    assert "line 0" in text and "line 1\n" not in text and "row 3" in text and "row 4" not in text
    assert "(199 more lines in [benchmarks/results/faults.json](benchmarks/results/faults.json).)" in text
    assert "(196 more lines in [benchmarks/results/other.json]" in text


def test_the_quickstart_record_reads_a_report_table_a_narrow_terminal_wrapped():
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    from benchmarks import bench_quickstart

    table = Table(title="Export parity")
    for name in ("file", "agreement with fake-quant", "top-1"):
        table.add_column(name)
    table.add_row("int", "100.00% of the check images", "81.15%")
    table.add_row("onnx", "99.90%", "81.10%")
    out = StringIO()
    Console(file=out, width=34, color_system=None).print(table)
    text = "calibrating the searched subnet\n" + out.getvalue()
    assert len(text.splitlines()) > 8  # the header and a cell did wrap
    [(title, rows)] = bench_quickstart.markdown_tables(text)
    assert title == "Export parity"
    assert rows == ["| file | agreement with fake-quant | top-1 |", "|---|---|---|",
                    "| int | 100.00% of the check images | 81.15% |", "| onnx | 99.90% | 81.10% |"]
