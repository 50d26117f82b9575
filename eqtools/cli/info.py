"""``eqtools info PATH``: a summary of any artifact (or a spec file, validated)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from eqtools.cli._common import emit_json, handle_errors, human_bytes


def _space_summary(space: Any) -> dict[str, Any] | None:
    """What an artifact's :class:`~eqtools.space.ElasticSpace` holds (read through it, so a version-1
    manifest's one ``symmetries`` list shows as the weight and activation lists it means)."""
    if space is None:
        return None
    return {
        "w_bits": list(space.w_bits),
        "a_bits": list(space.a_bits),
        "granularities": list(space.granularities),
        "w_symmetries": list(space.w_symmetries),
        "a_symmetries": list(space.a_symmetries),
        "forms": len(space.conditions),
        "layers": len(space.layers),
        "quantized_layers": len(space.quantized_layers),
        "fixed_layers": [layer.name for layer in space.quantized_layers if layer.fixed],
        "float_layers": [layer.name for layer in space.layers if layer.keep_float],
    }


def _coverage(art: Any) -> dict[str, Any] | None:
    """What the artifact's supernet quantizes and leaves float, rebuilt from its spec (the
    conversion is deterministic, so this is the report the training run printed)."""
    if art.kind not in ("supernet", "calibrated"):
        return None
    from eqtools.build import artifact_spec, build_supernet

    coverage = build_supernet(artifact_spec(art), pretrained=False).coverage
    return None if coverage is None else coverage.to_dict()


