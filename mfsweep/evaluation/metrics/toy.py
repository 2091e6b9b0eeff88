"""Sample-based distances in data space for 2-D toys and small vectors (float64 internally).

- Sliced Wasserstein-2 (Rabin, Peyré, Delon, Bernot, "Wasserstein Barycenter and its Application to
  Texture Mixing", SSVM 2011): average of exact 1-D W2^2 over random unit directions.
- Energy distance (Székely & Rizzo, "Energy statistics", 2013; Székely 1989/2002):
  2 E|X - Y| - E|X - X'| - E|Y - Y'|.
- Gaussian-kernel MMD^2 (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012) with the median
  heuristic bandwidth.

All three take samples `x: (N, D)` and `y: (M, D)` (anything with N leading rows is flattened to
(N, -1)) and return a float, lower is better, 0 for identical sets.

`swd` also applies to images (in pixel space, flattened): a distance that needs no downloaded
feature network, used by `mfsweep run --smoke` on image and latent studies (offline); it is not a
substitute for FID.
"""

from __future__ import annotations

import torch

from mfsweep.evaluation.metrics import IMAGE, VECTOR, MetricSpec, on_reference_samples

__all__ = ["random_directions", "wasserstein_1d_sq", "sliced_wasserstein", "energy_distance", "median_bandwidth",
           "mmd_rbf"]

_CHUNK = 2048  # rows per block of pairwise distances (bounds memory at _CHUNK * M doubles)


def _flat64(a: torch.Tensor) -> torch.Tensor:
    return a.detach().reshape(a.shape[0], -1).to(device="cpu", dtype=torch.float64)


def random_directions(dim: int, num: int, seed: int) -> torch.Tensor:
    """`num` directions uniform on the unit sphere S^{dim-1}, seeded. Returns (num, dim) float64."""
    g = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(num, dim, generator=g, dtype=torch.float64)
    return theta / theta.norm(dim=1, keepdim=True)


def wasserstein_1d_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact squared W2 between 1-D empirical measures, column by column.

    W2^2 = int_0^1 |F_a^{-1}(u) - F_b^{-1}(u)|^2 du; both quantile functions are piecewise constant,
    so the integral is a finite sum over the merged breakpoints {i/N} U {j/M} (plain sorted matching
    when N == M).

    Args:
        a: (N, L), b: (M, L) float64 projections. Returns: (L,) squared distances.
    """
    a, b = a.sort(dim=0).values, b.sort(dim=0).values
    n, m = a.shape[0], b.shape[0]
    if n == m:
        return ((a - b) ** 2).mean(dim=0)
    edges = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                       torch.arange(1, m + 1, dtype=torch.float64) / m]).unique()  # sorted, ends at 1
    widths = torch.diff(edges, prepend=edges.new_zeros(1))
    mids = edges - widths / 2
    ia = (mids * n).floor().long().clamp_max(n - 1)
    ib = (mids * m).floor().long().clamp_max(m - 1)
    return (widths[:, None] * (a[ia] - b[ib]) ** 2).sum(dim=0)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, *, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance sqrt(mean_theta W2^2(<theta, x>, <theta, y>)) (Rabin et al. 2011).

    Args:
        x: (N, D), y: (M, D) samples; sizes may differ (exact quantile matching).
        num_projections: number of random unit directions, drawn from `seed`.
    Returns:
        SW2 in data units (e.g. a pure shift s in 1-D gives |s|).
    """
    x, y = _flat64(x), _flat64(y)
    theta = random_directions(x.shape[1], num_projections, seed)
    return float(wasserstein_1d_sq(x @ theta.T, y @ theta.T).mean().sqrt())


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (A, D), (B, D) -> (A, B) without the |a|^2 + |b|^2 - 2ab shortcut (exact zeros)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _mean_pairwise(x: torch.Tensor, y: torch.Tensor, fn) -> torch.Tensor:
    """mean over all (i, j) of fn(|x_i - y_j|), computed in row blocks. x: (N, D), y: (M, D)."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(0, x.shape[0], _CHUNK):
        total = total + fn(_cdist(x[i:i + _CHUNK], y)).sum()
    return total / (x.shape[0] * y.shape[0])


def energy_distance(x: torch.Tensor, y: torch.Tensor, *, seed: int = 0) -> float:
    """Energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (Székely), V-statistic (always >= 0).

    Args:
        x: (N, D), y: (M, D). seed: unused (deterministic); kept for the metric protocol.
    Returns:
        The squared-distance-like energy statistic; 2|s| for two point masses s apart.
    """
    x, y = _flat64(x), _flat64(y)
    ident = lambda d: d  # noqa: E731
    e = 2 * _mean_pairwise(x, y, ident) - _mean_pairwise(x, x, ident) - _mean_pairwise(y, y, ident)
    return float(e.clamp_min(0.0))


def _subset(a: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Up to k rows of a, chosen with a generator that depends only on (seed, len(a))."""
    if a.shape[0] <= k:
        return a
    g = torch.Generator().manual_seed(int(seed))
    return a[torch.randperm(a.shape[0], generator=g)[:k]]


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, *, max_points: int = 1000, seed: int = 0) -> float:
    """Median pairwise distance of the pooled sample (x: (N, D), y: (M, D)); symmetric in x, y."""
    pooled = torch.cat([_subset(_flat64(x), max_points, seed), _subset(_flat64(y), max_points, seed)])
    d = _cdist(pooled, pooled)
    off = d[~torch.eye(d.shape[0], dtype=torch.bool)]
    h = float(off.median()) if off.numel() else 1.0
    return h if h > 0 else 1.0


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, *, bandwidth: float | None = None, seed: int = 0) -> float:
    """Biased (V-statistic) MMD^2 with k(a, b) = exp(-|a - b|^2 / (2 h^2)); >= 0, 0 for x == y.

    Args:
        x: (N, D), y: (M, D). bandwidth: h; None -> median heuristic (seeded subset of <= 1000 points
            per set for the median).
    """
    x, y = _flat64(x), _flat64(y)
    h = median_bandwidth(x, y, seed=seed) if bandwidth is None else float(bandwidth)
    k = lambda d: torch.exp(-(d ** 2) / (2 * h * h))  # noqa: E731
    m = _mean_pairwise(x, x, k) + _mean_pairwise(y, y, k) - 2 * _mean_pairwise(x, y, k)
    return float(m.clamp_min(0.0))


SWD = MetricSpec("swd", on_reference_samples(sliced_wasserstein), VECTOR | IMAGE, "identity", "none")
ENERGY = MetricSpec("energy", on_reference_samples(energy_distance), VECTOR, "identity", "none")
MMD = MetricSpec("mmd", on_reference_samples(mmd_rbf), VECTOR, "identity", "none")
