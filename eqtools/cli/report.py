"""``eqtools report``: the summary table of a spec's workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eqtools.cli._common import DeviceOption, echo, emit_json, handle_errors


@handle_errors
def command(
    spec_name: Annotated[str | None, typer.Option("--spec", metavar="<name>", help="Spec name (folder under the workspace); default: that of the newest supernet.")] = None,
    root: Annotated[Path, typer.Option("--root", metavar="<dir>", help="Workspace directory the artifacts are read from.")] = Path("artifacts"),
    forms: Annotated[str, typer.Option("--forms", metavar="<forms>", help="'all', or the comma-separated forms the uniform table shows (granularity/w_symmetry/a_symmetry, e.g. per-channel/sym/sym,per-tensor/asym/asym); each costs three calibrations.")] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress notes.")] = False,
    device: DeviceOption = "auto",
) -> None:
    """Summarise what a workspace achieved, measured afresh on the test split.

    Uniform 2/4/8-bit subnets of the supernet in every form it serves (granularity x weight
    symmetry x activation symmetry) vs the static-QAT baselines trained with
    `eqtools train SPEC --static-bits B [--w-symmetry S --a-symmetry S]` (each BN-calibrated), the
    predictor's rank correlation, the searched subnet vs the uniform one at the same budget, and
    export parity. An artifact that fails verification is listed, and the command then exits 2.
    """
    from eqtools.device import resolve_device
    from eqtools.report import build_report, format_report

    device = resolve_device(device)
    report = build_report(root, spec_name, forms=forms, log=lambda m: echo(m, quiet), device=device)
    if as_json:
        emit_json(report)
        _refuse_damaged(report)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for title, header, rows in format_report(report):
        table = Table(*header, title=title, title_justify="left")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    _refuse_damaged(report)


def _refuse_damaged(report: dict) -> None:
    """Exit 2 once everything was shown when an artifact failed verification: a report over damaged
    artifacts must not pass for a clean one in a pipeline."""
    if report.get("damaged"):
        from eqtools.errors import ArtifactError

        paths = ", ".join(d["path"] for d in report["damaged"])
        raise ArtifactError(
            f"{len(report['damaged'])} artifact(s) were left out of the report: {paths}. Each failed verification, "
            f"or was made from another supernet than the one reported ({report.get('supernet')}); the table of "
            "what was left out (with --json, the `damaged` field) gives each one's reason. Re-create them with the "
            "commands that made them, from that supernet"
        )
