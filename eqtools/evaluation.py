"""The library every stage shares: batch sources, batch-norm re-estimation, evaluation, subnet costs.

Stages (``calibrate``, ``sample``, ``search --verify``, ``export``, ``report``) import this module,
never one another: measuring a subnet here writes nothing, and only the ``calibrate`` stage
(:mod:`eqtools.calibrate`) turns a measurement into a ``calibrated`` artifact.

Why BN has to be re-estimated
-----------------------------
A weight-sharing supernet keeps one set of BN running statistics, a momentum average over every
subnet the sandwich trained. Each subnet's pre-BN activations have their own statistics (a 2-bit
subnet's differ from an 8-bit one's), so evaluating with the shared ones mis-normalises every
subnet a little and low-bit ones a lot (paper §4; the reference re-estimates on ~64k training
images).

What "re-estimated" means here
------------------------------
:func:`recalibrate_bn` runs the active subnet over the calibration images with *only* the BN
layers in train mode (so every BN normalises with its batch's statistics, exactly as in training,
while dropout and the like stay in eval mode) and without gradients. It then sets each BN's
``running_mean``/``running_var`` to the exact mean and unbiased variance of everything that BN saw,
over all images, not a momentum average. Per batch, the BN's own batch statistics are read (with
momentum 1 the running buffers *are* the batch mean and unbiased variance after each forward) and
pooled in float64 with Chan's parallel formula, so batches of different sizes weigh by their
element count and the result does not depend on the statistics the BN held before.

The result is a pure function of (weights, config, calibration images): calibrating subnets one
after another on one loaded supernet leaks nothing from one subnet to the next, which is what lets
``eqtools sample`` reuse the loaded supernet and be sharded or resumed without changing a number.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eqtools.artifacts import Artifact, Search, check_space, read_artifact
from eqtools.errors import ArtifactError, ConfigError, DataError, out_of_memory_advice
from eqtools.space import ElasticSpace, SubnetConfig
from eqtools.vocab import SPLITS, resolve_symmetry_flags

if TYPE_CHECKING:
    from torch import Tensor, nn

    from eqtools.data import Split, Splits
    from eqtools.quant import Supernet

__all__ = [
    "CALIB_SEED_OFFSET",
    "BatchSource",
    "SubnetMeter",
    "bn_modules",
    "calibrate_and_evaluate",
    "calibration_source",
    "compile_available",
    "config_from_search",
    "config_tag",
    "evaluate",
    "evaluation_source",
    "measure_subnet",
    "recalibrate_bn",
    "resolve_config",
    "subnet_costs",
]

# offsets mixed into the spec seed so the calibration images are fixed per spec but independent of
# every other seeded draw (validation split, training order, sampler)
CALIB_SEED_OFFSET = 7919
DEFAULT_CACHE_BYTES = 2 << 30  # keep decoded batches in memory up to 2 GiB (ImageNet-scale sets stream)


# ---------------------------------------------------------------------------------- batches
class BatchSource:
    """Re-iterable ``(x, y)`` batches of a split, decoded once and kept in memory when they fit.

    ``images`` takes the first that many images of the split, or of a seeded random order of it
    (``shuffle_seed``), so "N calibration images" means exactly N. With ``even`` the images are
    cut into equal batches (sizes differ by at most one batch count) instead of full batches plus a
    remainder: in train-mode BN a 12-image tail batch would be normalised with its own noisy
    statistics and skew every BN after it. Sampling evaluates thousands of subnets on the same
    images, so decoding and normalising them once (up to ``cache_bytes``) removes that cost from
    every subnet; ImageFolder sets too large for that are kept as uint8 pixels (a quarter of the
    memory) and normalised on each pass, and sets too large even so are re-read on every pass.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        images: int | None = None,
        shuffle_seed: int | None = None,
        even: bool = False,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        import torch

        if batch_size < 1:
            raise ConfigError(f"batch size is {batch_size}; it must be at least 1")
        if images is not None and images < 1:
            raise ConfigError(f"number of images is {images}; it must be at least 1")
        if len(split) == 0:
            raise DataError(f"the {split.name} split is empty")
        self.images = len(split) if images is None else min(images, len(split))
        if shuffle_seed is not None:
            order = torch.randperm(len(split), generator=torch.Generator().manual_seed(shuffle_seed))
            split = split.subset(order[: self.images])
        elif self.images < len(split):
            split = split.subset(torch.arange(self.images))
        self.split = split
        count = -(-self.images // batch_size)
        self.batch_size = -(-self.images // count) if even else batch_size
        info = split.info
        pixels = self.images * info.channels * info.image_size * info.image_size
        # ImageFolder images too many for a float cache are kept as their uint8 pixels and normalised on each
        # pass (a few passes over memory, against decoding them again): four times the images fit, e.g. an r18
        # sample's 10000 evaluation images at 224 px
        self._uint8 = split.folder is not None and 4 * pixels > cache_bytes
        self._cache: list[tuple[Tensor, Tensor]] | None = None
        if pixels * (1 if self._uint8 else 4) <= cache_bytes:
            # copied out of the workers' shared memory: each batch kept there holds an open file and /dev/shm
            # space for the whole run (thousands of batches pass the usual limit of 1024 open files)
            self._cache = [tuple(t.clone() if t.is_shared() else t for t in batch)
                           for batch in self.split.batches(self.batch_size, uint8=self._uint8)]

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self._cache is None:
            return self.split.batches(self.batch_size)
        if self._uint8:
            return (self.split.normalise(x, y) for x, y in self._cache)
        return iter(self._cache)

    def __len__(self) -> int:
        return -(-self.images // self.batch_size)


def calibration_source(
    splits: Splits, images: int, batch_size: int, seed: int, cache_bytes: int = DEFAULT_CACHE_BYTES
) -> BatchSource:
    """``images`` training images (no augmentation) in a seeded random order, in even batches.

    Shuffled because ImageFolder splits list images class by class: unshuffled batches would hold
    one class each, and train-mode BN would normalise every batch with one class's statistics.
    """
    return BatchSource(splits.train, batch_size, images=images, shuffle_seed=seed + CALIB_SEED_OFFSET, even=True,
                       cache_bytes=cache_bytes)


# ---------------------------------------------------------------------------------- BN statistics
def bn_modules(model: nn.Module) -> list[nn.Module]:
    """Every batch-norm layer that keeps running statistics (BatchNorm1d/2d/3d, SyncBatchNorm)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _images(batch: Any) -> Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _device(model: nn.Module) -> Any:
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def recalibrate_bn(supernet: nn.Module, batches: Iterable[Any]) -> int:
    """Set every BN's running mean/var to the exact statistics of the data; return images seen.

    ``batches`` yields image tensors ``[B, ...]`` (or ``(x, y)`` pairs; only ``x`` is used). The
    active subnet runs with its BN layers in train mode and everything else in eval mode, in
    inference mode; each BN's ``running_mean`` becomes the per-channel mean of all its inputs and
    ``running_var`` their unbiased variance (``n / (n - 1)``, as torch does), pooled over all
    batches rather than momentum-averaged. BN momentum, ``num_batches_tracked`` and every module's
    train/eval mode are restored afterwards; if the pass fails, the old statistics are too.
    """
    import torch

    bns = bn_modules(supernet)
    if not bns:
        return sum(_images(b).shape[0] for b in batches)
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    old_stats = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    modes = {m: m.training for m in supernet.modules()}
    # per BN: element count per channel, mean, sum of squared deviations (float64)
    stats: dict[nn.Module, list[Any]] = {}

    def pool(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        x = inputs[0]
        n = x.numel() // x.shape[1]
        mean = module.running_mean.detach().double()
        m2 = module.running_var.detach().double() * (n - 1)
        state = stats.get(module)
        if state is None:
            stats[module] = [n, mean, m2]
            return
        count, old_mean, old_m2 = state
        total = count + n
        delta = mean - old_mean
        state[0] = total
        state[1] = old_mean + delta * (n / total)
        state[2] = old_m2 + m2 + delta * delta * (count * n / total)

    handles = [m.register_forward_hook(pool) for m in bns]
    device = _device(supernet)
    seen = 0
    try:
        supernet.eval()
        for m in bns:
            m.train()
            m.momentum = 1.0  # running buffers = this batch's mean and unbiased variance after each forward
        with torch.inference_mode():
            for batch in batches:
                x = _images(batch).to(device, non_blocking=True)
                supernet(x)
                seen += x.shape[0]
    except BaseException:
        with torch.no_grad():
            for m, (mean, var) in zip(bns, old_stats):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
        raise
    finally:
        for h in handles:
            h.remove()
        for m, (momentum, tracked) in zip(bns, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        for m, mode in modes.items():
            m.training = mode
    if seen == 0:
        raise DataError("BN calibration got no images; give it at least one batch")
    with torch.no_grad():
        for m in bns:
            state = stats.get(m)
            if state is None:
                continue  # a BN the active subnet never runs keeps its statistics
            count, mean, m2 = state
            m.running_mean.copy_(mean.to(m.running_mean.dtype))
            m.running_var.copy_((m2 / max(count - 1, 1)).to(m.running_var.dtype))
    return seen


# ---------------------------------------------------------------------------------- evaluation
def evaluate(supernet: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float | int]:
    """Top-1/top-5 accuracy (fractions in [0, 1]) and mean cross-entropy of the active subnet.

    Runs in eval mode under ``torch.inference_mode``; the module's train/eval mode is restored.
    Returns ``{"top1", "top5", "loss", "images"}``; top-5 is top-k with k = min(5, classes).
    """
    import torch
    import torch.nn.functional as F

    was_training = supernet.training
    device = _device(supernet)
    correct1 = correct5 = 0
    loss_sum = 0.0
    images = 0
    try:
        supernet.eval()
        with torch.inference_mode():
            for x, y in batches:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                logits = supernet(x).float()
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                k = min(5, logits.shape[1])
                top = logits.topk(k, dim=1).indices
                hits = top == y[:, None]
                correct1 += int(hits[:, 0].sum())
                correct5 += int(hits.any(dim=1).sum())
                images += int(y.shape[0])
    finally:
        supernet.train(was_training)
    if images == 0:
        raise DataError("evaluation got no images; the split is empty")
    return {"top1": correct1 / images, "top5": correct5 / images, "loss": loss_sum / images, "images": images}


def calibrate_and_evaluate(
    supernet: Supernet,
    config: SubnetConfig,
    calib_batches: Iterable[Any],
    eval_batches: Iterable[tuple[Tensor, Tensor]],
    *,
    before: bool = False,
    batch_setting: str = "calibrate.batch_size",
) -> dict[str, float | int]:
    """Activate ``config``, re-estimate BN, evaluate; the building block of calibrate and sample.

    With ``before`` the subnet is also evaluated with the BN statistics it had on entry (keys
    ``top1_before``, ``top5_before``, ``loss_before``). The supernet keeps ``config`` active and
    its recalibrated statistics on return. Running out of memory is reported as advice to lower
    ``batch_setting``.
    """
    supernet.apply(config)
    result: dict[str, float | int] = {}
    batch = getattr(calib_batches, "batch_size", 0) or getattr(eval_batches, "batch_size", 0)
    with out_of_memory_advice("calibrating and evaluating a subnet", batch_setting, int(batch)):
        if before:
            pre = evaluate(supernet, eval_batches)
            result.update({"top1_before": pre["top1"], "top5_before": pre["top5"], "loss_before": pre["loss"]})
        calib_images = recalibrate_bn(supernet, calib_batches)
        result.update(evaluate(supernet, eval_batches))
    result["calib_images"] = calib_images
    return result


# ---------------------------------------------------------------------------------- many subnets, fast
def compile_available() -> bool:
    """Whether ``torch.compile`` can build CPU kernels here (inductor needs a C++ compiler)."""
    import shutil

    return any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class SubnetMeter:
    """Calibrate and evaluate many subnets of one loaded supernet on fixed images: the sampler's engine.

    Measures exactly what :func:`calibrate_and_evaluate` measures (BN statistics pooled exactly
    over the calibration batches, then top-1 and mean cross-entropy on the evaluation images), with
    differences that only change speed:

    - ``compile``: the supernet's forward runs through ``torch.compile`` (inductor fuses each
      quantizer's divide/clamp/round/multiply with the BN, ReLU and residual add around it). The
      bit-widths, forms and BN statistics are tensors, so switching subnets reuses the same two
      graphs (BN in train mode for calibration, eval mode for evaluation) and never recompiles;
      :attr:`recompiles` counts graphs built after the first subnet (0 is the contract, checked
      by ``benchmarks/bench_sample.py --compare``). Numbers differ from eager by float summation
      order only.
    - BN statistics are read from the BN buffers after each whole forward (momentum 1: the
      buffers then hold that batch's mean and unbiased variance) instead of from a forward hook,
      so the compiled graph has no Python callbacks inside. That needs every BN to run at most
      once per forward, which :meth:`__init__` checks with one eager forward.
    - ``per_image``: :meth:`measure` can also return each evaluation image's correctness and
      loss, so a caller can split the images (noise ceilings, learning curves) without
      evaluating twice.

    - ``integer``: quantized convs run on oneDNN's int8 kernel (:mod:`eqtools.quant.integer`),
      which sums the integer codes exactly; only the float rounding of the scaling differs. It
      pays off compiled (the code shifts and corrections fuse into the quantizer's kernel); eager,
      their extra passes cost more than the conv saves. None (the default) uses it when compiled
      on a CPU whose int8 kernel passes :func:`~eqtools.quant.integer.int8_conv_support`;
      :attr:`integer_note` says why not otherwise.

    The calibration and evaluation sources are decoded once (:class:`BatchSource`) and reused.
    """

    def __init__(self, supernet: Supernet, calib: BatchSource, evaluation: BatchSource, *, compile: bool = False,
                 integer: bool | None = None) -> None:
        import torch

        from eqtools.quant.integer import int8_conv_support, packable

        self.supernet = supernet
        self.calib = calib
        self.evaluation = evaluation
        self.bns = bn_modules(supernet)
        self._check_bn_once(next(iter(calib)))
        self.compiled = bool(compile)
        if integer is False:
            reason: str | None = "not asked for"
        elif integer is None and not compile:
            reason = "eager (the int8 path pays off compiled only)"
        elif not any(packable(m) for m in supernet.modules()):
            reason = "no quantized conv here runs on the int8 kernel (CPU, float32, zero padding)"
        else:
            reason = int8_conv_support()
        if integer and reason is not None:
            raise ConfigError(f"integer convolutions are not available: {reason}")
        self.integer = reason is None
        self.integer_note = reason
        self._forward: Any = torch.compile(supernet, dynamic=False) if compile else supernet
        self._graphs_after_first: int | None = None
        self.subnets = 0

    def _check_bn_once(self, batch: Any) -> None:
        """One eager forward: which BNs run, how many elements per image each normalises per channel."""
        import torch

        calls: dict[nn.Module, int] = {}
        elems: dict[nn.Module, int] = {}

        def count(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            calls[module] = calls.get(module, 0) + 1
            x = inputs[0]
            elems[module] = x.numel() // x.shape[1] // x.shape[0]

        handles = [m.register_forward_hook(count) for m in self.bns]
        try:
            with torch.inference_mode():
                self.supernet.eval()
                self.supernet(_images(batch)[:2].to(_device(self.supernet)))
        finally:
            for h in handles:
                h.remove()
        twice = [m for m, c in calls.items() if c > 1]
        if twice:
            raise ConfigError(
                f"{len(twice)} batch-norm layer(s) run more than once per forward; SubnetMeter reads BN statistics "
                "per forward, use calibrate_and_evaluate for this model"
            )
        self.bns = [m for m in self.bns if m in calls]  # a BN the forward never runs keeps its statistics
        self._elems_per_image = [elems[m] for m in self.bns]

    @property
    def recompiles(self) -> int | None:
        """Graphs compiled after the first subnet finished (None before that, 0 when not compiled)."""
        if not self.compiled:
            return 0
        if self._graphs_after_first is None:
            return None
        return _graph_count() - self._graphs_after_first

    def _calibrate(self) -> int:
        import torch

        device = _device(self.supernet)
        saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in self.bns]
        old = [(m.running_mean.clone(), m.running_var.clone()) for m in self.bns]
        stats: list[list[Any] | None] = [None] * len(self.bns)
        seen = 0
        try:
            self.supernet.eval()
            for m in self.bns:
                m.train()
                m.momentum = 1.0
            with torch.inference_mode():
                for batch in self.calib:
                    x = _images(batch).to(device, non_blocking=True)
                    self._forward(x)
                    seen += x.shape[0]
                    for k, m in enumerate(self.bns):
                        stats[k] = _pooled(stats[k], x.shape[0] * self._elems_per_image[k], m)
        except BaseException:
            with torch.no_grad():
                for m, (mean, var) in zip(self.bns, old):
                    m.running_mean.copy_(mean)
                    m.running_var.copy_(var)
            raise
        finally:
            for m, (momentum, tracked) in zip(self.bns, saved):
                m.momentum = momentum
                if tracked is not None:
                    m.num_batches_tracked.copy_(tracked)
            self.supernet.eval()
        if seen == 0:
            raise DataError("BN calibration got no images; give it at least one batch")
        with torch.no_grad():
            for m, state in zip(self.bns, stats):
                if state is None:
                    continue
                count, mean, m2 = state
                m.running_mean.copy_(mean.to(m.running_mean.dtype))
                m.running_var.copy_((m2 / max(count - 1, 1)).to(m.running_var.dtype))
        return seen

    def _evaluate(self, per_image: bool) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F

        device = _device(self.supernet)
        correct: list[Tensor] = []
        losses: list[Tensor] = []
        self.supernet.eval()
        with torch.inference_mode():
            for x, y in self.evaluation:
                logits = self._forward(x.to(device, non_blocking=True)).float()
                y = y.to(device, non_blocking=True)
                losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
                correct.append((logits.argmax(dim=1) == y).cpu())
        hits = torch.cat(correct)
        loss = torch.cat(losses)
        if hits.numel() == 0:
            raise DataError("evaluation got no images; the split is empty")
        out: dict[str, Any] = {"top1": float(hits.double().mean()), "loss": float(loss.double().mean()),
                               "images": int(hits.numel())}
        if per_image:
            out["correct"] = hits.numpy()
            out["image_loss"] = loss.numpy()
        return out

    def measure(self, config: SubnetConfig, *, per_image: bool = False) -> dict[str, Any]:
        """Activate ``config``, re-estimate BN, evaluate: ``{"top1", "loss", "images", "calib_images"}``.

        With ``per_image`` also ``correct`` (bool [images]) and ``image_loss`` (float32 [images]),
        in the evaluation source's order. The supernet keeps ``config`` active and is left in eval
        mode afterwards (its recalibrated BN statistics in place).
        """
        from eqtools.quant.integer import pack_int8, unpack_int8

        self.supernet.apply(config)
        batch = getattr(self.calib, "batch_size", 0)
        try:
            if self.integer:
                pack_int8(self.supernet)  # for this subnet only: unpacked below, whatever happens
            with out_of_memory_advice("calibrating and evaluating a subnet", "sample.batch_size", int(batch)):
                calib_images = self._calibrate()
                result = self._evaluate(per_image)
        finally:
            unpack_int8(self.supernet)
        result["calib_images"] = calib_images
        self.subnets += 1
        if self.compiled and self._graphs_after_first is None:
            self._graphs_after_first = _graph_count()
        return result


def _pooled(state: list[Any] | None, n: int, module: nn.Module) -> list[Any]:
    """Chan's parallel update of ``(count, mean, M2)`` (float64) with the batch a BN's buffers now hold.

    With momentum 1 a train-mode BN's ``running_mean``/``running_var`` are the last batch's mean and
    unbiased variance over ``n`` elements per channel; the same pooling as :func:`recalibrate_bn`.
    """
    mean = module.running_mean.detach().double()
    m2 = module.running_var.detach().double() * (n - 1)
    if state is None:
        return [n, mean, m2]
    count, old_mean, old_m2 = state
    total = count + n
    delta = mean - old_mean
    return [total, old_mean + delta * (n / total), old_m2 + m2 + delta * delta * (count * n / total)]


# ---------------------------------------------------------------------------------- configs
def subnet_costs(space: ElasticSpace, config: SubnetConfig) -> dict[str, float | int]:
    """Average bits (see :meth:`ElasticSpace.avg_bits`), weight bytes and bit operations per sample."""
    avg_w, avg_a = space.avg_bits(config)
    return {"avg_w_bits": avg_w, "avg_a_bits": avg_a, "size_bytes": space.size_bytes(config), "bops": space.bops(config)}


def config_tag(space: ElasticSpace, config: SubnetConfig) -> str:
    """A directory-name label: ``w3a3-per-tensor-Wsym-Aasym`` for uniform subnets, ``mixed-<hash>-...`` otherwise."""
    elastic = [i for i, layer in enumerate(space.quantized_layers) if not layer.fixed] or list(
        range(len(space.quantized_layers))
    )
    ws = {config.w_bits[i] for i in elastic}
    as_ = {config.a_bits[i] for i in elastic}
    cond = config.tag
    if len(ws) == 1 and len(as_) == 1:
        return f"w{ws.pop()}a{as_.pop()}-{cond}"
    digest = hashlib.sha256(config.to_json(indent=None).encode()).hexdigest()[:8]
    return f"mixed-{digest}-{cond}"


def config_from_search(path: Path | str, space: ElasticSpace | None = None) -> SubnetConfig:
    """The best config of a ``search`` artifact (its ``best_config.json``).

    With ``space``, a search artifact made for another elastic space is refused.
    """
    art = read_artifact(path, "search")
    if space is not None and art.manifest.get("space") is not None:
        check_space(art, space)
    return Search.best_config(art)


def resolve_config(
    space: ElasticSpace,
    *,
    config_file: Path | str | None = None,
    w_bits: int | None = None,
    a_bits: int | None = None,
    granularity: str | None = None,
    symmetry: str | None = None,
    search: Path | str | None = None,
    w_symmetry: str | None = None,
    a_symmetry: str | None = None,
) -> SubnetConfig:
    """The subnet named by exactly one of: a config file, uniform bits + form, a search artifact.

    ``symmetry`` is the shorthand for ``w_symmetry`` and ``a_symmetry`` alike. Everything is
    validated against ``space``; an error names the layer and the allowed values.
    """
    given = [name for name, value in (("--config", config_file), ("--w-bits", w_bits), ("--from-search", search))
             if value is not None]
    if len(given) != 1:
        what = "none of them" if not given else " and ".join(given)
        raise ConfigError(
            f"name the subnet with exactly one of --config FILE, --w-bits B (with --granularity and --symmetry, or "
            "--w-symmetry and --a-symmetry) "
            f"or --from-search SEARCH; got {what}"
        )
    form_flags = (a_bits, granularity, symmetry, w_symmetry, a_symmetry)
    if w_bits is None and any(value is not None for value in form_flags):
        raise ConfigError(
            "--a-bits, --granularity, --symmetry, --w-symmetry and --a-symmetry go with --w-bits (a uniform subnet)"
        )
    w_sym, a_sym = resolve_symmetry_flags(symmetry, w_symmetry, a_symmetry)
    if config_file is not None:
        config = SubnetConfig.load(config_file)
    elif search is not None:
        config = config_from_search(search, space)
    else:
        missing = [flag for flag, value in (("--granularity", granularity), ("--w-symmetry", w_sym),
                                            ("--a-symmetry", a_sym)) if value is None]
        if missing:
            raise ConfigError(
                f"--w-bits needs {' and '.join(missing)} (--symmetry sets both symmetries): granularities "
                f"{list(space.granularities)}, weight symmetries {list(space.w_symmetries)}, activation "
                f"symmetries {list(space.a_symmetries)}"
            )
        config = space.uniform(w_bits, a_bits, granularity, w_sym, a_sym)  # type: ignore[arg-type]
    try:
        return space.validate(config)
    except ConfigError as exc:
        raise ConfigError(f"the subnet does not fit the supernet's space: {exc}") from None



# ---------------------------------------------------------------------------------- one subnet, measured
def evaluation_source(splits: Splits, split: str, eval_images: int | None, batch_size: int, seed: int) -> BatchSource:
    """The images :func:`measure_subnet` scores a subnet on: a split, or a fixed class-balanced subset of it.

    One definition, so that a second measurement of the same subnet (the deployed arithmetic, in
    the calibrate stage) is paired with the first image for image.
    """
    target = splits.get(split)
    if eval_images is not None:
        target = target.balanced(eval_images, seed + CALIB_SEED_OFFSET + 1)
    return BatchSource(target, batch_size)


def measure_subnet(
    supernet_artifact: Artifact,
    config: SubnetConfig,
    *,
    images: int | None = None,
    split: str = "test",
    batch_size: int | None = None,
    eval_images: int | None = None,
    supernet: Supernet | None = None,
    splits: Splits | None = None,
    on_stage: Callable[[str], None] | None = None,
    device: str = "cpu",
) -> tuple[Supernet, dict[str, Any]]:
    """Calibrate one subnet and measure it before and after, without writing anything.

    Returns the supernet (``config`` active, BN recalibrated) and the metrics of a ``calibrated``
    artifact. Arguments as for :func:`eqtools.calibrate.calibrate_artifact`; ``device`` is where
    a supernet loaded here runs (one passed in stays where it is).
    """
    from eqtools.build import artifact_spec, load_supernet
    from eqtools.data import load_splits

    if supernet_artifact.kind != "supernet":
        raise ArtifactError(
            f"{supernet_artifact.path} is a '{supernet_artifact.kind}' artifact; calibrate needs a 'supernet' "
            "artifact (made by `eqtools train SPEC`)"
        )
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; splits are {list(SPLITS)}")
    spec = artifact_spec(supernet_artifact)
    space = supernet_artifact.space
    if space is None:
        raise ArtifactError(f"{supernet_artifact.path} records no elastic space; re-create it with `eqtools train`")
    try:
        space.validate(config)
    except ConfigError as exc:
        raise ConfigError(f"the subnet does not fit the supernet {supernet_artifact.path}: {exc}") from None
    images = spec.calibrate.images if images is None else images
    batch_size = spec.calibrate.batch_size if batch_size is None else batch_size
    say = on_stage or (lambda message: None)

    if supernet is None:
        say(f"loading supernet {supernet_artifact.path}")
        supernet = load_supernet(supernet_artifact, map_location=device).use_channels_last()
    elif supernet.space.fingerprint != space.fingerprint:
        raise ArtifactError(f"the supernet passed in was not loaded from {supernet_artifact.path} (its space differs)")
    if splits is None:
        say(f"loading {spec.data.name}")
        splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    calib = calibration_source(splits, images, batch_size, spec.seed)
    evaluation = evaluation_source(splits, split, eval_images, batch_size, spec.seed)

    say(f"{config.label} subnet: evaluating on {split} before and after BN calibration on {calib.images} train images")
    start = time.perf_counter()
    result = calibrate_and_evaluate(supernet, config, calib, evaluation, before=True)
    metrics: dict[str, Any] = {
        "top1": result["top1"],
        "top5": result["top5"],
        "loss": result["loss"],
        "images": result["images"],
        "top1_before": result["top1_before"],
        "top5_before": result["top5_before"],
        "loss_before": result["loss_before"],
        "calib_images": result["calib_images"],
        "split": split,
        **subnet_costs(space, config),
        "time_s": time.perf_counter() - start,
    }
    return supernet, metrics
