"""FID/KID through torch-fidelity's Inception-v3, with random weights (the real ones cannot be
downloaded here): same features as torch-fidelity called directly, weight resolution errors,
reference-statistics cache, ADM-style npz, small/NaN inputs."""

import math
from unittest import mock

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric

from mfsweep.evaluation.metrics import METRICS, ReferenceSet
from mfsweep.evaluation.metrics import fid
from mfsweep.evaluation.metrics.frechet import feature_stats


def _random_inception_weights(path, seed):
    """Save a randomly initialised torch-fidelity Inception-v3 state dict (Kaiming init keeps the
    2048-d features at a sensible scale)."""
    Net = tf_inception.FeatureExtractorInceptionV3
    with mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(Net, "load_state_dict", lambda self, sd, *a, **k: None), \
            torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Net("inception-v3-compat", ["2048"])
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _random_inception_weights(tmp_path_factory.mktemp("w") / "inception_a.pt", 0)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MFSWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no hub-cached weights
    monkeypatch.delenv("MFSWEEP_INCEPTION_WEIGHTS", raising=False)


@pytest.fixture
def calls(monkeypatch):
    """Counts feature extractions (list of batch sizes; `.feats` keeps the outputs)."""
    seen, real = CallLog(), fid.extract_features

    def counting(x, **kw):
        out = real(x, **kw)
        seen.append(int(x.shape[0]))
        seen.feats.append(out)
        return out
    monkeypatch.setattr(fid, "extract_features", counting)
    return seen


@pytest.fixture
def fake_calls(monkeypatch):
    """Like `calls`, but with cheap deterministic stand-in features (for cache bookkeeping tests;
    the real pipeline is covered by test_pipeline_matches_torch_fidelity)."""
    seen = CallLog()

    def fake(x, **kw):
        g = torch.Generator().manual_seed(int(x.sum().mul(1000).round()) % (2 ** 31))
        out = torch.randn(x.shape[0], 2048, generator=g)
        seen.append(int(x.shape[0]))
        seen.feats.append(out)
        return out
    monkeypatch.setattr(fid, "extract_features", fake)
    return seen


class CallLog(list):
    def __init__(self):
        super().__init__()
        self.feats = []


def _images(n, seed, channels=1):
    return torch.rand(n, channels, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_uint8_conversion():
    x = torch.tensor([-1.0, -0.999, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5)
    u8 = fid.to_uint8_rgb(x)
    assert u8.dtype == torch.uint8 and u8.shape == (1, 3, 1, 5)
    assert u8[0, :, 0].tolist() == [[0, 0, 128, 255, 255]] * 3


def test_pipeline_matches_torch_fidelity(weights):
    x = torch.cat([_images(1, 0), _images(1, 1, channels=3).mean(1, keepdim=True)])
    ours = fid.extract_features(x, weights_path=weights)
    direct_net = tf_inception.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1)
    with torch.no_grad():
        direct = direct_net(u8)[0]
    assert ours.shape == (2, 2048)
    assert float(ours.std()) > 1e-3  # random weights still give non-degenerate features
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-6)


