"""Metric registry: every metric is `fn(samples, ref, *, seed) -> float`, lower is better.

    toy.py            swd, energy, mmd (data space; vectors)
    fd_classifier.py  fd_digits (Fréchet distance in a small digits classifier's features)
    fid.py            fid, kid (Inception-v3 through torch-fidelity; imported only when used)
    frechet.py        the Fréchet distance itself and the on-disk cache folder


    samples: (N, *shape) tensor, ref: ReferenceSet (what to compare against), seed: int (for
    metrics with randomness: projections, subsets). A `MetricSpec` adds metadata: the feature
    `extractor` id, the `resize` mode and the data `kinds` it applies to ("vector", "image").

Names (docs/architecture.md): swd, energy, mmd (vectors); fd_digits (8x8 digits); fid, kid (images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from typing import TYPE_CHECKING

from mfsweep.registry import Registry, lazy

if TYPE_CHECKING:
    import torch

__all__ = ["ReferenceSet", "MetricSpec", "METRICS", "VECTOR", "IMAGE", "on_reference_samples", "default_metrics",
           "make_reference"]


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


def on_reference_samples(fn):
    """Adapt ``fn(samples, reference_samples, *, seed)`` to the metric protocol (needs ``ref.x``)."""
    def metric(samples: torch.Tensor, ref: ReferenceSet, *, seed: int = 0) -> float:
        if ref.x is None:
            raise ValueError(f"metric needs reference samples; reference '{ref.name}/{ref.split}' has none")
        return fn(samples, ref.x, seed=seed)
    return metric


VECTOR, IMAGE = frozenset({"vector"}), frozenset({"image"})
_M = "mfsweep.evaluation.metrics"
#: Metric name → MetricSpec, each defined in the module that computes it (imported on first use).
METRICS = Registry("metric", {
    "swd": lazy(f"{_M}.toy:SWD"),
    "energy": lazy(f"{_M}.toy:ENERGY"),
    "mmd": lazy(f"{_M}.toy:MMD"),
    "fd_digits": lazy(f"{_M}.fd_classifier:FD_DIGITS"),
    "fid": lazy(f"{_M}.fid:FID"),
    "kid": lazy(f"{_M}.fid:KID"),
})


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
    split for images (digits classifier features, FID convention). `options` go to ReferenceSet; a
    dataset that was split records how (`split_seed`, `test_fraction`), so that a metric trained on
    its train split (fd_digits) uses the same split."""
    split = split or ("test" if dataset.kind == "vector" else "train")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split '{split}'; valid: test, train")
    x = dataset.x_test if split == "test" else dataset.x_train
    for key in ("split_seed", "test_fraction"):
        if getattr(dataset, key, None) is not None:
            options.setdefault(key, getattr(dataset, key))
    return ReferenceSet(dataset.name, split, dataset.kind, x, stats_path, dict(options))
