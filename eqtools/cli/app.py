"""The Typer application. Subcommands live one per module and import torch lazily.

The group class below holds the conventions every subcommand shares, so no command repeats them:
``--debug`` is accepted anywhere on the line, a closed stdout (``eqtools info X | head -1``) ends the
command quietly with status 0, and on/off flags show no ``<bool>`` metavar in help.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from eqtools import __version__
from eqtools.cli import calibrate, export, fit_predictor, info, report, sample, search, train

DEBUG_FLAG = "--debug"


def _hide_flag_metavars(params: list[Any]) -> list[Any]:
    """An on/off flag takes no value, so help shows none (typer would print ``<bool>``)."""
    for param in params:
        if getattr(param, "is_bool_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class EqtoolsCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _hide_flag_metavars(super().get_params(ctx))


class EqtoolsGroup(TyperGroup):
    """git-style handling of the whole command line, before and around any subcommand."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _hide_flag_metavars(super().get_params(ctx))

    def main(self, args: Sequence[str] | None = None, *pargs: Any, **kwargs: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        # --debug anywhere (before the first bare "--") means the root option: `eqtools train X --debug`
        # works like `eqtools --debug train X`.
        end = args.index("--") if "--" in args else len(args)
        if DEBUG_FLAG in args[:end]:
            args = [DEBUG_FLAG, *(a for i, a in enumerate(args) if not (i < end and a == DEBUG_FLAG))]
        return super().main(args, *pargs, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # the reader went away (`| head`): what it wanted was printed. Point stdout at /dev/null
            # so the interpreter's final flush cannot fail again, and end as a finished command.
            _silence_stdout()
            raise typer.Exit(0) from None


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test runner's buffer)
        pass


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit(0)


app = typer.Typer(
    name="eqtools",
    cls=EqtoolsGroup,
    help=(
        "Once-for-all quantization-aware training (EQ-Net, ICCV 2023).\n\n"
        "Train one weight-sharing quantization supernet, then pick and ship quantized subnets for any "
        "bit-width, granularity and symmetry without retraining. The pipeline, in order:\n\n"
        "train -> sample -> fit-predictor -> search -> calibrate -> export  (report and info at any point)\n\n"
        "Stages exchange artifacts (directories with manifest.json + safetensors) under artifacts/; "
        "each reads the newest artifact it needs unless given its path (--from, --predictor, ...)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option(DEBUG_FLAG, help="Show tracebacks for input errors too (the exit status stays the same); accepted anywhere on the line.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the eqtools version and exit.")] = False,
) -> None:
    if debug:
        os.environ["EQTOOLS_DEBUG"] = "1"


def _command(name: str, fn: Any) -> None:
    app.command(name, cls=EqtoolsCommand, help=_paragraphs(inspect.getdoc(fn) or ""))(fn)


def _paragraphs(doc: str) -> str:
    """A docstring as one line per paragraph: typer's rich help keeps every line break it is given, so
    source lines wrapped at 100 columns came out ragged in a narrower terminal."""
    return "\n\n".join(" ".join(part.split()) for part in doc.split("\n\n"))


# in pipeline order: `eqtools --help` lists them as a newcomer runs them
_command("train", train.command)
_command("sample", sample.command)
_command("fit-predictor", fit_predictor.command)
_command("search", search.command)
_command("calibrate", calibrate.command)
_command("export", export.command)
_command("report", report.command)
_command("info", info.command)


@app.command("models", cls=EqtoolsCommand)
def models(
    all_models: Annotated[bool, typer.Option("--all", help="Also list every torchvision classifier.")] = False,
) -> None:
    """List the model names a spec can use."""
    from eqtools.models import list_models

    for name in list_models(include_torchvision=all_models):
        print(name)


@app.command("version", cls=EqtoolsCommand)
def version() -> None:
    """Print the eqtools version (same as --version)."""
    print(__version__)


def main() -> None:
    app()
