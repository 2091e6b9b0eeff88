"""FID (Heusel et al. 2017), KID (Bińkowski, Sutherland, Arbel, Gretton, "Demystifying MMD GANs",
ICLR 2018) and the Inception Score (Salimans, Goodfellow, Zaremba, Cheung, Radford, Chen, "Improved
Techniques for Training GANs", NeurIPS 2016) on images, with torch-fidelity's Inception-v3 (TF-ported
weights; pool3 '2048' features for FID/KID/precision-recall, 'logits_unbiased' for IS).

Pipeline: images (N, C, H, W) float in [-1, 1] -> uint8 (round((x + 1) * 127.5)), grayscale repeated
to 3 channels -> torch-fidelity's `FeatureExtractorInceptionV3`, which resizes to 299x299 with its
TF1.x-compatible bilinear interpolation (recorded as RESIZE) -> (N, 2048) float32 features. Images go
through in batches (`batch_size` option, default 64), converted to uint8 batch by batch, so memory
beyond the input is one batch plus the (N, 2048) float32 output (400 MB for N = 50,000).

Inception Score: exp(E_x KL(p(y|x) || p(y))) over 10 splits (torch-fidelity's
`isc_featuresdict_to_metric`, mean over splits) of the softmax of the 1008 'logits_unbiased'.
Higher is better; it needs no reference.

Weights: `weights_path` option, else `$MFSWEEP_INCEPTION_WEIGHTS`, else torch-fidelity's own cache
(`torch.hub.get_dir()/checkpoints/<file>`), else a download (unless disabled with option
`allow_download=False` or `MFSWEEP_INCEPTION_DOWNLOAD=0`); otherwise `MissingWeightsError`.
Reference statistics are cached under `cache_dir()/refstats/` per (dataset, split, extractor id,
data fingerprint); the extractor id contains the weights' sha256 prefix.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_featuresdict_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric

from mfsweep.evaluation.metrics import IMAGE, MetricSpec, memo_features
from mfsweep.evaluation.metrics.frechet import cache_dir, feature_stats, frechet_distance
from mfsweep.fileio import atomic_write

if TYPE_CHECKING:
    from mfsweep.evaluation.metrics import ReferenceSet

__all__ = ["MissingWeightsError", "RESIZE", "INCEPTION_URL", "resolve_inception_weights", "extractor_id",
           "to_uint8_rgb", "extract_features", "sample_features", "reference_features", "reference_stats", "fid",
           "kid", "inception_score", "fid_metadata", "isc_metadata", "FID", "KID", "INCEPTION_SCORE", "POOL", "LOGITS"]

INCEPTION_URL = URL_INCEPTION_V3
RESIZE = "torch-fidelity-tf1x-bilinear-299"
POOL, LOGITS = "2048", "logits_unbiased"  # torch-fidelity feature layers: FID/KID/PR, Inception Score
_ENV_WEIGHTS, _ENV_DOWNLOAD = "MFSWEEP_INCEPTION_WEIGHTS", "MFSWEEP_INCEPTION_DOWNLOAD"
_KEEP_FEATS = 20000  # reference features are stored for KID up to this many samples (or when asked)
_SHA_MEMO: dict[tuple, str] = {}
_EXTRACTORS: dict[tuple, FeatureExtractorInceptionV3] = {}


class MissingWeightsError(RuntimeError):
    """Inception-v3 weights are neither configured, cached nor downloadable."""


def resolve_inception_weights(weights_path: str | os.PathLike | None = None,
                              allow_download: bool | None = None) -> Path:
    """Path of the Inception-v3 weights file (see module docstring for the search order)."""
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(INCEPTION_URL)
    how = (f"download {INCEPTION_URL} and pass weights_path=... or set {_ENV_WEIGHTS}=/path/to/file, "
           f"or place it at {hub_file} (torch-fidelity's cache)")
    explicit = weights_path or os.environ.get(_ENV_WEIGHTS)
    if explicit:
        if not Path(explicit).is_file():
            raise MissingWeightsError(f"Inception-v3 weights not found at {explicit}; {how}")
        return Path(explicit)
    if hub_file.is_file():
        return hub_file
    if allow_download is None:
        allow_download = os.environ.get(_ENV_DOWNLOAD, "1") not in ("0", "false", "no")
    if not allow_download:
        raise MissingWeightsError(f"Inception-v3 weights not found and download is disabled; {how}")
    try:
        hub_file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, str(hub_file), progress=False)
    except Exception as e:  # no network, proxy, disk ...
        raise MissingWeightsError(f"could not download Inception-v3 weights ({e!r}); {how}") from e
    return hub_file


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def extractor_id(weights: Path, layer: str = POOL) -> str:
    """E.g. 'torch-fidelity-inception-v3-compat/2048/sha256:6726825d' for the official weights."""
    return f"torch-fidelity-inception-v3-compat/{layer}/sha256:{_sha256(weights)[:8]}"


def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) float in [-1, 1] (C in {1, 3}) -> (N, 3, H, W) uint8 in [0, 255]."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got {tuple(x.shape)}")
    u8 = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u8.expand(-1, 3, -1, -1).contiguous() if u8.shape[1] == 1 else u8


def _opts(ref: ReferenceSet | None) -> dict:
    return dict(ref.options) if ref is not None and ref.options else {}


def _extractor(weights: Path, device: str, layer: str = POOL) -> FeatureExtractorInceptionV3:
    key = (str(weights), _sha256(weights), str(device), layer)
    if key not in _EXTRACTORS:
        net = FeatureExtractorInceptionV3("inception-v3-compat", [layer], feature_extractor_weights_path=str(weights))
        _EXTRACTORS[key] = net.to(device)
    return _EXTRACTORS[key]


@torch.no_grad()
def extract_features(x: torch.Tensor, *, weights_path=None, allow_download=None, batch_size: int = 64,
                     device: str = "cpu", layer: str = POOL) -> torch.Tensor:
    """Inception features: images (N, C, H, W) in [-1, 1] -> (N, 2048) pool3 features (layer "2048")
    or (N, 1008) logits (layer "logits_unbiased"), float32 on CPU; `batch_size` images at a time."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    net = _extractor(resolve_inception_weights(weights_path, allow_download), device, layer)
    out = [net(to_uint8_rgb(x[i:i + batch_size]).to(device))[0].cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 2048 if layer == POOL else 1008)


