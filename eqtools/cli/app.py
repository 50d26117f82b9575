"""The Typer application. Subcommands live one per module and import torch lazily."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from eqtools import __version__
from eqtools.cli import calibrate, export, fit_predictor, info, report, sample, search, train

app = typer.Typer(
    name="eqtools",
    help=(
        "Once-for-all quantization-aware training (EQ-Net, ICCV 2023).\n\n"
        "Train one weight-sharing quantization supernet, then pick and ship quantized subnets for any "
        "bit-width, granularity and symmetry without retraining:\n\n"
        "train -> calibrate -> sample -> fit-predictor -> search -> export\n\n"
        "Stages exchange artifacts (directories with manifest.json + safetensors) under artifacts/; "
        "each reads the newest artifact it needs unless given --from PATH."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for input errors too.")] = False,
) -> None:
    if debug:
        os.environ["EQTOOLS_DEBUG"] = "1"


@app.command("version")
def version() -> None:
    """Print the eqtools version."""
    print(__version__)


@app.command("models")
def models(
    all_models: Annotated[bool, typer.Option("--all", help="Also list every torchvision classifier.")] = False,
) -> None:
    """List the model names a spec can use."""
    from eqtools.models import list_models

    for name in list_models(include_torchvision=all_models):
        print(name)


app.command("train")(train.command)
app.command("calibrate")(calibrate.command)
app.command("sample")(sample.command)
app.command("fit-predictor")(fit_predictor.command)
app.command("search")(search.command)
app.command("export")(export.command)
app.command("report")(report.command)
app.command("info")(info.command)


def main() -> None:
    app()
