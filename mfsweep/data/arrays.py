"""A user's own arrays: vectors (N, D) or images (N, H, W) / (N, C, H, W) from a .npy file (x) or a
.npz file (x and optional integer labels y), split into train and held-out parts with ``data.seed``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mfsweep.data import DataError, Dataset


def split(x: np.ndarray, y: np.ndarray | None, test_fraction: float, seed: int):
    """Seeded (stratified where labels allow) split → (x_train, x_test, y_train, y_test)."""
    from sklearn.model_selection import train_test_split

    if y is None:
        x_tr, x_te = train_test_split(x, test_size=test_fraction, random_state=seed)
        return x_tr, x_te, None, None
    strat = y if np.bincount(y).min() >= 2 else None
    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=strat)


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


def load(cfg) -> Dataset:
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
    x_tr, x_te, y_tr, y_te = split(x.astype(np.float32), y, cfg.test_fraction, cfg.seed)
    kind = "vector" if x.ndim == 2 else "image"
    as_long = (lambda a: None if a is None else torch.as_tensor(a, dtype=torch.long))
    return Dataset(path.stem, kind, torch.as_tensor(x_tr), as_long(y_tr), torch.as_tensor(x_te), as_long(y_te),
                   num_classes, tuple(x.shape[1:]))
