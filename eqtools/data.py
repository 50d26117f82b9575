"""Local datasets only: nothing is downloaded at run time.

Supported: Fashion-MNIST and MNIST (the standard idx files, gzipped or not), CIFAR-10 (the
``cifar-10-batches-py`` directory; its batches are pickles, read with a restricted unpickler that
accepts only arrays and builtins), ImageFolder trees (``train/<class>/*`` and ``val/<class>/*``)
and scikit-learn's bundled digits (for tests: real images, no download).

Splits
------
- ``train``: the training images minus ``val``; optionally a class-balanced ``train_subset``.
- ``val``: ``val_size`` class-balanced training images held out by seed. Never trained on; the
  sampler measures subnet accuracy on it (the paper uses a training-set subset for this) and it
  keeps ``test`` clean for reported numbers.
- ``test``: the official test/validation split (optionally a class-balanced ``test_subset``).
- ``unseen``: every training image the supernet never trained on: ``val`` first, then the images a
  ``train_subset`` leaves out (just ``val`` without one). ``search --verify`` chooses its pick on
  it: a CPU-scaled spec trains on a fraction of the training set, and choosing between subnets
  that differ by tenths of a point needs the tens of thousands of images left over, not val's
  few thousand.

The small datasets live in memory as uint8 tensors and are batched by index with augmentation done
per batch, which is several times faster on two CPU cores than a per-sample DataLoader and makes
the order a pure function of (seed, epoch): training can resume mid-run deterministically.

ImageFolder images are decoded and augmented in ``data.workers`` processes by a
``torch.utils.data.DataLoader`` (persistent workers, prefetching, pinned memory for a GPU), one
pool per image tree shared by every split drawn from it. The main process still decides
everything that must be reproducible: the batch order, and each image's augmentation seed, a
function of (seed, epoch, image index) that the worker applies before transforming that image.
So a batch is the same whatever the number of workers (0 decodes in the main process) and
whichever worker decodes which image, and ``start`` resumes mid-epoch exactly
(docs/decisions/0300-imagefolder-loader.md).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from eqtools.errors import DataError
from eqtools.vocab import SPLITS

__all__ = [
    "DatasetInfo",
    "Split",
    "Splits",
    "balanced_indices",
    "dataset_info",
    "default_workers",
    "load_splits",
]

MAX_DEFAULT_WORKERS = 8  # beyond this a pool mostly costs memory and start-up time; set data.workers for more

STANDARD_ROOTS = {
    "fashion-mnist": ["/usr/share/datasets/fashion-mnist"],
    "mnist": ["/usr/share/datasets/mnist"],
    "cifar10": [],
    "imagefolder": [],
}
ENV_DIRS = {"fashion-mnist": "fashion-mnist", "mnist": "mnist", "cifar10": "cifar-10-batches-py", "imagefolder": "imagenet"}


@dataclass(frozen=True)
class DatasetInfo:
    """Shape facts needed to build a model, known without reading the data."""

    name: str
    channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool  # horizontal flips are a valid augmentation (not for digits)
    pad: int  # random-crop padding for small images


_INFO = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,), True, 2),
    "mnist": DatasetInfo("mnist", 1, 28, 10, (0.1307,), (0.3081,), False, 2),
    "cifar10": DatasetInfo("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True, 4),
    "digits": DatasetInfo("digits", 1, 8, 10, (0.30,), (0.38,), False, 1),
    "imagefolder": DatasetInfo("imagefolder", 3, 224, 0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True, 0),
}


def dataset_info(data: Any, num_classes: int | None = None) -> DatasetInfo:
    """Facts for ``data`` (a DataSpec); ImageFolder counts its class directories if needed."""
    base = _INFO[data.name]
    size = data.image_size or base.image_size
    classes = num_classes or base.num_classes
    if data.name == "imagefolder" and not classes:
        root = _imagefolder_root(data)
        classes = len([d for d in (root / "train").iterdir() if d.is_dir()])
        if classes < 2:
            raise DataError(
                f"the ImageFolder tree {root}/train has {classes} class directories; a classifier needs at least 2, "
                f"as {root}/train/<class>/<image> and {root}/val/<class>/<image> (the ImageNet layout)"
            )
    return DatasetInfo(base.name, base.channels, size, classes, base.mean, base.std, base.flip, base.pad)


# ---------------------------------------------------------------------------------- locating
def _candidate_roots(data: Any) -> list[Path]:
    roots = []
    if data.root:
        # a root the spec names is the only place looked: falling back to another location would train
        # on data the manifest does not name
        return [Path(data.root).expanduser()]
    env = os.environ.get("EQTOOLS_DATA")
    if env:
        roots += [Path(env) / ENV_DIRS.get(data.name, data.name), Path(env)]
    roots += [Path(p) for p in STANDARD_ROOTS.get(data.name, [])]
    return roots


def _find_file(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


_IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_root(data: Any) -> Path:
    tried = _candidate_roots(data)
    for root in tried:
        if all(_find_file(root, stem) for stem in _IDX):
            return root
    hint = " Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or" if data.name == "fashion-mnist" else ""
    raise DataError(
        f"{data.name} not found: looked in {[str(p) for p in tried] or '(no location given)'}; expected the four "
        f"standard idx files {', '.join(_IDX)} (optionally .gz) in one directory.{hint} set data.root in the "
        "spec or EQTOOLS_DATA to the directory that holds them"
    )


def _read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is not a valid gzip file ({exc}); re-install the dataset") from None
    if len(raw) < 8:
        raise DataError(f"{path} is too short to be an idx file")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 3:
        raise DataError(f"{path} is not an unsigned-byte idx file of 1 to 3 dimensions (magic {raw[:4].hex()})")
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated inside its header; re-install the dataset")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {body.size} bytes of data")
    return body.reshape(shape)


def _load_idx(data: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    root = _idx_root(data)
    arrays = [_read_idx(_find_file(root, stem)) for stem in _IDX]  # type: ignore[arg-type]
    for images, labels, part in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{data.name} in {root}: the {part} images {images.shape} and labels {labels.shape} do not "
                            "match (expected N x H x W images and N labels); re-install the dataset")
        if labels.size and int(labels.max()) >= 10:
            raise DataError(f"{data.name} in {root}: a {part} label is {int(labels.max())}; the 10 classes are 0..9")
    xtr, ytr, xte, yte = (torch.from_numpy(a.copy()) for a in arrays)
    return xtr[:, None], ytr.long(), xte[:, None], yte.long()


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only numpy arrays and builtins, never arbitrary code."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _load_cifar10(data: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    tried = _candidate_roots(data)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    root = None
    for r in tried:
        for cand in (r, r / "cifar-10-batches-py"):
            if all((cand / n).is_file() for n in names):
                root = cand
                break
        if root:
            break
    if root is None:
        raise DataError(
            f"cifar10 not found: looked in {[str(p) for p in tried] or '(no location given)'}; expected the "
            "'cifar-10-batches-py' directory (data_batch_1..5, test_batch) of the python version of CIFAR-10. "
            "Set data.root in the spec or EQTOOLS_DATA to its location"
        )

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(root / name, "rb") as f:
                d = _ArrayUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
            return np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(d["labels"])
        except (pickle.UnpicklingError, KeyError, EOFError, ValueError) as exc:
            raise DataError(f"{root / name} is not a CIFAR-10 python batch ({exc})") from None

    parts = [read(n) for n in names[:5]]
    xte, yte = read("test_batch")
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte), torch.from_numpy(yte).long()


def _load_digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise DataError("the 'digits' dataset comes from scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None]
    y = torch.from_numpy(d.target).long()
    # a fixed split: the last 297 images (about a sixth) are the test set
    return x[:1500], y[:1500], x[1500:], y[1500:]


def _imagefolder_root(data: Any) -> Path:
    tried = _candidate_roots(data)
    for r in tried:
        if (r / "train").is_dir() and (r / "val").is_dir():
            return r
    raise DataError(
        f"ImageFolder dataset not found: looked in {[str(p) for p in tried] or '(no location given)'}; expected "
        "<root>/train/<class>/<image> and <root>/val/<class>/<image> (the ImageNet layout). Set data.root in the "
        "spec or EQTOOLS_DATA"
    )


# ---------------------------------------------------------------------------------- splitting
def balanced_indices(labels: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` indices spread as evenly as possible over the classes, drawn at random per class."""
    classes = torch.unique(labels)
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    base, extra = divmod(n, len(classes))
    chosen = []
    for i, idx in enumerate(per_class):
        want = min(len(idx), base + (1 if i < extra else 0))
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:want]])
    return torch.sort(torch.cat(chosen)).values


