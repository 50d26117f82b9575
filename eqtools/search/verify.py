"""``--verify``: calibrate and evaluate the top-K searched configs on the real supernet.

The predictor ranks configs well on average but can be wrong by a point or two on any single one;
re-measuring the few best candidates (BN re-estimation + evaluation, the same arithmetic as
``eqtools calibrate``) and keeping the best *measured* one removes that error where it matters.

The choice is made on the ``unseen`` split by default: the held-out ``val`` images and every
training image the supernet's training subset left out. The candidates usually differ from each
other and from uniform by tenths of a point, which the val split alone is too small to resolve;
the noise of a paired difference falls with the square root of the images (docs/search.md has the
measured intervals). None of these images is a test image, so choosing on them does not leak
the test set, on which the pick is then compared with uniform. Nothing but the search artifact is
written: ``eqtools calibrate --searched`` keeps the pick as a ``calibrated`` artifact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eqtools.artifacts import Artifact, check_space, find_latest, read_artifact
from eqtools.errors import ConfigError
from eqtools.predictor.model import Predictor
from eqtools.space import SubnetConfig
from eqtools.vocab import VERIFY_SPLITS

if TYPE_CHECKING:
    import numpy as np

    from eqtools.search.run import SearchOutcome

__all__ = ["VerifyBench", "compare_with_uniform", "find_supernet", "selection_pair", "verify_candidates", "verify_configs",
           "verify_outcome"]


def find_supernet(predictor: Predictor, path: Path | str | None = None,
                  echo: Callable[[str], None] | None = None) -> Artifact:
    """The supernet the predictor's samples were measured on (or ``path``), checked against its space.

    The lineage (predictor → samples → supernet, as recorded in the manifests, each checksum
    verified): a recorded supernet that was replaced or removed is refused, never swapped for another.
    Only a lineage that records no supernet at all (synthetic samples) falls back to the newest
    ``supernet`` artifact in the workspace, and says so.
    """
    if path is not None:
        supernet = read_artifact(path, "supernet")
    else:
        art = predictor.artifact
        supernet = art.ancestor("supernet") if art is not None else None
        how = "the predictor's lineage"
        if supernet is None:
            supernet = read_artifact(find_latest("supernet", flag="--supernet"), "supernet")
            how = "the newest: the predictor's lineage records none"
        if echo is not None:
            echo(f"verifying on supernet {supernet.path} ({how})")
    check_space(supernet, predictor.space, what=f"the predictor {predictor.artifact.path if predictor.artifact else ''}".strip())
    return supernet


def _check_split(split: str) -> None:
    if split not in VERIFY_SPLITS:
        raise ConfigError(f"--verify chooses on held-out training images: split {split!r} is not one of "
                          f"{list(VERIFY_SPLITS)} (the test split is kept for comparing the pick with uniform)")


@dataclass
class VerifyBench:
    """One loaded supernet, its splits and the calibration images, shared by the verification and the
    test-split comparison so the supernet is read and the data decoded once."""

    spec: Any
    supernet: Any
    splits: Any
    calib: Any

    @classmethod
    def load(cls, supernet_artifact: Artifact, device: str = "cpu") -> VerifyBench:
        from eqtools.build import artifact_spec, load_supernet
        from eqtools.data import load_splits
        from eqtools.evaluation import calibration_source

        spec = artifact_spec(supernet_artifact)
        supernet = load_supernet(supernet_artifact, map_location=device).use_channels_last()
        splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
        calib = calibration_source(splits, spec.calibrate.images, spec.calibrate.batch_size, spec.seed)
        return cls(spec, supernet, splits, calib)

    def meter(self, split: str, eval_images: int | None = None) -> Any:
        """Eager, so that every number equals what ``eqtools calibrate`` reports for the same subnet:
        compiled, float summation order (and the int8 kernels' rounding) moves a few activations
        across a rounding boundary, enough at low bits to reorder candidates that differ by tenths
        of a point, and the pick-vs-uniform figures should be the ones a user can reproduce."""
        from eqtools.evaluation import SubnetMeter, evaluation_source

        evaluation = evaluation_source(self.splits, split, eval_images, self.spec.calibrate.batch_size, self.spec.seed)
        return SubnetMeter(self.supernet, self.calib, evaluation)


def verify_configs(
    supernet_artifact: Artifact,
    configs: Sequence[SubnetConfig],
    predicted: Sequence[float],
    *,
    split: str = "unseen",
    eval_images: int | None = None,
    on_stage: Callable[[str], None] | None = None,
    progress: Callable[..., None] | None = None,
    bench: VerifyBench | None = None,
    per_image: bool = False,
    sources: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Calibrate + evaluate each config on ``split``; rows sorted by measured accuracy (best first).

    Each subnet gets the ``calibrate`` stage's BN calibration (``calibrate.images`` training
    images), so a row's accuracy is what ``eqtools calibrate --split SPLIT`` reports. With
    ``per_image`` each row also holds ``correct`` (bool per image, the split's order), which a
    caller must take out before the rows are written: it is there so a paired comparison on the
    same images needs no second measurement.
    """
    _check_split(split)
    bench = bench if bench is not None else VerifyBench.load(supernet_artifact)
    meter = bench.meter(split, eval_images)
    if on_stage is not None:
        on_stage(f"each config: BN calibration on {bench.calib.images} train images, then top-1 on "
                 f"{meter.evaluation.images} {split} images")
    rows = []
    for rank, (config, pred) in enumerate(zip(configs, predicted), start=1):
        metrics = meter.measure(config, per_image=per_image)
        rows.append({
            "predicted_rank": rank,
            "predicted_accuracy": float(pred),
            "measured_top1": float(metrics["top1"]),
            "measured_loss": float(metrics["loss"]),
            "split": split,
            "eval_images": int(metrics["images"]),
            "config": config.to_dict(),
            **({"source": sources[rank - 1]} if sources is not None else {}),
            **({"correct": metrics["correct"]} if per_image else {}),
        })
        if progress is not None:
            progress(measured=rows[-1]["measured_top1"])
    rows.sort(key=lambda r: -r["measured_top1"])
    return rows


def verify_candidates(outcome: SearchOutcome) -> list[dict[str, Any]]:
    """The points ``--verify`` measures, each marked with its ``source``: the top-K (``predicted``), the
    budget's cheap-first mixes (``cheap-first``, :mod:`eqtools.search.mixes`) and the uniform config
    at the budget (``uniform``), each once."""
    candidates: list[dict[str, Any]] = []
    baseline = outcome.uniform_baseline
    for source, points in (("predicted", outcome.top), ("cheap-first", outcome.cheap_first),
                           ("uniform", [] if baseline is None else [baseline])):
        for p in points:
            if all(c["config"] != p["config"] for c in candidates):
                candidates.append({**p, "source": source})
    return candidates


def verify_outcome(
    outcome: SearchOutcome,
    supernet_artifact: Artifact,
    *,
    split: str = "unseen",
    eval_images: int | None = None,
    on_stage: Callable[[str], None] | None = None,
    progress: Callable[..., None] | None = None,
    bench: VerifyBench | None = None,
) -> SearchOutcome:
    """Measure the top-K and the uniform config at the budget; make the best *measured* one the pick.

    The uniform config is measured too (for budgets without one in their windows, the largest
    uniform config under their upper bounds; see ``run._uniform_baseline``): a search none of whose
    candidates measures *above* it on held-out images returns it, a tie included, so ``--verify``
    never ships a subnet that measured worse than the obvious choice. The GA's own best
    prediction is kept in ``search_best_predicted`` so reports can tell prediction from measurement.
    ``bench`` lets a caller verifying many searches on one supernet load it and its data once.
    """
    _check_split(split)  # before loading anything
    candidates = verify_candidates(outcome)
    configs = [SubnetConfig.from_dict(p["config"]) for p in candidates]
    if on_stage is not None:
        mixes = sum(c["source"] == "cheap-first" for c in candidates)
        on_stage(f"verifying {len(configs)} configs (top {len(outcome.top)}"
                 f"{f' + {mixes} cheap-first mixes' if mixes else ''}"
                 f"{' + the uniform one' if any(c['source'] == 'uniform' for c in candidates) else ''}) "
                 f"on {supernet_artifact.path}")
    bench = bench if bench is not None else VerifyBench.load(supernet_artifact)
    rows = verify_configs(supernet_artifact, configs, [p["predicted_accuracy"] for p in candidates],
                          split=split, eval_images=eval_images, on_stage=on_stage, progress=progress, bench=bench,
                          per_image=True, sources=[c["source"] for c in candidates])
    baseline = outcome.uniform_baseline
    if baseline is not None:  # a tie goes to the uniform config: a candidate must beat it to be kept
        index = next(i for i, row in enumerate(rows) if row["config"] == baseline["config"])
        if rows[index]["measured_top1"] >= rows[0]["measured_top1"]:
            rows.insert(0, rows.pop(index))
    outcome.verified_correct = [row.pop("correct") for row in rows]
    outcome.search_best_predicted = outcome.best_predicted
    outcome.verified = rows
    best_row = rows[0]
    outcome.best = SubnetConfig.from_dict(best_row["config"])
    outcome.best_predicted = best_row["predicted_accuracy"]
    match = next(p for p in candidates if p["config"] == best_row["config"])
    outcome.best_costs = {k: match[k] for k in ("avg_w_bits", "avg_a_bits", "size_bytes", "bops")}
    outcome.vs_uniform_selection = _selection_interval(outcome, bench.spec.seed)
    return compare_with_uniform(outcome, supernet_artifact, on_stage=on_stage, bench=bench)


def selection_pair(outcome: SearchOutcome) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """The pick's and the uniform config's per-image correctness on the split ``--verify`` chose on,
    from the verification's own measurement, and whether the pick is the uniform config; None
    without a verification or a uniform config at the budget."""
    baseline = outcome.uniform_baseline
    if baseline is None or outcome.verified is None or outcome.verified_correct is None:
        return None
    index = next(i for i, row in enumerate(outcome.verified) if row["config"] == baseline["config"])
    return outcome.verified_correct[0], outcome.verified_correct[index], index == 0


def _selection_interval(outcome: SearchOutcome, seed: int, resamples: int = 2000) -> dict[str, Any] | None:
    """Pick minus uniform, paired on the images the pick was *chosen* on, from the verification's own
    per-image results. It is biased upwards (the pick won on these images, so their noise favours
    it) and is no evidence of a gain; beside the test-split interval it says whether the choosing
    split resolved the difference at all: an interval spanning zero there means the choice was a
    coin toss among near-equals, one above zero on it but not on test means the test split is too
    small to confirm it."""
    from eqtools.stats import paired_bootstrap

    pair = selection_pair(outcome)
    if pair is None:
        return None
    pick, base, pick_is_uniform = pair
    result = paired_bootstrap(pick, base, resamples=resamples, seed=seed)
    return {**result, "split": outcome.verified[0]["split"], "pick_is_uniform": pick_is_uniform}


def compare_with_uniform(
    outcome: SearchOutcome, supernet_artifact: Artifact, *, resamples: int = 2000,
    on_stage: Callable[[str], None] | None = None, bench: VerifyBench | None = None,
) -> SearchOutcome:
    """Measure the final pick and the uniform config at the budget on the *test* split, image by image,
    and store their paired difference with a bootstrap 95 % interval in ``outcome.vs_uniform``.

    The pick was chosen on held-out training images, so test images are untouched by the choice
    and the interval says how sure the gain over uniform is. Both subnets get the ``calibrate``
    stage's BN calibration (``calibrate.images`` training images), so the numbers equal what
    ``eqtools calibrate`` reports. No uniform config at the budget (fractional budget, not in the
    space): nothing to do.
    """
    from eqtools.stats import paired_bootstrap

    baseline = outcome.uniform_baseline
    if baseline is None:
        return outcome
    uniform = SubnetConfig.from_dict(baseline["config"])
    if on_stage is not None:
        on_stage("measuring the pick and the uniform config on the test split (paired, per image)")
    bench = bench if bench is not None else VerifyBench.load(supernet_artifact)
    meter = bench.meter("test")
    pick = meter.measure(outcome.best, per_image=True)
    base = pick if outcome.best == uniform else meter.measure(uniform, per_image=True)
    result = paired_bootstrap(pick["correct"], base["correct"], resamples=resamples, seed=bench.spec.seed)
    outcome.vs_uniform = {**result, "split": "test", "pick_top1": pick["top1"], "uniform_top1": base["top1"],
                          "pick_is_uniform": outcome.best == uniform}
    return outcome