def _fingerprint(x: torch.Tensor) -> str:
    """Cheap content hash: shape plus every (N // 1024)-th sample."""
    x = x.detach().cpu()
    h = hashlib.sha256(str((tuple(x.shape), str(x.dtype))).encode())
    h.update(x[:: max(1, x.shape[0] // 1024)].contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def reference_stats(ref: ReferenceSet, *, need_feats: bool = False, what: str | None = None) -> dict:
    """{"mu": (2048,), "sigma": (2048, 2048), "N": int, "extractor": str[, "feats": (N, 2048)]}.

    From `ref.stats_path` (ADM-style npz with `mu`, `sigma`, optional `N`) when given and features are
    not needed; else from `ref.x`, cached on disk so a second evaluation does not recompute them.
    """
    o = _opts(ref)
    if ref.stats_path is not None and not need_feats:
        with np.load(ref.stats_path) as z:
            n = int(z["N"]) if "N" in z.files else -1
            ext = str(z["extractor"]) if "extractor" in z.files else f"external-npz:{Path(ref.stats_path).name}"
            return {"mu": z["mu"].astype(np.float64), "sigma": z["sigma"].astype(np.float64), "N": n, "extractor": ext}
    if ref.x is None:
        what = what or ("KID needs reference images" if need_feats else "FID needs reference images or a stats npz")
        raise ValueError(f"{what}; reference '{ref.name}/{ref.split}' has none")
    weights = resolve_inception_weights(o.get("weights_path"), o.get("allow_download"))
    ext = extractor_id(weights)
    safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s))  # noqa: E731
    path = cache_dir() / "refstats" / f"{safe(ref.name)}-{safe(ref.split)}-{safe(ext)}-{_fingerprint(ref.x)}.npz"
    if path.is_file():
        with np.load(path) as z:
            if str(z["extractor"]) == ext and (not need_feats or "feats" in z.files):
                keys = [k for k in z.files if need_feats or k != "feats"]
                return {k: (z[k] if k in ("mu", "sigma", "feats") else z[k].item()) for k in keys}
    feats = extract_features(ref.x, weights_path=weights, batch_size=o.get("batch_size", 64),
                             device=o.get("device", "cpu"))
    mu, sigma = feature_stats(feats)
    stats = {"mu": mu, "sigma": sigma, "N": int(feats.shape[0]), "extractor": ext, "dataset": str(ref.name),
             "split": str(ref.split)}
    if need_feats or feats.shape[0] <= _KEEP_FEATS:  # KID needs them; 50k x 2048 floats are 400 MB
        stats["feats"] = feats.numpy()
    with atomic_write(path) as f:
        np.savez(f, **stats)
    return stats


def sample_features(samples: torch.Tensor, ref: ReferenceSet | None, layer: str = POOL) -> torch.Tensor:
    """Inception features of `samples` (N, C, H, W) with the options of `ref` (weights, batch size,
    device); computed once per tensor and layer inside `feature_memo()` (fid, kid, precision and
    recall of one evaluation share them)."""
    o = _opts(ref)
    key = ("inception", layer, str(o.get("weights_path")), o.get("allow_download"), o.get("batch_size", 64),
           str(o.get("device", "cpu")))
    return memo_features(samples, key, lambda x: extract_features(
        x, weights_path=o.get("weights_path"), allow_download=o.get("allow_download"),
        batch_size=o.get("batch_size", 64), device=o.get("device", "cpu"), layer=layer))


def reference_features(ref: ReferenceSet, what: str = "this metric needs reference images") -> torch.Tensor:
    """(N_ref, 2048) Inception features of `ref.x` (disk-cached with the reference statistics);
    ValueError naming `what` when the reference has no images (only a stats npz)."""
    if ref.x is None:
        raise ValueError(f"{what}; reference '{ref.name}/{ref.split}' has none (only "
                         f"{'statistics ' + str(ref.stats_path) if ref.stats_path else 'a name'})")
    def load(_):
        return torch.from_numpy(np.asarray(reference_stats(ref, need_feats=True, what=what)["feats"]))
    return memo_features(ref.x, ("inception-reference", str(_opts(ref).get("weights_path"))), load)


def _sample_feats(samples: torch.Tensor, ref: ReferenceSet, layer: str = POOL) -> torch.Tensor | None:
    """Features of the samples (N, C, H, W); None if any sample is NaN/inf. Raises if N < 2."""
    if samples.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {samples.shape[0]}")
    if not torch.isfinite(samples).all():
        return None
    return sample_features(samples, ref, layer)


def fid(samples: torch.Tensor, ref: ReferenceSet, *, seed: int = 0) -> float:
    """FID of samples (N, C, H, W) in [-1, 1] against the reference statistics; NaN for NaN samples."""
    feats = _sample_feats(samples, ref)
    if feats is None:
        return math.nan
    stats = reference_stats(ref)
    mu, sigma = feature_stats(feats)
    return frechet_distance(mu, sigma, stats["mu"], stats["sigma"])


def kid(samples: torch.Tensor, ref: ReferenceSet, *, seed: int = 0, subsets: int = 100,
        subset_size: int = 1000) -> float:
    """Unbiased KID (mean over `subsets` random subsets, cubic polynomial kernel) via torch-fidelity."""
    feats = _sample_feats(samples, ref)
    if feats is None:
        return math.nan
    ref_feats = reference_features(ref, "KID needs reference images")
    size = min(subset_size, feats.shape[0], ref_feats.shape[0])
    out = kid_features_to_metric(feats, ref_feats, kid_subsets=subsets, kid_subset_size=size,
                                 rng_seed=int(seed), verbose=False)
    return float(out[KEY_METRIC_KID_MEAN])


def fid_metadata(ref: ReferenceSet) -> dict:
    """Extractor id (with weights hash) and resize mode; resolves the weights (fails early if absent)."""
    o = _opts(ref)
    weights = resolve_inception_weights(o.get("weights_path"), o.get("allow_download"))
    meta = {"extractor": extractor_id(weights), "resize": RESIZE}
    if ref.stats_path is not None:
        with np.load(ref.stats_path) as z:
            meta["reference_stats"] = str(ref.stats_path)
            meta["reference_extractor"] = str(z["extractor"]) if "extractor" in z.files else "unknown (external npz)"
            if ref.x is None and "N" in z.files:
                meta["reference_num"] = int(z["N"])
    return meta


def inception_score(samples: torch.Tensor, ref: ReferenceSet | None = None, *, seed: int = 0,
                    splits: int = 10) -> float:
    """Inception Score (Salimans et al. 2016) of samples (N, C, H, W) in [-1, 1]: torch-fidelity's
    `isc_featuresdict_to_metric` on the 'logits_unbiased' features, mean over min(splits, N) splits
    of a seeded shuffle. Higher is better (1 <= IS <= 1008). `ref` only supplies options (weights,
    device, batch size); no reference images are used. NaN for NaN/inf samples; N < 2 raises."""
    if samples.shape[0] < 2:
        raise ValueError(f"the Inception Score needs at least 2 samples, got {samples.shape[0]}")
    if not torch.isfinite(samples).all():
        return math.nan
    logits = sample_features(samples, ref, LOGITS)
    out = isc_featuresdict_to_metric({LOGITS: logits}, LOGITS, isc_splits=min(int(splits), logits.shape[0]),
                                     samples_shuffle=True, rng_seed=int(seed), verbose=False)
    return float(out[KEY_METRIC_ISC_MEAN])


def isc_metadata(ref: ReferenceSet) -> dict:
    """Extractor id of the logits layer (with the weights' hash); IS has no reference."""
    o = _opts(ref)
    weights = resolve_inception_weights(o.get("weights_path"), o.get("allow_download"))
    return {"extractor": extractor_id(weights, LOGITS), "resize": RESIZE, "reference": "none", "reference_num": None}


_INCEPTION = "torch-fidelity-inception-v3-compat/2048"  # the exact id (with the weights' hash) comes from fid_metadata
FID = MetricSpec("fid", fid, IMAGE, _INCEPTION, RESIZE, fid_metadata)
KID = MetricSpec("kid", kid, IMAGE, _INCEPTION, RESIZE, fid_metadata)
INCEPTION_SCORE = MetricSpec("inception_score", inception_score, IMAGE, f"torch-fidelity-inception-v3-compat/{LOGITS}",
                             RESIZE, isc_metadata, higher_is_better=True)
