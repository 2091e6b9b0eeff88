"""Metric registry: every metric is `fn(samples, ref, *, seed) -> float`; lower is better unless the
spec says `higher_is_better` (precision, recall, inception_score; `mfsweep.schema.HIGHER_IS_BETTER`
is the same list for the reports).

    toy.py            swd, energy, mmd (data space; vectors)
    fd_classifier.py  fd_digits (Fréchet distance in a small digits classifier's features)
    fid.py            fid, kid, inception_score (Inception-v3 through torch-fidelity; imported only when used)
    prdc.py           precision, recall (k-NN manifolds, Kynkäänniemi et al. 2019; any data kind)
    frechet.py        the Fréchet distance itself and the on-disk cache folder


    samples: (N, *shape) tensor, ref: ReferenceSet (what to compare against), seed: int (for
    metrics with randomness: projections, subsets). A `MetricSpec` adds metadata: the feature
    `extractor` id, the `resize` mode and the data `kinds` it applies to ("vector", "image").

Names (docs/architecture.md): swd, energy, mmd (vectors); fd_digits (8x8 digits); fid, kid,
inception_score (images); precision, recall (both kinds).

Features of one sample tensor are computed once per evaluation, not once per metric: inside
`with feature_memo():` (as `mfsweep.evaluation.evaluate` runs the metrics of one NFE),
`memo_features(x, key, fn)` returns the features computed earlier for the same tensor object and
extractor key (fid, kid and precision/recall share one Inception pass).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from mfsweep.registry import Registry, lazy

if TYPE_CHECKING:
    import torch

__all__ = ["ReferenceSet", "MetricSpec", "METRICS", "VECTOR", "IMAGE", "ANY_KIND", "on_reference_samples",
           "default_metrics", "make_reference", "decode_batched", "feature_memo", "memo_features",
           "MAX_DECODED_REFERENCE"]


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
    """A registered metric: `spec(samples, ref, seed=...) -> float` plus metadata.

    higher_is_better: direction of the value (False: a distance, lower is better); must agree with
    `mfsweep.schema.HIGHER_IS_BETTER`, which the reports read.
    """

    name: str
    fn: Callable[..., float]
    kinds: frozenset[str]
    extractor: str
    resize: str
    describe: Callable[[ReferenceSet], dict] | None = None  # run-time metadata (e.g. weights hash)
    higher_is_better: bool = False

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
ANY_KIND = VECTOR | IMAGE
_M = "mfsweep.evaluation.metrics"
#: Metric name → MetricSpec, each defined in the module that computes it (imported on first use).
METRICS = Registry("metric", {
    "swd": lazy(f"{_M}.toy:SWD"),
    "energy": lazy(f"{_M}.toy:ENERGY"),
    "mmd": lazy(f"{_M}.toy:MMD"),
    "fd_digits": lazy(f"{_M}.fd_classifier:FD_DIGITS"),
    "fid": lazy(f"{_M}.fid:FID"),
    "kid": lazy(f"{_M}.fid:KID"),
    "inception_score": lazy(f"{_M}.fid:INCEPTION_SCORE"),
    "precision": lazy(f"{_M}.prdc:PRECISION"),
    "recall": lazy(f"{_M}.prdc:RECALL"),
})


def default_metrics(dataset_name: str, kind: str) -> list[str]:
    """Vectors/toys -> ["swd", "energy", "precision", "recall"]; "digits" -> ["fd_digits", "precision",
    "recall"]; other images (decoded latents included) -> ["fid", "precision", "recall"]. kid and
    inception_score are computed only when named."""
    if kind == "vector":
        return ["swd", "energy", "precision", "recall"]
    if kind != "image":
        raise ValueError(f"unknown data kind '{kind}'; valid: image, vector")
    return ["fd_digits" if dataset_name == "digits" else "fid", "precision", "recall"]


# ---- features once per evaluation -----------------------------------------------------------

_FEATURE_MEMO: contextvars.ContextVar[dict | None] = contextvars.ContextVar("mfsweep_feature_memo", default=None)


@contextlib.contextmanager
def feature_memo() -> Iterator[dict]:
    """Within this block, `memo_features` computes the features of a tensor once per extractor key.

    Entries hold the tensor itself (so its id cannot be reused while the block runs) and its
    features; both are dropped when the block ends. Yields the memo (tests count its entries).
    """
    memo: dict = {}
    token = _FEATURE_MEMO.set(memo)
    try:
        yield memo
    finally:
        _FEATURE_MEMO.reset(token)
        memo.clear()


def memo_features(x: Any, key: tuple, fn: Callable[[Any], Any]) -> Any:
    """`fn(x)`, reused for the same tensor object `x` and `key` inside `feature_memo()` (else no memo).

    key names the extractor and everything its output depends on (weights, layer, options).
    """
    memo = _FEATURE_MEMO.get()
    if memo is None:
        return fn(x)
    slot = (id(x), key)
    hit = memo.get(slot)
    if hit is not None and hit[0] is x:
        return hit[1]
    out = fn(x)
    memo[slot] = (x, out)
    return out


# ---- references ---------------------------------------------------------------------------

#: At most this many reference latents are decoded for a dataset with a `decode` (seeded subset).
MAX_DECODED_REFERENCE = 10_000
_DECODED: dict[str, tuple] = {}  # one entry: (latents, decode, key) -> decoded reference images


def decode_batched(decode: Callable, x: torch.Tensor, *, batch_size: int = 256, device: Any = "cpu") -> torch.Tensor:
    """`decode` applied to `x` (N, *latent_shape) in batches on `device` under `torch.no_grad()`;
    returns (N, *image_shape) float32 on the CPU. Peak device memory: one batch of latents and images."""
    import torch

    if batch_size < 1:
        raise ValueError(f"decode batch_size must be >= 1, got {batch_size}")
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            out.append(decode(x[i:i + batch_size].to(device)).detach().to("cpu", torch.float32))
    if not out:
        raise ValueError("nothing to decode: got 0 latents")
    return torch.cat(out)


def _decoded_reference(dataset: Any, x: torch.Tensor, n: int, seed: int, batch_size: int, device: Any) -> torch.Tensor:
    """A seeded subset of `n` rows of the latents `x`, decoded; the last result is kept in memory so
    that periodic evaluations of one training run decode the reference once."""
    import torch

    key = (n, int(seed), str(device))
    hit = _DECODED.get("last")
    if hit is not None and hit[0] is x and hit[1] == dataset.decode and hit[2] == key:  # == : bound methods
        return hit[3]
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:n].sort().values
    images = decode_batched(dataset.decode, x[idx], batch_size=batch_size, device=device)
    _DECODED["last"] = (x, dataset.decode, key, images)
    return images


def make_reference(dataset: Any, *, split: str | None = None, stats_path: str | None = None,
                   max_decode: int = MAX_DECODED_REFERENCE, decode_seed: int = 0, decode_batch_size: int = 256,
                   decode_with_stats: bool = False, **options: Any) -> ReferenceSet:
    """Default reference for a `mfsweep.data.Dataset`: held-out test split for vectors (toys), train
    split for images (digits classifier features, FID convention). `options` go to ReferenceSet
    (e.g. "device", "weights_path", "batch_size" for the metrics); a dataset that was split records
    how (`split_seed`, `test_fraction`), so that a metric trained on its train split (fd_digits) uses
    the same split.

    Latent datasets (`dataset.decode` is not None; samples are latents, metrics see images): the
    reference is the decoded images of a seeded subset (`decode_seed`) of at most `max_decode`
    (default 10,000) latents of the split, decoded in batches of `decode_batch_size` on
    `options["device"]`; the last decoded reference is kept in CPU memory (one entry; 10,000 decoded
    3x256x256 images are 7.9 GB in float32), and FID's
    reference statistics are cached on disk as for any image reference. FID against this capped
    reference is not FID-50K against the full training set: for paper numbers pass `stats_path`, an
    ADM-style npz (`mu`, `sigma`, e.g. ADM's VIRTUAL_imagenet256 statistics). With `stats_path` no
    latent is decoded (unless `decode_with_stats=True`): FID uses the npz, and metrics that need
    reference images (kid, precision, recall) have none; `evaluate` drops them from the default
    metric list with a warning and refuses them, before any work, when named. Pass
    `decode_with_stats=True` to decode the capped reference for them too (FID still uses the npz).
    """
    split = split or ("test" if dataset.kind == "vector" else "train")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split '{split}'; valid: test, train")
    x = dataset.x_test if split == "test" else dataset.x_train
    for key in ("split_seed", "test_fraction"):
        if getattr(dataset, key, None) is not None:
            options.setdefault(key, getattr(dataset, key))
    kind = dataset.kind
    if getattr(dataset, "decode", None) is not None:
        kind = "image"
        if max_decode < 1:
            raise ValueError(f"max_decode must be >= 1, got {max_decode}")
        if stats_path is None or decode_with_stats:
            n = min(int(x.shape[0]), int(max_decode))
            x = _decoded_reference(dataset, x, n, decode_seed, decode_batch_size, options.get("device", "cpu"))
            options.setdefault("decoded_latents", n)
        else:
            x = None
    return ReferenceSet(dataset.name, split, kind, x, stats_path, dict(options))