@dataclass
class Split:
    """One split: uint8 images [N, C, H, W] in memory, or an ImageFolder file list."""

    name: str
    info: DatasetInfo
    images: Tensor | None = None
    labels: Tensor | None = None
    folder: Any = None  # _Folder (for imagefolder datasets): the image list and its decoding pool
    indices: Tensor | None = None  # subset of the folder
    workers: int = 0  # decoding processes for ImageFolder data (0: the main process)

    def __len__(self) -> int:
        if self.images is not None:
            return len(self.images)
        return len(self.indices) if self.indices is not None else len(self.folder)

    @property
    def targets(self) -> Tensor:
        if self.labels is not None:
            return self.labels
        targets = torch.tensor(self.folder.targets)
        return targets[self.indices] if self.indices is not None else targets

    def subset(self, indices: Tensor, name: str | None = None) -> Split:
        if self.images is not None:
            return Split(name or self.name, self.info, self.images[indices], self.labels[indices])
        base = self.indices[indices] if self.indices is not None else indices
        return Split(name or self.name, self.info, folder=self.folder, indices=base, workers=self.workers)

    def balanced(self, n: int, seed: int, name: str | None = None) -> Split:
        """A class-balanced subset of ``n`` images, fixed by ``seed``."""
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        return self.subset(balanced_indices(self.targets, n, g), name)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        epoch: int = 0,
        start: int = 0,
        drop_last: bool = False,
        limit: int | None = None,
        part: tuple[int, int] | None = None,
        pin_memory: bool = False,
        uint8: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalised float batches ``(x [B, C, S, S], y [B])``.

        Order and augmentation are a pure function of ``(seed, epoch)``; ``start`` skips that many
        batches (for resuming), ``limit`` stops after that many batches. ``part=(rank, world)``
        yields only the images ``rank::world`` of each batch, exactly those rows of the whole
        batch (one process of a distributed run decodes only its own share). ``pin_memory``
        returns ImageFolder batches in page-locked memory, for fast copies to a GPU. ``uint8``
        returns ImageFolder batches as the decoded uint8 pixels, a quarter of the float batch's
        memory, for :meth:`normalise` later (a cache of them holds four times the images).
        """
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch)))
        else:
            order = torch.arange(n)
        count = n // batch_size if drop_last else -(-n // batch_size)
        stop = count if limit is None else min(count, start + limit)
        if uint8 and self.images is not None:
            raise ValueError("uint8 batches are for ImageFolder splits; in-memory splits are normalised per batch")
        if self.images is not None:
            for b in range(start, stop):
                idx = order[b * batch_size : (b + 1) * batch_size]
                g = torch.Generator().manual_seed(_mix(seed, epoch, b)) if augment else None
                x = _prepare(self.images[idx], self.info, augment, g)
                y = self.labels[idx]
                if part is not None:
                    x, y = x[part[0] :: part[1]], y[part[0] :: part[1]]
                yield x, y
            return
        plan = []
        for b in range(start, stop):
            idx = order[b * batch_size : (b + 1) * batch_size]
            if part is not None:
                idx = idx[part[0] :: part[1]]
            base = self.indices[idx] if self.indices is not None else idx
            plan.append([(i, _mix(seed, epoch, i) if augment else -1) for i in base.tolist()])
        yield from self.folder.batches(plan, self.workers, pin_memory, uint8)

    def normalise(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """A ``uint8=True`` batch as :meth:`batches` would have returned it, the same values."""
        return self.folder.collate.normalise(x, y)


# ---------------------------------------------------------------------------------- ImageFolder decoding
def default_workers() -> int:
    """Decoding processes when the spec leaves ``data.workers`` unset: this process's cores, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


