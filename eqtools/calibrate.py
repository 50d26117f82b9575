"""The ``calibrate`` stage: one subnet's BN statistics re-estimated and measured, kept as a ``calibrated`` artifact.

The measuring is :func:`eqtools.evaluation.measure_subnet` (shared with every other stage, see
that module for what "re-estimated" means); this module only writes its result as an artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eqtools.artifacts import Artifact, Calibrated, claim_out, default_out
from eqtools.evaluation import config_tag, evaluation_source, measure_subnet
from eqtools.space import SubnetConfig
from eqtools.vocab import SPLITS

if TYPE_CHECKING:
    from eqtools.data import Splits
    from eqtools.quant import Supernet

__all__ = ["accuracy_gain_points", "calibrate_artifact", "load_calibrated_config"]


def calibrate_artifact(
    supernet_artifact: Artifact,
    config: SubnetConfig,
    *,
    images: int | None = None,
    split: str = "test",
    out: Path | str | None = None,
    batch_size: int | None = None,
    eval_images: int | None = None,
    supernet: Supernet | None = None,
    splits: Splits | None = None,
    on_stage: Callable[[str], None] | None = None,
    deployed: bool = True,
    device: str = "cpu",
) -> Artifact:
    """Calibrate one subnet of a supernet artifact, evaluate it before and after, save it.

    - ``images``: training images for BN statistics (default: the spec's ``calibrate.images``);
      fewer if the training split is smaller (the metrics record how many were used).
    - ``split``: where accuracy is measured (``test`` by default; ``val`` for model selection, as
      ``search --verify`` should, so the test set stays unseen); ``eval_images`` limits it to a
      fixed class-balanced subset of that many images.
    - ``out``: the artifact directory (default ``artifacts/<spec>/calibrated-<tag>``, tag from
      :func:`config_tag`).
    - ``batch_size``: for calibration and evaluation (default: the spec's ``calibrate.batch_size``).
    - ``supernet``/``splits``: an already loaded supernet (of this artifact) and dataset, so a
      caller calibrating several configs loads them once; the supernet is left with ``config``
      active and its BN statistics recalibrated.

    - ``deployed``: also measure the subnet as the integer ONNX export runs it, on the same images
      (:func:`eqtools.export.measure_deployed`; ``metrics.deployed``), and keep that graph's 8-bit
      ranges in ``deploy_plan.json`` for export to build the same file. Skipped, with the reason
      recorded, for forms onnxruntime cannot run on integer kernels (asymmetric weights).
    - ``device``: where the supernet runs (``cpu``, ``cuda``, ``cuda:N``; resolved by
      :func:`eqtools.device.resolve_device`). The deployed measurement runs onnxruntime on the CPU.

    The artifact's ``weights.safetensors`` is the whole supernet state_dict after recalibration (so
    :func:`eqtools.build.load_supernet` reads it as it reads a supernet), ``config.json`` the
    config; see docs/calibrate.md.
    """
    from eqtools.build import artifact_spec, save_supernet
    from eqtools.data import load_splits

    spec = artifact_spec(supernet_artifact)
    space = supernet_artifact.space
    if out is None and space is not None:
        out = default_out(spec.name, "calibrated", config_tag(space, config))
    if out is not None:
        claim_out(out, "calibrated", [supernet_artifact])  # before any computation
    if deployed and splits is None and supernet_artifact.kind == "supernet" and split in SPLITS:
        # loaded here, not in measure_subnet, because the deployed measurement scores the same images again
        if on_stage:
            on_stage(f"loading {spec.data.name}")
        splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    supernet, metrics = measure_subnet(
        supernet_artifact, config, images=images, split=split, batch_size=batch_size, eval_images=eval_images,
        supernet=supernet, splits=splits, on_stage=on_stage, device=device,
    )
    plan = None
    if deployed:
        from eqtools.export import deploy_calibration, measure_deployed

        evaluation = evaluation_source(splits, split, eval_images,
                                       spec.calibrate.batch_size if batch_size is None else batch_size, spec.seed)
        metrics["deployed"], plan = measure_deployed(supernet, evaluation, deploy_calibration(splits, spec.seed),
                                                     log=on_stage)
    out = Path(out) if out is not None else default_out(spec.name, "calibrated", config_tag(supernet.space, config))
    return save_supernet(
        supernet,
        out,
        spec,
        kind="calibrated",
        parents=[supernet_artifact],
        metrics=metrics,
        extra={"config": config.to_dict()},
        files=Calibrated.payload(config, plan),
    )


def load_calibrated_config(artifact: Artifact) -> SubnetConfig:
    """The config a ``calibrated`` artifact holds (to activate after :func:`eqtools.build.load_supernet`)."""
    return Calibrated.config(artifact)


def accuracy_gain_points(metrics: dict[str, Any]) -> float:
    """Top-1 change from BN calibration, in percentage points."""
    return 100.0 * (float(metrics["top1"]) - float(metrics["top1_before"]))

