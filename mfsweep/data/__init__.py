"""The dataset registry: every loader returns a ``Dataset`` with a train split and a held-out split.

    toys.py     2-D toys generated from ``data.seed`` (two_gaussians, moons, checkerboard, ...)
    digits.py   scikit-learn's 8×8 digits (no download)
    arrays.py   a user's own .npy / .npz file (``data.path``)
    cifar10.py      CIFAR-10 through torchvision (``data.path`` is the download folder)
    image_folder.py class sub-folders of images → labels, resized / center-cropped to ``data.resolution``
    latents.py      pre-encoded latent shards (``mfsweep encode``), memory-mapped; decoded with their VAE
    synthetic.py    generated class-dependent images of any size (tests and ``--smoke``; no download)

Every trial of a study sees the same data: generation and splits depend on ``data.seed`` only; the
training seed changes the order and the noise. Names are listed here without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

from mfsweep.registry import Registry, lazy

if TYPE_CHECKING:
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
    split_seed: int | None = None  # how a split dataset was split (metrics trained on it follow it)
    test_fraction: float | None = None
    hflip: bool = False  # training batches are flipped left-right at random (images)
    # latents → images in [-1, 1] (N, *image_shape) before image metrics; None when x already is images
    decode: Callable[[Tensor], Tensor] | None = None
    image_shape: tuple[int, ...] | None = None  # per-sample shape after decode


#: 2-D toy generators ``fn(n, rng) -> (x (n, 2), y (n,), num_classes)`` (mfsweep.data.toys).
TOYS = Registry("toy dataset", {name: lazy(f"mfsweep.data.toys:{name}") for name in
                                ("two_gaussians", "moons", "checkerboard", "eight_gaussians", "spirals")}, DataError)

#: ``data.name`` → loader ``fn(cfg: DataConfig) -> Dataset``.
DATASETS = Registry("dataset", {**{name: lazy("mfsweep.data.toys:load") for name in TOYS},
                                "digits": lazy("mfsweep.data.digits:load"),
                                "npy": lazy("mfsweep.data.arrays:load"),
                                "cifar10": lazy("mfsweep.data.cifar10:load"),
                                "image_folder": lazy("mfsweep.data.image_folder:load"),
                                "latents": lazy("mfsweep.data.latents:load"),
                                "synthetic_images": lazy("mfsweep.data.synthetic:load")}, DataError)


def load_dataset(cfg) -> Dataset:
    """Load the dataset named by ``cfg.name`` (a ``DataConfig``), its training split capped at
    ``cfg.max_items`` (the first items) for every source. Loaders that can read or generate less
    (image_folder, synthetic_images) cap early themselves; this cap is the one every dataset gets."""
    ds = DATASETS.lookup(cfg.name)(cfg)
    cap = getattr(cfg, "max_items", None)
    if cap is not None and len(ds.x_train) > cap:
        ds.x_train = ds.x_train[:cap]
        ds.y_train = None if ds.y_train is None else ds.y_train[:cap]
    return ds