class _Decode:
    """Image ``(index, seed)`` of a tree -> (uint8 crop, label); picklable, runs in workers.

    The crops leave as uint8 and :class:`_Collate` scales and normalises the whole batch at once.

    ``seed`` < 0 is the evaluation transform (resize, centre crop); otherwise the training
    augmentation (RandomResizedCrop, horizontal flip) with torch's RNG seeded to ``seed`` just
    before, inside ``fork_rng`` so the main process's own RNG stream (which a checkpoint saves) is
    untouched when decoding happens there.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], info: DatasetInfo) -> None:
        self.samples = samples
        self.info = info
        self._transforms: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_transforms": None}

    def transforms(self) -> tuple[Any, Any]:
        if self._transforms is None:
            from torchvision.transforms import v2

            size = self.info.image_size
            train = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
            test = v2.Compose([v2.Resize(int(size * 256 / 224), antialias=True), v2.CenterCrop(size)])
            self._transforms = (train, test)
        return self._transforms

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int] | _Unreadable:
        index, seed = key
        path, label = self.samples[index]
        try:
            image = _read_rgb(path)
        except OSError as exc:  # PIL's UnidentifiedImageError, a truncated file, one gone since the listing
            # returned, not raised: a DataLoader re-raises a worker's error with the worker's traceback in its message
            unknown = type(exc).__name__ == "UnidentifiedImageError"  # PIL's message repeats a file object
            return _Unreadable(path, "not an image format torchvision or PIL can read" if unknown else str(exc))
        train, test = self.transforms()
        if seed < 0:
            return test(image), label
        if torch.utils.data.get_worker_info() is not None:  # a worker process: its RNG is its own
            torch.default_generator.manual_seed(seed)  # the CPU generator the transforms draw from
            return train(image), label
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator the transforms draw from
            return train(image), label


@dataclass(frozen=True)
class _Unreadable:
    """An image file that could not be decoded, carried to the main process as a value."""

    path: str
    reason: str

    def error(self) -> DataError:
        return DataError(
            f"cannot decode {self.path} ({self.reason}). An ImageFolder tree may hold only images "
            "(JPEG, PNG, WebP and GIF, or another format PIL opens, such as BMP or TIFF) under "
            "<root>/train/<class>/ and <root>/val/<class>/; replace or remove this file and run again"
        )


def _read_rgb(path: str) -> Tensor:
    """An image file as uint8 ``[3, H, W]`` RGB.

    JPEG (every ImageNet image) goes straight into a tensor through torchvision.io's libjpeg-turbo,
    the library PIL uses, so the pixels are PIL's (tested) without a PIL image and its copy in
    between (decision 0300). Every other format is read as ImageFolder's own loader reads it (PIL,
    converted to RGB): torchvision.io's PNG decoder ends the whole process (a segmentation fault, no
    exception) on a PNG whose data is damaged, where PIL raises an error that names the file.
    """
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms.v2.functional import to_image

    try:
        data = read_file(path)
    except RuntimeError:  # unreadable (gone since the listing, no permission): PIL's OSError below names it
        data = torch.empty(0, dtype=torch.uint8)
    if data[:3].tolist() == [0xFF, 0xD8, 0xFF]:  # the JPEG signature
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # damaged: PIL's error below names what is wrong
    from PIL import Image

    with Image.open(path) as image:
        if image.mode.startswith("I;16"):
            # a 16-bit grayscale PNG: keep its 8 high bits, as PIL keeps of a 16-bit RGB one (PIL's own
            # conversion clips it at 255, an image 257 times too bright)
            pixels = torch.from_numpy(np.asarray(image).astype(np.uint16) >> 8).to(torch.uint8)
            return pixels.expand(3, *pixels.shape).contiguous()
        return to_image(image.convert("RGB"))


class _Plan(torch.utils.data.Sampler):
    """The batches (lists of ``(index, seed)``) the next pass over a persistent loader decodes.

    A DataLoader's batch sampler is fixed when it is built; this one is refilled before each pass
    (the main process iterates it), so one pool of workers serves every epoch, split and order.
    """

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Collate:
    """uint8 crops -> one normalised float batch: torchvision's ``ToDtype(float32, scale=True)`` then
    ``Normalize(mean, std)``, the same element-wise operations in the same order, so the values are
    bit-equal to the per-image transforms (tested), but as four passes over the batch instead of
    allocations and passes per image.

    With workers, :meth:`stack` runs in the workers and :meth:`normalise` in the main process: the
    batch crosses processes as uint8, a quarter of the float batch's shared memory, whose fresh pages
    (faulted in for every batch) cost a worker more than the four passes cost the main process
    (decision 0300; benchmarks/results/imagefolder_pipeline.json)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    @staticmethod
    def stack(items: list[tuple[Tensor, int] | _Unreadable]) -> tuple[Tensor, Tensor] | _Unreadable:
        """The crops as one uint8 batch and their labels (in shared memory inside a worker), or the
        first image that could not be decoded."""
        unreadable = [item for item in items if isinstance(item, _Unreadable)]
        if unreadable:
            return unreadable[0]
        if any(image.dtype != torch.uint8 for image, _ in items):  # the scale in normalise is uint8's
            raise TypeError(f"decoded images must be uint8, got {sorted({str(i.dtype) for i, _ in items})}")
        return tuple(torch.utils.data.default_collate(items))

    def normalise(self, images: Tensor, labels: Tensor, pin_memory: bool = False) -> tuple[Tensor, Tensor]:
        """The float batch, written once: into page-locked memory when it is bound for a GPU."""
        x = torch.empty(images.shape, dtype=torch.float32, pin_memory=pin_memory)
        x.copy_(images)
        x.mul_(1.0 / 255).sub_(self.mean).div_(self.std)
        return x, labels


