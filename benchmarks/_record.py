"""Shared by the benchmark scripts: describe the machine and write each benchmark's result.

``python -m benchmarks`` runs the suite and ``python -m benchmarks render`` writes BENCHMARKS.md.

A benchmark writes one JSON result per question with :func:`write_result` (command, machine, CPU
flags, commit, date, figures and the Markdown it is rendered as); BENCHMARKS.md is regenerated from
the latest result of each question, so it holds current figures only and the history stays in git.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def timing_arguments(parser: Any, rounds: int, min_runs: int, min_time: float) -> None:
    """The options the latency benchmarks share (threads, rounds, runs, time, --record), with their own defaults."""
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--rounds", type=int, default=rounds, help=f"interleaved timing rounds (default {rounds})")
    parser.add_argument("--min-runs", type=int, default=min_runs,
                        help=f"timed runs per measurement at least (default {min_runs})")
    parser.add_argument("--min-time", type=float, default=min_time,
                        help=f"seconds per measurement at least (default {min_time})")
    parser.add_argument("--record", action="store_true", help="write the result to benchmarks/results/ (rendered into BENCHMARKS.md)")


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartile (the interquartile range of a paired ratio); one value gives itself twice."""
    import statistics

    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def paired_ratio(baseline: list[float], candidate: list[float]) -> str:
    """Median [IQR] of baseline / candidate taken round by round: pairing within a round cancels the
    machine's drift between rounds, which a ratio of two medians would keep."""
    import statistics

    q = sorted(a / t for a, t in zip(baseline, candidate, strict=True))
    low, high = quartiles(q)
    return f"{statistics.median(q):.3f} [{low:.3f}-{high:.3f}]"


def median_ms(call: Any, min_runs: int, min_time_s: float) -> float:
    """Median milliseconds of ``call()`` after 5 warm-up calls, over ``min_runs`` calls and ``min_time_s`` at least."""
    import statistics
    import time

    for _ in range(5):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def with_malloc_settings() -> None:
    """Re-execute this script with the glibc malloc settings of reference/NOTES.md, unless it has them."""
    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line(threads: int | None = None, extra: str = "") -> str:
    import torch

    used = f" with {threads} threads" if threads else ""
    return (f"{cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__}{used}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}{extra}")


def command_line() -> str:
    """How this benchmark was started, as a line to paste: the script relative to the repository root."""
    script = os.path.relpath(Path(sys.argv[0]).resolve(), ROOT)
    return "python " + " ".join(shlex.quote(a) for a in [script, *sys.argv[1:]])


def result_name(script: str | None = None) -> str:
    """The result a script writes by default: its file name without ``bench_`` (``bench_sample.py`` -> ``sample``)."""
    stem = Path(script or sys.argv[0]).stem
    return stem.removeprefix("bench_")


def record(title: str, command: str, machine: str, body: str, *, name: str | None = None,
           figures: dict[str, Any] | None = None) -> Path:
    """Write ``body`` as this script's result (:func:`write_result`) under ``title``.

    Kept for the scripts that print a Markdown body: BENCHMARKS.md is no longer appended to, it is
    rendered from the results (``python -m benchmarks render``).
    """
    return write_result(name or result_name(), title, figures or {}, body, machine=machine, command=command)


def append(text: str, *, name: str | None = None, figures: dict[str, Any] | None = None) -> Path:
    """Write a section the script formatted itself (its first line a ``#`` heading) as this script's result."""
    first, _, rest = text.strip().partition("\n")
    return write_result(name or result_name(), first.lstrip("#").strip(), figures or {}, rest.strip())


RESULTS = ROOT / "benchmarks" / "results"


def cpu_flags() -> list[str]:
    """The CPU features that decide the speed of int8 and bf16 kernels, as /proc/cpuinfo names them."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16", "amx_tile")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _load_note() -> str:
    """The machine's load when the result is written: a figure timed beside other jobs says so."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    return f"; load average {load:.1f} when written"


def write_result(name: str, question: str, figures: dict[str, Any], markdown: str,
                 threads: int | None = None, *, machine: str | None = None, command: str | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json``: the one current answer to ``question``.

    ``figures`` holds the raw numbers (JSON-serialisable), ``markdown`` the table or lines that
    BENCHMARKS.md shows for them. Command, machine, CPU flags, commit and date are filled in here so
    that no result can lack them (``machine``/``command`` replace the detected ones where a script
    knows better, e.g. "shared with other jobs"). A run of ``python -m benchmarks --quick`` says so.
    A probe (a script under ``benchmarks/probes/``) writes beside itself, outside the rendered suite.
    """
    import json

    folder = RESULTS
    if Path(sys.argv[0]).resolve().parent.name == "probes":
        folder = ROOT / "benchmarks" / "probes" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    result = {
        "name": name,
        "question": question,
        "command": command or command_line(),
        "machine": (machine or machine_line(threads)) + _load_note(),
        "cpu_flags": cpu_flags(),
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "figures": figures,
        "markdown": markdown.rstrip() + "\n",
    }
    if os.environ.get("EQTOOLS_BENCH_QUICK"):
        result["mode"] = "quick"
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    print(f"wrote {path}", file=sys.stderr)
    return path
