"""Time the README's first Quickstart command and record what its final table says.

Runs scripts/quickstart.sh on the quick spec in a fresh temporary workspace (so nothing cached
from earlier runs helps), optionally after creating a fresh virtual environment and installing
eqtools into it exactly as the README does. Records the wall time of every stage, the mean epoch
time of the supernet and of the static-QAT baselines, and the `eqtools report` table.

Run: python benchmarks/bench_quickstart.py [--with-install] [--with-baselines] --record
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, write_result

STEP = re.compile(r"== (.+) \((\d+)s elapsed\)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default="specs/mbv2-quick.json")
    parser.add_argument("--with-install", action="store_true", help="also time a fresh venv + pip install")
    parser.add_argument("--with-baselines", action="store_true", help="pass --with-baselines to the quickstart")
    parser.add_argument("--record", action="store_true", help="write the result to benchmarks/results/ (rendered into BENCHMARKS.md)")
    parser.add_argument("--keep", action="store_true",
                        help="copy the run's workspace into ./artifacts afterwards (other benchmarks reuse it)")
    parser.add_argument("--log", type=Path, help="instead of running: summarise the output of a run made by hand "
                        "(README command 1 in a fresh clone), with --workspace, --total-s and --command")
    parser.add_argument("--workspace", type=Path, help="with --log: the run's artifacts/<spec> folder")
    parser.add_argument("--total-s", type=float, help="with --log: the command's wall time, install included")
    parser.add_argument("--command", help="with --log: how the run was made, for the record")
    args = parser.parse_args()
    if args.log is not None:
        output = args.log.read_text()
        pipeline_s = float(re.findall(r"finished in (\d+) s", output)[-1])
        install_s = None if args.total_s is None else args.total_s - pipeline_s
        figures, body = summarise(output, pipeline_s, install_s, args.workspace, args.spec, args.with_baselines)
        print(body)
        if args.record:
            write_result("quickstart", QUESTION, figures, body, threads=2, command=args.command)
        return
    with tempfile.TemporaryDirectory() as tmpdir:
        work = Path(tmpdir)
        for folder in ("specs", "scripts"):
            shutil.copytree(ROOT / folder, work / folder)
        env = {**os.environ, "COLUMNS": "250"}  # wide enough that no table cell wraps
        install_s = None
        bindir = Path(sys.executable).parent
        if args.with_install:
            start = time.monotonic()
            subprocess.run([sys.executable, "-m", "venv", str(work / ".venv")], check=True)
            subprocess.run([str(work / ".venv/bin/pip"), "install", "-q", "torch==2.14.1", "torchvision==0.29.1",
                            "-e", str(ROOT)], check=True)
            install_s = time.monotonic() - start
            bindir = work / ".venv/bin"
        env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
        start = time.monotonic()
        extra = ["--with-baselines"] if args.with_baselines else []
        proc = subprocess.run(["bash", "scripts/quickstart.sh", *extra, args.spec], cwd=work, env=env,
                              capture_output=True, text=True)
        pipeline_s = time.monotonic() - start
        (ROOT / "artifacts").mkdir(exist_ok=True)
        (ROOT / "artifacts" / "quickstart-benchmark.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            sys.exit(f"quickstart failed ({proc.returncode}); log in artifacts/quickstart-benchmark.log")
        spec_dir = next(p for p in (work / "artifacts").iterdir() if p.is_dir())
        figures, body = summarise(proc.stdout + proc.stderr, pipeline_s, install_s, spec_dir, args.spec,
                                  args.with_baselines)
        if args.keep:
            target = ROOT / "artifacts" / spec_dir.name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(spec_dir, target, symlinks=True)
    print(body)
    if args.record:
        write_result("quickstart", QUESTION, figures, body, threads=2)


QUESTION = "How long does README command 1 take on 2 CPU cores, and what does its report say"


def summarise(output: str, pipeline_s: float, install_s: float | None, workspace: Path | None, spec: str,
              with_baselines: bool) -> tuple[dict, str]:
    """The figures and the Markdown of one quickstart run, from its output and its workspace."""
    marks = [(m.group(1), int(m.group(2))) for m in STEP.finditer(output)]
    stages = [(name, nxt - at) for (name, at), (_, nxt) in zip(marks, [*marks[1:], ("end", int(pipeline_s))])]
    table = output[output.rindex("== report"):].split("\n", 1)[1]
    table = table[: table.rindex("finished in")].strip()
    epochs = {}
    for d in sorted(workspace.glob("supernet*")) if workspace is not None else []:
        rows = [json.loads(r) for r in (d / "metrics.jsonl").read_text().splitlines()]
        epochs[d.name] = sum(r["time_s"] for r in rows) / len(rows)
    figures = {"spec": spec, "with_baselines": with_baselines, "install_s": install_s,
               "pipeline_s": round(pipeline_s, 1), "stages_s": dict(stages), "mean_epoch_s": epochs,
               "report": markdown_tables(table)}
    lines = ["| stage | wall time |", "|---|---|"]
    if install_s is not None:
        lines.append(f"| fresh venv + pip install (README command) | {install_s:.0f} s |")
    lines += [f"| {name} | {seconds} s |" for name, seconds in stages]
    lines.append(f"| **pipeline** | **{pipeline_s:.0f} s ({pipeline_s / 60:.1f} min)** |")
    if install_s is not None:
        total = pipeline_s + install_s
        lines.append(f"| **total with install** | **{total:.0f} s ({total / 60:.1f} min)** |")
    if epochs:
        lines += ["", "Mean epoch wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in epochs.items())]
    lines += ["", "The run's `eqtools report`:", ""]
    for title, rows in figures["report"]:
        lines += [f"**{title}**", "", *rows, ""]
    return figures, "\n".join(lines)


def markdown_tables(text: str) -> list[tuple[str, list[str]]]:
    """The report's rich tables as (title, Markdown rows): the title lines above each box, its cells.

    A narrow terminal wraps a cell over several lines, the header's too: every header line before
    the rule continues the header, and a line whose first cell is empty continues the row above it
    (record a run at 250 columns: a wrapped first column cannot be told from a new row). The
    report's progress notes (``calibrating ...``) share the output and are not titles.
    """
    tables: list[tuple[str, list[str]]] = []
    title: list[str] = []
    rows: list[list[str]] = []
    in_header = False

    def merge(row: list[str], cells: list[str]) -> list[str]:
        return [f"{a} {b}".strip() for a, b in zip(row, cells)]

    for line in text.splitlines():
        if line.startswith(("┃", "│")):
            cells = [c.strip() for c in line.strip().replace("┃", "│")[1:-1].split("│")]
            if not rows:
                rows, in_header = [cells], True
            elif in_header:
                rows[0] = merge(rows[0], cells)
            elif cells and cells[0] == "":
                rows[-1] = merge(rows[-1], cells)
            else:
                rows.append(cells)
        elif line.startswith(("┏", "┡", "└", "┗")):
            if line.startswith("┡"):
                in_header = False
            if line.startswith(("└", "┗")):
                lines = ["| " + " | ".join(r) + " |" for r in rows]
                tables.append((" ".join(title).strip(), [lines[0], "|" + "---|" * len(rows[0]), *lines[1:]]))
                title, rows = [], []
        elif line.strip() and not line.startswith(("calibrating ", "report for spec ")):
            title.append(line.strip())
    return tables


if __name__ == "__main__":
    main()
