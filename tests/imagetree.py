"""Generated ImageNet-style JPEG trees (``train/<class>/*.jpg``, ``val/<class>/*.jpg``) for tests and benchmarks.

Each class has its own colour layout (a tinted gradient with a bright square at a class-dependent
place) plus per-image noise and jitter, so a small network can learn it and JPEG decoding does the
work it does on photographs of that size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_tree(root: Path, classes: int = 4, train_per_class: int = 12, val_per_class: int = 4,
              size: tuple[int, int] = (48, 64), seed: int = 0, quality: int = 90) -> Path:
    """Write the tree under ``root`` (height, width = ``size``) and return ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            tint = np.array([(c * 97) % 256, (c * 57 + 80) % 256, (c * 151 + 40) % 256], dtype=np.float32)
            for i in range(count):
                base = (0.5 + 0.5 * np.sin((xx + yy * (c + 1)) / (6.0 + c) + rng.uniform(0, 6.28)))[..., None] * tint
                img = base + rng.normal(0, 18, (h, w, 3))
                cy = int((c % 2) * h / 2 + rng.integers(0, max(1, h // 8)))
                cx = int((c // 2 % 2) * w / 2 + rng.integers(0, max(1, w // 8)))
                img[cy : cy + h // 3, cx : cx + w // 3] = 255 - tint
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{split}_{c}_{i}.jpg",
                                                                           quality=quality)
    return root
