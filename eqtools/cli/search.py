"""``eqtools search``: the best mixed-precision config for a bit budget, from the predictor."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from eqtools.cli._common import FORCE_HELP, DeviceOption, echo, emit_artifact, handle_errors, progress
from eqtools.vocab import GRANULARITIES, SYMMETRIES, VERIFY_SPLITS

# choices derived from the one vocabulary (typer needs an Enum to list them in --help)
Granularity = Enum("Granularity", {v.replace("-", "_"): v for v in GRANULARITIES}, type=str)
Symmetry = Enum("Symmetry", {v: v for v in SYMMETRIES}, type=str)
VerifySplit = Enum("VerifySplit", {v: v for v in VERIFY_SPLITS}, type=str)


class Cost(str, Enum):
    bits = "bits"
    size = "size"
    bops = "bops"


def _preset_help() -> str:
    from eqtools.presets import PRESETS

    return "; ".join(f"{p.name} = {p.label}" for p in PRESETS.values())


@handle_errors
def command(
    predictor_path: Annotated[Path | None, typer.Option(
        "--predictor", help="predictor artifact (default: the newest under artifacts/).")] = None,
    w_bits: Annotated[float | None, typer.Option(
        "--w-bits", help="Average weight bits X: the search keeps it in (X-0.5, X]. Required unless --pareto, --max-size-mb or --max-bops.")] = None,
    a_bits: Annotated[float | None, typer.Option(
        "--a-bits", help="Average activation bits Y, window (Y-0.5, Y]; default: X.")] = None,
    granularity: Annotated[Granularity | None, typer.Option(
        "--granularity", help="Weight quantization granularity to search at.")] = None,
    symmetry: Annotated[Symmetry | None, typer.Option(
        "--symmetry", help="Symmetry of weights and activations both, to search at.")] = None,
    w_symmetry: Annotated[Symmetry | None, typer.Option(
        "--w-symmetry", help="Weight symmetry to search at (with --a-symmetry, instead of --symmetry).")] = None,
    a_symmetry: Annotated[Symmetry | None, typer.Option(
        "--a-symmetry", help="Activation symmetry to search at (with --w-symmetry, instead of --symmetry).")] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", metavar="<target>", help="Deployment target that fixes the conditions: " + _preset_help() + " (sources in docs/search.md).")] = None,
    max_size_mb: Annotated[float | None, typer.Option(
        "--max-size-mb", help="Cap on packed Conv/Linear weight size, in MB (10^6 bytes).")] = None,
    max_bops: Annotated[float | None, typer.Option(
        "--max-bops", help="Cap on bit operations per sample (MACs x weight bits x activation bits), e.g. 5e8.")] = None,
    population: Annotated[int | None, typer.Option(
        "--population", min=4, max=100_000, help="GA population (default: the spec's search.population, 100).")] = None,
    generations: Annotated[int | None, typer.Option(
        "--generations", min=0, max=1_000_000, help="GA generations (default: the spec's search.generations, 500).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=2**31 - 1, help="Search seed (default: the spec's seed).")] = None,
    uniform: Annotated[bool, typer.Option(
        "--uniform", help="Return the uniform X/Y-bit config (the baseline), predicted but not searched.")] = False,
    pareto: Annotated[bool, typer.Option(
        "--pareto", help="NSGA-II over the whole accuracy-vs-cost front; --w-bits/--a-bits become upper bounds.")] = False,
    cost: Annotated[Cost, typer.Option(
        "--cost", help="Cost axis of --pareto: bits (mean of W and A average bits), size or bops.")] = Cost.bits,
    top_k: Annotated[int, typer.Option(
        "--top-k", min=1, max=1000, help="How many of the best configs to list (and to measure with --verify).")] = 5,
    explore: Annotated[float, typer.Option(
        "--explore", min=0.0, help="With an ensemble predictor: pick the top-K by predicted + EXPLORE x ensemble spread, so --verify also measures the candidates the predictor is unsure about (0: by prediction alone).")] = 1.0,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Calibrate and evaluate the top-K, the cheap-first mixes and the uniform config at the budget on the supernet (on --verify-split); keep the best measured one, then compare it with uniform on the test split.")] = False,
    cheap_first: Annotated[bool, typer.Option(
        "--cheap-first/--no-cheap-first", help="With --verify, also measure up to 9 budget-exact mixes that raise the layers the budget charges least (the fewest parameters or input elements) and lower the costliest a step: the mixes a predictor fitted on random subnets tends to underrate (docs/search.md).")] = True,
    verify_split: Annotated[VerifySplit, typer.Option(
        "--verify-split", help="Held-out images --verify chooses on: unseen = val plus every training image the training subset left out (the most images, the least label noise); val = the val split alone (faster).")] = VerifySplit("unseen"),
    supernet_path: Annotated[Path | None, typer.Option(
        "--supernet", help="supernet artifact for --verify (default: the one the predictor's samples came from).")] = None,
    eval_images: Annotated[int | None, typer.Option(
        "--eval-images", min=10, help="With --verify: evaluate on a class-balanced subset of this many --verify-split images (default: all of them).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output directory (default: artifacts/<spec>/search-<budget>-<condition>).")] = None,
    device: DeviceOption = "auto",
    force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (the result) on stdout.")] = False,
) -> None:
    """Search the mixed-precision config with the best predicted accuracy under a bit budget.

    Example: eqtools search --w-bits 3 --granularity per-tensor --symmetry asym

    Budgets no config meets (e.g. --w-bits 1, or caps below the smallest model) are refused before searching, with the tightest feasible value. The artifact holds best_config.json (for `eqtools calibrate --config` and `export`), the Pareto front, the per-generation history and the top-K.
    """
    from eqtools.artifacts import Search as SearchArtifact
    from eqtools.artifacts import claim_out, default_out, resolve_input
    from eqtools.errors import ArtifactError, ConfigError
    from eqtools.predictor import load_predictor
    from eqtools.search import SearchOptions, run_search, search_tag, write_search
    from eqtools.specs import SearchSpec
    from eqtools.vocab import form_label

    if verify:
        from eqtools.device import resolve_device

        device = resolve_device(device)  # only --verify runs the model
    if verify and uniform:
        raise ConfigError("--verify measures searched candidates; with --uniform calibrate the config instead "
                          "(`eqtools calibrate --w-bits ...`)")
    art = resolve_input(predictor_path, "predictor", echo=echo, flag="--predictor")
    predictor = load_predictor(art)
    spec = art.spec or {}
    try:
        defaults = SearchSpec(**(spec.get("search") or {}))
    except ValueError as exc:  # pydantic's ValidationError: a manifest from an incompatible eqtools
        raise ArtifactError(f"{art.path}: the spec's search section is not valid for this eqtools ({exc})") from None
    options = SearchOptions(
        w_bits=w_bits, a_bits=a_bits,
        granularity=granularity.value if granularity else None,
        symmetry=symmetry.value if symmetry else None,
        w_symmetry=w_symmetry.value if w_symmetry else None,
        a_symmetry=a_symmetry.value if a_symmetry else None,
        preset=preset, max_size_mb=max_size_mb, max_bops=max_bops,
        population=population if population is not None else defaults.population,
        generations=generations if generations is not None else defaults.generations,
        mutation_prob=defaults.mutation_prob, parent_fraction=defaults.parent_fraction,
        seed=seed if seed is not None else int(spec.get("seed", 0)),
        uniform=uniform, pareto=pareto, cost=cost.value, top_k=top_k, explore=explore, cheap_first=cheap_first,
    )
    spec_name = spec.get("name") or "default"
    if out is None:
        from eqtools.presets import resolve_conditions
        from eqtools.vocab import form_key

        *form, _ = resolve_conditions(predictor.space, options.granularity, options.symmetry, options.preset,
                                      w_symmetry=options.w_symmetry, a_symmetry=options.a_symmetry)
        out = default_out(spec_name, "search", search_tag(options, form_key(*form)))
    claim_out(out, "search", [art] + ([supernet_path] if supernet_path is not None else []))  # before searching
    supernet = None
    if verify or supernet_path is not None:
        from eqtools.search.verify import find_supernet

        supernet = find_supernet(predictor, supernet_path, echo=echo)
    what = "NSGA-II" if pareto else "GA"
    with progress(f"search ({what})", options.generations, enabled=not as_json and not uniform) as advance:
        outcome = run_search(predictor, options, progress=advance)
    if verify and supernet is not None:
        from eqtools.search.verify import VerifyBench, verify_candidates, verify_outcome

        bench = VerifyBench.load(supernet, device=device)
        with progress("verify", len(verify_candidates(outcome)), enabled=not as_json) as advance:
            verify_outcome(outcome, supernet, split=verify_split.value, eval_images=eval_images, on_stage=None if as_json else echo,
                           progress=advance, bench=bench)
    artifact = write_search(outcome, out, predictor, parents=[supernet] if supernet is not None and verify else [])
    if as_json:
        emit_artifact(artifact, best_config=outcome.best.to_dict())
        return
    c = outcome.best_costs
    echo(
        f"best {outcome.mode} config at {form_label(*outcome.condition.split('/'))}: predicted top-1 {100 * outcome.best_predicted:.2f}%, "
        f"avg bits W {c['avg_w_bits']:.3f} / A {c['avg_a_bits']:.3f}, {c['size_bytes'] / 1e6:.4g} MB, "
        f"{c['bops'] / 1e9:.4g} GBOPs"
    )
    if outcome.uniform_baseline is not None and outcome.mode != "uniform":
        echo(f"uniform config at the same budget: predicted {100 * outcome.uniform_baseline['predicted_accuracy']:.2f}%")
    if outcome.verified:
        for row in outcome.verified:
            what = {"cheap-first": "cheap-first mix", "uniform": "uniform config"}.get(row.get("source", ""),
                                                                                     f"predicted #{row['predicted_rank']}")
            echo(f"  {what}: predicted {100 * row['predicted_accuracy']:.2f}%, "
                 f"measured {100 * row['measured_top1']:.2f}% on {row['eval_images']} {row['split']} images")
    baseline = outcome.uniform_baseline
    if outcome.verified and baseline is not None:
        ubits = "W{}A{}".format(*baseline["uniform_bits"])
        where = f"{outcome.verified[0]['eval_images']} {outcome.verified[0]['split']} images"
        if outcome.best.to_dict() == baseline["config"]:
            echo(f"kept the uniform {ubits} config: none of the {len(outcome.verified) - 1} searched candidates measured "
                 f"above it on the {where}")
        else:
            echo(f"the pick measured above the uniform {ubits} config on the {where}")
        if not baseline["in_budget"]:
            echo(f"  (no uniform config lies in the budget's windows; uniform {ubits} is the largest under its upper bounds)")
    elif outcome.verified:
        echo("no uniform config fits this budget, so --verify had no uniform subnet to compare the pick with")
    if outcome.vs_uniform is not None:
        v = outcome.vs_uniform
        echo(f"pick minus uniform on {v['images']} test images (paired): {100 * v['difference']:+.2f} points, "
             f"95% CI [{100 * v['ci_low']:+.2f}, {100 * v['ci_high']:+.2f}]")
    if outcome.vs_uniform_selection is not None and not outcome.vs_uniform_selection["pick_is_uniform"]:
        v = outcome.vs_uniform_selection
        echo(f"  on the {v['images']} {v['split']} images it was chosen on: {100 * v['difference']:+.2f} points, "
             f"95% CI [{100 * v['ci_low']:+.2f}, {100 * v['ci_high']:+.2f}] (biased up: the pick won there)")
    if outcome.mode != "uniform":
        echo(f"{outcome.evaluations} configs scored in {outcome.time_s:.1f}s; front of {len(outcome.front)} points")
    echo(f"wrote search artifact {artifact.path} (best config: {artifact.path / SearchArtifact.BEST_CONFIG})")
