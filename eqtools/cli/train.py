"""``eqtools train SPEC``: train a quantization supernet (or a static-QAT baseline)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from eqtools.cli._common import FORCE_HELP, DeviceOption, echo, emit_artifact, handle_errors, print_error, progress
from eqtools.vocab import Granularity, Symmetry


@handle_errors
def command(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Spec file, e.g. specs/quick.json.")],
    out: Annotated[Path | None, typer.Option("--out", help="Artifact directory. Default: artifacts/<spec>/supernet[-<tag>].")] = None,
    tag: Annotated[str | None, typer.Option("--tag", metavar="<tag>", help="Suffix for the default output directory.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Discard an interrupted run's checkpoint and start over.")] = False,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Quantization-aware epochs (train.epochs), after the float warm-up.")] = None,
    fp_epochs: Annotated[int | None, typer.Option("--fp-epochs", min=0, help="Float warm-up epochs before them (train.fp_epochs; 0: none). Skipped when the spec names a pretrained model or the same warm-up is cached.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=2**31 - 1, help="Override the spec's seed.")] = None,
    device: DeviceOption = "auto",
    precision: Annotated[str | None, typer.Option("--precision", help="fp32, bf16 or fp16 autocast for the forward passes (fp16 adds a gradient scaler). Default: the spec's train.precision, fp32.")] = None,
    compile_: Annotated[bool | None, typer.Option("--compile/--no-compile", help="Force torch.compile on or off (default: the spec's train.compile, 'auto').")] = None,
    static_bits: Annotated[str | None, typer.Option("--static-bits", metavar="W[/A]", help="Train a static-QAT baseline of one uniform config instead of a supernet (e.g. 4 or 4/8).")] = None,
    granularity: Annotated[Granularity | None, typer.Option("--granularity", help="With --static-bits: weight granularity.")] = None,
    symmetry: Annotated[Symmetry | None, typer.Option("--symmetry", help="With --static-bits: for weights and activations both.")] = None,
    w_symmetry: Annotated[Symmetry | None, typer.Option("--w-symmetry", help="With --static-bits: weight symmetry.")] = None,
    a_symmetry: Annotated[Symmetry | None, typer.Option("--a-symmetry", help="With --static-bits: activation symmetry.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Override any spec field, e.g. --set train.sandwich.distill=false (repeatable).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Refuse to train if a weight matmul the spec did not pin to \"fp\" would stay in floating point.")] = False,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a final summary object on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train one weight-sharing quantization supernet with EQ-Net's recipe.

    Each step trains the largest subnet, random subnets and the smallest subnet (sandwich rule)
    with group progressive guidance (KL from larger to smaller) and weight distribution
    regularisation, after train.fp_epochs epochs of float warm-up (none with a pretrained model).
    Checkpoints every epoch, warm-up included (and on Ctrl-C), so --resume continues exactly.
    Multi-process: torchrun --nproc_per_node 2 -m eqtools train SPEC.
    """
    from eqtools.artifacts import default_out
    from eqtools.build import resolve_spec
    from eqtools.cli.overrides import apply_overrides
    from eqtools.device import resolve_device
    from eqtools.specs import load_spec, parse_spec
    from eqtools.train import TrainingInterrupted, TrainOptions, run_training
    from eqtools.vocab import form_tag, resolve_symmetry_flags

    device = resolve_device(device)  # before anything is read: a missing GPU is a one-line refusal
    spec = load_spec(spec_path)
    data = spec.to_dict()
    assignments = list(overrides or [])
    if epochs is not None:
        assignments.append(f"train.epochs={epochs}")
    if fp_epochs is not None:
        assignments.append(f"train.fp_epochs={fp_epochs}")
    if seed is not None:
        assignments.append(f"seed={seed}")
    if precision is not None:
        assignments.append(f"train.precision={precision}")
    if compile_ is not None:
        assignments.append(f"train.compile={'on' if compile_ else 'off'}")
    if static_bits is not None:
        w, _, a = static_bits.partition("/")
        static = {"w_bits": _int(w, "--static-bits"), "a_bits": _int(a or w, "--static-bits")}
        space = parse_spec(data, str(spec_path)).space
        w_sym, a_sym = resolve_symmetry_flags(symmetry, w_symmetry, a_symmetry)
        static["granularity"] = granularity or space.granularities[0]
        static["w_symmetry"] = w_sym or space.resolved_w_symmetries[0]
        static["a_symmetry"] = a_sym or space.resolved_a_symmetries[0]
        data["train"]["mode"] = "static"
        data["train"]["static"] = static
        if tag is None:
            tag = f"static-w{static['w_bits']}a{static['a_bits']}-" + form_tag(
                static["granularity"], static["w_symmetry"], static["a_symmetry"]
            )
    elif granularity or symmetry or w_symmetry or a_symmetry:
        from eqtools.errors import SpecError

        raise SpecError(
            "--granularity/--symmetry/--w-symmetry/--a-symmetry choose the static-QAT config and need --static-bits"
        )
    data = apply_overrides(data, assignments)
    spec = resolve_spec(parse_spec(data, str(spec_path)))
    out = out or default_out(spec.name, "supernet", tag)
    from eqtools.artifacts import claim_out

    claim_out(out, "supernet")  # before any time is spent: never replace unasked what sits at --out

    def log(message: str) -> None:
        echo(message, quiet)

    # what the conversion quantizes and what stays float, before any time is spent training
    from eqtools.build import build_supernet

    coverage = build_supernet(spec, pretrained=False, strict=strict).coverage
    first_process = os.environ.get("RANK", "0") == "0"  # under torchrun every rank would print it
    for line in coverage.lines() if coverage is not None and first_process else []:
        log(line)
    opts = TrainOptions(out=out, resume=resume, restart=restart, device=device, log=log,
                        progress=lambda d, n: progress(d, n, enabled=not quiet))
    try:
        artifact = run_training(spec, opts)
    except TrainingInterrupted as exc:
        print_error(str(exc))
        raise typer.Exit(130) from None
    if artifact is None:  # a worker rank of a multi-process run
        return
    echo(f"wrote supernet artifact {artifact.path}", quiet)
    if as_json:
        emit_artifact(artifact)


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        from eqtools.errors import SpecError

        raise SpecError(f"{flag} expects W or W/A with integer bit-widths in 2..8, got {text!r}") from None