def test_missing_weights_error(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    with pytest.raises(fid.MissingWeightsError) as err:
        fid.resolve_inception_weights(missing, allow_download=False)
    msg = str(err.value)
    assert str(missing) in msg and fid.INCEPTION_URL in msg and "MFSWEEP_INCEPTION_WEIGHTS" in msg
    with pytest.raises(fid.MissingWeightsError, match="download is disabled"):
        fid.resolve_inception_weights(None, allow_download=False)
    monkeypatch.setenv("MFSWEEP_INCEPTION_WEIGHTS", str(missing))
    with pytest.raises(fid.MissingWeightsError, match="nope.pth"):
        fid.resolve_inception_weights()
    ref = ReferenceSet("cifar10", "train", "image", _images(4, 1), options={"allow_download": False})
    with pytest.raises(fid.MissingWeightsError):
        METRICS.lookup("fid").metadata(ref)


def test_extractor_id_hashes_weights(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights-a")
    b.write_bytes(b"weights-b")
    assert fid.extractor_id(a) != fid.extractor_id(b)
    assert fid.extractor_id(a) == "torch-fidelity-inception-v3-compat/2048/sha256:" + \
        __import__("hashlib").sha256(b"weights-a").hexdigest()[:8]


def test_reference_cache_hit_and_invalidation(weights, fake_calls, monkeypatch):
    calls = fake_calls
    x = _images(16, 2)
    opts = {"weights_path": weights}
    first = fid.reference_stats(ReferenceSet("toyimg", "train", "image", x, options=opts))
    assert calls == [16] and first["N"] == 16 and first["extractor"].startswith(
        "torch-fidelity-inception-v3-compat/2048/sha256:")
    again = fid.reference_stats(ReferenceSet("toyimg", "train", "image", x.clone(), options=opts))
    assert calls == [16], "second evaluation must read the cached statistics"
    np.testing.assert_array_equal(first["mu"], again["mu"])
    np.testing.assert_array_equal(first["sigma"], again["sigma"])
    fid.reference_stats(ReferenceSet("other", "train", "image", x, options=opts))
    assert len(calls) == 2
    fid.reference_stats(ReferenceSet("toyimg", "test", "image", x, options=opts))
    assert len(calls) == 3
    monkeypatch.setattr(fid, "extractor_id", lambda w: "torch-fidelity-inception-v3-compat/2048/sha256:other")
    other = fid.reference_stats(ReferenceSet("toyimg", "train", "image", x, options=opts))
    assert len(calls) == 4 and other["extractor"] != first["extractor"]
    fid.reference_stats(ReferenceSet("toyimg", "train", "image", x, options=opts))
    assert len(calls) == 4


@pytest.fixture
def fd_calls(monkeypatch):
    """Records the statistics handed to the Fréchet distance (its maths is tested in test_metrics.py and
    test_eval_scale.py; a 2048-d call takes 1-2 s on this shared CPU) and returns a marker value."""
    seen = []

    def recording(mu1, sigma1, mu2, sigma2):
        seen.append((mu1, sigma1, mu2, sigma2))
        return 42.0 + len(seen)
    monkeypatch.setattr(fid, "frechet_distance", recording)
    return seen


def test_fid_values_and_metadata(weights, calls, fd_calls):
    x, y = _images(2, 3), _images(2, 4, channels=3)
    ref = ReferenceSet("toyimg", "train", "image", x, options={"weights_path": weights})
    spec = METRICS.lookup("fid")
    meta = spec.metadata(ref)
    assert meta["resize"] == fid.RESIZE and meta["extractor"] == fid.extractor_id(weights)
    assert meta["extractor"].startswith(spec.extractor) and meta["reference_num"] == 2
    assert spec(y, ref, seed=0) == 43.0
    assert spec(y, ref, seed=1) == 44.0
    assert calls == [2, 2, 2]  # samples, reference (once), samples again
    mu1, sigma1, mu2, sigma2 = fd_calls[0]
    m_y, s_y = feature_stats(calls.feats[0])
    m_x, s_x = feature_stats(calls.feats[1])
    np.testing.assert_allclose(mu1, m_y, rtol=1e-6)
    np.testing.assert_allclose(sigma1, s_y, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(mu2, m_x, rtol=1e-6)
    np.testing.assert_allclose(sigma2, s_x, rtol=1e-5, atol=1e-12)
    assert mu1.shape == (2048,) and sigma2.shape == (2048, 2048)


def test_adm_style_npz(weights, tmp_path, calls, fd_calls):
    x = _images(2, 5)
    rng = np.random.default_rng(0)
    mu, a = rng.standard_normal(2048) * 0.1, rng.standard_normal((2048, 8)) * 0.01
    path = tmp_path / "VIRTUAL_ref.npz"
    np.savez(path, mu=mu.astype(np.float32), sigma=a @ a.T, N=50000)
    ref = ReferenceSet("cifar10", "train", "image", None, stats_path=str(path), options={"weights_path": weights})
    stats = fid.reference_stats(ref)
    assert stats["N"] == 50000 and stats["extractor"] == "external-npz:VIRTUAL_ref.npz"
    meta = METRICS.lookup("fid").metadata(ref)
    assert meta["reference_num"] == 50000 and meta["reference_stats"] == str(path)
    assert METRICS.lookup("fid")(x, ref) == 43.0
    assert calls == [2]  # only the samples went through Inception
    np.testing.assert_allclose(fd_calls[0][2], mu.astype(np.float32))
    np.testing.assert_array_equal(fd_calls[0][3], a @ a.T)


def test_too_few_and_nan_samples(weights, calls):
    ref = ReferenceSet("toyimg", "train", "image", _images(2, 6), options={"weights_path": weights})
    for name in ("fid", "kid"):
        with pytest.raises(ValueError, match="need at least 2 samples for a covariance, got 1"):
            METRICS.lookup(name)(_images(1, 7), ref)
        bad = _images(3, 8)
        bad[1, 0, 2, 2] = float("nan")
        assert math.isnan(METRICS.lookup(name)(bad, ref))
    assert calls == []


def test_kid_unbiased_via_torch_fidelity(weights, fake_calls):
    calls = fake_calls
    x, y = _images(40, 9), _images(30, 10, channels=3)
    ref = ReferenceSet("kidimg", "train", "image", x, options={"weights_path": weights})
    got = METRICS.lookup("kid")(y, ref, seed=3)
    assert calls == [30, 40]
    assert METRICS.lookup("kid")(y, ref, seed=3) == got and calls == [30, 40, 30]  # reference features cached
    fy, fx = calls.feats[0], calls.feats[1]
    want = kid_features_to_metric(fy, fx, kid_subsets=100, kid_subset_size=30, rng_seed=3, verbose=False)
    assert got == pytest.approx(want[KEY_METRIC_KID_MEAN], rel=1e-6)
    assert math.isfinite(got)


# ---- the Fréchet distance on rank-deficient covariances (N < D) and its ε fallback ---------------------
def _rank_deficient(seed, n=4, d=6, scale=1.0):
    """Features of N < D samples: covariance of rank N - 1 (singular)."""
    feats = np.random.default_rng(seed).standard_normal((n, d)) * scale
    return feature_stats(feats)


def test_frechet_singular_covariances_exact_and_like_the_sqrtm_reference(monkeypatch):
    from mfsweep.evaluation.metrics import frechet

    mu1, s = _rank_deficient(0)
    mu2, s2 = _rank_deficient(1)
    assert np.linalg.matrix_rank(s) == 3 and s.shape == (6, 6)
    eig_paths, sqrtm_calls = [], []
    real_eig, real_sqrtm = frechet._psd_eigvals, frechet._sqrtm
    monkeypatch.setattr(frechet, "_psd_eigvals",
                        lambda a, what, with_vectors=False: eig_paths.append(what) or real_eig(a, what, with_vectors))
    monkeypatch.setattr(frechet, "_sqrtm", lambda a, check=True: sqrtm_calls.append(check) or real_sqrtm(a, check))

    # closed form for commuting covariances S and c² S: d² = |Δμ|² + (1 - c)² tr(S)
    c = 1.7
    want = float((mu1 - mu2) @ (mu1 - mu2) + (1 - c) ** 2 * np.trace(s))
    got = frechet.frechet_distance(mu1, s, mu2, c * c * s)
    assert got == pytest.approx(want, rel=1e-9)
    assert eig_paths[0] == "sigma1", "Cholesky fails on a singular sigma1: the eigendecomposition path ran"
    assert frechet.frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-9)

    # and agrees with the sqrtm reference on two unrelated singular covariances
    ref = frechet.frechet_distance_sqrtm(mu1, s, mu2, s2)
    assert sqrtm_calls and frechet.frechet_distance(mu1, s, mu2, s2) == pytest.approx(ref, rel=1e-6)


def test_frechet_eps_fallback_when_the_eigensolver_fails(monkeypatch):
    """frechet_distance adds eps·I to both covariances only when the eigensolver raises
    LinAlgError (singular inputs alone take the exact eigendecomposition path above); the
    solver's failure is simulated, the offset result is checked in closed form."""
    from mfsweep.evaluation.metrics import frechet

    mu1, s = _rank_deficient(2)
    mu2, _ = _rank_deficient(3)
    c, eps = 0.6, 1e-3
    real, seen = frechet.trace_sqrt_product, []

    def failing_once(a, b):
        seen.append((a.copy(), b.copy()))
        if len(seen) == 1:
            raise np.linalg.LinAlgError("Eigenvalues did not converge")
        return real(a, b)
    monkeypatch.setattr(frechet, "trace_sqrt_product", failing_once)
    got = frechet.frechet_distance(mu1, s, mu2, c * c * s, eps=eps)
    assert len(seen) == 2
    np.testing.assert_allclose(seen[1][0], s + eps * np.eye(6))
    np.testing.assert_allclose(seen[1][1], c * c * s + eps * np.eye(6))
    lam = np.clip(np.linalg.eigvalsh(s), 0, None)  # S and c² S share eigenvectors: so do their offsets
    tr_sqrt = float(np.sqrt((lam + eps) * (c * c * lam + eps)).sum())
    want = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s) + c * c * np.trace(s) - 2 * tr_sqrt)
    assert got == pytest.approx(want, rel=1e-9)
    assert got != pytest.approx(float((mu1 - mu2) @ (mu1 - mu2) + (1 - c) ** 2 * np.trace(s)), rel=1e-6)

    monkeypatch.setattr(frechet, "trace_sqrt_product",
                        lambda a, b: (_ for _ in ()).throw(np.linalg.LinAlgError("no convergence")))
    assert math.isnan(frechet.frechet_distance(mu1, s, mu2, s)), "both attempts failed: NaN, not an exception"
