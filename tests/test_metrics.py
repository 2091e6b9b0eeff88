"""Metric registry, Fréchet distance, data-space distances and the digits-classifier FD."""

import math

import numpy as np
import pytest
import torch

from mfsweep.data.digits import split_digits
from mfsweep.evaluation.metrics import METRICS, ReferenceSet, default_metrics
from mfsweep.evaluation.metrics import fd_classifier as fc
from mfsweep.evaluation.metrics.frechet import feature_stats, frechet_distance
from mfsweep.evaluation.metrics.toy import (energy_distance, mmd_rbf, random_directions, sliced_wasserstein,
                                 wasserstein_1d_sq)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- registry --------------------------------------------------------------------------------

def test_registry_names_and_errors():
    assert {"swd", "energy", "mmd", "fd_digits", "fid", "kid", "precision", "recall", "inception_score"} <= set(METRICS)
    with pytest.raises(ValueError, match=r"unknown metric 'nope'; valid: .*energy.*swd"):
        METRICS.lookup("nope")
    assert default_metrics("moons", "vector") == ["swd", "energy", "precision", "recall"]
    assert default_metrics("digits", "image") == ["fd_digits", "precision", "recall"]
    assert default_metrics("cifar10", "image") == ["fid", "precision", "recall"]
    for spec in METRICS.values():
        assert spec.kinds <= {"vector", "image"} and spec.extractor and spec.resize


# ---- Fréchet distance ------------------------------------------------------------------------

def _reference_fd(mu1, s1, mu2, s2):
    """Independent formula: tr((S1 S2)^1/2) = tr((A S2 A)^1/2) with A = S1^1/2, via eigh."""
    w, v = np.linalg.eigh(s1)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = np.linalg.eigvalsh(a @ s2 @ a)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(m, 0, None)).sum())


def test_frechet_self_and_independent_reference():
    rng = np.random.default_rng(0)
    d = 16
    for _ in range(3):
        w1, w2 = rng.standard_normal((d, d)), rng.standard_normal((d, d))
        s1, s2 = w1 @ w1.T / d + 0.1 * np.eye(d), w2 @ w2.T / d + 0.1 * np.eye(d)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
        ref = _reference_fd(mu1, s1, mu2, s2)
        assert ref > 1.0
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_frechet_1d_closed_form_and_features():
    # N(m1, a^2) vs N(m2, b^2): (m1 - m2)^2 + (a - b)^2
    assert frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]]) == pytest.approx(1.5 ** 2 + 1.5 ** 2)
    feats = torch.randn(500, 8, generator=_gen())
    mu, sigma = feature_stats(feats)
    assert mu.shape == (8,) and sigma.shape == (8, 8)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_too_few_and_nan():
    with pytest.raises(ValueError, match="need at least 2 samples for a covariance, got 1"):
        feature_stats(torch.zeros(1, 4))
    feats = torch.randn(10, 3, generator=_gen())
    mu, sigma = feature_stats(feats)
    bad = feats.clone()
    bad[0, 0] = float("nan")
    mu_b, sigma_b = feature_stats(bad)
    assert math.isnan(frechet_distance(mu_b, sigma_b, mu, sigma))


# ---- data-space distances --------------------------------------------------------------------

def test_swd_self_shift_and_symmetry():
    x = torch.randn(300, 1, generator=_gen(1), dtype=torch.float64)
    assert sliced_wasserstein(x, x) == 0.0
    # 1-D: every projection is +-1, so W2 of a shift s is |s| exactly, also for unequal sizes.
    assert sliced_wasserstein(x, x + 0.7) == pytest.approx(0.7, rel=1e-9)
    assert sliced_wasserstein(x, torch.cat([x, x]) - 1.3) == pytest.approx(1.3, rel=1e-9)
    # d-D: W2 along theta of a shift s is |<theta, s>|; E_theta <theta, s>^2 = |s|^2 / d.
    x = torch.randn(400, 3, generator=_gen(2), dtype=torch.float64)
    s = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    theta = random_directions(3, 2000, seed=5)
    exact = math.sqrt(float(((theta @ s) ** 2).mean()))
    got = sliced_wasserstein(x, x + s, num_projections=2000, seed=5)
    assert got == pytest.approx(exact, rel=1e-9)
    assert got == pytest.approx(float(s.norm()) / math.sqrt(3), rel=0.05)
    y = torch.randn(250, 3, generator=_gen(3), dtype=torch.float64) * 1.5
    assert sliced_wasserstein(x, y, seed=1) == pytest.approx(sliced_wasserstein(y, x, seed=1), rel=1e-12)


