"""Improved precision and recall with k-NN manifolds (Kynkäänniemi, Karras, Laine, Lehtinen, Aila,
"Improved Precision and Recall Metric for Assessing Generative Models", NeurIPS 2019, arXiv 1904.06991).

Each set of features is a union of balls: around every point, the ball whose radius is the distance
to its k-th nearest neighbour in the same set (k = 3 as in the paper). Then

    precision = fraction of generated points inside some ball of the real set  (quality),
    recall    = fraction of real points inside some ball of the generated set   (coverage),

both in [0, 1], higher is better; "inside" includes the boundary (distance <= radius). Mode collapse
keeps precision high and lowers recall; samples away from the data lower precision.

Features (`feature_space`): the data itself for vectors, the `fd_digits` classifier's penultimate
features for the `digits` dataset, Inception-v3 pool3 features (as FID) for other images. Both sets
are cut to the same size n = min(#samples, #reference) by seeded random subsets, since the radii
shrink as a set grows. Inside `feature_memo()` (one NFE of `evaluate`) the Inception features of the
samples are computed once and shared with fid and kid, and precision and recall of the same samples
share one computation (fd_digits extracts its own classifier features: cheap).

Memory: the features ((n, D) per set, on `ref.options["device"]`, default CPU) plus one block of
pairwise distances of at most `max_block_elems` entries (default 2^25: 128 MiB float32, plus a
boolean mask and the top-(k+1) values): no n x n matrix is built. Cost: three passes of n^2 D
multiply-adds (radii of each set, then real versus generated); n = 50,000 Inception features (D = 2048)
are ~3e13 flops: well under a minute on a recent GPU; n = 5,000 took 2.4 s on this project's
2-core CPU, so n = 50,000 takes ~4 minutes there (cost grows as n^2).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from mfsweep.evaluation.metrics import ANY_KIND, MetricSpec, memo_features

if TYPE_CHECKING:
    from mfsweep.evaluation.metrics import ReferenceSet

__all__ = ["MAX_BLOCK_ELEMS", "knn_radii", "precision_recall", "feature_space", "features_for", "precision",
           "recall", "pr_metadata", "PRECISION", "RECALL"]

MAX_BLOCK_ELEMS = 1 << 25  # entries of one block of pairwise distances
_NEEDS_REF = "precision/recall need reference images (or vectors)"


def _rows_per_block(cols: int, max_block_elems: int) -> int:
    return max(1, int(max_block_elems) // max(1, cols))


def knn_radii(feats: torch.Tensor, k: int = 3, *, max_block_elems: int = MAX_BLOCK_ELEMS) -> torch.Tensor:
    """Distance of every row of `feats` (N, D) to its k-th nearest other row, (N,).

    Blocks of rows against all N rows; the k + 1 smallest distances of a row include the row itself
    (distance 0), so the (k+1)-th is the k-th neighbour. Needs N > k.
    """
    n = feats.shape[0]
    if n <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} points, got {n}")
    out = torch.empty(n, dtype=feats.dtype, device=feats.device)
    step = _rows_per_block(n, max_block_elems)
    for i in range(0, n, step):
        d = torch.cdist(feats[i:i + step], feats)
        out[i:i + step] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return out


@torch.no_grad()
def precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3, *,
                     max_block_elems: int = MAX_BLOCK_ELEMS, device: str | torch.device | None = None
                     ) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of `fake_feats` against `real_feats`.

    Args:
        real_feats: (N, D) reference features; fake_feats: (M, D) generated features (any leading
            N/M rows; trailing dims are flattened). The paper uses N = M; sizes may differ here.
        k: neighbourhood size of the k-NN radii (3 in the paper).
        max_block_elems: entries of one block of pairwise distances (memory bound, see module doc).
        device: where to compute (default: where real_feats are); works on CPU and CUDA.
    Returns:
        (precision, recall) as floats in [0, 1].
    Raises:
        ValueError: feature dimensions differ, or a set has k points or fewer.
    """
    real = real_feats.detach().reshape(real_feats.shape[0], -1)
    fake = fake_feats.detach().reshape(fake_feats.shape[0], -1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"features differ in dimension: real {tuple(real.shape)}, generated {tuple(fake.shape)}")
    dtype = torch.promote_types(torch.promote_types(real.dtype, fake.dtype), torch.float32)
    dev = torch.device(device) if device is not None else real.device
    real, fake = real.to(dev, dtype), fake.to(dev, dtype)
    r_real = knn_radii(real, k, max_block_elems=max_block_elems)
    r_fake = knn_radii(fake, k, max_block_elems=max_block_elems)
    in_real_manifold = torch.zeros(fake.shape[0], dtype=torch.bool, device=dev)  # -> precision
    in_fake_manifold = torch.zeros(real.shape[0], dtype=torch.bool, device=dev)  # -> recall
    step = _rows_per_block(fake.shape[0], max_block_elems)
    for i in range(0, real.shape[0], step):
        d = torch.cdist(real[i:i + step], fake)  # (B, M)
        in_real_manifold |= (d <= r_real[i:i + step, None]).any(dim=0)
        in_fake_manifold[i:i + step] = (d <= r_fake[None, :]).any(dim=1)
    return float(in_real_manifold.float().mean()), float(in_fake_manifold.float().mean())


