"""Datasets that need no download (2-D toys, scikit-learn's 8×8 digits) and a user's own .npy/.npz.

Every loader returns a ``Dataset`` with a train split and a held-out split. Toy data are generated
from ``data.seed`` so every trial of a study sees the same points; the training seed only changes
the order and noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor


class DataError(ValueError):
    """A dataset cannot be loaded; the message names the field and what would be right."""


@dataclass
class Dataset:
    name: str
    kind: Literal["vector", "image"]
    x_train: Tensor  # (N, *shape) float32; images in [-1, 1]
    y_train: Tensor | None  # (N,) int64
    x_test: Tensor
    y_test: Tensor | None
    num_classes: int | None  # None for unlabelled data
    shape: tuple[int, ...]


# ---- 2-D toys: fn(n, rng) -> (x (n, 2) float, y (n,) int or None, num_classes) -------------------

def _two_gaussians(n, rng):
    """The brief's demo data: unit Gaussians at ±(3, 3)."""
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, 2)) + np.where(y[:, None] == 0, 3.0, -3.0)
    return x, y, 2


def _moons(n, rng):
    from sklearn.datasets import make_moons

    x, y = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31)))
    return (x - [0.5, 0.25]) * 2.0, y, 2


def _checkerboard(n, rng):
    """4×4 board on [−2, 2]², points uniform on the 8 dark squares; label = square index."""
    sq = rng.integers(0, 8, n)
    row = sq // 2
    col = 2 * (sq % 2) + (row % 2)
    x = np.stack([col, row], axis=1) + rng.random((n, 2)) - 2.0
    return x, sq, 8


def _eight_gaussians(n, rng):
    k = rng.integers(0, 8, n)
    angle = 2 * math.pi * k / 8
    centres = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centres + 0.2 * rng.standard_normal((n, 2)), k, 8


def _spirals(n, rng):
    k = rng.integers(0, 2, n)
    s = np.sqrt(rng.random(n)) * 3 * math.pi
    arm = np.stack([s * np.cos(s), s * np.sin(s)], axis=1) / (1.5 * math.pi)
    x = np.where(k[:, None] == 0, arm, -arm) + 0.05 * rng.standard_normal((n, 2))
    return x, k, 2


TOYS: dict[str, Callable] = {
    "two_gaussians": _two_gaussians,
    "moons": _moons,
    "checkerboard": _checkerboard,
    "eight_gaussians": _eight_gaussians,
    "spirals": _spirals,
}


def _toy(cfg) -> Dataset:
    fn = TOYS[cfg.name]
    rng = np.random.default_rng(cfg.seed)
    x, y, k = fn(cfg.num_train + cfg.num_test, rng)
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    n = cfg.num_train
    return Dataset(cfg.name, "vector", x[:n], y[:n], x[n:], y[n:], k, (2,))


def _split(x: np.ndarray, y: np.ndarray | None, test_fraction: float, seed: int):
    """Seeded (stratified where labels allow) split → (x_train, x_test, y_train, y_test)."""
    from sklearn.model_selection import train_test_split

    if y is None:
        x_tr, x_te = train_test_split(x, test_size=test_fraction, random_state=seed)
        return x_tr, x_te, None, None
    strat = y if np.bincount(y).min() >= 2 else None
    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=strat)


def _digits(cfg) -> Dataset:
    """scikit-learn's 8×8 digits (1,797 images, 10 classes), pixels 0..16 scaled to [−1, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 8.0 - 1.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = _split(x, d.target, cfg.test_fraction, cfg.seed)
    return Dataset("digits", "image", torch.as_tensor(x_tr), torch.as_tensor(y_tr, dtype=torch.long),
                   torch.as_tensor(x_te), torch.as_tensor(y_te, dtype=torch.long), 10, (1, 8, 8))


def _read_array_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise DataError(f"data.path: file not found: {path} (expected a .npy or .npz file)")
    try:
        obj = np.load(path, allow_pickle=False)
    except Exception as exc:  # corrupt file, pickled object arrays, ...
        raise DataError(f"data.path: cannot read {path} as .npy/.npz: {exc}") from None
    if isinstance(obj, np.ndarray):
        return obj, None
    with obj:
        if "x" not in obj.files:
            raise DataError(f"data.path: {path} has arrays {obj.files}; expected an array named 'x' (and optional 'y')")
        return obj["x"], (obj["y"] if "y" in obj.files else None)


def _npy(cfg) -> Dataset:
    """A user's vectors (N, D) or images (N, H, W) / (N, C, H, W) from .npy (x) or .npz (x, y)."""
    path = Path(cfg.path)
    x, y = _read_array_file(path)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 127.5 - 1.0  # 8-bit images to [−1, 1]
    elif not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"data.path: x has dtype {x.dtype}; expected float (any range) or uint8 images")
    if x.ndim not in (2, 3, 4) or x.shape[0] < 2:
        raise DataError(f"data.path: x has shape {x.shape}; expected (N, D), (N, H, W) or (N, C, H, W) with N ≥ 2")
    if not np.isfinite(x).all():
        raise DataError(f"data.path: x contains {int((~np.isfinite(x)).sum())} NaN/inf values")
    if x.ndim == 3:
        x = x[:, None]
    num_classes = None
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (x.shape[0],):
            raise DataError(f"data.path: y must be integer labels of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
        if y.min() < 0:
            raise DataError("data.path: y must be non-negative class indices")
        y = y.astype(np.int64)
        num_classes = int(y.max()) + 1
    x_tr, x_te, y_tr, y_te = _split(x.astype(np.float32), y, cfg.test_fraction, cfg.seed)
    kind = "vector" if x.ndim == 2 else "image"
    as_long = (lambda a: None if a is None else torch.as_tensor(a, dtype=torch.long))
    return Dataset(path.stem, kind, torch.as_tensor(x_tr), as_long(y_tr), torch.as_tensor(x_te), as_long(y_te),
                   num_classes, tuple(x.shape[1:]))


DATASETS: dict[str, Callable] = {**{name: _toy for name in TOYS}, "digits": _digits, "npy": _npy}


def load_dataset(cfg) -> Dataset:
    """Load the dataset named by ``cfg.name`` (a ``DataConfig``)."""
    if cfg.name not in DATASETS:
        raise DataError(f"data.name: unknown dataset {cfg.name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[cfg.name](cfg)
