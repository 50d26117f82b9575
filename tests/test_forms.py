"""The eight forms (weight and activation symmetry apart), format version 2, and the fixes found
trying eqtools as a new user: README without sudo, write errors, report of damaged artifacts."""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from eqtools.artifacts import FORMAT_VERSION, manifest_checksum, read_artifact, write_artifact
from eqtools.cli.app import app
from eqtools.errors import ArtifactError, ConfigError, ModelError
from eqtools.space import ElasticSpace, LayerInfo, SubnetConfig
from eqtools.vocab import GRANULARITIES, SYMMETRIES, Granularity, Symmetry, form_key, resolve_symmetry_flags

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
LAYERS = [LayerInfo("a", "conv", 27, 3, 27, 100), LayerInfo("b", "conv", 90, 10, 30, 300),
          LayerInfo("c", "linear", 30, 10, 3, 30)]
SPACE = ElasticSpace.build(LAYERS, w_bits=(2, 4, 8), a_bits=(2, 4, 8))


def flat(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------------- vocabulary
def test_typing_views_equal_the_vocabulary_tuples():
    assert Granularity.__args__ == GRANULARITIES and Symmetry.__args__ == SYMMETRIES


def test_a_full_space_has_eight_forms_and_configs_keep_both_symmetries():
    assert len(SPACE.conditions) == 8
    assert {(ws, as_) for _, ws, as_ in SPACE.conditions} == {(w, a) for w in SYMMETRIES for a in SYMMETRIES}
    config = SPACE.uniform(4, 4, "per-channel", "sym", "asym")
    assert (config.w_symmetry, config.a_symmetry) == ("sym", "asym")
    assert config.label == "per-channel W-sym A-asym" and config.condition == "per-channel/sym/asym"
    assert config.tag == "per-channel-Wsym-Aasym"
    assert SubnetConfig.from_json(config.to_json()) == config


@settings(max_examples=50, deadline=None)
@given(g=st.sampled_from(GRANULARITIES), ws=st.sampled_from(SYMMETRIES), as_=st.sampled_from(SYMMETRIES),
       bits=st.lists(st.sampled_from((2, 4, 8)), min_size=2, max_size=2))
def test_config_round_trip_over_every_form(g, ws, as_, bits):
    w, a = bits
    config = SPACE.uniform(w, a, g, ws, as_)
    assert SubnetConfig.from_dict(json.loads(config.to_json())) == config
    assert config.form == (g, ws, as_) and SPACE.contains(config)
    assert SPACE.validate(config.replace(a_symmetry=ws)).a_symmetry == ws


def test_version_1_config_means_one_symmetry_for_both():
    v2 = SPACE.uniform(4, 4, "per-tensor", "asym", "asym").to_dict()
    v1 = {k: v for k, v in v2.items() if k not in ("w_symmetry", "a_symmetry")} | {"symmetry": "asym"}
    assert SubnetConfig.from_dict(v1) == SubnetConfig.from_dict(v2)
    with pytest.raises(ConfigError, match="both 'symmetry'"):
        SubnetConfig.from_dict({**v2, "symmetry": "sym"})


def test_symmetry_flags_shorthand_and_contradiction():
    assert resolve_symmetry_flags("asym", None, None) == ("asym", "asym")
    assert resolve_symmetry_flags(None, "sym", "asym") == ("sym", "asym")
    assert resolve_symmetry_flags("asym", "asym", None) == ("asym", "asym")
    with pytest.raises(ConfigError, match="contradicts --w-symmetry sym"):
        resolve_symmetry_flags("asym", "sym", None)
    with pytest.raises(ConfigError, match="--a-symmetry is 'skew'"):
        resolve_symmetry_flags(None, None, "skew")


def test_spec_narrows_weight_and_activation_symmetries_apart():
    from eqtools.specs import parse_space_settings

    settings_ = parse_space_settings({"a_symmetries": ["asym"]})
    assert settings_["w_symmetries"] == ("sym", "asym") and settings_["a_symmetries"] == ("asym",)
    assert parse_space_settings({"symmetries": ["sym"]})["a_symmetries"] == ("sym",)
    from eqtools.errors import SpecError

    with pytest.raises(SpecError, match="must narrow symmetries"):
        parse_space_settings({"symmetries": ["sym"], "w_symmetries": ["asym"]})


def test_sandwich_draws_weight_and_activation_symmetry_independently():
    import random

    from eqtools.train import sample_sandwich

    rng = random.Random(0)
    seen = set()
    for _ in range(200):
        for config in sample_sandwich(SPACE, rng, 1):
            seen.add(config.form)
    assert seen == set(SPACE.conditions)


def test_quantizers_hold_only_the_symmetries_their_tensor_may_take():
    from eqtools.models import get_model
    from eqtools.quant import quantize_model

    supernet = quantize_model(get_model("tiny_cnn", num_classes=10, in_channels=1),
                              {"w_bits": [2, 4], "a_bits": [2, 4], "w_symmetries": ["sym"], "first_layer": "elastic",
                               "last_layer": "elastic"}, torch.zeros(1, 1, 8, 8))
    for _, layer in supernet.quant_layers():
        assert layer.weight_quant.symmetries == ("sym",) and layer.weight_quant.offset_per_channel is None
        assert layer.act_quant.symmetries == ("sym", "asym") and layer.act_quant.offset is not None
    with pytest.raises(ConfigError, match="weight symmetry 'asym' is not in this space"):
        supernet.apply(supernet.space.uniform(2).replace(w_symmetry="asym"))


# --------------------------------------------------------------------------------- format version
def _as_version_1(path: Path) -> None:
    """Rewrite an artifact's manifest the way eqtools with format_version 1 wrote it."""
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    space = manifest.get("space")
    if space is not None:
        assert space["w_symmetries"] == space["a_symmetries"]
        space["symmetries"] = space.pop("w_symmetries")
        del space["a_symmetries"]
        import hashlib

        blob = json.dumps(space, sort_keys=True, separators=(",", ":")).encode()
        manifest["space_fingerprint"] = hashlib.sha256(blob).hexdigest()[:16]
    manifest["format_version"] = 1
    manifest.pop("checksum", None)
    manifest["checksum"] = manifest_checksum(manifest)
    manifest_path.write_text(json.dumps(manifest))


def test_a_version_1_supernet_is_read_as_both_symmetries_alike(tiny_supernet_artifact, tmp_path):
    from eqtools.build import load_supernet

    old = tmp_path / "old"
    shutil.copytree(tiny_supernet_artifact, old)
    _as_version_1(old)
    art = read_artifact(old, "supernet")
    assert art.manifest["migrated_from_version"] == 1
    assert art.space == read_artifact(tiny_supernet_artifact).space
    supernet = load_supernet(art)  # the rebuilt space matches the migrated fingerprint
    ref = load_supernet(read_artifact(tiny_supernet_artifact))
    x = torch.randn(2, 1, 8, 8)
    config = supernet.space.uniform(4, 4, "per-tensor", "sym", "asym")
    supernet.eval().apply(config)
    ref.eval().apply(config)
    assert torch.equal(supernet(x), ref(x))


def test_a_version_1_predictor_is_refused_with_what_to_do(tmp_path):
    def files(tmp: Path) -> None:
        (tmp / "predictor.json").write_text("{}")

    art = write_artifact(tmp_path / "p", "predictor", files, spec={"name": "t"}, space=SPACE)
    _as_version_1(art.path)
    with pytest.raises(ArtifactError, match=r"format_version 1.*Re-create it with `eqtools fit-predictor`"):
        read_artifact(art.path, "predictor")
    assert FORMAT_VERSION == 2


# --------------------------------------------------------------------------------- write errors
def _payload(tmp: Path) -> None:
    (tmp / "a.txt").write_text("x")


def test_unwritable_output_is_one_paragraph_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ArtifactError, match=r"cannot write the samples artifact to .*file/out: .*Nothing was written"):
        write_artifact(blocker / "out", "samples", _payload)
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("failure", ["oserror", "safetensors", "safetensors-old"])
def test_a_full_disk_is_one_paragraph_and_leaves_nothing(tmp_path, failure):
    from safetensors import SafetensorError

    def full(tmp: Path) -> None:
        (tmp / "partial.bin").write_bytes(b"x" * 10)
        if failure == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        if failure == "safetensors":  # what safetensors raised here when a 200 kB tmpfs filled up
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    out = tmp_path / "ws" / "supernet"
    with pytest.raises(ArtifactError, match=r"cannot write the supernet artifact to .*: No space left on device"):
        write_artifact(out, "supernet", full)
    assert not out.exists() and list((tmp_path / "ws").iterdir()) == []


