"""``eqtools calibrate``: re-estimate one subnet's batch-norm statistics, evaluate it, save it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from eqtools.cli._common import FORCE_HELP, DeviceOption, choices, echo, emit_artifact, handle_errors, human_bytes
from eqtools.vocab import SPLITS, Granularity, Symmetry


@handle_errors
def command(
    from_: Annotated[
        Path | None,
        typer.Option("--from", help="Supernet artifact directory. Default: the newest 'supernet' under artifacts/."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Subnet config JSON file (per-layer w_bits/a_bits + conditions), e.g. mixed precision."),
    ] = None,
    w_bits: Annotated[
        int | None, typer.Option("--w-bits", help="Uniform subnet: weight bits of every elastic layer (fixed layers keep theirs).")
    ] = None,
    a_bits: Annotated[int | None, typer.Option("--a-bits", help="Uniform subnet: activation bits. Default: --w-bits.")] = None,
    granularity: Annotated[
        Granularity | None, typer.Option("--granularity", help="With --w-bits: weight steps per channel or per tensor.")
    ] = None,
    symmetry: Annotated[Symmetry | None, typer.Option("--symmetry", help="With --w-bits: for weights and activations both.")] = None,
    w_symmetry: Annotated[Symmetry | None, typer.Option("--w-symmetry", help="With --w-bits: weight symmetry.")] = None,
    a_symmetry: Annotated[Symmetry | None, typer.Option("--a-symmetry", help="With --w-bits: activation symmetry.")] = None,
    from_search: Annotated[
        Path | None, typer.Option("--from-search", help="A search artifact: calibrate its best config (best_config.json).")
    ] = None,
    searched: Annotated[
        bool, typer.Option("--searched", help="Like --from-search with the newest search artifact under artifacts/.")
    ] = False,
    images: Annotated[
        int | None,
        typer.Option("--images", min=1, help="Training images for the BN statistics. Default: the spec's calibrate.images."),
    ] = None,
    split: Annotated[
        str, typer.Option("--split", metavar=choices(SPLITS), help="Where accuracy is measured: test, val (held-out train), unseen (val plus the training images a train_subset leaves out) or train.")
    ] = "test",
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="<dir>", help="Output directory. Default: calibrated-<subnet> in artifacts/<spec>/, <subnet> naming its bits and form, or mixed-<hash> (docs/calibrate.md)."),
    ] = None,
    deployed: Annotated[
        bool,
        typer.Option("--deployed/--no-deployed",
                     help="Also measure the subnet as `eqtools export` ships it: the integer ONNX graph (int32 biases, "
                          "8-bit requantizations at residual adds) run in onnxruntime on the same images, and keep its "
                          "8-bit ranges so export builds that same file. Skipped for asymmetric weights, which "
                          "export writes in the exact form."),
    ] = True,
    device: DeviceOption = "auto",
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (path, config, metrics) on stdout.")] = False,
) -> None:
    """Calibrate one subnet: re-estimate its BN statistics on training images, evaluate it, save it.

    Name the subnet with exactly one of --config FILE, --w-bits B [--a-bits B] --granularity G
    --symmetry S (or --w-symmetry S --a-symmetry S), --from-search SEARCH, or --searched (the newest search). Accuracy is reported before and after calibration; the
    'calibrated' artifact holds the supernet's tensors with this subnet's BN statistics, the config
    and the metrics (docs/calibrate.md).
    """
    from eqtools.artifacts import find_latest, read_artifact, resolve_input
    from eqtools.calibrate import calibrate_artifact
    from eqtools.device import resolve_device
    from eqtools.errors import ConfigError
    from eqtools.evaluation import resolve_config

    device = resolve_device(device)

    if searched:
        if from_search is not None:
            raise ConfigError("give either --searched or --from-search SEARCH, not both")
        from_search = find_latest("search", flag="--from-search")
        echo(f"using search artifact {from_search}")

    supernet = None
    if from_search is not None and from_ is None:
        # the search's own supernet (its lineage, checksums verified), never merely the newest one
        supernet = read_artifact(from_search, "search").ancestor("supernet")
        if supernet is not None:
            echo(f"using supernet artifact {supernet.path}")  # the search's own (its lineage)
    if supernet is None:
        supernet = resolve_input(from_, "supernet", echo=echo)
    space = supernet.space
    if space is None:
        from eqtools.errors import ArtifactError

        raise ArtifactError(f"{supernet.path} records no elastic space; re-create it with `eqtools train`")
    if out is not None:  # the search or the config's artifact is read here too: --out must not be either
        from eqtools.artifacts import MANIFEST, claim_out

        claim_out(out, "calibrated", [supernet, *([from_search] if from_search is not None else []),
                                      *([config.parent] if config is not None and (config.parent / MANIFEST).is_file()
                                        else [])])
    if config is not None and config.is_dir():
        from eqtools.artifacts import MANIFEST, Calibrated, Search

        if (config / MANIFEST).is_file():  # an easy slip for the config file inside it
            raise ConfigError(
                f"--config {config} is an artifact directory, not a JSON config file: give a search artifact with "
                f"--from-search {config}, or the config file inside it ({config / Search.BEST_CONFIG} of a search, "
                f"{config / Calibrated.CONFIG} of a calibrated subnet)"
            )
    subnet = resolve_config(space, config_file=config, w_bits=w_bits, a_bits=a_bits, granularity=granularity,
                            symmetry=symmetry, w_symmetry=w_symmetry, a_symmetry=a_symmetry, search=from_search)
    result = calibrate_artifact(supernet, subnet, images=images, split=split, out=out, on_stage=echo, deployed=deployed,
                                device=device)
    m = result.metrics
    if as_json:
        emit_artifact(result, config=subnet.to_dict())
        return
    gain = 100.0 * (m["top1"] - m["top1_before"])
    print(f"subnet    {subnet.label}, avg bits W {m['avg_w_bits']:.2f} A {m['avg_a_bits']:.2f}, "
          f"weights {human_bytes(m['size_bytes'])}, {m['bops'] / 1e9:.3g} GBOPs/image")
    print(f"top-1     {100 * m['top1_before']:.2f}% before BN calibration -> {100 * m['top1']:.2f}% after "
          f"({gain:+.2f} points) on {m['split']} ({m['images']} images)")
    print(f"top-5     {100 * m['top5_before']:.2f}% -> {100 * m['top5']:.2f}%")
    print(f"loss      {m['loss_before']:.4f} -> {m['loss']:.4f}")
    d = m.get("deployed")
    if d and d.get("measured"):
        print(f"deployed  top-1 {100 * d['top1']:.2f}% ({100 * d['top1_change']:+.2f} points) as the integer ONNX export "
              f"runs it (onnxruntime); same top-1 as the fake-quant subnet on {100 * d['top1_agreement']:.2f}% of images")
    elif d:
        exact = " (export writes this subnet in the exact ONNX form)" if d.get("export_form") == "exact" else ""
        print(f"deployed  not measured: {d['blocker']}{exact}")
    print(f"BN statistics from {m['calib_images']} training images; wrote {result.path}")
