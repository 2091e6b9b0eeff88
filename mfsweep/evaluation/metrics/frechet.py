"""Fréchet distance between Gaussians fitted to features (the maths behind FID).

Heusel, Ramsauer, Unterthiner, Nessler, Hochreiter, "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium" (NeurIPS 2017): with (mu1, S1) and (mu2, S2) the feature means
and covariances of two sample sets,

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).

Also holds the on-disk cache location shared by the Fréchet-type metrics (`fd_digits`, `fid`).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

__all__ = ["frechet_distance", "feature_stats", "cache_dir"]

# Relative size of the imaginary part of tr((S1 S2)^{1/2}) that we accept as round-off.
_IMAG_TOL = 1e-3
_RESID_TOL = 1e-4


def cache_dir() -> Path:
    """Directory for cached classifier weights and reference statistics.

    `$MFSWEEP_CACHE` if set, else `~/.cache/mfsweep`; created on demand.
    """
    root = os.environ.get("MFSWEEP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mfsweep")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def feature_stats(feats: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features.

    Args:
        feats: (N, D) features, N >= 2.
    Returns:
        mu: (D,) float64, sigma: (D, D) float64 (unbiased covariance, divisor N - 1). NaN features
        give NaN statistics (no error).
    Raises:
        ValueError: fewer than 2 samples or not a 2-D array.
    """
    if torch.is_tensor(feats):
        feats = feats.detach().cpu().to(torch.float64).numpy()
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {feats.shape}")
    n = feats.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {n}")
    mu = feats.mean(axis=0)
    sigma = np.atleast_2d(np.cov(feats, rowvar=False))
    return mu, sigma


def _sqrtm(a: np.ndarray, check: bool = True) -> np.ndarray:
    """scipy.linalg.sqrtm (D, D) -> (D, D); NaN when it fails or (check) is inaccurate (relative
    residual |X X - A|_F / |A|_F > 1e-4; scipy's singular-matrix warning is replaced by this check)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            x = np.asarray(scipy.linalg.sqrtm(a))
    except (ValueError, np.linalg.LinAlgError):
        return np.full_like(a, np.nan)
    norm = np.linalg.norm(a)
    if check and np.isfinite(x).all() and norm > 0 and np.linalg.norm(x @ x - a) > _RESID_TOL * norm:
        return np.full_like(a, np.nan)
    return x


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017).

    Args:
        mu1, mu2: (D,) means. sigma1, sigma2: (D, D) covariances.
        eps: diagonal offset added to both covariances when the matrix square root of the product
            is not finite or inaccurate (near-singular covariances, e.g. N < D), as in the reference
            TTUR / pytorch-fid code.
    Returns:
        The squared Fréchet distance as a float; NaN when any input is NaN/inf.
    Raises:
        ValueError: shapes disagree, or (S1 S2)^{1/2} has a non-negligible imaginary part.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"statistics disagree in shape: mu1 {mu1.shape}, mu2 {mu2.shape}, "
            f"sigma1 {sigma1.shape}, sigma2 {sigma2.shape}"
        )
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        return math.nan

    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(d) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset), check=False)
        if not np.isfinite(covmean).all():
            return math.nan
    if np.iscomplexobj(covmean):
        # Round-off turns tiny negative eigenvalues of the (PSD-similar) product into complex pairs.
        scale = max(1.0, float(np.abs(covmean).max()))
        imag = float(np.abs(np.diagonal(covmean).imag).max())
        if imag > _IMAG_TOL * scale:
            raise ValueError(f"sqrtm(sigma1 @ sigma2) has a large imaginary component ({imag:.3g})")
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(value)
