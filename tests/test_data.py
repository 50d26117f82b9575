"""Local dataset loaders on small real data in each supported on-disk format."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from eqtools.data import balanced_indices, load_splits
from eqtools.errors import DataError
from eqtools.specs import DataSpec


def _digits_28() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    img = (d.images * 255 / 16).astype(np.uint8)
    big = np.kron(img, np.ones((3, 3), dtype=np.uint8))  # 24x24
    return np.pad(big, ((0, 0), (2, 2), (2, 2))), d.target.astype(np.uint8)


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    raw = header + array.tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    x, y = _digits_28()
    _write_idx(root / "train-images-idx3-ubyte", x[:1500], gz=True)
    _write_idx(root / "train-labels-idx1-ubyte", y[:1500], gz=True)
    _write_idx(root / "t10k-images-idx3-ubyte", x[1500:], gz=False)
    _write_idx(root / "t10k-labels-idx1-ubyte", y[1500:], gz=False)
    return root


def test_idx_loader_reads_standard_files(idx_root):
    splits = load_splits(DataSpec(name="fashion-mnist", root=str(idx_root), val_size=200), seed=0)
    assert len(splits.train) == 1300 and len(splits.val) == 200 and len(splits.test) == 297
    assert splits.train.images.shape[1:] == (1, 28, 28) and splits.train.images.dtype == torch.uint8
    x, y = next(splits.test.batches(64))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_val_is_class_balanced_disjoint_and_seeded(idx_root):
    spec = DataSpec(name="fashion-mnist", root=str(idx_root), val_size=200, train_subset=500)
    a, b = load_splits(spec, seed=0), load_splits(spec, seed=0)
    assert torch.equal(a.val.images, b.val.images)
    assert torch.bincount(a.val.labels).tolist() == [20] * 10
    assert torch.bincount(a.train.labels).tolist() == [50] * 10
    val_rows = {bytes(r.numpy()) for r in a.val.images}
    assert not any(bytes(r.numpy()) in val_rows for r in a.train.images)
    assert not torch.equal(load_splits(spec, seed=1).val.images, a.val.images)


def test_unseen_is_val_then_every_training_image_the_subset_left_out(idx_root):
    from eqtools.data import _mix

    spec = DataSpec(name="fashion-mnist", root=str(idx_root), val_size=200, train_subset=500)
    s = load_splits(spec, seed=0)
    full = load_splits(DataSpec(name="fashion-mnist", root=str(idx_root), val_size=200), seed=0)
    # the training draw is Split.balanced's, so supernets trained before the unseen split still match
    assert torch.equal(s.train.images, full.train.balanced(500, _mix(0, 2)).images)
    assert len(s.unseen) == 1500 - 500 and torch.equal(s.unseen.images[:200], s.val.images)
    rows = lambda split: [bytes(r.numpy()) for r in split.images]  # noqa: E731
    assert not set(rows(s.unseen)) & set(rows(s.train))
    assert sorted(rows(s.unseen) + rows(s.train)) == sorted(rows(full.train) + rows(full.val))
    assert torch.equal(full.unseen.images, full.val.images)  # no train_subset: nothing else was left out
    assert s.get("unseen") is s.unseen


def test_batches_are_deterministic_and_resumable(idx_root):
    train = load_splits(DataSpec(name="fashion-mnist", root=str(idx_root), val_size=200), seed=0).train
    full = list(train.batches(100, shuffle=True, augment=True, seed=3, epoch=2))
    again = list(train.batches(100, shuffle=True, augment=True, seed=3, epoch=2))
    resumed = list(train.batches(100, shuffle=True, augment=True, seed=3, epoch=2, start=4))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[4:], resumed))
    other = next(train.batches(100, shuffle=True, augment=True, seed=3, epoch=3))
    assert not torch.equal(other[1], full[0][1])


def test_cifar_python_batches(tmp_path):
    d = load_digits()
    img = np.kron((d.images * 255 / 16).astype(np.uint8), np.ones((4, 4), dtype=np.uint8))  # 32x32
    rgb = np.repeat(img[:, None], 3, axis=1).reshape(len(img), -1)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(5):
        part = slice(i * 300, (i + 1) * 300)
        (root / f"data_batch_{i + 1}").write_bytes(pickle.dumps({"data": rgb[part], "labels": d.target[part].tolist()}))
    (root / "test_batch").write_bytes(pickle.dumps({"data": rgb[1500:], "labels": d.target[1500:].tolist()}))
    splits = load_splits(DataSpec(name="cifar10", root=str(tmp_path), val_size=100), seed=0)
    assert len(splits.train) == 1400 and splits.test.images.shape[1:] == (3, 32, 32)


def test_cifar_loader_refuses_code_in_pickles(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (root / name).write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataError, match=r"refusing to load builtins\.print"):
        load_splits(DataSpec(name="cifar10", root=str(root), val_size=10), seed=0)


def test_imagefolder_tree(tmp_path):
    from PIL import Image

    x, y = _digits_28()
    for split, rows in (("train", range(0, 200)), ("val", range(200, 260))):
        for i in rows:
            folder = tmp_path / split / f"class_{y[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).convert("RGB").save(folder / f"{i}.png")
    spec = DataSpec(name="imagefolder", root=str(tmp_path), image_size=32, val_size=20)
    splits = load_splits(spec, seed=0)
    assert splits.train.info.num_classes == 10 and len(splits.val) == 20 and len(splits.test) == 60
    xb, yb = next(splits.train.batches(16, shuffle=True, augment=True))
    assert xb.shape == (16, 3, 32, 32) and yb.max() < 10
    xt, _ = next(splits.test.batches(8))
    assert xt.shape == (8, 3, 32, 32)


@pytest.mark.parametrize("name,fragment", [
    ("fashion-mnist", "apt-get install dataset-fashion-mnist"),
    ("cifar10", "cifar-10-batches-py"),
    ("imagefolder", "<root>/train/<class>/<image>"),
])
def test_missing_dataset_says_where_it_looked_and_what_layout(tmp_path, monkeypatch, name, fragment):
    monkeypatch.setenv("EQTOOLS_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr("eqtools.data.STANDARD_ROOTS", {})
    with pytest.raises(DataError) as info:
        load_splits(DataSpec(name=name, root=str(tmp_path / "nowhere")), seed=0)
    assert "nowhere" in str(info.value) and fragment in str(info.value)


def test_truncated_idx_file_is_a_data_error(tmp_path, idx_root):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(idx_root, root)
    raw = (root / "t10k-images-idx3-ubyte").read_bytes()
    (root / "t10k-images-idx3-ubyte").write_bytes(raw[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_splits(DataSpec(name="fashion-mnist", root=str(root), val_size=100), seed=0)


def test_balanced_indices_spread_remainder():
    labels = torch.tensor([0] * 50 + [1] * 50 + [2] * 3)
    idx = balanced_indices(labels, 10, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert (sum(counts) == 10 and counts[2] == 3 and abs(counts[0] - counts[1]) <= 1) or counts[:2] == [4, 3]


def test_real_fashion_mnist_when_installed():
    root = "/usr/share/datasets/fashion-mnist"
    import os

    if not os.path.isdir(root):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    splits = load_splits(DataSpec(name="fashion-mnist", val_size=1000, train_subset=2000, test_subset=1000), seed=0)
    assert len(splits.train) == 2000 and len(splits.test) == 1000
    assert torch.bincount(splits.test.labels).tolist() == [100] * 10


def test_every_split_the_vocabulary_names_can_be_had(idx_root) -> None:
    """The CLI's --split choices come from eqtools.vocab.SPLITS: each must name a split Splits holds."""
    from eqtools.vocab import SPLITS, VERIFY_SPLITS

    splits = load_splits(DataSpec(name="fashion-mnist", root=str(idx_root), val_size=200, train_subset=500), seed=0)
    for name in SPLITS:
        assert len(splits.get(name)) > 0
    assert set(VERIFY_SPLITS) <= set(SPLITS) and "test" not in VERIFY_SPLITS
    with pytest.raises(DataError, match="splits are train, val, test, unseen"):
        splits.get("holdout")


