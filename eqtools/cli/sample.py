"""``eqtools sample``: the accuracy dataset the predictor learns from (and ``--merge`` of shards)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from eqtools.cli._common import FORCE_HELP, DeviceOption, echo, emit_artifact, handle_errors, progress
from eqtools.vocab import Granularity, Symmetry


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class _Progress:
    """Bar over the subnets this run evaluates, with subnets/min and ETA from this run's pace."""

    def __init__(self, stack: contextlib.ExitStack, enabled: bool) -> None:
        self.stack = stack
        self.enabled = enabled
        self.advance: Any = None
        self.left = 0
        self.done = 0
        self.start = 0.0

    def on_start(self, done: int, total: int) -> None:
        self.left = total - done
        if self.left:
            self.advance = self.stack.enter_context(progress("sample", self.left, enabled=self.enabled))
        self.start = time.monotonic()

    def on_row(self, row: dict[str, Any]) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        rate = 60.0 * self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.left - self.done) * elapsed / self.done
        if self.advance is not None:
            self.advance(1, **{"subnets/min": round(rate, 1), "ETA": _duration(eta), "last acc": f"{100 * row['accuracy']:.1f}%"})


@handle_errors
def command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="With --merge: the shard artifacts to join.", show_default=False),
    ] = None,
    from_: Annotated[
        Path | None,
        typer.Option("--from", help="Supernet artifact directory. Default: the newest 'supernet' under artifacts/."),
    ] = None,
    n: Annotated[
        int | None, typer.Option("-n", "--n", min=1, help="Number of subnets to draw (all shards together). Default: the spec's sample.n.")
    ] = None,
    conditions: Annotated[
        str,
        typer.Option("--conditions", metavar="<forms>", help="'all', or comma-separated forms granularity/w_symmetry/a_symmetry, e.g. per-channel/sym/asym,per-tensor/asym/asym (granularity/symmetry means both symmetries alike)."),
    ] = "all",
    granularity: Annotated[
        Granularity | None, typer.Option("--granularity", help="Keep only forms with this weight granularity.")
    ] = None,
    symmetry: Annotated[
        Symmetry | None, typer.Option("--symmetry", help="Keep only forms with this symmetry for weights and activations both.")
    ] = None,
    w_symmetry: Annotated[Symmetry | None, typer.Option("--w-symmetry", help="Keep only forms with this weight symmetry.")] = None,
    a_symmetry: Annotated[Symmetry | None, typer.Option("--a-symmetry", help="Keep only forms with this activation symmetry.")] = None,
    subset: Annotated[
        int | None,
        typer.Option("--subset", min=1, help="Class-balanced held-out (val) images each subnet is evaluated on. Default: spec sample.subset."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=2**31 - 1, help="Seed of the config draw. Default: the spec's seed.")] = None,
    shard: Annotated[
        str | None,
        typer.Option("--shard", metavar="<k/n>", help="K/N: evaluate only the K-th of N interleaved slices of the same draw (one job per slice)."),
    ] = None,
    merge: Annotated[
        bool, typer.Option("--merge", help="Join the shard artifacts given as arguments into one samples artifact.")
    ] = False,
    calib_images: Annotated[
        int | None, typer.Option("--calib-images", min=1, help="Training images for each subnet's BN statistics. Default: spec sample.calib_images.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Images per forward pass. Default: spec sample.batch_size.")
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard the rows of an unfinished run at --out instead of resuming it.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output directory. Default: artifacts/<spec>/samples (samples-shardKofN for a shard)."),
    ] = None,
    compile_: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="Evaluate through torch.compile (a minute or so once, then about twice as fast per subnet with --int8-convs). Default: compile when n >= 400 and a C++ compiler is found."),
    ] = None,
    int8_convs: Annotated[
        bool | None,
        typer.Option("--int8-convs/--no-int8-convs", help="Run the quantized convs on oneDNN's int8 kernel (exact integer sums of the codes; pays off compiled). Default: when compiled on a CPU whose int8 kernel sums 8-bit products exactly. Asking for it where it cannot run is an error."),
    ] = None,
    device: DeviceOption = "auto",
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (path, metrics, parameters) on stdout.")] = False,
) -> None:
    """Draw subnets evenly over forms and average bit-widths, calibrate and evaluate each.

    A form is the weight granularity, weight symmetry and activation symmetry: a full space has 8,
    and every form gets n/8 of the draws (narrow them with --conditions or --granularity,
    --w-symmetry, --a-symmetry, --symmetry).

    Writes a 'samples' artifact: samples.jsonl with one row per subnet (config, accuracy, loss,
    avg_w_bits, avg_a_bits, size_bytes, bops, condition). Interrupted runs resume where they stopped
    when re-run with the same arguments. Spread one draw over many machines with --shard K/N and join
    the results with `eqtools sample --merge A B ...` (docs/sample.md).
    """
    if merge:
        if not paths:
            from eqtools.errors import ConfigError

            raise ConfigError("--merge needs the shard artifacts to join: eqtools sample --merge DIR1 DIR2 ...")
        from eqtools.sample import merge_samples

        result = merge_samples(paths, out)
        echo(f"merged {len(paths)} shards ({result.metrics['rows']} rows) into {result.path}")
    else:
        if paths:
            from eqtools.errors import ConfigError

            raise ConfigError(
                f"unexpected argument(s) {[str(p) for p in paths]}; artifact paths are only taken with --merge "
                "(the supernet goes after --from)"
            )
        from eqtools.artifacts import resolve_input
        from eqtools.device import resolve_device
        from eqtools.sample import filter_conditions, parse_conditions, parse_shard, sample_artifact
        from eqtools.vocab import resolve_symmetry_flags

        device = resolve_device(device)
        supernet = resolve_input(from_, "supernet", echo=echo)
        w_sym, a_sym = resolve_symmetry_flags(symmetry, w_symmetry, a_symmetry)
        if granularity or w_sym or a_sym:
            if supernet.space is None:
                from eqtools.errors import ArtifactError

                raise ArtifactError(f"{supernet.path} records no elastic space; re-create it with `eqtools train`")
            conditions = ",".join(
                filter_conditions(parse_conditions(conditions, supernet.space), granularity, w_sym, a_sym)
            )
        with contextlib.ExitStack() as stack:
            bar = _Progress(stack, enabled=not no_progress)
            result = sample_artifact(
                supernet, n=n, conditions=conditions, subset=subset, seed=seed, out=out, shard=parse_shard(shard),
                calib_images=calib_images, batch_size=batch_size, restart=restart,
                compile=compile_, integer=int8_convs, device=device, on_stage=echo, on_start=bar.on_start, on_row=bar.on_row,
            )
    if os.environ.get("RANK", "0") != "0":  # under torchrun only the first process reports
        return
    m = result.metrics
    if as_json:
        emit_artifact(result, parameters=result.extra)
        return
    rate = m.get("subnets_per_min")
    print(f"{m['rows']} subnets, top-1 mean {100 * m['accuracy_mean']:.2f}% "
          f"(min {100 * m['accuracy_min']:.2f}%, max {100 * m['accuracy_max']:.2f}%)"
          + (f", {rate:.1f} subnets/min" if rate else ""))
    print("per form: " + ", ".join(f"{k} {v}" for k, v in m["per_condition"].items()))
    print(f"avg bits W {m['avg_w_bits_range'][0]:.2f}..{m['avg_w_bits_range'][1]:.2f}, "
          f"A {m['avg_a_bits_range'][0]:.2f}..{m['avg_a_bits_range'][1]:.2f}; wrote {result.path}")
