"""Evaluation at scale: the eigenvalue Fréchet distance against the former sqrtm form, improved
precision/recall (known answers), the Inception Score through torch-fidelity (random Inception
weights: the real ones cannot be downloaded here), metric direction shared with the reports,
default metrics, decoding of latent datasets, and features computed once per NFE."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric

from mfsweep.data import Dataset
from mfsweep.evaluation.evaluate import draw_noise, evaluate
from mfsweep.evaluation.metrics import (METRICS, ReferenceSet, default_metrics, feature_memo, make_reference,
                                        memo_features)
from mfsweep.evaluation.metrics import fid, prdc
from mfsweep.evaluation.metrics.frechet import feature_stats, frechet_distance, frechet_distance_sqrtm
from mfsweep.evaluation.metrics.prdc import knn_radii, precision_recall
from mfsweep.schema import HIGHER_IS_BETTER

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fid import _random_inception_weights  # noqa: E402


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MFSWEEP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("MFSWEEP_INCEPTION_WEIGHTS", raising=False)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- Fréchet distance: eigenvalue form == former sqrtm form -----------------------------------

def _random_stats(rng, d, n=None):
    """Means and covariances; from n samples of correlated features when n is given (n <= d:
    rank-deficient), else W W^T / d + 0.1 I."""
    if n is None:
        w1, w2 = rng.standard_normal((d, d)), rng.standard_normal((d, d))
        return (rng.standard_normal(d), w1 @ w1.T / d + 0.1 * np.eye(d),
                rng.standard_normal(d), w2 @ w2.T / d + 0.1 * np.eye(d))
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    f1, f2 = np.abs(rng.standard_normal((n, d)) @ mix), np.abs(rng.standard_normal((n, d)) @ mix * 1.1 + 0.05)
    return (*feature_stats(f1), *feature_stats(f2))


@pytest.mark.parametrize("d,n", [(2, None), (5, None), (16, None), (64, None), (64, 200), (64, 40), (256, 600),
                                 (256, 100)])
def test_frechet_equals_sqrtm_form_small(d, n):
    rng = np.random.default_rng(d * 1000 + (n or 0))
    for _ in range(3):
        stats = _random_stats(rng, d, n)
        old, new = frechet_distance_sqrtm(*stats), frechet_distance(*stats)
        assert new == pytest.approx(old, rel=1e-6), (d, n)
        assert frechet_distance(stats[0], stats[1], stats[0], stats[1]) == pytest.approx(0.0, abs=1e-7 * d)


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("frechet_cost", ROOT / "benchmarks" / "frechet_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# `python benchmarks/frechet_cost.py [--num 1000]` (seed 0) printed these `old_value`s of the former
# scipy.linalg.sqrtm form (11-20 s per call on this CPU, too slow to repeat in a test) on the very
# statistics `make_stats` builds; the benchmark prints both forms' values again on every run.
SQRTM_2048 = {3000: 300.55564570926913, 1000: 737.597534299932}


@pytest.mark.parametrize("num", [3000, 1000])  # full rank; rank-deficient (N < D)
def test_frechet_equals_sqrtm_form_at_2048(num):
    stats = _benchmark_module().make_stats(2048, num, seed=0)
    assert stats[1].shape == (2048, 2048)
    assert frechet_distance(*stats) == pytest.approx(SQRTM_2048[num], rel=1e-6)


def test_frechet_1d_closed_form_nan_and_errors():
    # N(m1, a^2) vs N(m2, b^2): (m1 - m2)^2 + (a - b)^2
    assert frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]]) == pytest.approx(1.5 ** 2 + 1.5 ** 2, rel=1e-12)
    assert frechet_distance(np.array([0.0]), np.array([[0.0]]), [3.0], [[1.0]]) == pytest.approx(9.0 + 1.0)  # a = 0
    assert math.isnan(frechet_distance([np.nan], [[1.0]], [0.0], [[1.0]]))
    assert math.isnan(frechet_distance([0.0, 0.0], [[1.0, 0.0], [0.0, np.inf]], [0.0, 0.0], np.eye(2)))
    with pytest.raises(ValueError, match=r"statistics disagree in shape: .*sigma2 \(3, 3\)"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="not positive semi-definite"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="not positive semi-definite"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -1.0]))


# ---- precision and recall ----------------------------------------------------------------------

def test_precision_recall_hand_checked_k1():
    # 1-D, k = 1. Real {0, 2, 3, 7}: radii (nearest other point) 2, 1, 1, 4.
    # Generated {1, 1.5, 12, 13}: radii 0.5, 0.5, 1, 1.
    # precision: 1 (|1-0| = 1 <= 2) yes, 1.5 (|1.5-2| = .5 <= 1) yes, 12 (|12-7| = 5 > 4) no, 13 no -> 2/4
    # recall: 0 (|0-1| = 1 > .5, |0-1.5| = 1.5 > .5) no, 2 (|2-1.5| = .5 <= .5, boundary) yes,
    #         3 (1.5 > .5, 9 > 1) no, 7 (5 > 1) no -> 1/4
    real = torch.tensor([[0.0], [2.0], [3.0], [7.0]])
    fake = torch.tensor([[1.0], [1.5], [12.0], [13.0]])
    torch.testing.assert_close(knn_radii(real, 1), torch.tensor([2.0, 1.0, 1.0, 4.0]))
    torch.testing.assert_close(knn_radii(fake, 1), torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert precision_recall(real, fake, k=1) == (0.5, 0.25)
    assert precision_recall(fake, real, k=1) == (0.25, 0.5)  # swapping the roles swaps the numbers
    assert precision_recall(real, fake, k=1, max_block_elems=3) == (0.5, 0.25)  # blocks of one row


def _clusters(n, centers, seed):
    g = _gen(seed)
    idx = torch.randint(0, len(centers), (n,), generator=g)
    return torch.tensor(centers, dtype=torch.float32)[idx] + 0.3 * torch.randn(n, 2, generator=g)


CENTERS = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]


def test_precision_recall_known_regimes():
    real = _clusters(800, CENTERS, 0)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)  # identical sets
    collapsed = _clusters(800, CENTERS[:1], 1)  # all samples in one of the four modes
    p, r = precision_recall(real, collapsed)
    print(f"mode collapse: precision {p:.3f}, recall {r:.3f}")
    assert p > 0.9 and r < 0.35
    p_far, r_far = precision_recall(real, real + 100.0)
    assert p_far == 0.0 and r_far == 0.0
    fresh = _clusters(800, CENTERS, 2)  # same distribution, other draws
    p, r = precision_recall(real, fresh)
    assert p > 0.9 and r > 0.9


def test_knn_radii_blocks_and_brute_force():
    x = torch.randn(300, 5, generator=_gen(3), dtype=torch.float64)
    brute = torch.cdist(x, x).sort(dim=1).values[:, 3]
    torch.testing.assert_close(knn_radii(x, 3), brute)
    torch.testing.assert_close(knn_radii(x, 3, max_block_elems=1000), brute)  # 3 rows per block
    y = torch.randn(250, 5, generator=_gen(4), dtype=torch.float64) + 0.5
    assert precision_recall(x, y, max_block_elems=777) == precision_recall(x, y)
    with pytest.raises(ValueError, match="need more than 3 points, got 3"):
        knn_radii(x[:3], 3)
    with pytest.raises(ValueError, match="features differ in dimension"):
        precision_recall(x, y[:, :4])


def test_precision_recall_metrics_vectors_subsets_and_nan():
    x = _clusters(600, CENTERS, 5)
    ref = ReferenceSet("blobs", "test", "vector", x)
    assert METRICS.lookup("precision")(x, ref) == 1.0 and METRICS.lookup("recall")(x, ref) == 1.0
    # more samples than reference points: a seeded subset of 600 of them; reproducible
    many = _clusters(1500, CENTERS[:2], 6)
    p, r = METRICS.lookup("precision")(many, ref, seed=3), METRICS.lookup("recall")(many, ref, seed=3)
    assert p > 0.9 and 0.3 < r < 0.7
    assert (p, r) == prdc._precision_recall_of(many, ref, seed=3)
    sub = prdc._subset(many, 600, 3)
    assert (p, r) == precision_recall(x, sub)
    bad = x.clone()
    bad[4, 1] = float("nan")
    assert math.isnan(METRICS.lookup("precision")(bad, ref))
    with pytest.raises(ValueError, match="need more than 3 samples, got 2"):
        METRICS.lookup("recall")(x[:2], ref)
    meta = METRICS.lookup("precision").metadata(ref)
    assert meta["extractor"] == "identity" and meta["k"] == 3 and meta["feature_space"] == "identity"


def test_precision_recall_digits_features_once(monkeypatch):
    from mfsweep.data.digits import split_digits
    from mfsweep.evaluation.metrics import fd_classifier as fc

    x_tr, x_te, _, _ = split_digits()
    ref = ReferenceSet("digits", "train", "image", x_tr)
    calls = []
    real = fc.digits_features

    def counting(x, **kw):
        calls.append(int(x.shape[0]))
        return real(x, **kw)
    monkeypatch.setattr(fc, "digits_features", counting)
    with feature_memo():
        p, r = METRICS.lookup("precision")(x_te, ref), METRICS.lookup("recall")(x_te, ref)
    assert calls == [len(x_te), len(x_tr)]  # samples and reference once for both metrics
    noise = torch.rand(x_te.shape, generator=_gen(9)) * 2 - 1
    p_noise, r_noise = METRICS.lookup("precision")(noise, ref), METRICS.lookup("recall")(noise, ref)
    print(f"digits: test-vs-train P {p:.3f} R {r:.3f}; noise P {p_noise:.3f} R {r_noise:.3f}")
    assert p > 0.6 and r > 0.6 and p_noise < 0.2 and p_noise < p - 0.4
    assert METRICS.lookup("precision").metadata(ref)["extractor"].startswith("digits-mlp-v")


# ---- metric direction and defaults ----------------------------------------------------------------

def test_direction_agrees_with_schema_and_defaults():
    assert HIGHER_IS_BETTER <= set(METRICS)
    for name in METRICS:
        spec = METRICS.lookup(name)
        assert spec.name == name and spec.higher_is_better == (name in HIGHER_IS_BETTER), name
    assert {"precision", "recall", "inception_score"} == HIGHER_IS_BETTER
    assert default_metrics("moons", "vector") == ["swd", "energy", "precision", "recall"]
    assert default_metrics("digits", "image") == ["fd_digits", "precision", "recall"]
    assert default_metrics("cifar10", "image") == ["fid", "precision", "recall"]
    assert default_metrics("latents", "image") == ["fid", "precision", "recall"]
    for kind in ("vector", "image"):
        assert "kid" not in default_metrics("x", kind) and "inception_score" not in default_metrics("x", kind)


def _tidy(metric, means):
    """A tidy frame like analysis.load.tidy: two variants x two seeds x NFE 1, 2 of `metric`."""
    rows = []
    for i, (variant, per_nfe) in enumerate(means.items()):
        for seed in (0, 1):
            for nfe, m in per_nfe.items():
                rows.append({"run_id": f"r{i}{seed}", "trial_id": f"t{i}{seed}", "status": "finished",
                             "metric": metric, "phase": "final", "nfe": nfe, "value": m + 0.01 * seed,
                             "axis": variant, "seed": seed})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("metric,best_nfe1,best_nfe2", [("precision", "b", "a"), ("swd", "a", "b")])
def test_table_bold_and_labels_follow_direction(metric, best_nfe1, best_nfe2, tmp_path, monkeypatch):
    from analysis import plots, tables

    df = _tidy(metric, {"a": {1: 0.2, 2: 0.9}, "b": {1: 0.7, 2: 0.4}})
    t = tables.metric_table(df, metric, ["axis"])
    assert t.is_best((best_nfe1,), 1) and t.is_best((best_nfe2,), 2)
    assert not t.is_best(({"a": "b", "b": "a"}[best_nfe1],), 1)
    word = "higher" if metric == "precision" else "lower"
    assert f"{word} is better, best per NFE in bold" in t.caption()
    assert t.to_markdown().count("**") == 4
    seen = {}
    real_save = plots._save

    def save(fig, out):
        seen["ylabel"] = fig.axes[0].get_ylabel()
        return real_save(fig, out)
    monkeypatch.setattr(plots, "_save", save)
    assert plots.plot_metric_vs_nfe(df, metric, ["axis"], tmp_path / "p.png") is not None
    assert seen["ylabel"] == f"{metric} (final, {word} is better)"


# ---- Inception Score (random Inception weights) --------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _random_inception_weights(tmp_path_factory.mktemp("w") / "inception_is.pt", 1)


def _images(n, seed, channels=3, size=8):
    return torch.rand(n, channels, size, size, generator=_gen(seed)) * 2 - 1


def test_inception_score_matches_torch_fidelity(weights):
    x = _images(4, 11)
    ref = ReferenceSet("toyimg", "train", "image", None, options={"weights_path": str(weights)})
    spec = METRICS.lookup("inception_score")
    got = spec(x, ref, seed=5)
    net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased"],
                                                    feature_extractor_weights_path=str(weights))
    with torch.no_grad():
        logits = net(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))[0]
    assert logits.shape == (4, 1008)
    want = isc_features_to_metric(logits, splits=4, shuffle=True, rng_seed=5)[KEY_METRIC_ISC_MEAN]
    assert got == pytest.approx(want, rel=1e-5) and 1.0 <= got <= 1008
    meta = spec.metadata(ref)  # no reference images needed
    assert meta["extractor"] == fid.extractor_id(weights, "logits_unbiased") and meta["resize"] == fid.RESIZE
    assert spec.higher_is_better
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    assert math.isnan(spec(bad, ref))
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        spec(x[:1], ref)


# ---- features once per NFE, decoding of latents ---------------------------------------------------

class FakeInception:
    """Stand-in for fid.extract_features: deterministic features from the pixels (2048 = pooled pixels
    repeated; logits = pooled pixels repeated to 1008), recording every call's input shape."""

    def __init__(self):
        self.shapes = []

    def __call__(self, x, layer="2048", **kw):
        self.shapes.append((tuple(x.shape), layer))
        flat = F.adaptive_avg_pool2d(x.float(), 4).flatten(1)  # (N, C * 16)
        dim = 2048 if layer == "2048" else 1008
        return flat.repeat(1, -(-dim // flat.shape[1]))[:, :dim] + 1e-3 * torch.arange(dim) / dim


@pytest.fixture
def fake_inception(monkeypatch, tmp_path):
    dummy = tmp_path / "dummy_inception.pt"  # only hashed for the extractor id; never loaded
    dummy.write_bytes(b"not real weights")
    monkeypatch.setenv("MFSWEEP_INCEPTION_WEIGHTS", str(dummy))
    fake = FakeInception()
    monkeypatch.setattr(fid, "extract_features", fake)
    # the 2048-d Fréchet distance is tested above; here only which statistics reach it matters
    monkeypatch.setattr(fid, "frechet_distance", lambda m1, s1, m2, s2: float(np.sum((m1 - m2) ** 2)))
    return fake


def up_net(z, r, t, y=None):
    """u = t - r: k equal steps move every latent by -1/k."""
    return z * 0 + (t - r).view(-1, *([1] * (z.dim() - 1)))


class CountingDecode:
    """A fixed linear decoder: nearest-neighbour 2x upsampling times 0.5, (N, 1, 4, 4) -> (N, 1, 8, 8)."""

    def __init__(self):
        self.sizes = []

    def __call__(self, z):
        assert z.shape[1:] == (1, 4, 4), z.shape
        self.sizes.append(int(z.shape[0]))
        return 0.5 * F.interpolate(z, scale_factor=2, mode="nearest")


def _latent_dataset(decode, n=60):
    g = _gen(21)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return Dataset("tinylat", "image", x, None, x[:20] + 0.1, None, None, (1, 4, 4), decode=decode,
                   image_shape=(1, 8, 8))


def test_latents_decoded_once_per_nfe_and_reference_decoded(fake_inception):
    dec = CountingDecode()
    ds = _latent_dataset(dec)
    ref = make_reference(ds, max_decode=40)
    assert ref.kind == "image" and ref.x.shape == (40, 1, 8, 8) and dec.sizes == [40]
    idx = torch.randperm(60, generator=_gen(0))[:40].sort().values
    torch.testing.assert_close(ref.x, 0.5 * F.interpolate(ds.x_train[idx], scale_factor=2, mode="nearest"))
    assert make_reference(ds, max_decode=40).x is ref.x and dec.sizes == [40]  # kept in memory, not decoded again
    dec.sizes.clear()
    res = evaluate(up_net, ds, nfes=(1, 2), num_samples=24, seed=3, batch_size=10, reference=ref,
                   metrics=["fid", "kid", "precision", "recall", "inception_score"])
    assert dec.sizes == [10, 10, 4] * 2  # once per NFE, in batches
    noise = draw_noise((1, 4, 4), 24, 3)[0]
    for k in (1, 2):
        assert res.samples[k].shape == (24, 1, 8, 8)
        torch.testing.assert_close(res.samples[k], 0.5 * F.interpolate(noise - 1.0 / k, scale_factor=2,
                                                                       mode="nearest"))
        assert res.timings[f"decode/nfe_{k}"] > 0  # the decode phase ran and was timed
        assert all(math.isfinite(res.values[f"{m}/nfe_{k}"]) for m in ("fid", "kid", "precision", "recall",
                                                                         "inception_score"))
    # every metric saw images; the samples' pool features once per NFE (fid, kid, precision, recall
    # share them), the logits once per NFE, the reference once (then from the disk cache)
    assert {s for s, _ in fake_inception.shapes} == {(24, 1, 8, 8), (40, 1, 8, 8)}
    pool = [s for s, layer in fake_inception.shapes if layer == "2048"]
    assert pool.count((24, 1, 8, 8)) == 2 and pool.count((40, 1, 8, 8)) == 1
    assert [s for s, layer in fake_inception.shapes if layer == "logits_unbiased"] == [(24, 1, 8, 8)] * 2


def test_default_reference_and_metrics_for_latents(fake_inception):
    dec = CountingDecode()
    ds = _latent_dataset(dec, n=30)
    res = evaluate(up_net, ds, nfes=(1,), num_samples=16, seed=0, batch_size=16)
    assert set(res.values) == {"fid/nfe_1", "precision/nfe_1", "recall/nfe_1"}
    assert dec.sizes == [16, 14, 16]  # the whole (30 <= 10,000) train split in batches, then the samples
    assert res.metadata["fid"]["reference_num"] == 30 and res.samples[1].shape == (16, 1, 8, 8)


def test_stats_path_reference_decodes_nothing(fake_inception, tmp_path):
    dec = CountingDecode()
    ds = _latent_dataset(dec, n=30)
    path = tmp_path / "ref_stats.npz"
    np.savez(path, mu=np.zeros(2048), sigma=np.eye(2048), N=50000)
    ref = make_reference(ds, stats_path=str(path))
    assert ref.x is None and dec.sizes == []
    with pytest.warns(UserWarning, match=r"leaving out the default metrics \['precision', 'recall'\]"):
        res = evaluate(up_net, ds, nfes=(1,), num_samples=8, batch_size=8, reference=ref)
    assert set(res.values) == {"fid/nfe_1"} and dec.sizes == [8]
    with pytest.raises(ValueError, match=r"metrics \['precision'\] need reference samples"):
        evaluate(up_net, ds, nfes=(1,), num_samples=8, reference=ref, metrics=["fid", "precision"])
    assert dec.sizes == [8]  # refused before sampling
    both = make_reference(ds, stats_path=str(path), decode_with_stats=True, max_decode=12)
    assert both.x.shape == (12, 1, 8, 8) and both.stats_path == str(path)


def test_feature_memo_scope():
    x = torch.zeros(3, 2)
    calls = []
    fn = lambda t: calls.append(1) or t.sum()  # noqa: E731
    memo_features(x, ("a",), fn)
    memo_features(x, ("a",), fn)
    assert len(calls) == 2  # no memo outside feature_memo()
    with feature_memo() as memo:
        memo_features(x, ("a",), fn)
        memo_features(x, ("a",), fn)
        memo_features(x.clone(), ("a",), fn)  # another tensor
        memo_features(x, ("b",), fn)  # another extractor
        assert len(memo) == 3
    assert len(calls) == 5 and not memo
