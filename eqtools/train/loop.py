"""The training loop behind ``eqtools train``: float warm-up (optional), quantizer initialisation,
sandwich or static QAT epochs, checkpoints, resume, DDP, and the final ``supernet`` artifact.

Resume is exact: data order and augmentation are pure functions of (seed, epoch, batch), the
subnet sampler's RNG state and the optimiser/schedule state live in the checkpoint, and the
checkpoint is written atomically at every epoch end (and at the current step on SIGINT/SIGTERM).
On CPU with a fixed seed, a run killed after k epochs and resumed reaches bit-identical weights
to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from eqtools.artifacts import Artifact, load_safetensors, save_safetensors
from eqtools.artifacts import Supernet as SupernetArtifact
from eqtools.build import build_float_model, build_supernet, save_supernet, spec_info
from eqtools.data import Split, Splits, load_splits
from eqtools.errors import EqtoolsError, NumericError, out_of_memory_advice
from eqtools.quant import Supernet
from eqtools.space import SubnetConfig
from eqtools.specs import Spec
from eqtools.train.step import sample_sandwich, sandwich_step, static_step, wdr_weights

__all__ = ["TrainOptions", "TrainingInterrupted", "monitor_images", "quantizer_init_images", "run_training"]

CHECKPOINT = "checkpoint.pt"
FP_CHECKPOINT = "fp-checkpoint.pt"  # the float warm-up's, while it runs
Progress = Callable[..., None]


class TrainingInterrupted(EqtoolsError):
    """Raised after a SIGINT/SIGTERM once the checkpoint is safely on disk."""


@dataclass
class TrainOptions:
    out: Path
    resume: bool = False
    restart: bool = False
    device: str = "cpu"
    compile: str | None = None  # None: the spec's train.compile
    log: Callable[[str], None] = field(default=lambda message: None)
    progress: Callable[[str, int], Any] | None = None  # (description, total) -> context yielding advance()


# --------------------------------------------------------------------------------- utilities
class Precision:
    """Mixed precision of the training forward passes: autocast, and a gradient scaler for fp16.

    Parameters, optimiser state and gradients stay fp32; autocast runs convolutions and matmuls in
    the lower dtype. The quantizers divide, clip and round in fp32 whatever the autocast dtype
    (:func:`eqtools.quant.quantizer.fake_quantize`), so precision changes the arithmetic around the
    codes, never which code a value gets. fp16's five exponent bits underflow small gradients,
    hence the scaler; bf16 has fp32's range and needs none.
    """

    DTYPES: ClassVar[dict[str, torch.dtype | None]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, name: str, device: str) -> None:
        self.name = name
        self.device_type = torch.device(device).type
        self.dtype = self.DTYPES[name]
        self.scaler = torch.amp.GradScaler(self.device_type) if name == "fp16" else None

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, opt: torch.optim.Optimizer, params: Any, grad_clip: float | None) -> None:
        """Clip (after unscaling) and step; with fp16 the scaler skips a step whose gradients overflowed."""
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        if grad_clip:
            nn.utils.clip_grad_norm_(params, grad_clip)
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _setup_distributed(device: str) -> _Dist:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size())


def _local_device(device: str) -> str:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EqtoolsError(f"--device {device}: this machine has no usable CUDA GPU (torch {torch.__version__} sees "
                           "none); use --device cpu")
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _lr_lambda(total_steps: int, warmup_steps: int, schedule: str) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _make_optimizer(spec: Spec, weights: list[nn.Parameter], quant: list[nn.Parameter]) -> torch.optim.Optimizer:
    t = spec.train
    groups = [
        {"params": weights, "weight_decay": t.weight_decay},
        {"params": quant, "weight_decay": 0.0},  # steps/offsets: decay would shrink ranges
    ]
    groups = [g for g in groups if g["params"]]
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=t.lr)
    return torch.optim.SGD(groups, lr=t.lr, momentum=0.9, nesterov=True)


@contextmanager
def _interrupt_flag() -> Iterator[dict[str, bool]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps (main thread only)."""
    flag = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = True

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
        previous = {}
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def _null_progress(description: str, total: int):
    @contextmanager
    def ctx() -> Iterator[Callable[..., None]]:
        yield lambda n=1, **fields: None

    return ctx()


MONITOR_SEED_OFFSET = 7919  # fixes the held-out images the training monitor evaluates on
INIT_SEED_OFFSET = 6151  # fixes the training images quantizers are initialised from


