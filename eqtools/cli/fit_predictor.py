"""``eqtools fit-predictor``: fit the accuracy predictor (CQAP) on a ``samples`` artifact."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from eqtools.cli._common import FORCE_HELP, echo, emit_artifact, handle_errors, progress


class Model(str, Enum):
    mlp = "mlp"
    xgb = "xgb"
    ensemble = "ensemble"


class EncodingKind(str, Enum):
    onehot = "onehot"
    ordinal = "ordinal"
    onehot_costs = "onehot-costs"


class Target(str, Enum):
    accuracy = "accuracy"
    loss = "loss"


class Optimizer(str, Enum):
    adam = "adam"
    sgd = "sgd"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@handle_errors
def command(
    source: Annotated[Path | None, typer.Option(
        "--from", help="samples artifact directory (default: the newest under artifacts/).")] = None,
    model: Annotated[Model | None, typer.Option(
        "--model", help="mlp (7x200 MLP, SmoothL1), xgb (gradient-boosted trees) or ensemble (--members MLPs + one xgb, averaged; their spread is the uncertainty the search uses). Default: the spec's predictor.model.")] = None,
    encoding: Annotated[EncodingKind | None, typer.Option(
        "--encoding", help="Bit-width encoding: onehot, ordinal, or onehot-costs (onehot + average bits and BOPs columns); docs/fit-predictor.md compares them. Default: the spec's predictor.encoding.")] = None,
    rank_weight: Annotated[float | None, typer.Option(
        "--rank-weight", min=0.0, help="MLP: weight of a pairwise ranking loss added to SmoothL1 (0: none). Default: the spec's predictor.rank_weight.")] = None,
    target: Annotated[Target | None, typer.Option(
        "--target", help="What the model learns: accuracy (top-1), or loss (the rows' mean cross-entropy, less noisy; read out as accuracy by a line fitted on the training rows). Default: the spec's predictor.target.")] = None,
    members: Annotated[int | None, typer.Option(
        "--members", min=1, help="ensemble: number of MLP members (seeds). Default: the spec's predictor.members.")] = None,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", min=1, help="MLP training epochs (default: the spec's predictor.epochs, 100). Ignored by xgb.")] = None,
    optimizer: Annotated[Optimizer, typer.Option(
        "--optimizer", help="MLP optimiser: adam (reference code, default) or sgd (the paper's text; fits far worse).")] = Optimizer.adam,
    seed: Annotated[int | None, typer.Option(
        "--seed", min=0, max=2**31 - 1, help="Seed of the held-out split and of training (default: the spec's seed).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output directory (default: artifacts/<spec>/predictor-<model>).")] = None,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (the metrics) on stdout.")] = False,
) -> None:
    """Fit the conditional accuracy predictor and report RMSE, Pearson r and Kendall tau on held-out subnets.

    20% of the samples (by seed) are held out. The artifact holds the model, its input encoding (so `search` refuses configs of another space), the held-out predictions and a predicted-vs-measured scatter plot.
    """
    from eqtools.artifacts import claim_out, default_out, resolve_input
    from eqtools.predictor import FitOptions, fit_predictor

    samples = resolve_input(source, "samples", echo=echo)
    options = FitOptions.from_spec(
        samples.spec,
        model=model.value if model else None,
        encoding=encoding.value if encoding else None,
        epochs=epochs,
        seed=seed,
        optimizer=optimizer.value,
        rank_weight=rank_weight,
        members=members,
        target=target.value if target else None,
    )
    spec_name = samples.spec.get("name") or "default"
    out = out if out is not None else default_out(spec_name, "predictor", options.model)
    claim_out(out, "predictor", [samples])  # before fitting
    echo(f"fitting {options.model} ({options.encoding} encoding) on {samples.path}")
    total = options.epochs if options.model == "mlp" else 1  # an ensemble reports once, when it is done
    with progress(f"fit-predictor {options.model}", total, enabled=not as_json) as advance:
        artifact = fit_predictor(samples, out, options, on_epoch=lambda epoch, loss: advance(loss=loss))
    m = artifact.metrics
    if as_json:
        emit_artifact(artifact)
        return
    echo(
        f"held-out {m['n_test']} of {m['n_samples']} subnets: RMSE {100 * m['rmse']:.2f} points, "
        f"Pearson {_fmt(m['pearson'])}, Kendall tau {_fmt(m['kendall_tau'])} (paper: > 0.90 / > 0.80)"
    )
    for condition, row in m.get("per_condition", {}).items():
        echo(f"  {condition}: tau {_fmt(row['kendall_tau'])}, Pearson {_fmt(row['pearson'])} ({row['n']} subnets)")
    echo(f"wrote predictor artifact {artifact.path}")