class _Folder:
    """One image tree (torchvision's ImageFolder listing) and its decoding pools, built on first use.

    A pool is a DataLoader with persistent workers over :class:`_Decode`, one per worker count; a
    pass that starts while another pass over the same pool is unfinished (two interleaved
    iterators) gets a one-off loader instead of disturbing the first. The pools yield uint8
    batches; the main process normalises them (into page-locked memory for ``pin_memory``).
    """

    def __init__(self, root: Path, info: DatasetInfo, classes: Sequence[str] | None = None) -> None:
        """``classes``: the training tree's class names, whose indices this tree's labels must use (ImageFolder
        numbers a tree's own sorted directories, so a val tree lacking one class would shift every label)."""
        from torchvision.datasets import ImageFolder

        try:
            tree = ImageFolder(str(root))
        except FileNotFoundError as exc:  # no class directory, or class directories without an image file
            raise DataError(
                f"the ImageFolder tree {root} cannot be listed ({exc}). It needs at least one class directory, "
                f"and an image file in each: {root}/<class>/<image> (the ImageNet layout)"
            ) from None
        samples, names = tree.samples, tree.classes
        if classes is not None and list(classes) != names:
            foreign = [name for name in names if name not in classes]
            if foreign:
                listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                raise DataError(
                    f"the ImageFolder tree {root} has class directories the training tree lacks ({listed}); its "
                    f"classes must be the training tree's directory names, which the labels are numbered by"
                )
            index = {name: i for i, name in enumerate(classes)}
            samples, names = [(path, index[names[t]]) for path, t in samples], list(classes)
        self.root = root
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.classes = names
        self.decode = _Decode(samples, info)
        self.collate = _Collate(info.mean, info.std)
        self._pools: dict[int, tuple[Any, _Plan]] = {}
        self._busy: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def _loader(self, workers: int, persistent: bool) -> tuple[Any, _Plan]:
        plan = _Plan()
        loader = torch.utils.data.DataLoader(
            self.decode, batch_sampler=plan, num_workers=workers, collate_fn=self.collate.stack,
            persistent_workers=persistent, prefetch_factor=2,
        )
        return loader, plan

    def batches(self, plan: list[list[tuple[int, int]]], workers: int,
                pin_memory: bool = False, uint8: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        if not plan:
            return
        if workers == 0:
            for keys in plan:
                yield self._normalised(self.collate.stack([self.decode[k] for k in keys]), pin_memory, uint8)
            return
        if workers in self._busy:
            loader, holder = self._loader(workers, persistent=False)
        else:
            if workers not in self._pools:
                self._pools[workers] = self._loader(workers, persistent=True)
            loader, holder = self._pools[workers]
            self._busy.add(workers)
        holder.batches = plan
        try:
            for batch in loader:
                yield self._normalised(batch, pin_memory, uint8)
        finally:
            if self._pools.get(workers, (None, None))[1] is holder:
                self._busy.discard(workers)

    def _normalised(self, batch: Any, pin_memory: bool, uint8: bool) -> tuple[Tensor, Tensor]:
        if isinstance(batch, _Unreadable):
            raise batch.error()
        return batch if uint8 else self.collate.normalise(*batch, pin_memory)


def _mix(*values: int) -> int:
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h % (2**63 - 1)


def _prepare(x: Tensor, info: DatasetInfo, augment: bool, g: torch.Generator | None) -> Tensor:
    """uint8 [B, C, H, W] -> normalised float, resized to the model's input, augmented if asked."""
    x = x.float().div_(255.0)
    if x.shape[-1] != info.image_size or x.shape[-2] != info.image_size:
        x = F.interpolate(x, size=(info.image_size, info.image_size), mode="bilinear", align_corners=False)
    if augment and g is not None:
        b, _, h, w = x.shape
        if info.pad:
            p = info.pad
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b,), generator=g).tolist()
            dx = torch.randint(0, 2 * p + 1, (b,), generator=g).tolist()
            x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
        if info.flip:
            flip = torch.rand(b, generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (x - mean) / std


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    unseen: Split  # val first, then the training images a train_subset leaves out (val itself without one)
    root: str | None = None  # where the images were read (recorded in manifests)

    def get(self, name: str) -> Split:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; splits are {', '.join(SPLITS)}")
        return getattr(self, name)


def load_splits(data: Any, seed: int, num_classes: int | None = None) -> Splits:
    """Read the dataset named by ``data`` (a DataSpec) and split it deterministically by ``seed``."""
    info = dataset_info(data, num_classes)
    if data.name == "imagefolder":
        root = _imagefolder_root(data)
        workers = default_workers() if data.workers is None else data.workers
        train_folder = _Folder(root / "train", info)
        if len(train_folder.classes) > info.num_classes:
            raise DataError(
                f"the ImageFolder tree {root}/train has {len(train_folder.classes)} class directories but "
                f"model.num_classes is {info.num_classes}; set model.num_classes to at least "
                f"{len(train_folder.classes)}, or leave it unset to count the class directories"
            )
        train_all = Split("train", info, folder=train_folder, workers=workers)
        test = Split("test", info, folder=_Folder(root / "val", info, train_folder.classes), workers=workers)
    else:
        if data.name in ("fashion-mnist", "mnist"):
            xtr, ytr, xte, yte = _load_idx(data)
        elif data.name == "cifar10":
            xtr, ytr, xte, yte = _load_cifar10(data)
        else:
            xtr, ytr, xte, yte = _load_digits()
        train_all = Split("train", info, xtr, ytr)
        test = Split("test", info, xte, yte)
    n = len(train_all)
    if data.val_size >= n:
        raise DataError(f"data.val_size is {data.val_size} but the training split has only {n} images; use fewer")
    g = torch.Generator().manual_seed(_mix(seed, 1))
    val_idx = balanced_indices(train_all.targets, data.val_size, g)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    val = train_all.subset(val_idx, "val")
    kept = torch.nonzero(keep).flatten()
    train = train_all.subset(kept, "train")
    unseen = val
    if data.train_subset is not None and data.train_subset < len(train):
        # the same draw as Split.balanced, kept as indices so the images left out stay reachable
        chosen = balanced_indices(train.targets, data.train_subset, torch.Generator().manual_seed(_mix(seed, 2)))
        left = torch.ones(len(kept), dtype=torch.bool)
        left[chosen] = False
        train = train.subset(chosen, "train")
        unseen = train_all.subset(torch.cat([val_idx, kept[left]]), "unseen")
    if data.test_subset is not None:
        test = test.balanced(data.test_subset, _mix(seed, 3), "test")
    return Splits(train, val, test, unseen, root=dataset_root(data))


def dataset_root(data: Any) -> str:
    """Where ``data`` is read from: the directory found, or the bundled source (digits)."""
    if data.name in ("fashion-mnist", "mnist"):
        return str(_idx_root(data).resolve())
    if data.name == "imagefolder":
        return str(_imagefolder_root(data).resolve())
    if data.name == "cifar10":
        for r in _candidate_roots(data):
            for cand in (r, r / "cifar-10-batches-py"):
                if (cand / "test_batch").is_file():
                    return str(cand.resolve())
    return "sklearn.datasets.load_digits"