def monitor_images(split: Split, n: int, seed: int) -> Split:
    """The ``n`` held-out images the training monitor evaluates on: class-balanced, drawn at random.

    The first ``n`` images in index order would be one or two classes on ImageFolder data (listed
    class by class), so the monitor would report the accuracy of those classes only.
    """
    return split.balanced(n, seed + MONITOR_SEED_OFFSET)


def quantizer_init_images(split: Split, n: int, seed: int) -> Split:
    """The ``n`` training images quantizers are initialised from: class-balanced, drawn at random.

    Activation steps and signedness come from what these images produce, so on ImageFolder data
    the first ``n`` in index order (one class) would fit every quantizer to one class.
    """
    return split.balanced(n, seed + INIT_SEED_OFFSET)


@torch.no_grad()
def _accuracy(model: nn.Module, split: Split, batch_size: int, device: str, limit_images: int, seed: int) -> float:
    model.eval()
    correct = seen = 0
    for x, y in monitor_images(split, limit_images, seed).batches(batch_size):
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        seen += len(y)
    return correct / max(1, seen)


# --------------------------------------------------------------------------------- float warm-up
def _fp_cache_key(spec: Spec) -> str:
    t = spec.train
    data = spec.data.model_dump()
    data["workers"] = 0  # decoding in parallel changes nothing in the batches (0: the keys made before it was read)
    # Every field the warm-up reads: a cached warm-up made with other steps, schedule or clipping is
    # another float model, and reusing it would silently change what the run starts from.
    key = {"model": spec.model.model_dump(), "data": data, "seed": spec.seed,
           "epochs": t.fp_epochs, "batch": t.batch_size, "lr": t.lr, "optimizer": t.optimizer,
           "steps_per_epoch": t.steps_per_epoch, "weight_decay": t.weight_decay, "schedule": t.schedule,
           "grad_clip": t.grad_clip, "precision": t.precision}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _pretrain_float(model: nn.Module, spec: Spec, splits: Splits, device: str, opts: TrainOptions, dist: _Dist,
                    work: Path) -> dict:
    """Train the float model for ``fp_epochs`` (cached beside the output: static baselines of the
    same spec reuse it). Returns summary metrics.

    Checkpointed like the QAT epochs (``work/fp-checkpoint.pt`` at every warm-up epoch end and at the
    current step on SIGINT/SIGTERM), so ``--resume`` continues an interrupted warm-up exactly: the
    data order is a pure function of (seed, epoch, batch) and the optimiser, schedule and RNG state
    are restored. The checkpoint goes once the float weights are cached.
    """
    cache = opts.out.parent / ".fp-cache" / f"{_fp_cache_key(spec)}.safetensors"
    if cache.is_file():
        model.load_state_dict(load_safetensors(cache), strict=True)
        opts.log(f"float warm-up: reusing {cache}")
        return {"fp_cached": True}
    t = spec.train
    torch.manual_seed(spec.seed)
    model.to(device).train()
    model.to(memory_format=torch.channels_last)  # faster convolutions (see Supernet.use_channels_last)
    opt = _make_optimizer(spec, list(model.parameters()), [])
    amp = Precision(t.precision, device)
    steps = len(splits.train) // t.batch_size
    if t.steps_per_epoch:
        steps = min(steps, t.steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps * t.fp_epochs, 0, t.schedule))
    ckpt_path = work / FP_CHECKPOINT
    start_epoch = start_step = 0
    if opts.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("spec") != spec.to_dict():
            raise EqtoolsError(f"the float warm-up checkpoint at {ckpt_path} was made with a different spec; resume "
                               "with the same spec and flags, or pass --restart")
        model.load_state_dict(state["model"], strict=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        amp.load_state_dict(state.get("scaler") or {})
        start_epoch, start_step = state["epoch"], state["step_in_epoch"]
        opts.log(f"float warm-up: resuming from {ckpt_path} (epoch {start_epoch}, step {start_step})")

    def save_checkpoint(epoch: int, step_in_epoch: int) -> None:
        if not dist.main:
            return
        work.mkdir(parents=True, exist_ok=True)
        _atomic_torch_save({"spec": spec.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                            "scaler": amp.state_dict(), "epoch": epoch, "step_in_epoch": step_in_epoch}, ckpt_path)

    progress = opts.progress or _null_progress
    start = time.monotonic()
    with _interrupt_flag() as flag:
        for epoch in range(start_epoch, t.fp_epochs):
            first = start_step if epoch == start_epoch else 0
            with progress(f"float warm-up {epoch + 1}/{t.fp_epochs}", steps - first) as advance:
                for i, (x, y) in enumerate(
                    splits.train.batches(t.batch_size, shuffle=True, augment=spec.data.augment, seed=spec.seed + 7,
                                         epoch=epoch, start=first, drop_last=True, limit=steps - first),
                    start=first,
                ):
                    opt.zero_grad(set_to_none=True)
                    x = x.to(device).contiguous(memory_format=torch.channels_last)
                    with amp.autocast():
                        loss = F.cross_entropy(model(x).float(), y.to(device))
                    amp.backward(loss)
                    amp.step(opt, model.parameters(), t.grad_clip)
                    sched.step()
                    advance(1, loss=loss.item())
                    if flag["stop"]:
                        save_checkpoint(epoch, i + 1)
                        raise TrainingInterrupted(
                            f"training interrupted in float warm-up epoch {epoch + 1}, step {i + 1}/{steps}; the "
                            f"checkpoint is saved at {ckpt_path}. Continue with the same command plus --resume"
                        )
            save_checkpoint(epoch + 1, 0)
    top1 = _accuracy(model, splits.val, 500, device, 2000, spec.seed)
    model.train()
    model.to(memory_format=torch.contiguous_format)
    if dist.main:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
        save_safetensors(tmp, model.state_dict())
        os.replace(tmp, cache)
        ckpt_path.unlink(missing_ok=True)
    opts.log(f"float warm-up: {t.fp_epochs} epochs in {time.monotonic() - start:.0f}s, val top-1 {top1:.4f}")
    return {"fp_cached": False, "fp_val_top1": top1, "fp_time_s": time.monotonic() - start}


# --------------------------------------------------------------------------------- main entry
def static_config(spec: Spec, supernet: Supernet) -> SubnetConfig:
    s = spec.train.static
    assert s is not None
    return supernet.space.uniform(s.w_bits, s.a_bits, *s.form)


def run_training(spec: Spec, opts: TrainOptions) -> Artifact | None:
    """Train and write the supernet artifact at ``opts.out``; returns it (None on ranks > 0)."""
    device = _local_device(opts.device)
    dist = _setup_distributed(device)
    t = spec.train
    work = opts.out.with_name(opts.out.name + ".work")
    ckpt_path = work / CHECKPOINT
    checkpoint = _open_checkpoint(spec, opts, dist, work)
    torch.manual_seed(spec.seed)
    splits = load_splits(spec.data, spec.seed, spec.model.num_classes)
    summary: dict[str, Any] = {}
    supernet = _starting_supernet(spec, splits, device, opts, dist, checkpoint, summary, work)
    supernet.use_channels_last()
    mode = t.mode
    fixed = static_config(spec, supernet) if mode == "static" else None
    if fixed is not None:
        supernet.apply(fixed)

    opt = _make_optimizer(spec, supernet.weight_parameters(), supernet.quantizer_parameters())
    steps = len(splits.train) // t.batch_size
    if t.steps_per_epoch:
        steps = min(steps, t.steps_per_epoch)
    if steps == 0:
        raise EqtoolsError(
            f"train.batch_size {t.batch_size} is larger than the training split ({len(splits.train)} images); use a smaller batch"
        )
    total_steps = steps * t.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total_steps, int(t.warmup_epochs * steps), t.schedule))
    rng = random.Random(spec.seed)
    amp = Precision(t.precision, device)
    summary["precision"] = t.precision
    start_epoch, start_step, rows = 0, 0, []
    if checkpoint is not None:
        amp.load_state_dict(checkpoint.get("scaler") or {})
        opt.load_state_dict(checkpoint["optimizer"])
        sched.load_state_dict(checkpoint["scheduler"])
        rng.setstate(_to_tuple(checkpoint["rng"]))
        torch.set_rng_state(checkpoint["torch_rng"])
        start_epoch, start_step = checkpoint["epoch"], checkpoint["step_in_epoch"]
        rows = [json.loads(r) for r in checkpoint["rows"]]
        summary.update(json.loads(checkpoint.get("summary", "{}")))

    compile_mode = opts.compile or t.compile
    subnets_per_step = 2 + t.sandwich.num_random if mode == "supernet" else 1
    use_compile = compile_mode == "on" or (
        compile_mode == "auto" and _compile_pays_off(device, total_steps * subnets_per_step))
    forward_model: nn.Module = supernet
    if dist.world > 1:
        forward_model = nn.parallel.DistributedDataParallel(supernet, device_ids=None if device == "cpu" else [torch.device(device)])
    if use_compile:
        forward_model = torch.compile(forward_model)
    summary["compiled"] = use_compile
    wdr = None
    if mode == "supernet" and (t.wdr.skewness > 0 or t.wdr.kurtosis > 0):
        wdr = {"weights": wdr_weights(supernet, t.wdr.exclude_first), "skewness": t.wdr.skewness,
               "kurtosis": t.wdr.kurtosis, "target": t.wdr.kurtosis_target}
    per_rank = t.batch_size // dist.world
    if per_rank == 0:
        raise EqtoolsError(f"train.batch_size {t.batch_size} is smaller than the number of processes ({dist.world})")

    def save_checkpoint(epoch: int, step_in_epoch: int) -> None:
        if not dist.main:
            return
        work.mkdir(parents=True, exist_ok=True)
        _atomic_torch_save({
            "spec": spec.to_dict(),
            "model": supernet.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": amp.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "rng": _to_lists(rng.getstate()),
            "torch_rng": torch.get_rng_state(),
            "rows": [json.dumps(r) for r in rows],
            "summary": json.dumps(summary),
        }, ckpt_path)

    progress = opts.progress or _null_progress
    opts.log(
        f"training {spec.model.name} ({mode}) on {spec.data.name}: {t.epochs} epochs x {steps} steps of "
        f"{t.batch_size} images, {len(supernet.space.layer_names)} quantized layers"
        f"{', compiled' if use_compile else ''}{f', {dist.world} processes' if dist.world > 1 else ''}"
        f"{f', {t.precision} autocast' if t.precision != 'fp32' else ''}"
    )
    run_start = time.monotonic()
    with _interrupt_flag() as flag, out_of_memory_advice("training", "train.batch_size", t.batch_size):
        for epoch in range(start_epoch, t.epochs):
            supernet.train()
            first = start_step if epoch == start_epoch else 0
            sums: dict[str, float] = {}
            count = 0
            digest = hashlib.sha256()
            epoch_start = time.monotonic()
            with progress(f"epoch {epoch + 1}/{t.epochs}", steps - first) as advance:
                for i, (x, y) in enumerate(
                    splits.train.batches(t.batch_size, shuffle=True, augment=spec.data.augment, seed=spec.seed,
                                         epoch=epoch, start=first, drop_last=True, limit=steps - first,
                                         part=(dist.rank, dist.world) if dist.world > 1 else None,
                                         pin_memory=device.startswith("cuda")),
                    start=first,
                ):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    step_start = time.monotonic()
                    opt.zero_grad(set_to_none=True)
                    if mode == "static":
                        losses = static_step(forward_model, x, y, autocast=amp.autocast, backward=amp.backward)
                    else:
                        configs = sample_sandwich(supernet.space, rng, t.sandwich.num_random)
                        digest.update("".join(c.to_json(indent=None) for c in configs).encode())
                        losses = sandwich_step(forward_model, supernet, x, y, configs, kd_lambda=t.sandwich.kd_lambda,
                                               temperature=t.sandwich.temperature, distill=t.sandwich.distill, wdr=wdr,
                                               autocast=amp.autocast, backward=amp.backward)
                    _check_finite_loss(losses, epoch, i, steps, ckpt_path, t.lr, dist, device)  # before the step spreads it
                    amp.step(opt, supernet.parameters(), t.grad_clip)
                    sched.step()
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1
                    rate = len(x) * dist.world / max(1e-9, time.monotonic() - step_start)
                    advance(1, loss=losses["loss"], lr=sched.get_last_lr()[0], img_s=round(rate))
                    if flag["stop"]:
                        save_checkpoint(epoch, i + 1)
                        raise TrainingInterrupted(
                            f"training interrupted at epoch {epoch + 1}, step {i + 1}/{steps}; the checkpoint is saved "
                            f"at {ckpt_path}. Continue with the same command plus --resume"
                        )
            _check_same_subnets(dist, digest.hexdigest())
            elapsed = time.monotonic() - epoch_start
            row = {"epoch": epoch + 1, **{k: v / max(1, count) for k, v in sums.items()},
                   "lr": sched.get_last_lr()[0], "time_s": round(elapsed, 3),
                   "images_per_s": round(count * t.batch_size / max(elapsed, 1e-9), 1)}
            if dist.main:
                row.update(_epoch_eval(supernet, splits.val, device, fixed, spec.seed))
            rows.append(row)
            _check_finite_weights(supernet, epoch, steps, ckpt_path, t.lr)  # never checkpoint or write NaN weights
            save_checkpoint(epoch + 1, 0)
            opts.log(json.dumps(row))
            dist.barrier()

    summary["train_time_s"] = round(time.monotonic() - run_start, 1)
    # what was actually read, not what the spec asked for (the spec is in the manifest beside it)
    summary["data"] = {"name": spec.data.name, "root": splits.root, "train_images": len(splits.train),
                       "val_images": len(splits.val), "test_images": len(splits.test)}
    artifact = None
    if dist.main:
        artifact = _write_supernet(supernet, spec, opts, fixed, steps, rows, summary, dist.world)
        shutil.rmtree(work, ignore_errors=True)
    dist.barrier()
    return artifact


