"""Metric registry: every metric is `fn(samples, ref, *, seed) -> float`, lower is better.

    samples: (N, *shape) tensor, ref: ReferenceSet (what to compare against), seed: int (for
    metrics with randomness: projections, subsets). A `MetricSpec` adds metadata: the feature
    `extractor` id, the `resize` mode and the data `kinds` it applies to ("vector", "image").

Names (docs/architecture.md): swd, energy, mmd (vectors); fd_digits (8x8 digits); fid, kid (images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mfsweep.evaluation.metrics import toy
from mfsweep.evaluation.metrics.fd_classifier import VERSION as _DIGITS_VERSION
from mfsweep.evaluation.metrics.fd_classifier import fd_digits

__all__ = ["ReferenceSet", "MetricSpec", "METRICS", "get_metric", "default_metrics", "make_reference"]


@dataclass
class ReferenceSet:
    """What generated samples are compared with.

    name: dataset name (part of cache keys); split: "train" / "test"; kind: "vector" / "image";
    x: (N, *shape) reference samples (None when only precomputed statistics are given);
    stats_path: ADM-style npz with `mu`, `sigma` (optional `N`) used for FID instead of x;
    options: metric options, e.g. {"weights_path", "allow_download", "device", "batch_size"} for
    fid/kid.
    """

    name: str
    split: str
    kind: str
    x: torch.Tensor | None = None
    stats_path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def num(self) -> int | None:
        return None if self.x is None else int(self.x.shape[0])


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: `spec(samples, ref, seed=...) -> float` plus metadata."""

    name: str
    fn: Callable[..., float]
    kinds: frozenset[str]
    extractor: str
    resize: str
    describe: Callable[[ReferenceSet], dict] | None = None  # run-time metadata (e.g. weights hash)

    def __call__(self, samples: torch.Tensor, ref: ReferenceSet, *, seed: int = 0) -> float:
        return float(self.fn(samples, ref, seed=seed))

    def metadata(self, ref: ReferenceSet) -> dict[str, Any]:
        """{"extractor", "resize", "reference", "reference_num"}; may raise (e.g. missing weights)."""
        meta = {"extractor": self.extractor, "resize": self.resize,
                "reference": f"{ref.name}/{ref.split}", "reference_num": ref.num}
        if self.describe is not None:
            meta.update(self.describe(ref))
        return meta


def _data(fn):
    def metric(samples: torch.Tensor, ref: ReferenceSet, *, seed: int = 0) -> float:
        if ref.x is None:
            raise ValueError(f"metric needs reference samples; reference '{ref.name}/{ref.split}' has none")
        return fn(samples, ref.x, seed=seed)
    return metric


def _lazy_fid(attr: str):
    """Import torch-fidelity only when an Inception metric is used."""
    def call(*args, **kwargs):
        from mfsweep.evaluation.metrics import fid as _fid
        return getattr(_fid, attr)(*args, **kwargs)
    return call


_VEC, _IMG = frozenset({"vector"}), frozenset({"image"})
_INCEPTION = "torch-fidelity-inception-v3-compat/2048"
METRICS: dict[str, MetricSpec] = {
    "swd": MetricSpec("swd", _data(toy.sliced_wasserstein), _VEC, "identity", "none"),
    "energy": MetricSpec("energy", _data(toy.energy_distance), _VEC, "identity", "none"),
    "mmd": MetricSpec("mmd", _data(toy.mmd_rbf), _VEC, "identity", "none"),
    "fd_digits": MetricSpec("fd_digits", fd_digits, _IMG, f"{_DIGITS_VERSION}/penultimate-64", "none"),
    "fid": MetricSpec("fid", _lazy_fid("fid"), _IMG, _INCEPTION, "torch-fidelity-tf1x-bilinear-299",
                      _lazy_fid("fid_metadata")),
    "kid": MetricSpec("kid", _lazy_fid("kid"), _IMG, _INCEPTION, "torch-fidelity-tf1x-bilinear-299",
                      _lazy_fid("fid_metadata")),
}


def get_metric(name: str) -> MetricSpec:
    """The registered metric `name`; ValueError listing the valid names otherwise."""
    if name not in METRICS:
        raise ValueError(f"unknown metric '{name}'; valid: {', '.join(sorted(METRICS))}")
    return METRICS[name]


def default_metrics(dataset_name: str, kind: str) -> list[str]:
    """Vectors/toys -> ["swd", "energy"]; "digits" -> ["fd_digits"]; other images -> ["fid"]."""
    if kind == "vector":
        return ["swd", "energy"]
    if kind != "image":
        raise ValueError(f"unknown data kind '{kind}'; valid: image, vector")
    return ["fd_digits"] if dataset_name == "digits" else ["fid"]


def make_reference(dataset: Any, *, split: str | None = None, stats_path: str | None = None,
                   **options: Any) -> ReferenceSet:
    """Default reference for a `mfsweep.data.Dataset`: held-out test split for vectors (toys), train
    split for images (digits classifier features, FID convention). `options` go to ReferenceSet."""
    split = split or ("test" if dataset.kind == "vector" else "train")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split '{split}'; valid: test, train")
    x = dataset.x_test if split == "test" else dataset.x_train
    return ReferenceSet(dataset.name, split, dataset.kind, x, stats_path, dict(options))
