"""Fréchet distance between Gaussians fitted to features (the maths behind FID).

Heusel, Ramsauer, Unterthiner, Nessler, Hochreiter, "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium" (NeurIPS 2017): with (mu1, S1) and (mu2, S2) the feature means
and covariances of two sample sets,

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).

The trace term is computed from eigenvalues (`frechet_distance`, `trace_sqrt_product`): with
A = S1^{1/2} (symmetric square root from `np.linalg.eigh`), S1 S2 = A (A S2) and A S2 A = (A S2) A
share their non-zero eigenvalues, and A S2 A is symmetric positive semi-definite, so
tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(A S2 A)) (a Cholesky factor of S1 serves as well when S1 is
positive definite). Symmetric eigensolvers and two matrix products replace `scipy.linalg.sqrtm` of
the non-symmetric product (complex Schur form plus a triangular square-root recursion): at D = 2048
about 1-1.5 s instead of 11-20 s (idle) to 40-70 s (loaded) per call on this project's 2-core CPU
(`benchmarks/frechet_cost.py`). FastFID (Mathiasen & Hvilshøj, "Backpropagating through Fréchet
Inception Distance", arXiv 2009.14075) rests on the same fact (the trace of the square root from
eigenvalues of a similar, smaller matrix). The former sqrtm form is kept as `frechet_distance_sqrtm`,
the reference of tests and the benchmark.

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

__all__ = ["frechet_distance", "frechet_distance_sqrtm", "trace_sqrt_product", "feature_stats", "cache_dir"]

# Relative size of the imaginary part of tr((S1 S2)^{1/2}) that we accept as round-off.
_IMAG_TOL = 1e-3
_RESID_TOL = 1e-4
# Eigenvalues below -_NEG_TOL * (largest eigenvalue) are not round-off: the input is not a covariance.
# (Round-off of a float64 eigensolver is ~1e-13 relative at D = 2048; covariances stored in float32,
# e.g. ADM reference npz files, move eigenvalues by at most ~3e-6 relative.)
_NEG_TOL = 1e-4


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


def _check_stats(mu1, sigma1, mu2, sigma2):
    """float64 copies of the statistics; ValueError when their shapes disagree."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"statistics disagree in shape: mu1 {mu1.shape}, mu2 {mu2.shape}, "
            f"sigma1 {sigma1.shape}, sigma2 {sigma2.shape}; expected (D,), (D,), (D, D), (D, D)"
        )
    return mu1, sigma1, mu2, sigma2