# ------------------------------------------------------------------------------------- ImageFolder decoding
@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory):
    from imagetree import make_tree

    return make_tree(tmp_path_factory.mktemp("jpegs"), classes=3, train_per_class=14, val_per_class=3)


def _folder_splits(root, workers):
    return load_splits(DataSpec(name="imagefolder", root=str(root), image_size=24, val_size=12, workers=workers), seed=0)


def test_imagefolder_batches_do_not_depend_on_workers_and_resume_exactly(jpeg_root):
    """Order and augmentation are a pure function of (seed, epoch, batch): decoding in 0 or 2 worker
    processes, resuming at a batch, or decoding one rank's share gives the very same tensors."""
    serial = _folder_splits(jpeg_root, 0).train
    parallel = _folder_splits(jpeg_root, 2).train
    kwargs = {"shuffle": True, "augment": True, "seed": 5, "epoch": 1}
    a = list(serial.batches(8, **kwargs))
    b = list(parallel.batches(8, **kwargs))
    assert [len(y) for _, y in a] == [8, 8, 8, 6]
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    resumed = list(parallel.batches(8, start=2, **kwargs))
    assert all(torch.equal(x, a[2 + i][0]) for i, (x, _) in enumerate(resumed)) and len(resumed) == 2
    again = list(parallel.batches(8, **kwargs))  # the persistent pool serves a second pass the same way
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, again, strict=True))
    halves = [list(parallel.batches(8, part=(r, 2), **kwargs)) for r in (0, 1)]
    assert torch.equal(halves[0][0][0], a[0][0][0::2]) and torch.equal(halves[1][0][0], a[0][0][1::2])
    other_epoch = next(parallel.batches(8, **{**kwargs, "epoch": 2}))
    assert not torch.equal(other_epoch[1], a[0][1])
    flips = [x for x, _ in serial.batches(8, shuffle=False, augment=True, seed=5, epoch=1, limit=1)]
    plain = [x for x, _ in serial.batches(8, shuffle=False, augment=False, limit=1)]
    assert not torch.equal(flips[0], plain[0])  # augmentation is on


