"""Measuring a subnet as it ships: how closely one set of logits follows another, and the deployed accuracy.

Library code, shared by two stages: ``calibrate`` records a subnet's accuracy as the integer ONNX
export runs it (:func:`measure_deployed`), and ``export`` gates its files with :func:`parity`.
Nothing here reads or writes an artifact.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from eqtools.errors import EqtoolsError
from eqtools.export import ExportError
from eqtools.export._graph import extract_graph
from eqtools.export.backends.onnxruntime import build_deploy_onnx, deploy_blocker, plan_to_dict, run_onnx
from eqtools.export.backends.qdq import INT4_OPSET
from eqtools.quant import Supernet

if TYPE_CHECKING:
    from eqtools.data import Splits

__all__ = ["DEPLOY_CALIBRATION_IMAGES", "TIE_RTOL", "batch_labels", "deploy_calibration", "measure_deployed", "parity"]

# train images whose ranges set the deployed graph's own 8-bit requantizations (calibrate and export alike)
DEPLOY_CALIBRATION_IMAGES = 512
TIE_RTOL = 1e-6


def _ort_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception classes (they derive from Exception, not RuntimeError)."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return ()
    return tuple(getattr(state, name) for name in ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf",
                                                    "NoSuchFile", "NotImplemented", "RuntimeException")
                 if isinstance(getattr(state, name, None), type))


_ORT_ERRORS = _ort_errors()


def batch_labels(batches: Iterable[tuple[Tensor, Any]]) -> Tensor | None:
    """The labels of ``(x, y)`` batches in order, or None where any batch has none."""
    labels = [y for _, y in batches]
    return None if any(y is None for y in labels) else torch.cat(labels)


def parity(reference: Tensor, logits: Tensor, labels: Tensor | None = None) -> dict[str, Any]:
    """How closely ``logits`` [N, classes] follow ``reference`` (and both the labels, if given).

    A differing top-1 counts as agreement only where the reference itself is tied between the two
    classes (within ``1e-6`` relative): float rounding alone decides such an argmax. Ties are counted
    in ``ties`` so they stay visible.
    """
    ref_top, top = reference.argmax(1), logits.argmax(1)
    scale = 1.0 + reference.abs().amax(1)
    tied = reference.gather(1, top[:, None])[:, 0] >= reference.amax(1) - TIE_RTOL * scale
    agree = (top == ref_top) | tied
    diff = (logits - reference).abs()
    out: dict[str, Any] = {
        "images": int(reference.shape[0]),
        "top1_agreement": float(agree.float().mean()),
        "ties": int(((top != ref_top) & tied).sum()),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "relative_logit_diff": float(diff.mean() / reference.abs().mean().clamp_min(1e-12)),
        "bit_identical": bool(torch.equal(logits, reference)),
    }
    if labels is not None:  # counted, as the stages count top-1 (evaluate), not a float32 mean
        out["accuracy"] = int((top == labels).sum()) / len(labels)
        out["reference_accuracy"] = int((ref_top == labels).sum()) / len(labels)
        out["accuracy_change"] = out["accuracy"] - out["reference_accuracy"]
    return out


def deploy_calibration(splits: Splits, seed: int, images: int = DEPLOY_CALIBRATION_IMAGES,
                       batch_size: int = 250) -> list[Tensor]:
    """The train images whose ranges set the integer graph's 8-bit requantizations: one seeded draw,
    shared by the calibrate stage and export, so both build the same graph from the same subnet."""
    from eqtools.evaluation import BatchSource

    return [x for x, _ in BatchSource(splits.train, batch_size, images=images, shuffle_seed=seed)]


@torch.no_grad()
def measure_deployed(supernet: Supernet, batches: Iterable[tuple[Tensor, Tensor | None]],
                     calibration: list[Tensor], *, reference: Tensor | None = None, opset: int = INT4_OPSET,
                     threads: int = 2,
                     log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The active subnet measured as the integer ONNX export runs it: ``(metrics, plan document)``.

    The deployed graph rounds where the fake-quant model does not (int32 biases after BN folding,
    8-bit requantizations at residual adds; docs/export.md). Its accuracy is measured here by
    building that graph and running it in onnxruntime on ``batches``, so the calibrated subnet's
    recorded accuracy includes what ships, and the plan (the calibrated 8-bit ranges) is returned
    for the artifact to keep: export builds its file from it, the very graph measured here (at
    ``opset``, export's default; at another ``--opset`` export writes the same integer graph under
    that opset's version).
    ``reference``: the fake-quant logits on the same images, for the paired agreement (computed
    if not given). A subnet whose form onnxruntime cannot run on integer kernels (asymmetric
    weights; ``export_form`` is then "exact", the form export falls back to), or a model the
    export cannot write or onnxruntime cannot run, is not measured: the metrics say why and the
    plan is None, so the calibration itself is never lost to it.
    """
    say = log or (lambda message: None)
    if any(p.device.type != "cpu" for p in supernet.parameters()):  # the graph is extracted and run on the CPU
        supernet = copy.deepcopy(supernet).cpu()
    supernet = supernet.eval()
    try:
        graph = extract_graph(supernet, calibration[0][:2].contiguous(), bn_fold="scale")
        blocker = deploy_blocker(graph)
        if blocker is not None:  # export falls back to the exact QDQ form, which computes the fake-quant arithmetic
            return {"measured": False, "blocker": blocker, "export_form": "exact"}, None
        say(f"measuring the subnet as the integer ONNX export runs it (8-bit ranges from "
            f"{sum(len(x) for x in calibration)} train images, onnxruntime)")
        model, info, plan = build_deploy_onnx(graph, calibration, opset=opset, error=ExportError)
        logits = run_onnx(model.SerializeToString(), [x.contiguous() for x, _ in batches], threads=threads)
    except (EqtoolsError, RuntimeError, *_ORT_ERRORS) as exc:
        # a model the export cannot write, or a graph onnxruntime refuses: the measurement is extra, the stage goes on
        return {"measured": False, "blocker": f"the integer graph cannot be built or run: {exc}",
                "export_form": None}, None
    if reference is None:
        reference = torch.cat([supernet(x) for x, _ in batches])
    labels = batch_labels(batches)
    result = parity(reference, logits, labels)
    metrics = {"measured": True, "blocker": None, "export_form": "deploy", "runtime": "onnxruntime", "opset": opset,
               "images": result["images"], "top1_agreement": result["top1_agreement"],
               "requantized_values": info["requantized_values"],
               "calibration": {"split": "train", "images": sum(len(x) for x in calibration)}}
    if labels is not None:
        metrics.update(top1=result["accuracy"], top1_fake_quant=result["reference_accuracy"],
                       top1_change=result["accuracy_change"])
    return metrics, {**plan_to_dict(plan), "bn_fold": "scale", "opset": opset, "calibration": metrics["calibration"]}