def _psd_eigvals(a: np.ndarray, what: str, with_vectors: bool = False):
    """Eigen(values[, vectors]) of the symmetric part of `a`, tiny negative eigenvalues (round-off)
    clipped to 0; ValueError when an eigenvalue is clearly negative (not a covariance)."""
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a) if with_vectors else (np.linalg.eigvalsh(a), None)
    top = float(np.abs(w).max()) if w.size else 0.0
    if w.size and float(w.min()) < -_NEG_TOL * top:
        raise ValueError(f"{what} is not positive semi-definite (eigenvalue {float(w.min()):.3g}, largest "
                         f"{top:.3g}); pass covariance matrices, e.g. from feature_stats")
    w = np.clip(w, 0.0, None)
    return (w, v) if with_vectors else w


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^{1/2}) for symmetric positive semi-definite S1, S2 (D, D), by eigenvalues.

    Any square-root factor B of S1 (B B^T = S1) gives the answer: S1 S2 = B (B^T S2) and
    M = (B^T S2) B share their non-zero eigenvalues (XY and YX always do), and M = B^T S2 B is
    symmetric PSD, so they are real and >= 0. The principal square root of S1 S2 has the square roots
    of those eigenvalues, hence

        tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(B^T S2 B)).

    With the symmetric eigendecomposition S1 = V diag(w) V^T (`np.linalg.eigh`) and
    B = V diag(sqrt(w)), M = V^T (S1^{1/2} S2 S1^{1/2}) V: the eigenvalues of S1^{1/2} S2 S1^{1/2}.
    Columns with w = 0 are dropped, so a rank-r S1 (e.g. from N <= D samples) gives an r x r M: exact,
    no diagonal offset needed. Eigenvalues of S1 and of M that are negative only by round-off are
    clipped to 0 before the square roots; clearly negative ones (below -1e-4 x the largest) raise
    ValueError: the inputs are not covariances. When S1 is positive definite its Cholesky factor
    L (L L^T = S1) is used as B instead of the eigendecomposition: the same identity, ~0.15 s instead
    of ~1 s at D = 2048 (`np.linalg.cholesky` fails on singular S1, which then takes the eigh path).
    """
    s1 = 0.5 * (sigma1 + sigma1.T)
    try:
        b = np.linalg.cholesky(s1)  # (D, D) lower triangular, b @ b.T == S1
    except np.linalg.LinAlgError:  # singular (rank-deficient) or not a covariance: eigh
        w, v = _psd_eigvals(s1, "sigma1", with_vectors=True)
        keep = w > 0
        b = v[:, keep] * np.sqrt(w[keep])  # (D, r), b @ b.T == S1
    if b.shape[1] == 0:
        return 0.0
    m = b.T @ (sigma2 @ b)
    lam = _psd_eigvals(m, "sigma1^{1/2} sigma2 sigma1^{1/2}")
    return float(np.sqrt(lam).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}), the trace term from the eigenvalues
    of the symmetric PSD matrix S1^{1/2} S2 S1^{1/2} (`trace_sqrt_product`; exact for singular
    covariances too). Agrees with the former `scipy.linalg.sqrtm` form (`frechet_distance_sqrtm`) to
    ~1e-10 relative on well-conditioned statistics (~1e-7 on rank-deficient ones, where the
    sqrtm form needs its eps offset), ~10x faster at D = 2048.

    Args:
        mu1, mu2: (D,) means. sigma1, sigma2: (D, D) covariances (symmetric PSD; their symmetric
            parts are used).
        eps: diagonal offset added to both covariances only if the eigensolver does not converge
            (np.linalg.LinAlgError); the eigenvalue form needs no offset for singular covariances
            (N < D), unlike the sqrtm form of the TTUR / pytorch-fid code.
    Returns:
        The squared Fréchet distance as a float; NaN when any input is NaN/inf.
    Raises:
        ValueError: shapes disagree, or a covariance is clearly not positive semi-definite.
    """
    mu1, sigma1, mu2, sigma2 = _check_stats(mu1, sigma1, mu2, sigma2)
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        return math.nan
    diff = mu1 - mu2
    try:
        tr_covmean = trace_sqrt_product(sigma1, sigma2)
    except np.linalg.LinAlgError:
        offset = np.eye(mu1.shape[0]) * eps
        try:
            tr_covmean = trace_sqrt_product(sigma1 + offset, sigma2 + offset)
        except np.linalg.LinAlgError:
            return math.nan
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
    return float(value)


def frechet_distance_sqrtm(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                           eps: float = 1e-6) -> float:
    """The former form: tr((S1 S2)^{1/2}) from `scipy.linalg.sqrtm` of the product (TTUR /
    pytorch-fid style; 40-70 s at D = 2048 on a 2-core CPU). Kept as the reference of tests and
    `benchmarks/frechet_cost.py`; use `frechet_distance`.

    eps: diagonal offset added to both covariances when the square root is not finite or
    inaccurate (relative residual > 1e-4, near-singular covariances, e.g. N < D).
    Raises ValueError when shapes disagree or (S1 S2)^{1/2} has a non-negligible imaginary part.
    """
    mu1, sigma1, mu2, sigma2 = _check_stats(mu1, sigma1, mu2, sigma2)
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        return math.nan
    d = mu1.shape[0]
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