def _is_subnet_config(path: Path) -> bool:
    """Whether a JSON file is a subnet config (a search's best_config.json, a --config file) rather than
    a spec: both are JSON, and a config read as a spec would fail with a list of spec fields it lacks."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False  # the spec reader names what is wrong with the file
    return isinstance(data, dict) and {"layers", "granularity"} <= data.keys() and isinstance(data["layers"], list)


def _print_subnet_config(path: Path, as_json: bool) -> None:
    from collections import Counter

    from eqtools.space import SubnetConfig

    config = SubnetConfig.load(path)  # checked as `calibrate --config` and `export --config` check it
    summary = {"config": str(path), "form": config.condition, "layers": len(config.layers),
               "w_bits": dict(sorted(Counter(config.w_bits).items())),
               "a_bits": dict(sorted(Counter(config.a_bits).items())),
               "per_layer": [{"name": n, "w_bits": w, "a_bits": a}
                             for n, w, a in zip(config.layers, config.w_bits, config.a_bits)]}
    if as_json:
        emit_json(summary)
        return

    def counts(c: dict[int, int]) -> str:
        return ", ".join(f"{n} at {b}" for b, n in c.items())

    print(f"{path}: subnet config, {config.label}, {len(config.layers)} quantized layers (a config, not an "
          "artifact: `eqtools calibrate --config` takes it)")
    print(f"  weight bits: {counts(summary['w_bits'])}")
    print(f"  activation bits: {counts(summary['a_bits'])}")
    for n, w, a in zip(config.layers, config.w_bits, config.a_bits):
        print(f"  {n}: W{w} A{a}")


@handle_errors
def command(
    path: Annotated[Path | None, typer.Argument(help="An artifact directory, a spec .json file to validate, or a subnet config (best_config.json).",
                                                show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object for machines.")] = False,
    schema_kind: Annotated[str | None, typer.Option(
        "--schema", metavar="KIND",
        help="Print the JSON Schema of KIND's manifest.json (supernet, calibrated, samples, predictor, search, "
             "export) instead, for tools that read artifacts without eqtools.")] = None,
) -> None:
    """Summarise an artifact: kind, origin, space, files, metrics (checksums verified).

    Given a spec file instead, validate it and print the resolved spec with every default; given a
    subnet config (a search's best_config.json), check it and print its form and bits. With
    --schema KIND, print the published JSON Schema of that kind's manifest (docs/artifacts.md).
    """
    from eqtools.artifacts import MANIFEST, read_artifact

    if schema_kind is not None:
        from eqtools.artifacts import KINDS, schema
        from eqtools.errors import ConfigError

        if path is not None:
            raise ConfigError("--schema KIND takes no artifact path; give one or the other")
        if schema_kind not in KINDS:
            raise ConfigError(f"--schema {schema_kind!r} is not an artifact kind; kinds: {', '.join(KINDS)}")
        emit_json(schema(schema_kind))
        return
    if path is None:
        from eqtools.errors import ConfigError

        raise ConfigError("give an artifact directory or a spec file (or --schema KIND); see `eqtools info --help`")

    if path.is_file() and path.suffix == ".json" and path.name != MANIFEST and _is_subnet_config(path):
        _print_subnet_config(path, as_json)
        return
    if path.is_file() and path.suffix == ".json" and path.name != MANIFEST:
        from eqtools.specs import load_spec

        spec = load_spec(path)
        if as_json:
            emit_json({"spec": str(path), "valid": True, "resolved": spec.to_dict()})
        else:
            print(f"{path}: valid spec '{spec.name}'")
            print(json.dumps(spec.to_dict(), indent=2))
        return
    if path.is_dir() and not (path / MANIFEST).is_file():
        from eqtools.artifacts import candidates, workspace_leftovers

        found = workspace_leftovers(path)
        if found or any(True for _ in candidates(path)):  # a workspace: what unfinished writes left in it
            _print_workspace(path, list(candidates(path)), found, as_json)
            return
    art = read_artifact(path)
    from eqtools.artifacts import leftovers

    files = {name: (path / name).stat().st_size for name in art.manifest["files"]}
    summary = {
        "path": str(path),
        "kind": art.kind,
        "created": art.created,
        "eqtools_version": art.manifest.get("eqtools_version"),
        "format_version": art.manifest.get("format_version"),
        "spec": art.spec.get("name"),
        "model": (art.spec.get("model") or {}).get("name"),
        "space": _space_summary(art.space),
        "space_fingerprint": art.manifest.get("space_fingerprint"),
        "parents": art.manifest.get("parents", []),
        "files": files,
        "metrics": art.metrics,
        "extra": art.extra,
        "coverage": _coverage(art),
        "leftovers": leftovers(path),
    }
    if as_json:
        emit_json(summary)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{art.kind}[/bold] artifact at {path}  (checksums verified)")
    console.print(f"  created {art.created} by eqtools {summary['eqtools_version']} (format {summary['format_version']})")
    if summary["spec"]:
        console.print(f"  spec '{summary['spec']}', model {summary['model']}")
    space = summary["space"]
    if space:
        console.print(
            f"  space {summary['space_fingerprint']}: W bits {space['w_bits']}, A bits {space['a_bits']}, "
            f"{'/'.join(space['granularities'])}, W {'/'.join(space['w_symmetries'])}, "
            f"A {'/'.join(space['a_symmetries'])} ({space['forms']} forms); "
            f"{space['quantized_layers']} quantized layers ({len(space['fixed_layers'])} fixed, "
            f"{len(space['float_layers'])} float)"
        )
    coverage = summary["coverage"]
    if coverage:
        console.print(
            f"  quantized {coverage['quantized_params']:,} of {coverage['matmul_params']:,} matmul weights "
            f"({100 * coverage['share']:.2f}%) in {coverage['quantized_layers']} of {coverage['layers']} layers"
        )
        for row in coverage["float_matmul"]:
            console.print(f"    float {row['name']}: {row['params']:,} weights, {row['reason']}", markup=False)
        for row in coverage["other_float"]:
            console.print(f"    float, not a matmul weight: {row['reason']} ({row['tensors']} tensors, "
                          f"{row['params']:,} values)", markup=False)
    for parent in summary["parents"]:
        console.print(f"  from {parent.get('kind')} {parent.get('path')}")
    for entry in summary["leftovers"]:
        console.print(f"  beside it: {entry['path']}: {entry['what']}{_liveness(entry)}", markup=False)
    table = Table("file", "size", box=None, padding=(0, 2))
    for name, size in files.items():
        table.add_row(name, human_bytes(size))
    console.print(table)
    if art.metrics:
        metrics = Table("metric", "value", box=None, padding=(0, 2))
        # one level of nesting is shown as its own rows (metrics.deployed.top1), deeper levels as JSON
        rows: list[tuple[str, Any]] = []
        for key, value in art.metrics.items():
            rows += [(f"{key}.{sub}", v) for sub, v in value.items()] if isinstance(value, dict) else [(key, value)]
        for key, value in rows:
            shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if not isinstance(value, str) else value
            if len(shown) > 100:
                shown = shown[:97] + "..."
            metrics.add_row(key, shown)
        console.print(metrics)


def _liveness(entry: dict[str, Any]) -> str:
    if entry["live"] is None:
        return ""
    return " (its process still runs)" if entry["live"] else " (its process is gone: the next write to that path removes it)"


def _print_workspace(path: Path, artifacts: list[Path], found: list[dict[str, Any]], as_json: bool) -> None:
    """A directory holding artifacts: list them and what killed or unfinished writes left among them."""
    if as_json:
        emit_json({"path": str(path), "artifacts": [str(a) for a in artifacts], "leftovers": found})
        return
    print(f"{path}: a workspace with {len(artifacts)} artifact(s)" + (", and left by unfinished writes:" if found else ""))
    for entry in found:
        print(f"  {entry['path']}: {entry['what']}{_liveness(entry)}")