# ---- the metrics ----------------------------------------------------------------------------

def feature_space(ref: ReferenceSet) -> str:
    """'identity' (vectors), 'digits' (the digits classifier) or 'inception' (other images)."""
    if ref.kind == "vector":
        return "identity"
    if ref.kind != "image":
        raise ValueError(f"unknown data kind '{ref.kind}' of reference '{ref.name}/{ref.split}'; valid: image, vector")
    return "digits" if ref.name == "digits" else "inception"


def _digits_split(ref: ReferenceSet) -> tuple[int, float]:
    from mfsweep.evaluation.metrics.fd_classifier import DEFAULT_SPLIT

    return (int(ref.options.get("split_seed", DEFAULT_SPLIT[0])),
            float(ref.options.get("test_fraction", DEFAULT_SPLIT[1])))


def features_for(samples: torch.Tensor, ref: ReferenceSet) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample features, reference features) in the reference's `feature_space` (sample features
    memoised per tensor inside `feature_memo()`)."""
    space = feature_space(ref)
    if space == "identity":
        if ref.x is None:
            raise ValueError(f"{_NEEDS_REF}; reference '{ref.name}/{ref.split}' has none")
        return samples.reshape(samples.shape[0], -1).float(), ref.x.reshape(ref.x.shape[0], -1).float()
    if space == "digits":
        from mfsweep.data.digits import split_digits
        from mfsweep.evaluation.metrics.fd_classifier import digits_features

        split = _digits_split(ref)
        feats = memo_features(samples, ("digits", split), lambda x: digits_features(x.clamp(-1, 1), split=split))
        if ref.x is not None:
            ref_x = ref.x
        else:
            x_tr, x_te, _, _ = split_digits(*split)
            ref_x = x_te if ref.split == "test" else x_tr
        return feats, memo_features(ref_x, ("digits", split), lambda x: digits_features(x, split=split))
    from mfsweep.evaluation.metrics import fid

    return fid.sample_features(samples, ref), fid.reference_features(ref, _NEEDS_REF)


def _subset(feats: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n rows of feats, a seeded random subset (depends on seed and len(feats) only) when it has more."""
    if feats.shape[0] <= n:
        return feats
    idx = torch.randperm(feats.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:n]
    return feats[idx]


def _precision_recall_of(samples: torch.Tensor, ref: ReferenceSet, seed: int, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of samples against ref: equal-size seeded subsets of both feature sets;
    computed once per (samples, reference, seed, k) inside `feature_memo()`. NaN, NaN for NaN samples."""
    if samples.shape[0] <= k:
        raise ValueError(f"precision/recall with k={k} need more than {k} samples, got {samples.shape[0]}")
    if not torch.isfinite(samples).all():
        return math.nan, math.nan

    def compute(x: torch.Tensor) -> tuple[float, float]:
        fake, real = features_for(x, ref)
        n = min(fake.shape[0], real.shape[0])
        if n <= k:
            raise ValueError(f"precision/recall with k={k} need more than {k} reference points, got {real.shape[0]}")
        return precision_recall(_subset(real, n, seed), _subset(fake, n, seed), k,
                                device=ref.options.get("device", "cpu"))

    key = ("precision_recall", k, int(seed), ref.name, ref.split, id(ref.x), str(ref.options.get("device", "cpu")))
    return memo_features(samples, key, compute)


def precision(samples: torch.Tensor, ref: ReferenceSet, *, seed: int = 0) -> float:
    """Improved precision (k = 3) of samples against the reference (see module docstring)."""
    return _precision_recall_of(samples, ref, seed)[0]


def recall(samples: torch.Tensor, ref: ReferenceSet, *, seed: int = 0) -> float:
    """Improved recall (k = 3) of samples against the reference (see module docstring)."""
    return _precision_recall_of(samples, ref, seed)[1]


def pr_metadata(ref: ReferenceSet) -> dict:
    """Exact feature extractor of this reference's `feature_space`, and k; fails early (ValueError)
    when an image reference has no images, or (MissingWeightsError) without Inception weights."""
    space = feature_space(ref)
    if ref.x is None and space != "digits":
        raise ValueError(f"{_NEEDS_REF}; reference '{ref.name}/{ref.split}' has none"
                         + (f" (only statistics {ref.stats_path}, which serve FID)" if ref.stats_path else ""))
    if space == "identity":
        meta = {"extractor": "identity", "resize": "none"}
    elif space == "digits":
        from mfsweep.evaluation.metrics.fd_classifier import FD_DIGITS

        meta = {"resize": "none", **FD_DIGITS.describe(ref)}
    else:
        from mfsweep.evaluation.metrics import fid

        full = fid.fid_metadata(ref)
        meta = {"extractor": full["extractor"], "resize": full["resize"]}
    return {**meta, "k": 3, "feature_space": space}


_AUTO = "auto: identity (vectors) / fd_digits classifier (digits) / inception pool3 (images)"
PRECISION = MetricSpec("precision", precision, ANY_KIND, _AUTO, "auto", pr_metadata, higher_is_better=True)
RECALL = MetricSpec("recall", recall, ANY_KIND, _AUTO, "auto", pr_metadata, higher_is_better=True)