def test_w2_1d_unequal_sizes_by_hand():
    # quantiles of {0, 1} vs {0, .5, 1}: differ by .5 on (1/3, 2/3] -> W2^2 = .25 / 3
    a = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    b = torch.tensor([[0.5], [1.0], [0.0]], dtype=torch.float64)
    assert float(wasserstein_1d_sq(a, b)[0]) == pytest.approx(1 / 12, rel=1e-12)


def test_energy_distance():
    # deterministic N(0, 1) "samples": the quantiles at (i + 1/2) / n
    x = torch.special.ndtri((torch.arange(2000, dtype=torch.float64) + 0.5) / 2000)[:, None]
    y = x + 1.0
    assert energy_distance(x, x) == 0.0
    # point masses s apart: 2|s|
    assert energy_distance(torch.zeros(5, 2), torch.full((7, 2), 1.5)) == pytest.approx(2 * 1.5 * math.sqrt(2))
    # N(0,1) vs N(1,1): 2 E|N(1, 2)| - 2 E|N(0, 2)|, E|N(m, v)| = sqrt(2v/pi) e^{-m^2/2v} + m erf(m/sqrt(2v))
    e_abs = lambda m, v: math.sqrt(2 * v / math.pi) * math.exp(-m * m / (2 * v)) + m * math.erf(m / math.sqrt(2 * v))
    closed = 2 * e_abs(1.0, 2.0) - 2 * e_abs(0.0, 2.0)
    got = energy_distance(x, y)
    print(f"energy N(0,1) vs N(1,1): {got:.4f}, closed form {closed:.4f}")
    assert got == pytest.approx(closed, abs=1e-3)
    assert got == pytest.approx(energy_distance(y, x), rel=1e-9)
    assert energy_distance(x, y[:500] + 2.0) > got


def test_mmd():
    x = torch.randn(400, 2, generator=_gen(6))
    y = torch.randn(300, 2, generator=_gen(7)) + 0.5
    assert mmd_rbf(x, x) == pytest.approx(0.0, abs=1e-12)
    assert mmd_rbf(x, y) == pytest.approx(mmd_rbf(y, x), rel=1e-9)
    assert mmd_rbf(x, y + 1.0) > mmd_rbf(x, y) > 0
    # point masses s apart, bandwidth h: 2 - 2 exp(-s^2 / 2h^2)
    got = mmd_rbf(torch.zeros(3, 1), torch.full((4, 1), 2.0), bandwidth=1.5)
    assert got == pytest.approx(2 - 2 * math.exp(-4 / (2 * 1.5 ** 2)), rel=1e-12)


def test_registry_calls_toy_metrics():
    x = torch.randn(200, 2, generator=_gen(8))
    ref = ReferenceSet("moons", "test", "vector", x)
    for name in ("swd", "energy", "mmd"):
        assert METRICS.lookup(name)(x, ref, seed=0) == pytest.approx(0.0, abs=1e-12)
        assert METRICS.lookup(name)(x + 1, ref, seed=0) > 0.1


# ---- fd_digits -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MFSWEEP_CACHE", str(tmp_path_factory.mktemp("mfsweep_cache")))
        before = fc.TRAIN_COUNT
        info = fc.digits_classifier_info()
        assert fc.TRAIN_COUNT == before + 1  # fresh cache dir: trained once
        yield info


def test_digits_classifier_accuracy_and_cache(digits_cache, monkeypatch):
    assert digits_cache["accuracy"] > 0.9, digits_cache
    path = fc.classifier_path(0, 0.2)
    assert str(path) == digits_cache["path"] and path.is_file()
    mtime, count = path.stat().st_mtime_ns, fc.TRAIN_COUNT
    monkeypatch.setattr(fc, "_MEMO", {})  # forget the in-process model: must come from disk
    info = fc.digits_classifier_info()
    assert fc.TRAIN_COUNT == count and path.stat().st_mtime_ns == mtime
    assert info["accuracy"] == digits_cache["accuracy"]


def test_fd_digits_ordering(digits_cache):
    x_tr, x_te, _, _ = split_digits()
    ref = ReferenceSet("digits", "train", "image", x_tr)
    fd_test = METRICS.lookup("fd_digits")(x_te, ref)
    fd_noise = METRICS.lookup("fd_digits")(torch.rand(x_te.shape, generator=_gen(9)) * 2 - 1, ref)
    fd_self = METRICS.lookup("fd_digits")(x_tr, ref)
    print(f"fd_digits: test-vs-train {fd_test:.3f}, uniform-noise-vs-train {fd_noise:.3f}")
    assert abs(fd_self) < 1e-6
    assert fd_test < 10.0 and fd_noise > 50 * fd_test
    # reference given only by split name
    assert METRICS.lookup("fd_digits")(x_te, ReferenceSet("digits", "train", "image", None)) == pytest.approx(fd_test)
