"""scikit-learn's 8×8 digits: 1,797 images of 10 classes, shipped with scikit-learn (no download).

Pixels 0..16 are scaled to [−1, 1]. The train / held-out split is stratified and seeded by
``data.seed`` with ``data.test_fraction`` held out; the ``fd_digits`` metric trains its feature
classifier on the same split (``split_digits``).
"""

from __future__ import annotations

import numpy as np
import torch

from mfsweep.data import Dataset
from mfsweep.data.arrays import split


def split_digits(seed: int = 0, test_fraction: float = 0.2):
    """(x_train, x_test, y_train, y_test): images (N, 1, 8, 8) float32 in [−1, 1], labels (N,) int64."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 8.0 - 1.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = split(x, d.target, test_fraction, seed)
    as_long = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
    return torch.as_tensor(x_tr), torch.as_tensor(x_te), as_long(y_tr), as_long(y_te)


def load(cfg) -> Dataset:
    x_tr, x_te, y_tr, y_te = split_digits(cfg.seed, cfg.test_fraction)
    return Dataset("digits", "image", x_tr, y_tr, x_te, y_te, 10, (1, 8, 8),
                   split_seed=cfg.seed, test_fraction=cfg.test_fraction)
