"""``eqtools report``: the summary table of a spec's workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eqtools.cli._common import echo, emit_json, handle_errors


@handle_errors
def command(
    spec_name: Annotated[str | None, typer.Option("--spec", help="Spec name (folder under the workspace); default: that of the newest supernet.")] = None,
    root: Annotated[Path, typer.Option("--root", help="Workspace directory.")] = Path("artifacts"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress notes.")] = False,
) -> None:
    """Summarise what a workspace achieved, measured afresh on the test split.

    Uniform 2/3/4/8-bit subnets of the supernet vs the static-QAT baselines trained with
    `eqtools train SPEC --static-bits B` (each BN-calibrated), the predictor's rank correlation,
    the searched subnet vs the uniform one at the same budget, and export parity.
    """
    from eqtools.report import build_report, format_report

    report = build_report(root, spec_name, log=lambda m: echo(m, quiet))
    if as_json:
        emit_json(report)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for title, header, rows in format_report(report):
        table = Table(*header, title=title, title_justify="left")
        for row in rows:
            table.add_row(*row)
        console.print(table)
