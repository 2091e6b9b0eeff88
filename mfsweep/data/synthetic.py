"""Generated class-dependent images of any size (``synthetic_images``): tests and ``--smoke`` runs of
image studies without a download.

Each class ``k`` has a fixed look, the same for every seed: a background colour, a foreground colour
that differs from it by half the range in every channel, and a shape (``k % 4``: disc, square,
diamond, ring). An image of class ``k`` draws the shape at a random centre and size and adds Gaussian
pixel noise (σ = 12 / 255 of the range), so a class-conditional model has something to learn and
the images are not pure noise.

Sizes: ``data.channels`` × ``data.resolution`` × ``data.resolution`` (default 32), ``data.num_classes``
classes, ``data.num_train`` training and ``data.num_test`` held-out items, float32 in [-1, 1].
Everything depends on ``data.seed`` only; generation is prefix-stable (``make_images(m)`` is the first
``m`` items of ``make_images(n)``), so ``data.max_items`` keeps the first training items and
generates no more. ``data.hflip`` asks the training loop for random horizontal flips.

``make_images`` returns uint8 arrays; ``write_image_folder`` / ``write_synthetic_folder`` save them as
PNG class folders (an ``image_folder`` dataset, or the input of ``mfsweep encode``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mfsweep.data import DataError, Dataset

_CHUNK_VALUES = 2**20  # pixel values generated from one seed stream (at most 256 items)
_PALETTE_SEED = 20250519  # the classes' colours: fixed, so the data seed only changes the samples
SHAPES = ("disc", "square", "diamond", "ring")


def class_colours(num_classes: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(background, foreground) colours (num_classes, channels) in 0..255 of every class."""
    bg = np.random.default_rng(_PALETTE_SEED).uniform(0, 255, (num_classes, channels))
    return bg, (bg + 128.0) % 256.0


def _chunk_items(resolution: int, channels: int) -> int:
    """Items per seed stream: depends on the image size only, so generation stays prefix-stable."""
    return max(1, min(256, _CHUNK_VALUES // (resolution * resolution * channels)))


def _chunk(key: tuple[int, ...], resolution: int, channels: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(np.random.SeedSequence(key))
    m, r = _chunk_items(resolution, channels), resolution
    labels = rng.integers(0, num_classes, m)
    centre = rng.uniform(0.35 * r, 0.65 * r, (m, 2))
    size = rng.uniform(0.18 * r, 0.32 * r, m)
    noise = rng.normal(0.0, 12.0, (m, r, r, channels)).astype(np.float32)
    yy, xx = np.mgrid[0:r, 0:r].astype(np.float32) + 0.5
    dy = np.abs(yy[None] - centre[:, 0, None, None])
    dx = np.abs(xx[None] - centre[:, 1, None, None])
    s = size[:, None, None]
    dist = np.hypot(dy, dx)
    masks = np.stack([dist < s, np.maximum(dy, dx) < s, dy + dx < 1.3 * s, np.abs(dist - 0.75 * s) < 0.25 * s])
    mask = masks[labels % len(SHAPES), np.arange(m)]  # (m, r, r)
    bg, fg = class_colours(num_classes, channels)
    img = np.where(mask[..., None], fg[labels][:, None, None], bg[labels][:, None, None]) + noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels.astype(np.int64)


def _generate(n: int, resolution: int, channels: int, num_classes: int, key: tuple[int, ...]):
    if n < 0 or resolution < 1 or not 1 <= channels <= 4 or num_classes < 1:
        raise DataError(f"synthetic images: need n ≥ 0, resolution ≥ 1, 1 ≤ channels ≤ 4, num_classes ≥ 1; got "
                        f"n={n}, resolution={resolution}, channels={channels}, num_classes={num_classes}")
    out = np.empty((n, resolution, resolution, channels), np.uint8)
    labels = np.empty(n, np.int64)
    step = _chunk_items(resolution, channels)
    for j, start in enumerate(range(0, n, step)):
        imgs, ys = _chunk((*key, j), resolution, channels, num_classes)
        stop = min(n, start + step)
        out[start:stop], labels[start:stop] = imgs[:stop - start], ys[:stop - start]
    return out, labels


def make_images(n: int, resolution: int = 32, channels: int = 3, num_classes: int = 10,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded class-dependent images: (uint8 (n, H, W, C), labels (n,) int64). These are the
    training items of ``synthetic_images`` with ``data.seed = seed``."""
    return _generate(n, resolution, channels, num_classes, (_seed(seed), 0))


def write_image_folder(root: str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                       class_names: list[str] | None = None) -> Path:
    """Save uint8 (N, H, W, C) images as ``root/<class_name>/<index>.png`` (class names default to
    ``class_00``, ``class_01``, ...); returns ``root``."""
    from PIL import Image

    root = Path(root)
    k = int(labels.max()) + 1 if len(labels) else 0
    names = class_names or [f"class_{i:02d}" for i in range(k)]
    if len(names) < k:
        raise DataError(f"write_image_folder: {len(names)} class names for labels up to {k - 1}")
    modes = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
    for i, (img, y) in enumerate(zip(images, labels)):
        folder = root / names[int(y)]
        folder.mkdir(parents=True, exist_ok=True)
        arr = img[..., 0] if img.shape[-1] == 1 else img
        Image.fromarray(np.ascontiguousarray(arr), modes[img.shape[-1]]).save(folder / f"{i:06d}.png")
    return root


def write_synthetic_folder(root: str | os.PathLike, n: int, resolution: int = 32, channels: int = 3,
                           num_classes: int = 10, seed: int = 0) -> Path:
    """``make_images(n, ...)`` written as PNG class folders under ``root``."""
    images, labels = make_images(n, resolution, channels, num_classes, seed)
    return write_image_folder(root, images, labels, [f"class_{i:02d}" for i in range(num_classes)])


def _seed(seed: int) -> int:
    return int(seed) % 2**64  # SeedSequence takes non-negative integers


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


def load(cfg) -> Dataset:
    """``cfg.num_train`` (capped at ``cfg.max_items``) training and ``cfg.num_test`` held-out images."""
    res = cfg.resolution or 32
    n_train = cfg.num_train if cfg.max_items is None else min(cfg.num_train, cfg.max_items)
    x_tr, y_tr = _generate(n_train, res, cfg.channels, cfg.num_classes, (_seed(cfg.seed), 0))
    x_te, y_te = _generate(cfg.num_test, res, cfg.channels, cfg.num_classes, (_seed(cfg.seed), 1))
    return Dataset("synthetic_images", "image", _to_tensor(x_tr), torch.from_numpy(y_tr), _to_tensor(x_te),
                   torch.from_numpy(y_te), cfg.num_classes, (cfg.channels, res, res), hflip=bool(cfg.hflip))
