"""Is there a moment during a replace when the artifact path is empty? renameat2 vs two renames.

A writer process replaces one small artifact over and over (``write_artifact`` under
``--force`` semantics) while a reader process polls the path as fast as it can (``os.stat`` of its
manifest.json). Counts, per replace mode, how many polls found no manifest at the path, and times
one replace. The exchange (``renameat2(RENAME_EXCHANGE)``) should never leave the path empty; the
two-rename fallback (``EQTOOLS_NO_RENAME_EXCHANGE=1``) leaves it empty between its renames, which
is the window a kill can land in and which ``recover()`` repairs on the next read or write.
Decision record: docs/decisions/0100-atomic-replace.md.

Run: python benchmarks/bench_replace.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import ROOT, write_result

WRITER = """
import sys, time
from pathlib import Path
from eqtools.artifacts import write_artifact
out, seconds = Path(sys.argv[1]), float(sys.argv[2])
end, n, spent = time.monotonic() + seconds, 0, 0.0
while time.monotonic() < end:
    t = time.perf_counter()
    write_artifact(out, "export", lambda d: (d / "x.json").write_text('{"n": %d}' % n))
    spent += time.perf_counter() - t
    n += 1
print(n, spent / n)
"""
READER = """
import os, sys, time
path, seconds = sys.argv[1] + "/manifest.json", float(sys.argv[2])
end, polls, missing = time.monotonic() + seconds, 0, 0
while time.monotonic() < end:
    polls += 1
    if not os.path.exists(path):
        missing += 1
print(polls, missing)
"""


def measure(seconds: float, fallback: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if fallback:
        env["EQTOOLS_NO_RENAME_EXCHANGE"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "a"
        subprocess.run([sys.executable, "-c", WRITER, str(out), "0.01"], env=env, check=True, capture_output=True)
        reader = subprocess.Popen([sys.executable, "-c", READER, str(out), str(seconds + 1.0)], env=env,
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        writer = subprocess.run([sys.executable, "-c", WRITER, str(out), str(seconds)], env=env, check=True,
                                capture_output=True, text=True)
        polls, missing = (int(v) for v in reader.communicate()[0].split())
        replaces, per_replace = writer.stdout.split()
    return {"mode": "two renames" if fallback else "renameat2(RENAME_EXCHANGE)", "replaces": int(replaces),
            "replace_ms": 1000 * float(per_replace), "polls": polls, "polls_missing": missing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/replace_window.json")
    args = parser.parse_args()
    rows = [measure(args.seconds, fallback) for fallback in (False, True, False, True)]  # alternating
    lines = ["| replace | replaces | ms per replace | reader polls | polls that found no artifact |", "|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['replaces']} | {r['replace_ms']:.2f} | {r['polls']} | {r['polls_missing']} |" for r in rows]
    body = "\n".join(lines)
    print(body)
    print(json.dumps(rows, indent=1))
    if args.record:
        write_result("replace_window", "Does the artifact path ever stand empty while an artifact is replaced?",
                     {"runs": rows}, body)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
