"""ImageFolder input pipeline alone: decode + augment + collate with the r18 transforms (224 px).

Three ways of producing the same kind of training batches from a generated tree of 375x500 JPEGs:
- ``today``: the loader eqtools had before the worker pool (every image decoded in the main
  process, one after another; reproduced here verbatim so the comparison stays runnable),
- ``eqtools``: ``Split.batches`` with ``data.workers`` processes (persistent DataLoader pool, each
  image's augmentation seeded from (seed, epoch, index) in the main process),
- ``plain``: a plain ``torchvision.datasets.ImageFolder`` + ``DataLoader`` with the same workers,
  transforms and batch size (persistent workers, shuffled): what the pool must come within 10 % of.

The tree holds 1536 images by default, so a pass is 48 batches: the pipeline's steady rate, which
sets the pace of an ImageNet epoch, rather than the start of a pass (workers waking, the first
batches in flight), which dominated the 12-batch passes of a 384-image tree. ``--train`` runs
``--steps`` steps whatever the tree holds.

Each round times one pass of every variant over ``--images`` images in a rotating order (A/B/C,
then B/C/A, ...), so a ratio is taken within a round and the machine's drift between rounds cancels
(``paired_ratio``: median and interquartile range of the per-round ratios).

``--train`` answers the second question instead: ``eqtools train specs/r18.json`` on the same tree
at 48 px (``--set`` overrides: the tree, 48 px, no pretrained weights, a few steps), with
``data.workers=2`` and ``=0`` alternating, comparing the ``images_per_s`` of the epoch row (it
counts the whole epoch loop, data loading included). It also times decoding those images alone, in
one process, once per round between the trainings: an estimate of the share of the workers=0 epoch
that workers can take away, hence of what they can gain on this machine.

Run: nice -n 10 python benchmarks/bench_imagefolder.py --record
     nice -n 10 python benchmarks/bench_imagefolder.py --train --record
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from _record import machine_line, paired_ratio, write_result  # noqa: E402


def _today_batches(split, batch_size: int, seed: int, epoch: int):
    """The pre-pool loader (eqtools.data.Split._folder_batch as it was): serial decode in the main process."""
    from torchvision.datasets.folder import default_loader as loader  # ImageFolder's own
    from torchvision.transforms import v2

    from eqtools.data import _mix

    info = split.info
    size = info.image_size
    tf = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)])
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(_mix(seed, epoch)))
    samples = split.folder.samples
    for b in range(-(-len(split) // batch_size)):
        idx = order[b * batch_size : (b + 1) * batch_size]
        base = split.indices[idx] if split.indices is not None else idx
        torch.manual_seed(_mix(seed, epoch, b))
        xs, ys = [], []
        for i in base.tolist():
            path, label = samples[i]
            xs.append(tf(v2.functional.to_image(loader(path))))
            ys.append(label)
        yield torch.stack(xs), torch.tensor(ys)


def _plain_loader(root: Path, batch_size: int, workers: int):
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from eqtools.data import dataset_info
    from eqtools.specs import DataSpec

    info = dataset_info(DataSpec(name="imagefolder", root=str(root), image_size=224))
    tf = v2.Compose([v2.ToImage(), v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)])
    dataset = ImageFolder(str(root / "train"), transform=tf)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0)


def train_rates(tree: Path, rounds: int, workers: int, steps: int,
                batch: int) -> tuple[dict[str, list[float]], list[float]]:
    """``images_per_s`` of each training run, per worker count, and the seconds of one pass of decoding
    alone per round, timed between the trainings so all three see the same machine."""
    import json
    import os
    import subprocess
    import tempfile

    from eqtools.data import load_splits
    from eqtools.specs import DataSpec

    split = load_splits(DataSpec(name="imagefolder", root=str(tree), image_size=48, val_size=16, workers=0), seed=0).train
    rates: dict[str, list[float]] = {"0": [], str(workers): []}
    decode_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-if-train-") as tmp:
        for r in range(rounds):
            decode_s.append(decode_seconds(split, r, steps, batch))
            for w in ([0, workers] if r % 2 == 0 else [workers, 0]):
                sets = [f"data.root={tree}", "data.image_size=48", "model.pretrained=null", "data.val_size=16",
                        "train.epochs=1", f"train.steps_per_epoch={steps}", f"train.batch_size={batch}",
                        "train.init_images=32", "train.compile=off", f"data.workers={w}"]
                cmd = [sys.executable, "-m", "eqtools", "train", str(ROOT / "specs" / "r18.json"), "--device", "cpu",
                       "--out", f"{tmp}/w{w}-{r}", "-q", "--json"]
                for item in sets:
                    cmd += ["--set", item]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                      env={**os.environ, "PYTHONPATH": str(ROOT)})
                rate = json.loads(proc.stdout)["metrics"]["final"]["images_per_s"]
                rates[str(w)].append(rate)
                print(f"round {r + 1}: workers={w}: {rate:.1f} img/s", file=sys.stderr)
    return rates, decode_s


def decode_seconds(split: Any, epoch: int, steps: int, batch: int) -> float:
    """Seconds to decode and augment one training run's images at 48 px in one process: an estimate
    of the part of a workers=0 epoch that decoding workers can take off the training process."""
    start = time.perf_counter()
    for _ in split.batches(batch, shuffle=True, augment=True, seed=0, epoch=epoch, limit=steps):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=Path("/tmp/eqtools-bench-jpegs"),
                        help="where the generated JPEG tree is written (reused when present)")
    parser.add_argument("--images", type=int, default=1536,
                        help="training images in the tree (default 1536: 48 batches a pass. A pass of 12 batches "
                             "mostly times the pool's start of an epoch, which an ImageNet epoch of thousands of "
                             "batches pays once)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--train", action="store_true", help="time `eqtools train` at 48 px instead (see above)")
    parser.add_argument("--steps", type=int, default=12, help="--train: optimiser steps per run (default 12)")
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/imagefolder_*.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the main process only collates; the workers take the cores

    from imagetree import make_tree

    from eqtools.data import load_splits
    from eqtools.specs import DataSpec

    classes = 8
    per_class = -(-args.images // classes)
    marker = args.tree / f".complete-{classes}x{per_class}"
    if not marker.exists():
        print(f"writing {classes * per_class} 375x500 JPEGs under {args.tree}", file=sys.stderr)
        make_tree(args.tree, classes=classes, train_per_class=per_class, val_per_class=2, size=(375, 500))
        marker.touch()
    if args.train:
        rates, decode_s = train_rates(args.tree, args.rounds, args.workers, args.steps, args.batch_size)
        base, par = rates["0"], rates[str(args.workers)]
        ratio = paired_ratio(par, base)
        met = statistics.median(p / b for p, b in zip(par, base)) >= 1.25  # the median paired_ratio shows
        images = args.steps * args.batch_size
        shares = [d * rate / images for d, rate in zip(decode_s, base)]  # decode time / workers=0 epoch time
        share = statistics.median(shares)
        epoch_s = images / statistics.median(base)
        machine = machine_line()
        md = (f"`eqtools train specs/r18.json` (ResNet-18 supernet, sandwich of 3 subnets) on the generated tree of "
              f"375x500 JPEGs at 48 px, {args.steps} steps of batch {args.batch_size}, `images_per_s` of the epoch "
              f"row, {args.rounds} runs each alternating. Decoding alone: the same {images} images through "
              "the same loader in one process, no training.\n\n"
              f"| data.workers | img/s (median) |\n|---|---|\n"
              f"| 0 | {statistics.median(base):.1f} |\n| {args.workers} | {statistics.median(par):.1f} |\n\n"
              f"- workers={args.workers} / workers=0: **{ratio}** (target >= 1.25: "
              f"{'met' if met else 'not met'})\n"
              f"- decoding alone, one pass per round: {statistics.median(decode_s):.2f} s against the workers=0 "
              f"epoch's {epoch_s:.1f} s, a median share of {100 * share:.0f} % (per-round range "
              f"{100 * min(shares):.0f}-{100 * max(shares):.0f} %). Taking all of it off the training process "
              f"would speed the epoch up by about {1 / (1 - share):.2f}x here: an estimate of the room workers "
              "have, not a bound (caches and contention move it)\n")
        print(md + "\n" + machine)
        if args.record:
            write_result("imagefolder_train", f"eqtools train at 48 px on ImageFolder: data.workers={args.workers} vs 0",
                         {"images_per_s": rates, "ratio": ratio, "steps": args.steps, "batch_size": args.batch_size,
                          "rounds": args.rounds, "decode_s": decode_s, "decode_share": round(share, 4),
                          "decode_shares": [round(v, 4) for v in shares], "room_estimate": round(1 / (1 - share), 3)},
                         md)
        return
    spec = DataSpec(name="imagefolder", root=str(args.tree), image_size=224, val_size=10, workers=args.workers)
    train = load_splits(spec, seed=0).train
    plain = _plain_loader(args.tree, args.batch_size, args.workers)

    def run(name: str, epoch: int) -> float:
        start = time.perf_counter()
        n = 0
        if name == "today":
            batches = _today_batches(train, args.batch_size, 0, epoch)
        elif name == "eqtools":
            batches = train.batches(args.batch_size, shuffle=True, augment=True, seed=0, epoch=epoch)
        else:
            batches = plain
        for x, _ in batches:
            n += x.shape[0]
        return n / (time.perf_counter() - start)

    names = ["today", "eqtools", "plain"]
    for name in names[1:]:
        run(name, 0)  # start the worker pools (persistent afterwards): a training run pays this once
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            rates[name].append(run(name, r + 1))
        print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.0f} img/s" for n in names), file=sys.stderr)

    med = {n: statistics.median(v) for n, v in rates.items()}
    vs_today = paired_ratio(rates["eqtools"], rates["today"])
    vs_plain = paired_ratio(rates["eqtools"], rates["plain"])
    machine = machine_line(extra=f"; {args.workers} decoding workers")
    md = (
        f"Generated tree of {len(train)} training JPEGs at 375x500, r18 training transforms "
        f"(RandomResizedCrop 224, flip, normalise), batch {args.batch_size}, {args.workers} workers, "
        f"{args.rounds} rounds in rotating order; ratios are the median [IQR] of per-round ratios.\n\n"
        "| pipeline | img/s (median) |\n|---|---|\n"
        f"| today (serial decode in the main process) | {med['today']:.0f} |\n"
        f"| eqtools, {args.workers} workers | {med['eqtools']:.0f} |\n"
        f"| plain torchvision DataLoader, {args.workers} workers | {med['plain']:.0f} |\n\n"
        f"- eqtools / today: **{vs_today}** (target >= 1.8)\n"
        f"- eqtools / plain DataLoader: **{vs_plain}** (target >= 0.9)\n"
    )
    print(md)
    print(machine)
    if args.record:
        write_result("imagefolder_pipeline",
                     "ImageFolder decode+augment+collate (r18 transforms): the worker pool vs the serial loader "
                     "and vs a plain DataLoader",
                     {"img_per_s": rates, "median_img_per_s": med, "eqtools_vs_today": vs_today,
                      "eqtools_vs_plain": vs_plain, "workers": args.workers, "batch_size": args.batch_size,
                      "images": len(train), "rounds": args.rounds}, md)


if __name__ == "__main__":
    main()
