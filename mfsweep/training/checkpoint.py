"""Checkpoints: written atomically (``mfsweep.fileio``), so a crash mid-write never leaves a truncated
checkpoint; loaded with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path

import torch

from mfsweep.fileio import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"


def save_atomic(state: dict, path: str | Path) -> Path:
    with atomic_write(path) as f:
        torch.save(state, f)
    return Path(path)


def load(path: str | Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)
