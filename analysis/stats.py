"""Statistics for study tables: pure functions on numbers (no MLflow, no pandas frames).

    t_interval(values)            mean, std (ddof=1) and a Student t confidence interval of the mean
    paired_difference(a, b)       a − b paired by seed (only seeds present and finite in both)
    verdict(interval)             "resolved" (the interval excludes 0), "within noise", or no interval
    pooled_sd(groups)             pooled standard deviation of several groups of paired differences
    seeds_needed(s_d, delta)      seeds a paired comparison needs to resolve `delta` at spread `s_d`

Why a t-interval and not a bootstrap: studies run 2–5 seeds. A bootstrap interval from n = 3 values
has only 10 distinct resamples, cannot reach beyond the observed range and is far too narrow; the
t-interval, mean ± t(1 − α/2, n − 1) · std / √n, is exact for normally distributed seed noise and
widens correctly as n shrinks (t(0.975, 2) = 4.30). With n = 1 there is no spread, hence no interval.

Power: a paired comparison of two variants over n seeds with paired-difference standard deviation
s_d resolves a true difference X (two-sided α, power 1 − β) when n ≈ ((z(1 − α/2) + z(1 − β)) · s_d /
X)², the normal approximation of the paired t-test (with α = 0.05 and power 0.8, z's sum to 2.80).
It slightly under-counts for small n (the t-test needs about 1–2 seeds more); it is a planning
figure, not a guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
from scipy import stats as _st

CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.8
MIN_SEEDS = 2  # a paired interval needs at least two differences


def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values if v is not None], dtype=float)
    return arr[np.isfinite(arr)]


@dataclass(frozen=True)
class Interval:
    """Mean, sample std (ddof=1), n and the t confidence interval [low, high] of the mean.

    low/high are NaN when n < 2 (no interval); mean is NaN when n = 0, std NaN when n < 2."""

    mean: float
    std: float
    n: int
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)

    def excludes(self, x: float = 0.0) -> bool:
        """True when the interval exists and `x` lies outside it."""
        return self.has_interval and (self.low > x or self.high < x)


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """Student t-interval of the mean of `values` (non-finite values are dropped).

    mean ± t(1 − (1 − confidence)/2, n − 1) · std / √n with std the sample standard deviation."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, 0, math.nan, math.nan, confidence)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, 1, math.nan, math.nan, confidence)
    std = float(x.std(ddof=1))
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, std, n, mean - half, mean + half, confidence)


@dataclass(frozen=True)
class PairedDifference:
    """a − b over the seeds both finished: the differences, their t-interval and a p-value."""

    seeds: tuple
    diffs: tuple[float, ...]
    interval: Interval

    @property
    def n(self) -> int:
        return self.interval.n

    @property
    def mean(self) -> float:
        return self.interval.mean

    @property
    def p_value(self) -> float:
        """Two-sided paired t-test p-value (NaN with n < 2; 0 or 1 when the differences are equal)."""
        iv = self.interval
        if iv.n < 2:
            return math.nan
        if iv.std == 0:
            return 1.0 if iv.mean == 0 else 0.0
        t = iv.mean / (iv.std / math.sqrt(iv.n))
        return float(2 * _st.t.sf(abs(t), iv.n - 1))


def paired_difference(a: Mapping, b: Mapping, confidence: float = CONFIDENCE) -> PairedDifference:
    """Differences a[s] − b[s] for every seed s with a finite value in both mappings, in the order of
    `a`'s keys; their mean and t-interval."""
    seeds, diffs = [], []
    for s, va in a.items():
        vb = b.get(s)
        if va is None or vb is None:
            continue
        va, vb = float(va), float(vb)
        if math.isfinite(va) and math.isfinite(vb):
            seeds.append(s)
            diffs.append(va - vb)
    return PairedDifference(tuple(seeds), tuple(diffs), t_interval(diffs, confidence))


RESOLVED = "resolved"
WITHIN_NOISE = "within noise"
NO_INTERVAL = "n = 1, no interval"
NO_PAIRS = "no paired seeds"


def verdict(interval: Interval) -> str:
    """"resolved" when the interval excludes 0, "within noise" when it contains 0, else why none."""
    if interval.n == 0:
        return NO_PAIRS
    if not interval.has_interval:
        return NO_INTERVAL
    return RESOLVED if interval.excludes(0.0) else WITHIN_NOISE


def pooled_sd(groups: Iterable[Iterable[float]]) -> tuple[float, int]:
    """Pooled standard deviation sqrt(Σ (n_i − 1) s_i² / Σ (n_i − 1)) over groups with n_i ≥ 2, and its
    degrees of freedom Σ (n_i − 1). (NaN, 0) when no group has two finite values."""
    ss, dof = 0.0, 0
    for g in groups:
        x = _finite(g)
        if len(x) >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            dof += len(x) - 1
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)


def seeds_needed_exact(s_d: float, delta: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """((z(1 − α/2) + z(power)) · s_d / delta)², unrounded; inf when delta = 0, NaN when unknown."""
    if not (math.isfinite(s_d) and math.isfinite(delta)):
        return math.nan
    if delta == 0:
        return math.inf if s_d > 0 else math.nan
    z = _st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power)
    return float((z * s_d / abs(delta)) ** 2)


def seeds_needed(s_d: float, delta: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Seeds a paired comparison needs to resolve a difference `delta` when paired differences have
    standard deviation `s_d`: ceil of `seeds_needed_exact`, at least MIN_SEEDS (2). None when it
    cannot be computed (s_d or delta unknown, or delta = 0: no number of seeds resolves it)."""
    n = seeds_needed_exact(s_d, delta, alpha, power)
    if not math.isfinite(n):
        return None
    return max(MIN_SEEDS, math.ceil(n - 1e-9))