def _divergence(ckpt_path: Path, lr: float) -> str:
    kept = (f"the last good checkpoint is kept at {ckpt_path} (the end of the last finished epoch)" if ckpt_path.exists()
            else "no epoch had finished, so there is no checkpoint")
    return (f"Nothing was written at the output path; {kept}. Lower train.lr (now {lr:g}) or enable train.grad_clip, "
            "and start again with --restart")


def _check_finite_loss(losses: dict[str, float], epoch: int, step: int, steps: int, ckpt_path: Path, lr: float,
                       dist: _Dist | None = None, device: str | torch.device = "cpu") -> None:
    """Stop at the first non-finite loss: one NaN step turns every weight NaN (they still save fine).

    Under DDP every process decides together (one all-reduce of a flag), so each stops at the same
    step with the same message: a process that stopped alone would leave the others blocked in the
    next gradient all-reduce until the launcher tears them down, and the main process, which
    reports to the user, would not say why.
    """
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if dist is not None and dist.world > 1:
        # on the training device: NCCL, the process group of a GPU run, reduces no CPU tensor
        flag = torch.tensor([1.0 if bad else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and not bad:
            bad = {"loss on another process": float("nan")}
    if bad:
        parts = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise NumericError(f"training diverged at epoch {epoch + 1}, step {step + 1}/{steps}: loss is not finite "
                           f"({parts}); that step was not applied. " + _divergence(ckpt_path, lr))


def _check_finite_weights(supernet: nn.Module, epoch: int, steps: int, ckpt_path: Path, lr: float) -> None:
    for name, tensor in supernet.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NumericError(f"training diverged in epoch {epoch + 1} ({steps} steps): {name} holds NaN or "
                               "infinite values after its last step. " + _divergence(ckpt_path, lr))


def _open_checkpoint(spec: Spec, opts: TrainOptions, dist: _Dist, work: Path) -> dict[str, Any] | None:
    """The checkpoint to resume from (``--resume``), after refusing to clobber one silently."""
    ckpt_path = work / CHECKPOINT
    for found in (ckpt_path, work / FP_CHECKPOINT):
        if found.exists() and not (opts.resume or opts.restart):
            raise EqtoolsError(
                f"an unfinished training run is checkpointed at {found}; pass --resume to continue it or "
                "--restart to discard it and start again"
            )
    if opts.restart and dist.main:
        shutil.rmtree(work, ignore_errors=True)
    dist.barrier()
    if not opts.resume:
        return None
    if not ckpt_path.exists():
        if not (work / FP_CHECKPOINT).exists():
            opts.log(f"no checkpoint at {ckpt_path}; starting a new run")
        return None
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types (pickle, zip, runtime) for a damaged file
        first = (str(exc).splitlines() or [""])[0][:160]
        raise EqtoolsError(
            f"the checkpoint at {ckpt_path} cannot be read ({type(exc).__name__}: {first}); it is damaged or not an "
            "eqtools checkpoint. Pass --restart to discard it and train from the start"
        ) from None
    if not isinstance(checkpoint, dict) or not {"spec", "model", "optimizer", "epoch"} <= set(checkpoint):
        raise EqtoolsError(f"{ckpt_path} is not an eqtools training checkpoint; pass --restart to discard it")
    if checkpoint.get("spec") != spec.to_dict():
        raise EqtoolsError(
            f"the checkpoint at {ckpt_path} was made with a different spec; resume with the same spec and "
            "flags, or pass --restart"
        )
    opts.log(f"resuming from {ckpt_path} (epoch {checkpoint['epoch']}, step {checkpoint['step_in_epoch']})")
    return checkpoint


def _starting_supernet(spec: Spec, splits: Splits, device: str, opts: TrainOptions, dist: _Dist,
                       checkpoint: dict[str, Any] | None, summary: dict[str, Any], work: Path) -> Supernet:
    """The supernet the first step sees: float warm-up (if asked), conversion, and quantizers
    initialised from class-balanced training images, or everything restored from the checkpoint."""
    t = spec.train
    model = build_float_model(spec)
    if checkpoint is None and t.fp_epochs and not spec.model.pretrained:
        summary.update(_pretrain_float(model, spec, splits, device, opts, dist, work))
    supernet = build_supernet(spec, model).to(device)
    if checkpoint is None:
        per = min(t.batch_size, t.init_images)
        images = quantizer_init_images(splits.train, t.init_images, spec.seed)
        batches = (x.to(device) for x, _ in images.batches(per, shuffle=True, seed=spec.seed))
        supernet.init_from_data(batches, p=t.init_p)
    else:
        supernet.load_state_dict(checkpoint["model"], strict=True)
    return supernet


def _write_supernet(supernet: Supernet, spec: Spec, opts: TrainOptions, fixed: SubnetConfig | None, steps: int,
                    rows: list[dict[str, Any]], summary: dict[str, Any], processes: int) -> Artifact:
    """The ``supernet`` artifact, with the largest subnet (or the static config) active."""
    info = spec_info(spec)
    mode = spec.train.mode
    supernet.apply(fixed or supernet.space.max())
    metrics = {
        "mode": mode,
        "epochs": spec.train.epochs,
        "steps_per_epoch": steps,
        "final": rows[-1] if rows else {},
        "processes": processes,
        **summary,
    }
    extra: dict[str, Any] = {"mode": mode, "image_size": info.image_size, "channels": info.channels}
    if fixed is not None:
        extra["config"] = fixed.to_dict()
    jsonl = "".join(json.dumps(r) + "\n" for r in rows)
    parents = [{"kind": "pretrained", "path": spec.model.pretrained}] if spec.model.pretrained else ()
    return save_supernet(supernet, opts.out, spec, metrics=metrics, extra=extra,
                         files={SupernetArtifact.TRAINING_LOG: jsonl}, parents=parents)


@torch.no_grad()
def _epoch_eval(supernet: Supernet, val: Split, device: str, fixed: SubnetConfig | None, seed: int) -> dict[str, float]:
    """Top-1 on 1000 held-out images with the training BN statistics (no recalibration, so low
    bit-widths read low here; `eqtools calibrate` gives the real figure)."""
    previous = supernet.config
    out = {}
    try:
        targets = {"static": fixed} if fixed is not None else {"max": supernet.space.max(), "min": supernet.space.min()}
        for name, config in targets.items():
            supernet.apply(config)
            out[f"val_top1_{name}"] = round(_accuracy(supernet, val, 500, device, 1000, seed), 4)
    finally:
        supernet.apply(previous)
        supernet.train()
    return out


def _check_same_subnets(dist: _Dist, digest: str) -> None:
    """Every rank must have trained the same subnets; a divergence would silently corrupt DDP."""
    if dist.world == 1:
        return
    gathered: list[str | None] = [None] * dist.world
    torch.distributed.all_gather_object(gathered, digest)
    if len(set(gathered)) != 1:
        raise RuntimeError(f"ranks sampled different subnets this epoch (digests {gathered}); this is a bug")


COMPILE_MIN_CPU_SUBNET_PASSES = 1800


def _compile_pays_off(device: str, subnet_passes: int) -> bool:
    """On two CPU cores compiling the supernet costs a minute or more once and saves part of each
    sandwich step (three subnets), so it pays off only after a few hundred steps (BENCHMARKS.md,
    "Training speed", has the measured cost, saving and break-even). The threshold, counted in
    subnet forward/backward passes so that a static run's one-subnet steps need three times as many,
    is 600 sandwich steps: about three times the measured break-even, a margin for slower machines,
    where compilation takes longer."""
    if device.startswith("cuda"):
        return True
    return subnet_passes >= COMPILE_MIN_CPU_SUBNET_PASSES


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


def _to_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuple(v) for v in value)
    return value