def test_a_real_write_error_from_the_cli_exits_2(tiny_supernet_artifact, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(app, ["calibrate", "--from", str(tiny_supernet_artifact), "--w-bits", "4",
                                 "--granularity", "per-channel", "--w-symmetry", "sym", "--a-symmetry", "asym",
                                 "--images", "64", "--out", str(blocker / "cal")])
    assert result.exit_code == 2, result.output
    assert "cannot write the calibrated artifact" in flat(result.output) and "Traceback" not in result.output


def test_bugs_during_a_write_keep_their_traceback(tmp_path):
    def broken(tmp: Path) -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        write_artifact(tmp_path / "x", "samples", broken)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------- small fixes
def test_readme_quickstart_runs_as_root_without_sudo_and_updates_package_lists():
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Quickstart"):]
    first = block[block.index("# 1.") :].splitlines()[1]
    assert not first.lstrip().startswith("sudo")
    # sudo only where the user is not root, and the package lists are fetched before the install
    assert re.search(r'id -u.*sudo', first), first
    assert first.index("apt-get update") < first.index("apt-get install")


def test_unknown_model_names_a_command_that_exists():
    from eqtools.models import get_model

    with pytest.raises(ModelError) as exc:
        get_model("resnet9000")
    command = re.search(r"`eqtools ([a-z-]+)( --[a-z]+)?` lists them", str(exc.value))
    assert command, str(exc.value)
    result = runner.invoke(app, [command.group(1), *([command.group(2).strip()] if command.group(2) else [])])
    assert result.exit_code == 0 and "resnet18" in result.output


def test_report_lists_a_damaged_artifact_instead_of_skipping_it(tmp_path):
    from eqtools.report import _newest, format_report

    def files(tmp: Path) -> None:
        (tmp / "predictor.json").write_text("{}")

    art = write_artifact(tmp_path / "spec" / "predictor", "predictor", files, spec={"name": "t"}, space=SPACE)
    (art.path / "predictor.json").write_text('{"edited": true}')
    damaged: list[dict[str, str]] = []
    assert _newest("predictor", tmp_path / "spec", damaged) is None
    assert len(damaged) == 1 and "does not match its checksum" in damaged[0]["error"]
    assert _newest("search", tmp_path / "spec", damaged) is None and len(damaged) == 1  # absent is not damaged
    tables = format_report({"spec": "t", "test_images": 0, "uniform": [], "damaged": damaged})
    assert tables[-1][0].startswith("Artifacts that failed verification") and tables[-1][2][0][0] == str(art.path)


def test_search_plot_title_labels_prediction_and_measurement(tmp_path):
    import numpy as np

    from eqtools.search.constraints import Budget
    from eqtools.search.run import SearchOptions, SearchOutcome, write_search

    best = SPACE.uniform(4, 4, "per-tensor", "sym", "asym")
    point = {"predicted_accuracy": 0.79, "avg_w_bits": 4.0, "avg_a_bits": 4.0, "size_bytes": 100, "bops": 1000,
             "avg_bits": 4.0, "config": best.to_dict()}
    front_point = {**point, "predicted_accuracy": 0.818}

    class _Predictor:
        artifact = None
        space = SPACE
        model = "mlp"

    outcome = SearchOutcome(
        mode="ga", condition=form_key(*best.form), preset=None, budget=Budget(w_bits=4, a_bits=4), best=best,
        best_predicted=0.79, best_costs={k: point[k] for k in ("avg_w_bits", "avg_a_bits", "size_bytes", "bops")},
        front_x="bits", front=[front_point, point], top=[point], history=[], evaluations=1, time_s=0.0,
        options=SearchOptions(w_bits=4), verified=[{"measured_top1": 0.80, "predicted_accuracy": 0.79}],
        search_best_predicted=0.818, cloud=(np.zeros(0), np.zeros(0)),
    )
    art = write_search(outcome, tmp_path / "s", _Predictor())
    title = json.loads((art.path / "pareto.json").read_text())["title"]
    assert "measured 80.00%" in title and "predicted 79.00%" in title and "81.80%" in title
    assert "best predicted 79.00%" not in title
