"""The accuracy dataset: draw subnet configs, calibrate and evaluate each, write a ``samples`` artifact.

The sampler (see docs/sample.md for the full argument)
------------------------------------------------------
Drawing every layer's bits independently and uniformly puts the *average* bit-width of a config
near the middle of the range (a sum of independent draws concentrates: with ResNet-20's 18 elastic
layers nearly every uniform draw averages 4 to 6 weight bits and almost none fall below 3 or above 7;
docs/sample.md works the numbers out).
A predictor trained on such data has never seen the low-bit corner where the search usually ends
up. So the draw is stratified on the
quantities the search constrains:

1. Forms round-robin: draw ``i`` gets form ``i mod C`` of the requested forms (granularity ×
   weight symmetry × activation symmetry: 8 in a full space), so every form gets ``n / C`` draws
   (±1).
2. Within a condition, target average bits are Latin-hypercube stratified: the ``m`` draws of the
   condition split [min bits, max bits] into ``m`` equal strata for weights and again for
   activations, each draw taking one weight stratum and one activation stratum (two independent
   random permutations) and a uniform point inside each.
3. Per layer, bits come from the maximum-entropy distribution over the candidate bits whose mean is
   the target (``p(b) ∝ exp(θ·b)``, θ found by bisection): at the middle of the range this is the
   uniform per-layer draw, toward the ends it leans to low or high bits but still mixes
   bit-widths across layers. Of 8 such draws the one whose (parameter- or activation-weighted)
   average is closest to the target is kept, separately for weights and activations.
4. A config already drawn is redrawn (up to 16 times), so rows are distinct subnets.

The whole draw is a pure function of (space, n, seed, conditions); ``--shard K/N`` evaluates the
draws of every N-th *round* of C consecutive draws (one of each form), starting at round K - 1, so
every shard holds a stratified slice of every form (striding by single draws would give a shard only
some forms whenever N and C share a factor) and takes about the same time; merging the shards gives
byte-for-byte the rows of the unsharded run.

Resuming
--------
Rows are appended to ``.<out name>.partial/rows.jsonl`` beside the output, one fsynced line per
subnet, with the sampling parameters in ``params.json``. A re-run with the same parameters reads
the complete lines (a line cut by a kill is dropped and its subnet re-evaluated), evaluates only
what is missing and, when every row is there, writes the artifact atomically and removes the work
directory. Each row depends only on (weights, config, data), never on what ran before it, so a
resumed run gives the same rows as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eqtools.artifacts import MANIFEST, Artifact, Samples, claim_out, default_out, read_artifact, write_artifact
from eqtools.errors import ArtifactError, ConfigError
from eqtools.space import ElasticSpace, SubnetConfig
from eqtools.vocab import form_key, parse_forms

__all__ = [
    "SAMPLER",
    "SampleParams",
    "draw_configs",
    "filter_conditions",
    "iter_configs",
    "merge_samples",
    "parse_conditions",
    "parse_shard",
    "read_samples",
    "sample_artifact",
    "shard_indices",
    "tilted_distribution",
]

SAMPLER = "stratified-tilted/2"  # 2: 8 forms, shards by rounds of forms  # recorded in the manifest; bump when the draw changes
CANDIDATES = 8  # per-layer draws per target; the closest average wins
REDRAWS = 16  # attempts at a config not drawn before
EVAL_SEED_OFFSET = 104729  # fixes the class-balanced evaluation subset per spec
# compiling is a fixed cost that the compiled forward earns back only slowly (a fraction of each subnet's time;
# docs/sample.md has the measured figures): small, fast subnets (the quick spec's) need a few hundred draws
COMPILE_FROM = 400
# every run and every shard replays the whole draw (rows stay distinct subnets and shards merge to the
# unsharded rows byte for byte), so the draw's time grows with n: bounded here, far above the paper's 8000
MAX_SUBNETS = 100_000


# ---------------------------------------------------------------------------------- parsing
def parse_conditions(value: str | Sequence[str] | None, space: ElasticSpace) -> tuple[str, ...]:
    """``all`` (or None) or comma-separated forms, checked against the space.

    A form is ``granularity/w_symmetry/a_symmetry`` (``per-channel/sym/asym``) or the shorthand
    ``granularity/symmetry`` for both symmetries alike (``per-tensor/asym``). Returns machine keys
    (:func:`eqtools.vocab.form_key`) in the order given (``all``: the space's order).
    """
    return parse_forms(value, [form_key(*form) for form in space.conditions], "--conditions")


def filter_conditions(
    conditions: Sequence[str], granularity: str | None, w_symmetry: str | None, a_symmetry: str | None
) -> tuple[str, ...]:
    """Keep the forms that match the given parts (None matches anything); refuse an empty result."""
    kept = tuple(
        c for c in conditions
        if all(want is None or want == have for want, have in zip((granularity, w_symmetry, a_symmetry), c.split("/")))
    )
    if not kept:
        raise ConfigError(
            f"no form matches granularity={granularity}, w_symmetry={w_symmetry}, a_symmetry={a_symmetry}; "
            f"the forms to sample are {list(conditions)}"
        )
    return kept


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """``K/N`` (1-based) -> ``(K, N)``; None stays None."""
    if value is None:
        return None
    parts = value.split("/")
    try:
        k, n = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--shard is {value!r}; write it as K/N with integers, e.g. 2/8 (shard 2 of 8)") from None
    if n < 1 or not 1 <= k <= n:
        raise ConfigError(f"--shard is {value!r}; K/N needs N >= 1 and 1 <= K <= N")
    return k, n


def shard_indices(n: int, shard: tuple[int, int] | None, forms: int = 1) -> list[int]:
    """Draw indices a shard evaluates: every N-th round of ``forms`` draws, from round K - 1.

    Draw ``i`` has form ``i mod forms`` (round-robin), so a round holds one draw of every form and
    each shard gets a stratified slice of every form, alike in content and cost.
    """
    if shard is None:
        return list(range(n))
    k, count = shard
    return [i for i in range(n) if (i // forms) % count == k - 1]


# ---------------------------------------------------------------------------------- the sampler
def tilted_distribution(choices: Sequence[int], target: float) -> list[float]:
    """Probabilities over sorted ``choices`` with mean ``target``: the maximum-entropy one, ``∝ exp(θ·b)``.

    ``target`` is clipped to the choices' range; at an end all mass goes to that end.
    """
    lo, hi = choices[0], choices[-1]
    if len(choices) == 1 or target <= lo + 1e-9:
        return [1.0] + [0.0] * (len(choices) - 1)
    if target >= hi - 1e-9:
        return [0.0] * (len(choices) - 1) + [1.0]
    mid = (lo + hi) / 2

    def probs(theta: float) -> list[float]:
        weights = [math.exp(theta * (b - mid)) for b in choices]
        total = sum(weights)
        return [w / total for w in weights]

    low, high = -60.0, 60.0
    for _ in range(42):  # the interval shrinks to 120 / 2^42: far below any bit difference
        theta = (low + high) / 2
        mean = sum(p * b for p, b in zip(probs(theta), choices))
        if mean < target:
            low = theta
        else:
            high = theta
    return probs((low + high) / 2)


def _closest(
    rng: random.Random, choices: Sequence[int], probs: Sequence[float], weights: Sequence[int], target: float
) -> list[int]:
    total = sum(weights)
    best: list[int] = []
    best_err = math.inf
    for _ in range(CANDIDATES):
        bits = rng.choices(choices, probs, k=len(weights))
        err = abs(sum(w * b for w, b in zip(weights, bits)) / total - target)
        if err < best_err:
            best, best_err = bits, err
    return best


def draw_configs(
    space: ElasticSpace, n: int, *, seed: int, conditions: Sequence[str] | None = None
) -> list[SubnetConfig]:
    """The ``n`` configs of a sampling run, in index order (see the module docstring).

    A pure function of its arguments: every shard recomputes the same list.
    """
    return list(iter_configs(space, n, seed=seed, conditions=conditions))


def _check_n(n: int) -> None:
    if not 1 <= n <= MAX_SUBNETS:
        raise ConfigError(
            f"the number of subnets is {n}; it must be in 1..{MAX_SUBNETS} (the paper samples 8000; each run and "
            "each shard replays the whole draw, so its time grows with n)"
        )


def iter_configs(
    space: ElasticSpace, n: int, *, seed: int, conditions: Sequence[str] | None = None
) -> Iterator[SubnetConfig]:
    """:func:`draw_configs` one config at a time, so a shard keeps only its own in memory."""
    _check_n(n)
    labels = parse_conditions(conditions, space)
    rng = random.Random(seed)
    layers = space.quantized_layers
    elastic = [i for i, layer in enumerate(layers) if not layer.fixed]
    w_weights = [layers[i].weight_params for i in elastic]
    a_weights = [layers[i].act_elems for i in elastic]
    base_w = [space.w_choices(layer)[0] for layer in layers]
    base_a = [space.a_choices(layer)[0] for layer in layers]
    w_lo, w_hi = space.w_bits[0], space.w_bits[-1]
    a_lo, a_hi = space.a_bits[0], space.a_bits[-1]
    # per condition: a stratum permutation for weights and one for activations
    counts = [len(range(c, n, len(labels))) for c in range(len(labels))]
    strata = [(rng.sample(range(m), m), rng.sample(range(m), m)) for m in counts]
    seen: set[tuple] = set()
    for i in range(n):
        c = i % len(labels)
        k = i // len(labels)
        m = counts[c]
        granularity, w_symmetry, a_symmetry = labels[c].split("/")
        target_w = w_lo + (strata[c][0][k] + rng.random()) / m * (w_hi - w_lo)
        target_a = a_lo + (strata[c][1][k] + rng.random()) / m * (a_hi - a_lo)
        p_w = tilted_distribution(space.w_bits, target_w)
        p_a = tilted_distribution(space.a_bits, target_a)
        for _ in range(REDRAWS):
            w = list(base_w)
            a = list(base_a)
            if elastic:
                for i_layer, b in zip(elastic, _closest(rng, space.w_bits, p_w, w_weights, target_w)):
                    w[i_layer] = b
                for i_layer, b in zip(elastic, _closest(rng, space.a_bits, p_a, a_weights, target_a)):
                    a[i_layer] = b
            key = (tuple(w), tuple(a), labels[c])
            if key not in seen:
                break
        seen.add(key)
        yield SubnetConfig(space.layer_names, tuple(w), tuple(a), granularity, w_symmetry, a_symmetry)


# ---------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class SampleParams:
    """Everything that decides the rows; two runs (or shards) mix only if these are equal."""

    supernet_sha256: str
    space_fingerprint: str
    n: int
    seed: int
    conditions: tuple[str, ...]
    subset: int
    calib_images: int
    batch_size: int
    sampler: str = SAMPLER

    def to_dict(self) -> dict[str, Any]:
        return {
            "supernet_sha256": self.supernet_sha256,
            "space_fingerprint": self.space_fingerprint,
            "n": self.n,
            "seed": self.seed,
            "conditions": list(self.conditions),
            "subset": self.subset,
            "calib_images": self.calib_images,
            "batch_size": self.batch_size,
            "sampler": self.sampler,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleParams:
        return cls(
            supernet_sha256=data["supernet_sha256"],
            space_fingerprint=data["space_fingerprint"],
            n=int(data["n"]),
            seed=int(data["seed"]),
            conditions=tuple(data["conditions"]),
            subset=int(data["subset"]),
            calib_images=int(data["calib_images"]),
            batch_size=int(data["batch_size"]),
            sampler=data["sampler"],
        )

    def difference(self, other: SampleParams) -> str:
        mine, theirs = self.to_dict(), other.to_dict()
        diffs = [f"{k} {theirs[k]!r} vs {mine[k]!r}" for k in mine if mine[k] != theirs[k]]
        return ", ".join(diffs) or "none"


def _params_of(artifact: Artifact) -> tuple[SampleParams, tuple[int, int] | None]:
    extra = artifact.extra
    try:
        params = SampleParams.from_dict(extra)
        shard = extra.get("shard")
        return params, (None if shard is None else (int(shard[0]), int(shard[1])))
    except (KeyError, TypeError, ValueError, IndexError):
        raise ArtifactError(
            f"{artifact.path} is a samples artifact without the sampling parameters in its manifest; "
            "re-create it with `eqtools sample`"
        ) from None


# ---------------------------------------------------------------------------------- rows
_ROW_KEYS = Samples.ROW_KEYS


def _row_line(row: dict[str, Any]) -> str:
    return json.dumps(row) + "\n"


def read_samples(artifact: Artifact | Path | str) -> list[dict[str, Any]]:
    """The rows of a ``samples`` artifact, in index order (``config`` left as a dict)."""
    art = artifact if isinstance(artifact, Artifact) else read_artifact(artifact, "samples")
    return Samples.read_rows(art)


class _WorkDir:
    """The append-only, fsynced row log of an unfinished run, locked against a second writer."""

    def __init__(self, out: Path) -> None:
        self.path = out.parent / f".{out.name}.partial"
        self.rows_path = self.path / "rows.jsonl"
        self.params_path = self.path / "params.json"
        self._lock_fd: int | None = None

    def _write_failed(self, exc: OSError) -> ArtifactError:
        return ArtifactError(
            f"cannot write the unfinished run's log {self.path}: {exc.strerror or exc}. The rows measured so far "
            "stay there, and the same command resumes from them once it can write again: free disk space, fix "
            "the directory's permissions, or choose another --out"
        )

    def lock(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._write_failed(exc) from None
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - non-POSIX: no protection against two writers
            pass
        except OSError:
            os.close(fd)
            raise ArtifactError(
                f"another `eqtools sample` is writing {self.path} right now; wait for it, or give this run "
                "another --out"
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def read_params(self) -> SampleParams | None:
        if not self.params_path.is_file():
            return None
        try:
            return SampleParams.from_dict(json.loads(self.params_path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # written atomically, so only a foreign file gets here: start over

    def write_params(self, params: SampleParams) -> None:
        tmp = self.params_path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as fh:
                json.dump(params.to_dict(), fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.params_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._write_failed(exc) from None

    def clear(self) -> None:
        for name in ("rows.jsonl", "params.json"):
            (self.path / name).unlink(missing_ok=True)

    def read_rows(self, wanted: dict[int, SubnetConfig]) -> dict[int, dict[str, Any]]:
        """Complete rows for ``wanted`` indices; the log is cut after the last good line."""
        rows: dict[int, dict[str, Any]] = {}
        if not self.rows_path.is_file():
            return rows
        good = 0
        with open(self.rows_path, "rb") as fh:
            data = fh.read()
        offset = 0
        for raw in data.splitlines(keepends=True):
            end = offset + len(raw)
            offset = end
            if not raw.endswith(b"\n"):
                break  # cut by a kill mid-write
            try:
                row = json.loads(raw)
                index = int(row["index"])
                config = SubnetConfig.from_dict(row["config"])
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, ConfigError):
                break
            if index not in wanted or wanted[index] != config:
                raise ArtifactError(
                    f"{self.rows_path} holds a row (index {index}) that is not part of this run's draw; "
                    "it was written by another version of the sampler: pass --restart to discard it"
                )
            rows.setdefault(index, row)
            good = end
        if good != len(data):
            with open(self.rows_path, "rb+") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())
        return rows

    @contextmanager
    def appender(self) -> Iterator[Callable[[dict[str, Any]], None]]:
        # unbuffered: a failed write (a full disk) must not leave bytes that closing the file retries and
        # fails on again; a line it cut short is dropped by read_rows on resume
        try:
            fd = os.open(self.rows_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._write_failed(exc) from None

        def append(row: dict[str, Any]) -> None:
            data = _row_line(row).encode()
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except OSError as exc:
                raise self._write_failed(exc) from None

        try:
            yield append
        finally:
            os.close(fd)

    def remove(self) -> None:
        self.unlock()
        shutil.rmtree(self.path, ignore_errors=True)


def _summary(rows: Sequence[dict[str, Any]], eval_time_s: float) -> dict[str, Any]:
    accuracies = [float(r["accuracy"]) for r in rows]
    avg_w = [float(r["avg_w_bits"]) for r in rows]
    avg_a = [float(r["avg_a_bits"]) for r in rows]
    return {
        "rows": len(rows),
        "per_condition": dict(sorted(Counter(r["condition"] for r in rows).items())),
        "accuracy_mean": sum(accuracies) / len(accuracies),
        "accuracy_min": min(accuracies),
        "accuracy_max": max(accuracies),
        "avg_w_bits_range": [min(avg_w), max(avg_w)],
        "avg_a_bits_range": [min(avg_a), max(avg_a)],
        "eval_time_s": eval_time_s,
        "subnets_per_min": 60.0 * len(rows) / eval_time_s if eval_time_s > 0 else None,
    }


# ---------------------------------------------------------------------------------- running
def sample_artifact(
    supernet_artifact: Artifact,
    *,
    n: int | None = None,
    conditions: str | Sequence[str] | None = None,
    subset: int | None = None,
    seed: int | None = None,
    out: Path | str | None = None,
    shard: tuple[int, int] | str | None = None,
    calib_images: int | None = None,
    batch_size: int | None = None,
    restart: bool = False,
    compile: bool | None = None,
    integer: bool | None = None,
    device: str = "cpu",
    on_stage: Callable[[str], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> Artifact:
    """Evaluate ``n`` drawn subnets (or one shard of them) and write a ``samples`` artifact.

    Defaults come from the spec's ``sample`` section (``n``, ``subset``, ``calib_images``,
    ``batch_size``) and seed. Accuracy is top-1 on a fixed class-balanced subset of ``subset``
    images of the ``val`` split (training images never trained on); BN statistics come from
    ``calib_images`` training images. Both sets are decoded once and reused for every subnet, as
    is the loaded supernet.

    Resumable (see the module docstring): re-running with the same arguments continues an
    interrupted run; ``restart`` discards its rows instead. A finished run with the same
    parameters at ``out`` is returned as is. ``on_start(done, total)`` is called once rows are
    known, ``on_row(row)`` after each newly evaluated subnet.

    ``compile`` runs the evaluation through ``torch.compile`` (:class:`eqtools.evaluation.SubnetMeter`;
    a minute or more of compiling once, then about twice the eager subnets/min on ResNet-20 with
    the quantized convs on oneDNN's int8 kernel where the CPU sums 8-bit products exactly, see
    BENCHMARKS.md; the artifact's metrics record ``compiled`` and ``integer_convs``); None (the
    default) compiles when the run draws at least :data:`COMPILE_FROM` subnets and a C++ compiler
    is there. The choice depends on ``n``, not on how many rows are left, so a resumed run
    measures the same way as the run it resumes.
    ``integer`` is :class:`~eqtools.evaluation.SubnetMeter`'s (None: int8 convs when compiled and
    exact here; True where they cannot run raises ConfigError).

    ``device`` is where the supernet runs. Started by ``torchrun`` (``WORLD_SIZE`` > 1), the draw
    is split over the processes instead (:func:`_sample_distributed`); every rank returns the
    artifact.
    """
    from eqtools.build import artifact_spec

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if shard is not None:
            raise ConfigError("under torchrun each process samples its own shard of the draw; leave out --shard "
                              "(use --shard K/N for separate jobs without torchrun)")
        return _sample_distributed(
            supernet_artifact, n=n, conditions=conditions, subset=subset, seed=seed, out=out,
            calib_images=calib_images, batch_size=batch_size, restart=restart, compile=compile, integer=integer,
            device=device, on_stage=on_stage, on_start=on_start, on_row=on_row,
        )

    spec = artifact_spec(supernet_artifact)
    space, params, shard = _sample_params(supernet_artifact, spec, n=n, conditions=conditions, subset=subset,
                                          seed=seed, shard=shard, calib_images=calib_images, batch_size=batch_size)
    say = on_stage or (lambda message: None)
    if out is None:
        tag = None if shard is None else f"shard{shard[0]}of{shard[1]}"
        out = default_out(spec.name, "samples", tag)
    out = Path(out)
    extra = {**params.to_dict(), "shard": None if shard is None else list(shard), "eval_split": "val"}

    work = _WorkDir(out)
    if not restart:
        finished = _finished_run(out, extra, work, say)
        if finished is not None:
            return finished
    claim_out(out, "samples", [supernet_artifact])  # before any subnet is evaluated (resuming the unfinished rows is not a replace)
    indices = shard_indices(params.n, shard, len(params.conditions))
    wanted = set(indices)
    configs = {i: c for i, c in enumerate(iter_configs(space, params.n, seed=params.seed, conditions=params.conditions))
               if i in wanted}

    work.lock()
    try:
        rows = _resume_rows(work, params, {i: configs[i] for i in indices}, restart, say)
        todo = [i for i in indices if i not in rows]
        use_compile = _use_compile(compile, params.n)
        evaluate, meter, used = _row_evaluator(supernet_artifact, spec, space, params, say, use_compile,
                                             integer, device) if todo else (None, None, None)
        if on_start is not None:
            on_start(len(rows), len(indices))
        if evaluate is not None:
            with work.appender() as append:
                for index in todo:
                    row = evaluate(index, configs[index])
                    append(row)
                    rows[index] = row
                    if on_row is not None:
                        on_row(row)
        ordered = [rows[i] for i in indices]
        eval_time = sum(float(r.get("time_s", 0.0)) for r in ordered)
        artifact = _write_samples(out, spec, space, ordered, eval_time, [supernet_artifact], extra,
                                  compiled=use_compile if todo else None,
                                  integer_convs=None if meter is None else meter.integer, data=used)
    except BaseException:
        if work.rows_path.is_file() and work.rows_path.stat().st_size > 0:
            work.unlock()  # rows to resume from
        else:
            work.remove()  # only this run's parameters: kept, they would refuse the corrected command as "other parameters"
        raise
    work.remove()
    return artifact


def _sample_distributed(supernet_artifact: Artifact, *, n: int | None, conditions: str | Sequence[str] | None,
                        subset: int | None, seed: int | None, out: Path | str | None, calib_images: int | None,
                        batch_size: int | None, restart: bool, compile: bool | None, integer: bool | None,
                        device: str, on_stage: Callable[[str], None] | None,
                        on_start: Callable[[int, int], None] | None,
                        on_row: Callable[[dict[str, Any]], None] | None) -> Artifact:
    """One shard of the draw per ``torchrun`` process, merged by rank 0 into the unsharded artifact.

    Rank ``r`` of ``W`` samples shard ``r+1/W`` (the same interleaved rounds as ``--shard``) into
    a hidden directory beside ``out``, resumably as any shard; once all have finished, rank 0
    writes at ``out`` the artifact an unsharded run writes (the same rows, the same parameters,
    the supernet as its parent) and removes the shards. torch.distributed (gloo on the CPU, NCCL
    on GPUs) carries only the barrier and each rank's outcome, so one rank's error stops all of
    them with its message instead of leaving the others waiting. A plain ``cuda`` device becomes
    ``cuda:<LOCAL_RANK>``.
    """
    import torch
    import torch.distributed as dist

    from eqtools.build import artifact_spec

    spec = artifact_spec(supernet_artifact)
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(device))
    started = not dist.is_initialized()
    if started:
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    try:
        return _sample_ranks(supernet_artifact, spec, dist, n=n, conditions=conditions, subset=subset, seed=seed,
                             out=out, calib_images=calib_images, batch_size=batch_size, restart=restart,
                             compile=compile, integer=integer, device=device, on_stage=on_stage, on_start=on_start,
                             on_row=on_row)
    finally:
        if started:
            dist.destroy_process_group()


def _sample_ranks(supernet_artifact: Artifact, spec: Any, dist: Any, *, n: int | None,
                  conditions: str | Sequence[str] | None, subset: int | None, seed: int | None,
                  out: Path | str | None, calib_images: int | None, batch_size: int | None, restart: bool,
                  compile: bool | None, integer: bool | None, device: str, on_stage: Callable[[str], None] | None,
                  on_start: Callable[[int, int], None] | None,
                  on_row: Callable[[dict[str, Any]], None] | None) -> Artifact:
    rank, world = dist.get_rank(), dist.get_world_size()
    space, params, _ = _sample_params(supernet_artifact, spec, n=n, conditions=conditions, subset=subset, seed=seed,
                                      shard=None, calib_images=calib_images, batch_size=batch_size)
    rounds = math.ceil(params.n / len(params.conditions))
    if world > rounds:  # every process finds it alike, so each stops here without waiting for a peer
        raise ConfigError(
            f"torchrun started {world} processes, but a {params.n}-subnet draw has {rounds} round"
            f"{'s' * (rounds != 1)} of {len(params.conditions)} draws (one per form) to share among them; start "
            f"at most {rounds} (--nproc_per_node), or draw more subnets (-n)"
        )
    out = Path(out) if out is not None else default_out(spec.name, "samples")
    shards = out.parent / f".{out.name}.ranks"
    mine = shards / f"shard{rank + 1}of{world}"
    say = on_stage if rank == 0 and on_stage is not None else (lambda message: None)
    if rank == 0:
        say(f"{world} processes: each samples one shard of the {params.n}-subnet draw on its own {device}")
    use_compile = _use_compile(compile, params.n)  # decided on the whole draw, as the unsharded run does
    outcome: dict[str, Any] = {"ok": True}
    try:
        if rank == 0:
            claim_out(out, "samples")  # before any subnet is evaluated, as a single process does
        os.environ["WORLD_SIZE"] = "1"  # the shard itself is an ordinary single-process run
        try:
            part = sample_artifact(
                supernet_artifact, n=params.n, conditions=params.conditions, subset=params.subset, seed=params.seed,
                out=mine, shard=(rank + 1, world), calib_images=params.calib_images, batch_size=params.batch_size,
                restart=restart, compile=use_compile, integer=integer, device=device,
                on_stage=say if rank == 0 else None, on_start=on_start if rank == 0 else None,
                on_row=on_row if rank == 0 else None)
        finally:
            os.environ["WORLD_SIZE"] = str(world)
        outcome.update(path=str(part.path), compiled=part.metrics.get("compiled"),
                       integer_convs=part.metrics.get("integer_convs"),
                       eval_time_s=float(part.metrics.get("eval_time_s") or 0.0), data=part.metrics.get("data"))
    except Exception as exc:  # reported by every rank below, so none waits for a peer that is gone
        outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "exception": exc}
    outcomes: list[Any] = [None] * world
    dist.all_gather_object(outcomes, {k: v for k, v in outcome.items() if k != "exception"})
    failed = [(r, o["error"]) for r, o in enumerate(outcomes) if not o["ok"]]
    if failed:
        if not outcome["ok"]:
            raise outcome["exception"]
        raise ConfigError(f"sampling process {failed[0][0]} of {world} failed: {failed[0][1]}")
    if rank == 0:
        rows: list[dict[str, Any]] = []
        for o in outcomes:
            rows.extend(read_samples(o["path"]))
        rows.sort(key=lambda r: r["index"])
        if [r["index"] for r in rows] != list(range(params.n)):
            raise ArtifactError(f"the processes' shards do not cover draws 0..{params.n - 1} exactly once")
        extra = {**params.to_dict(), "shard": None, "eval_split": "val"}
        eval_time = max(o["eval_time_s"] for o in outcomes)  # the processes ran side by side
        compiled = any(o["compiled"] for o in outcomes)
        integer_convs = None if all(o["integer_convs"] is None for o in outcomes) else all(
            bool(o["integer_convs"]) for o in outcomes)
        _write_samples(out, spec, space, rows, eval_time, [supernet_artifact], extra, compiled=compiled,
                       integer_convs=integer_convs, data=outcomes[0]["data"])
        shutil.rmtree(shards, ignore_errors=True)
    dist.barrier()
    return read_artifact(out, "samples")


def _sample_params(
    supernet_artifact: Artifact, spec: Any, *, n: int | None, conditions: str | Sequence[str] | None,
    subset: int | None, seed: int | None, shard: tuple[int, int] | str | None, calib_images: int | None,
    batch_size: int | None,
) -> tuple[ElasticSpace, SampleParams, tuple[int, int] | None]:
    """The run's parameters (flags over the spec's ``sample`` section), checked; the space and the shard."""
    if supernet_artifact.kind != "supernet":
        raise ArtifactError(
            f"{supernet_artifact.path} is a '{supernet_artifact.kind}' artifact; sample needs a 'supernet' "
            "artifact (made by `eqtools train SPEC`)"
        )
    space = supernet_artifact.space
    if space is None:
        raise ArtifactError(f"{supernet_artifact.path} records no elastic space; re-create it with `eqtools train`")
    shard = parse_shard(shard) if isinstance(shard, str) else shard
    if shard is not None:
        parse_shard(f"{shard[0]}/{shard[1]}")
    params = SampleParams(
        supernet_sha256=supernet_artifact.manifest_sha256,
        space_fingerprint=space.fingerprint,
        n=spec.sample.n if n is None else n,
        seed=spec.seed if seed is None else seed,
        conditions=parse_conditions(conditions, space),
        subset=spec.sample.subset if subset is None else subset,
        calib_images=spec.sample.calib_images if calib_images is None else calib_images,
        batch_size=spec.sample.batch_size if batch_size is None else batch_size,
    )
    for name in ("n", "subset", "calib_images", "batch_size"):
        if getattr(params, name) < 1:
            raise ConfigError(f"{name} is {getattr(params, name)}; it must be at least 1")
    _check_n(params.n)
    if shard is not None:
        _check_shard_count(params, shard)
    return space, params, shard


def _check_shard_count(params: SampleParams, shard: tuple[int, int]) -> None:
    """Refuse a split into more shards than the draw has rounds, whichever shard this job is.

    Shards split whole rounds (one draw per form), so shards past the last round are empty: a job
    for an early shard would run fine and then never merge, because its later siblings cannot exist.
    """
    k, count = shard
    forms = len(params.conditions)
    rounds = math.ceil(params.n / forms)
    if count > rounds:
        raise ConfigError(
            f"--shard {k}/{count} splits a {params.n}-subnet draw into more shards than it has rounds: shards "
            f"split rounds of {forms} draws (one per form), so use at most {rounds} shard{'s' * (rounds != 1)} "
            f"(shards {rounds + 1}..{count} would be empty, and the others could never be merged)"
        )


def _finished_run(out: Path, extra: dict[str, Any], work: _WorkDir, say: Callable[[str], None]) -> Artifact | None:
    """The artifact at ``out`` when it already holds this very run (same parameters), else None."""
    if not (out.is_dir() and (out / MANIFEST).is_file()):
        return None
    try:
        existing = read_artifact(out, "samples")
    except ArtifactError:
        return None  # something else is there: it is replaced when this run finishes
    if existing.extra != extra:
        return None
    say(f"{out} already holds this run's {existing.metrics.get('rows')} rows; nothing to do (to measure them again, "
        "pass --restart --force)")
    if work.path.exists():
        # a leftover log of this finished run, unless another sampler holds it right now (its rows are its own)
        try:
            work.lock()
        except ArtifactError:
            return existing
        work.remove()
    return existing


def _resume_rows(work: _WorkDir, params: SampleParams, wanted: dict[int, SubnetConfig], restart: bool,
                 say: Callable[[str], None]) -> dict[int, dict[str, Any]]:
    """The rows an unfinished run of the same parameters left (none after --restart or a new run)."""
    found = work.read_params()
    if found is not None and found != params and not restart:
        raise ArtifactError(
            f"{work.path} holds an unfinished sample run with other parameters ({params.difference(found)}); "
            "re-run with the same parameters to resume it, or pass --restart to discard it"
        )
    if restart or found != params:
        work.clear()
        work.write_params(params)
    rows = work.read_rows(wanted)
    if rows:
        say(f"resuming {work.path}: {len(rows)} of {len(wanted)} subnets already evaluated")
    return rows


def _use_compile(compile: bool | None, n: int) -> bool:
    from eqtools.evaluation import compile_available

    if compile is None:
        return n >= COMPILE_FROM and compile_available()
    return compile


def _row_evaluator(
    supernet_artifact: Artifact, spec: Any, space: ElasticSpace, params: SampleParams, say: Callable[[str], None],
    compile: bool = False,
    integer: bool | None = None,
    device: str = "cpu",
) -> tuple[Callable[[int, SubnetConfig], dict[str, Any]], Any, dict[str, Any]]:
    """Load the supernet and decode both image sets once; return what measures one row, its meter and
    the data actually used."""
    from eqtools.build import load_supernet
    from eqtools.data import load_splits
    from eqtools.evaluation import BatchSource, SubnetMeter, calibration_source, subnet_costs

    say(f"loading supernet {supernet_artifact.path} and {spec.data.name}")
    supernet = load_supernet(supernet_artifact, map_location=device).use_channels_last()
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    calib = calibration_source(splits, params.calib_images, params.batch_size, spec.seed)
    if params.subset > len(splits.val):
        raise ConfigError(
            f"--subset is {params.subset}, but the held-out val split has {len(splits.val)} images (the spec's "
            f"data.val_size); give at most {len(splits.val)}, or raise data.val_size and retrain"
        )
    evaluation = BatchSource(splits.val.balanced(params.subset, spec.seed + EVAL_SEED_OFFSET), params.batch_size)
    say(f"each subnet: BN calibration on {calib.images} train images, accuracy on {evaluation.images} "
        f"class-balanced val images{' (compiled: the first subnet also builds the graphs)' if compile else ''}")
    meter = SubnetMeter(supernet, calib, evaluation, compile=compile, integer=integer)
    # what the rows were actually measured on, for the manifest (the flags say what was asked)
    used = {"root": splits.root, "calib_images": calib.images, "eval_images": evaluation.images, "eval_split": "val"}
    if compile or integer:
        say("quantized convs on the int8 kernel (exact integer sums)" if meter.integer
            else f"quantized convs in float: {meter.integer_note}")

    def evaluate(index: int, config: SubnetConfig) -> dict[str, Any]:
        start = time.perf_counter()
        result = meter.measure(config)
        return {
            "index": index,
            "config": config.to_dict(),
            "accuracy": result["top1"],
            "loss": result["loss"],
            **subnet_costs(space, config),
            "condition": config.condition,
            "time_s": time.perf_counter() - start,
        }

    return evaluate, meter, used


def _write_samples(
    out: Path,
    spec: Any,
    space: ElasticSpace,
    rows: Sequence[dict[str, Any]],
    eval_time_s: float,
    parents: Sequence[Artifact | dict[str, str]],
    extra: dict[str, Any],
    compiled: bool | None = None,
    integer_convs: bool | None = None,
    data: dict[str, Any] | None = None,
) -> Artifact:
    clean = [{k: row[k] for k in _ROW_KEYS} for row in rows]

    def write(tmp: Path) -> None:
        Samples.write_rows(tmp, clean)

    return write_artifact(out, "samples", write, spec=spec.to_dict(), space=space, parents=parents,
                          metrics={**_summary(clean, eval_time_s), "compiled": compiled, "integer_convs": integer_convs,
                                   "data": data},
                          extra=extra)


def merge_samples(paths: Sequence[Path | str], out: Path | str | None = None) -> Artifact:
    """Join the shard artifacts of one sampling run into the artifact the unsharded run would write.

    Refuses artifacts that are not shards, shards of different supernets or parameters (seed, n,
    conditions, subset, ...), a shard given twice, and an incomplete set (naming what is missing).
    """
    from eqtools.build import artifact_spec

    if len(paths) < 1:
        raise ConfigError("--merge needs the shard artifacts to join, e.g. eqtools sample --merge A B")
    shards: list[tuple[Artifact, SampleParams, tuple[int, int]]] = []
    for path in paths:
        art = read_artifact(path, "samples")
        params, shard = _params_of(art)
        if shard is None:
            raise ArtifactError(f"{art.path} is a complete (unsharded) samples artifact, not a shard; nothing to merge")
        shards.append((art, params, shard))
    first_art, first, (_, count) = shards[0]
    for art, params, (_, n_shards) in shards[1:]:
        if params.supernet_sha256 != first.supernet_sha256:
            raise ArtifactError(
                f"{art.path} was sampled from another supernet than {first_art.path} "
                f"(supernet manifest sha256 {params.supernet_sha256[:12]}… vs {first.supernet_sha256[:12]}…); "
                "merge only shards of one run"
            )
        if params != first:
            raise ArtifactError(
                f"{art.path} was sampled with other parameters than {first_art.path} ({first.difference(params)}); "
                "merge only shards of one run"
            )
        if n_shards != count:
            raise ArtifactError(f"{art.path} is a shard of {n_shards}, {first_art.path} one of {count}; merge one split")
    rounds = math.ceil(first.n / len(first.conditions))
    if count > rounds:  # written before sample refused such splits: its later siblings cannot exist
        raise ArtifactError(
            f"{first_art.path} is a shard of {count}, but its {first.n}-subnet draw has {rounds} round"
            f"{'s' * (rounds != 1)} of {len(first.conditions)} draws, so shards {rounds + 1}..{count} are empty and "
            f"the split can never be merged; re-run it with --shard K/{rounds} (K = 1..{rounds})"
        )
    ks = Counter(k for _, _, (k, _) in shards)
    twice = sorted(k for k, c in ks.items() if c > 1)
    if twice:
        raise ArtifactError(f"shard(s) {twice} of {count} given more than once")
    missing = sorted(set(range(1, count + 1)) - set(ks))
    if missing:
        shown = ", ".join(f"{k}/{count}" for k in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ArtifactError(f"shard(s) {shown} missing; a merge needs all {count} shards")
    rows: list[dict[str, Any]] = []
    eval_time = 0.0
    for art, _, _ in shards:
        rows.extend(read_samples(art))
        eval_time += float(art.metrics.get("eval_time_s") or 0.0)
    rows.sort(key=lambda r: r["index"])
    if [r["index"] for r in rows] != list(range(first.n)):
        raise ArtifactError(f"the shards' rows do not cover draws 0..{first.n - 1} exactly once; re-run the shards")
    spec = artifact_spec(first_art)
    space = first_art.space
    if space is None:
        raise ArtifactError(f"{first_art.path} records no elastic space")
    out = Path(out) if out is not None else default_out(spec.name, "samples")
    extra = {**first.to_dict(), "shard": None, "eval_split": first_art.extra.get("eval_split", "val")}
    supernet_parent = next((p for p in first_art.manifest.get("parents", []) if p.get("kind") == "supernet"), None)
    parents: list[Any] = ([supernet_parent] if supernet_parent else []) + [art for art, _, _ in shards]
    return _write_samples(out, spec, space, rows, eval_time, parents, extra)
