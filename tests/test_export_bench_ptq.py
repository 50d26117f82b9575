"""``bench_targets.py --against-ptq``: the comparison with each runtime's own post-training int8.

The measurement itself needs every runtime and minutes; what is checked here is what can go wrong
without them: the option is 8-bit only and says so, and merging its figures into an existing
``deploy.json`` keeps every figure that was there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_targets  # noqa: E402


@pytest.mark.parametrize("extra", [["--bits", "8,4"], ["--bits", "4"], ["--config", "best_config.json"]])
def test_against_ptq_refuses_anything_but_the_8_bit_subnet(extra, capsys, tmp_path):
    with pytest.raises(SystemExit) as raised:
        bench_targets.main([str(tmp_path / "no-supernet"), "--against-ptq", *extra])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert "--against-ptq compares 8-bit files only" in err and "--bits 8" in err
    assert "Traceback" not in err


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
    new = {"subnet": "W8A8", "runtime": "onnxruntime", "loads": "yes", "runtime_version": "1", "quantized_layers": 20,
           "top1": 0.70, "file_bytes": 2048, "speed_vs_own_ptq_b1": "1.1 [1.0-1.2]", "own_ptq_ms_b1": 0.2,
           "own_ptq": {"top1": 0.6, "integer_layers": 20, "file_bytes": 4096, "tool": "quantize_static"}}
    args = SimpleNamespace(rounds=3, check_images=100, threads=2, record=True)
    for _ in range(2):  # a second merge replaces the first's figures, it does not stack them
        assert bench_targets._merge_ptq([dict(new)], args, 0.61) == 0
    result = json.loads((tmp_path / "deploy.json").read_text())
    w8, w4 = result["figures"]["rows"]
    assert w8["speed_vs_fp32_b1"] == "2.0 [1.9-2.1]" and w8["top1"] == 0.75  # the earlier run's figures stay
    assert w8["speed_vs_own_ptq_b1"] == "1.1 [1.0-1.2]" and w8["own_ptq"]["top1"] == 0.6
    assert w4 == old["figures"]["rows"][1] and len(result["figures"]["rows"]) == 2
    assert result["figures"]["rows_run"]["commit"] == "abcdef0123"
    text = result["markdown"]
    assert text.startswith(old["markdown"].rstrip()) and text.count("Against each runtime's own") == 1
    assert text.count("measured later and merged") == 1 and "| 1.1 [1.0-1.2] |" in text and "61.00 %" in text
