"""2-D toy datasets, generated from ``data.seed`` so every trial of a study sees the same points.

Each generator is ``fn(n, rng) -> (x (n, 2) float, y (n,) int labels, num_classes)``; the labels (the
mode or square a point came from) make class-conditional toy studies possible.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mfsweep.data import TOYS, Dataset


def two_gaussians(n, rng):
    """The brief's demo data: unit Gaussians at ±(3, 3)."""
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, 2)) + np.where(y[:, None] == 0, 3.0, -3.0)
    return x, y, 2


def moons(n, rng):
    from sklearn.datasets import make_moons

    x, y = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31)))
    return (x - [0.5, 0.25]) * 2.0, y, 2


def checkerboard(n, rng):
    """4×4 board on [−2, 2]², points uniform on the 8 dark squares; label = square index."""
    sq = rng.integers(0, 8, n)
    row = sq // 2
    col = 2 * (sq % 2) + (row % 2)
    x = np.stack([col, row], axis=1) + rng.random((n, 2)) - 2.0
    return x, sq, 8


def eight_gaussians(n, rng):
    k = rng.integers(0, 8, n)
    angle = 2 * math.pi * k / 8
    centres = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centres + 0.2 * rng.standard_normal((n, 2)), k, 8


def spirals(n, rng):
    k = rng.integers(0, 2, n)
    s = np.sqrt(rng.random(n)) * 3 * math.pi
    arm = np.stack([s * np.cos(s), s * np.sin(s)], axis=1) / (1.5 * math.pi)
    x = np.where(k[:, None] == 0, arm, -arm) + 0.05 * rng.standard_normal((n, 2))
    return x, k, 2


def load(cfg) -> Dataset:
    """``cfg.num_train`` training and ``cfg.num_test`` held-out points of the toy ``cfg.name``."""
    fn = TOYS.lookup(cfg.name)
    rng = np.random.default_rng(cfg.seed)
    x, y, k = fn(cfg.num_train + cfg.num_test, rng)
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    n = cfg.num_train
    return Dataset(cfg.name, "vector", x[:n], y[:n], x[n:], y[n:], k, (2,))
