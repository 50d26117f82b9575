"""The README a newcomer reads: short, its two commands what they say, its snippet runnable as
written, every figure linked to a section of BENCHMARKS.md that exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
sys.path.insert(0, str(ROOT))

from benchmarks import _render  # noqa: E402


def _block(heading: str, lang: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def _commands() -> list[str]:
    return [line for line in _block("Quickstart", "bash").splitlines() if line and not line.startswith("#")]


def test_readme_is_short_and_has_no_placeholder():
    assert len(README.splitlines()) <= 150
    placeholders = re.findall(r"\b[A-Z]{3,}_[A-Z_]{3,}\b", README)  # RUNTIMES_LINE, QUICKSTART_TIME, ...
    assert not placeholders, f"fill in {placeholders}"


def test_exactly_two_commands_and_ci_runs_the_second():
    first, second = _commands()
    assert not first.lstrip().startswith("sudo")  # root on a fresh machine has no sudo
    assert "apt-get update" in first.split("apt-get install")[0]  # a fresh machine's apt lists are empty
    assert "scripts/quickstart.sh" in first and "pytest" in second
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == second


def test_every_benchmarks_link_names_a_section_that_exists():
    anchors = {_render.anchor(line[3:]) for line in (ROOT / "BENCHMARKS.md").read_text().splitlines()
               if line.startswith("## ")}
    links = re.findall(r"\(BENCHMARKS\.md#([\w-]+)\)", README)
    assert links and set(links) <= anchors, set(links) - anchors


def test_every_results_row_links_to_benchmarks():
    table = README.split("## Results\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| question")]
    assert rows and all("(BENCHMARKS.md#" in row for row in rows)


def test_your_own_model_snippet_runs_as_written(tmp_path):
    code = _block("Your own model", "python") + "\nassert tuple(logits.shape) == (8, 10), logits.shape\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("batches, named", [([{"image": torch.zeros(2, 3, 8, 8)}], "dict"),
                                            ([[1, 2]], "list of ['int', 'int']"),
                                            (["images"], "str")])
def test_init_from_data_names_what_it_got(batches, named):
    from eqtools import quantize_model
    from eqtools.errors import ConfigError

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 2))
    supernet = quantize_model(model, {"w_bits": [4, 8], "a_bits": [8], "first_layer": "elastic", "last_layer": "elastic"}, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="input tensors .* or \\(inputs, labels\\) pairs.*" + re.escape(named)):
        supernet.init_from_data(batches)


def test_init_from_data_takes_a_dataloader_like_its_tensors():
    from torch.utils.data import DataLoader, TensorDataset

    from eqtools import quantize_model

    torch.manual_seed(0)
    x = torch.randn(16, 3, 8, 8)

    def fresh():
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                    torch.nn.Linear(144, 2))
        return quantize_model(model, {"w_bits": [4, 8], "a_bits": [8], "first_layer": "elastic", "last_layer": "elastic"}, torch.zeros(1, 3, 8, 8))

    a, b = fresh(), fresh()
    assert a.init_from_data([x[:8], x[8:]]) == 16
    assert b.init_from_data(DataLoader(TensorDataset(x, torch.zeros(16, dtype=torch.long)), batch_size=8)) == 16
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_every_figure_of_the_results_table_is_in_the_section_it_links_to():
    """A figure with a decimal point or two digits, written as BENCHMARKS.md shows it (its prefix, when rounded)."""
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    sections = {_render.anchor(part.split("\n", 1)[0]): part for part in benchmarks.split("\n## ")[1:]}
    table = README.split("## Results\n", 1)[1].split("\n## ", 1)[0]
    missing = []
    for row in table.splitlines()[2:]:
        if not row.startswith("| ") or row.startswith("| question"):
            continue
        figure, links = row.split(" | ")[1], re.findall(r"\(BENCHMARKS\.md#([\w-]+)\)", row)
        text = "\n".join(sections.get(link, "") for link in links)
        for number in re.findall(r"\d+\.\d+|\d{2,}", figure):
            if number not in text:
                missing.append(f"{number} ({', '.join(links)})")
    assert not missing, missing