@pytest.mark.parametrize("damage", ["not-an-image", "truncated", "deleted-after-the-listing"])
@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_that_cannot_be_decoded_is_a_data_error_naming_it(tmp_path, workers, damage):
    """A worker's error would reach the main process with the worker's traceback inside its message: the file
    that failed comes back as a value and is raised as one paragraph, the same with or without workers."""
    from imagetree import make_tree

    root = make_tree(tmp_path / "tree", classes=2, train_per_class=12, val_per_class=2)
    bad = sorted((root / "train").rglob("*.jpg"))[5]
    data = bad.read_bytes()
    if damage != "deleted-after-the-listing":
        bad.write_bytes(b"not an image" if damage == "not-an-image" else data[: len(data) // 3])
    train = _folder_splits(root, workers).train
    if damage == "deleted-after-the-listing":
        bad.unlink()
    with pytest.raises(DataError) as caught:
        for _ in train.batches(4, shuffle=True, augment=True, seed=0):
            pass
    message = str(caught.value)
    assert f"cannot decode {bad}" in message and "<root>/train/<class>/" in message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize("layout, fragment", [
    ({"train/a/notes.txt", "train/b/", "val/a/notes.txt"}, "cannot be listed .*Found no valid file"),
    ({"train/", "val/"}, "has 0 class directories; a classifier needs at least 2"),
])
def test_a_tree_without_images_or_classes_is_a_data_error(tmp_path, layout, fragment):
    for item in layout:  # "dir/" is a directory, anything else a text file
        path = tmp_path / item
        (path if item.endswith("/") else path.parent).mkdir(parents=True, exist_ok=True)
        if not item.endswith("/"):
            path.write_text("not an image")
    spec = DataSpec(name="imagefolder", root=str(tmp_path), image_size=24, val_size=10)
    with pytest.raises(DataError, match=fragment) as caught:
        load_splits(spec, seed=0)
    assert "<class>/<image>" in str(caught.value)


def test_val_labels_are_numbered_by_the_training_trees_class_names(tmp_path):
    """ImageFolder numbers each tree's own sorted directories: a val tree missing one class would shift every
    label after it, and a val tree with a class of its own would score against the wrong classes."""
    import shutil

    from imagetree import make_tree

    root = make_tree(tmp_path / "tree", classes=3, train_per_class=12, val_per_class=2)
    names = sorted(p.name for p in (root / "train").iterdir())
    shutil.rmtree(root / "val" / names[1])
    test = _folder_splits(root, 0).test
    assert sorted(set(test.targets.tolist())) == [0, 2]
    assert all(names[label] == Path(path).parent.name for path, label in test.folder.samples)
    shutil.move(root / "val" / names[2], root / "val" / "zz-not-trained")
    with pytest.raises(DataError, match=r"class directories the training tree lacks \(zz-not-trained\)"):
        _folder_splits(root, 0)


def test_fewer_classes_in_the_spec_than_in_the_tree_is_a_data_error(jpeg_root):
    spec = DataSpec(name="imagefolder", root=str(jpeg_root), image_size=24, val_size=12)
    with pytest.raises(DataError, match=r"has 3 class directories but model\.num_classes is 2"):
        load_splits(spec, seed=0, num_classes=2)
    assert len(load_splits(spec, seed=0, num_classes=5).train) > 0  # a larger head is the user's choice


def _png_with_a_bad_filter_byte(path: Path, width: int = 8, height: int = 6) -> None:
    """A well-formed PNG (valid chunks and checksums) whose scanlines name filter type 7 (there are 0-4): the
    damage libpng reports as "bad adaptive filter value"."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(bytes([7]) + bytes(range(3 * width)) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_png_with_damaged_data_is_a_data_error_not_a_crash(tmp_path, workers):
    """torchvision.io's PNG decoder ends the process on such a file (a segmentation fault: nothing to catch);
    it runs in a child process here so that a crash fails this test instead of ending the test run."""
    import subprocess
    import sys

    from imagetree import make_tree

    root = make_tree(tmp_path / "tree", classes=2, train_per_class=12, val_per_class=2)
    bad = root / "train" / sorted(p.name for p in (root / "train").iterdir())[0] / "damaged.png"
    _png_with_a_bad_filter_byte(bad)
    script = (
        "import sys\n"
        "from eqtools.data import load_splits\nfrom eqtools.errors import DataError\nfrom eqtools.specs import DataSpec\n"
        f"spec = DataSpec(name='imagefolder', root={str(root)!r}, image_size=16, val_size=10, workers={workers})\n"
        "splits = load_splits(spec, seed=0)\n"
        "try:\n    for split in (splits.train, splits.val):\n        list(split.batches(4))\n"
        "except DataError as exc:\n    print(exc)\n    sys.exit(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
    assert f"cannot decode {bad}" in " ".join(proc.stdout.split())


def test_decoding_in_the_main_process_leaves_its_rng_alone(jpeg_root):
    """The training loop checkpoints torch's RNG state: seeding each image's augmentation must not move it."""
    train = _folder_splits(jpeg_root, 0).train
    torch.manual_seed(123)
    before = torch.get_rng_state()
    list(train.batches(8, shuffle=True, augment=True, seed=1, limit=2))
    assert torch.equal(torch.get_rng_state(), before)


def test_interleaved_passes_over_one_pool_do_not_disturb_each_other(jpeg_root):
    splits = _folder_splits(jpeg_root, 2)
    alone = list(splits.train.batches(8, augment=False))
    first = splits.train.batches(8, augment=False)
    second = splits.val.batches(8, augment=False)  # val is drawn from the same tree: the same pool
    mixed = [next(first), next(second), *list(first)]
    assert torch.equal(mixed[0][0], alone[0][0])
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(mixed[2:], alone[1:], strict=True))
    assert torch.equal(mixed[1][0], next(_folder_splits(jpeg_root, 0).val.batches(8, augment=False))[0])


def test_workers_default_to_the_cores_capped(jpeg_root, monkeypatch):
    from eqtools.data import MAX_DEFAULT_WORKERS, default_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    assert default_workers() == MAX_DEFAULT_WORKERS
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert default_workers() == 2
    assert _folder_splits(jpeg_root, None).train.workers == 2
    assert load_splits(DataSpec(name="digits", val_size=100), seed=0).train.workers == 0  # in memory: no pool


def test_a_16_bit_png_gives_the_pixels_of_its_8_high_bits(tmp_path):
    """A 16-bit grayscale PNG: the batch holds the image its 8 high bits make, not values clipped at 255 as
    PIL's own conversion to RGB does (an image 257 times too bright)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    low = rng.integers(0, 256, (20, 20), dtype=np.uint16)
    for split, copies in (("train", 8), ("val", 2)):
        for name, array in (("deep", low * 256 + rng.integers(0, 256, low.shape, dtype=np.uint16)),
                            ("flat", low.astype(np.uint8))):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for k in range(copies):
                Image.fromarray(array).save(folder / f"{k}.png")
    test = load_splits(DataSpec(name="imagefolder", root=str(tmp_path), image_size=16, val_size=10, workers=0),
                       seed=0).test
    x, y = next(test.batches(4))
    deep, flat = x[y == 0], x[y == 1]  # ImageFolder sorts the class folders: deep, flat
    assert len(deep) == len(flat) == 2 and torch.equal(deep, flat)


def test_imagefolder_pixels_are_pils_in_every_format(tmp_path):
    """The decoder (torchvision.io for JPEG, PIL otherwise) gives the pixels ImageFolder's PIL
    loader gives, for RGB, grayscale and CMYK JPEG, RGBA and palette PNG, and BMP (a format torchvision.io lacks)."""
    import numpy as np
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    rng = np.random.default_rng(0)
    rgb = lambda: Image.fromarray(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8))  # noqa: E731
    files = {"a.jpg": rgb(), "b.jpg": rgb().convert("L"), "c.jpg": rgb().convert("CMYK"), "d.png": rgb().convert("RGBA"),
             "e.png": rgb().convert("P"), "f.bmp": rgb()}
    for split, copies in (("train", 3), ("val", 1)):
        for name, image in files.items():
            folder = tmp_path / split / name.split(".")[0]
            folder.mkdir(parents=True)
            for k in range(copies):
                image.save(folder / f"{k}{name}")
    test = load_splits(DataSpec(name="imagefolder", root=str(tmp_path), image_size=24, val_size=12, workers=0), seed=0).test
    info = test.info
    reference = ImageFolder(str(tmp_path / "val"), transform=v2.Compose([
        v2.ToImage(), v2.Resize(int(24 * 256 / 224), antialias=True), v2.CenterCrop(24),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]))
    x, y = next(test.batches(6))
    assert len(test) == 6
    for i in range(6):
        image, label = reference[int(torch.nonzero(torch.tensor(reference.targets) == y[i])[0])]
        assert torch.equal(x[i], image), sorted(files)[label]


def test_a_folder_source_too_large_for_a_float_cache_is_cached_as_uint8_with_the_same_values(jpeg_root):
    """Sampling evaluates every subnet on the same images: an ImageFolder set that fits memory only as uint8
    pixels (an r18 sample's 10000 images at 224 px) is still decoded once, and every pass gives exactly the
    batches of the split itself."""
    from eqtools.evaluation import BatchSource

    val = _folder_splits(jpeg_root, 2).val  # 12 images of 3 x 24 x 24
    expected = list(val.batches(5))
    one_float = 3 * 24 * 24 * 4
    for cache_bytes, cached in [(12 * one_float, True), (12 * one_float - 1, True), (12 * one_float // 4 - 1, False)]:
        source = BatchSource(val, 5, cache_bytes=cache_bytes)
        assert source.cached is cached, cache_bytes
        for _ in range(2):  # a cached pass leaves the cache as it was
            got = list(source)
            assert len(got) == len(expected)
            for (x, y), (xe, ye) in zip(got, expected, strict=True):
                assert x.dtype == torch.float32 and torch.equal(x, xe) and torch.equal(y, ye)


def test_a_cache_of_worker_batches_holds_no_shared_memory(jpeg_root):
    """Batches from DataLoader workers arrive in shared memory: each one kept in a cache would hold an open file
    and /dev/shm space for the whole run, and an r18 sample's cache is thousands of batches (past the usual
    limit of 1024 open files)."""
    from eqtools.evaluation import BatchSource

    train = _folder_splits(jpeg_root, 2).train
    list(train.batches(8))  # the worker pool starts (its own pipes), so what follows counts the cache alone
    for cache_bytes in (1 << 30, len(train) * 3 * 24 * 24):  # the float cache, then the uint8 one
        before = len(os.listdir("/proc/self/fd"))
        source = BatchSource(train, 1, cache_bytes=cache_bytes)  # a batch per image: len(train) batches
        assert source.cached and len(list(source)) == len(train)
        assert len(os.listdir("/proc/self/fd")) - before < len(train) // 2, cache_bytes
        assert not any(x.is_shared() or y.is_shared() for x, y in source)
