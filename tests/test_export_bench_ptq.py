"""``bench_targets.py --against-ptq``: the comparison with each runtime's own post-training int8.

The measurement itself needs every runtime and minutes; what is checked here is what can go wrong
without them: merging its figures (every subnet's file against the one W8A8 PTQ file) into an existing
``deploy.json`` keeps every figure that was there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_targets  # noqa: E402


def _deploy_json(folder: Path) -> dict:
    rows = [{"subnet": "W8A8", "runtime": "onnxruntime", "loads": "yes", "speed_vs_fp32_b1": "2.0 [1.9-2.1]", "top1": 0.75},
            {"subnet": "W4A4", "runtime": "onnxruntime", "loads": "yes", "speed_vs_fp32_b1": "1.8 [1.7-1.9]", "top1": 0.74}]
    old = {"name": "deploy", "question": "Each target's file in its own runtime?", "command": "python bench_targets.py",
           "machine": "m", "cpu_flags": "avx2", "commit": "abcdef0123", "date": "2026-01-01 00:00 UTC",
           "figures": {"rows": rows, "partial": False}, "markdown": "| runtime | subnet |\n|---|---|\n| onnxruntime | W8A8 |\n"}
    (folder / "deploy.json").write_text(json.dumps(old))
    return old


def test_merging_ptq_figures_keeps_every_earlier_figure(tmp_path, monkeypatch):
    record = sys.modules["_record"]  # the module bench_targets imported its writer from
    monkeypatch.setattr(record, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "bench_targets.py"), "--against-ptq", "--record"])
    old = _deploy_json(tmp_path)
    own = {"top1": 0.6, "integer_layers": 20, "file_bytes": 4096, "tool": "quantize_static"}
    new = [{"subnet": subnet, "runtime": "onnxruntime", "loads": "yes", "runtime_version": "1", "quantized_layers": 20,
            "top1": 0.70, "file_bytes": 2048, "speed_vs_own_ptq_b1": speed, "own_ptq_ms_b1": 0.2, "own_ptq": own}
           for subnet, speed in (("W8A8", "1.1 [1.0-1.2]"), ("W4A4", "0.97 [0.96-0.98]"), ("W2A2", "0.99 [0.98-1.0]"))]
    args = SimpleNamespace(rounds=3, check_images=100, threads=2, record=True)
    for _ in range(2):  # a second merge replaces the first's figures, it does not stack them
        assert bench_targets._merge_ptq([dict(r) for r in new], args, 0.61) == 0
    result = json.loads((tmp_path / "deploy.json").read_text())
    w8, w4, w2 = result["figures"]["rows"]
    for row, earlier in ((w8, old["figures"]["rows"][0]), (w4, old["figures"]["rows"][1])):
        # the earlier run's figures stay, the PTQ comparison is added to every subnet's row
        assert {k: row[k] for k in earlier} == earlier and row["own_ptq"]["top1"] == 0.6
    assert w8["speed_vs_own_ptq_b1"] == "1.1 [1.0-1.2]" and w4["speed_vs_own_ptq_b1"] == "0.97 [0.96-0.98]"
    assert w2["subnet"] == "W2A2" and w2["speed_vs_own_ptq_b1"] == "0.99 [0.98-1.0]"  # a row the earlier run lacked
    assert len(result["figures"]["rows"]) == 3 and result["figures"]["rows_run"]["commit"] == "abcdef0123"
    text = result["markdown"]
    assert text.startswith(old["markdown"].rstrip()) and text.count("Against each runtime's own") == 1
    assert text.count("measured later and merged") == 1 and "61.00 %" in text
    assert "| W4A4 | quantize_static |" in text and "| 0.97 [0.96-0.98] |" in text
