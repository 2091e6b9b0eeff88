"""evaluate(): same seeded noise for every NFE, reproducibility, labels, divergence, timings."""

import math

import pytest
import torch
from torch import nn

from mfsweep.data import Dataset
from mfsweep.evaluation.evaluate import EvalResult, draw_noise, evaluate
from mfsweep.data.digits import split_digits


def _toy(num_classes=None, n=300):
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 2, generator=g) * 0.5 + 1.0
    y = None if num_classes is None else torch.randint(0, num_classes, (n,), generator=g)
    return Dataset("toy", "vector", x, y, x[: n // 2] + 0.01, None if y is None else y[: n // 2],
                   num_classes, (2,))


def const_net(z, r, t, y=None):
    """u = t - r everywhere, so a grid of k equal steps moves every point by -sum (1/k)^2 = -1/k."""
    return z * 0 + (t - r)[:, None]


class Recorder(nn.Module):
    """Records the inputs of every call; u = 0.1 z (finite), or NaN once t - r < nan_below."""

    def __init__(self, nan_below=-1.0):
        super().__init__()
        self.calls, self.nan_below = [], nan_below

    def forward(self, z, r, t, y=None):
        self.calls.append((z.clone(), r.clone(), t.clone(), None if y is None else y.clone(), self.training))
        u = 0.1 * z
        return torch.full_like(z, float("nan")) if float((t - r)[0]) < self.nan_below else u


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MFSWEEP_CACHE", str(tmp_path_factory.getbasetemp() / "eval_cache"))


def test_const_net_and_result_layout():
    ds = _toy()
    res = evaluate(const_net, ds, nfes=(1, 2, 4), num_samples=64, seed=0, batch_size=25)
    assert isinstance(res, EvalResult) and res.num_samples == 64 and not res.diverged
    noise, labels = draw_noise((2,), 64, 0)
    assert labels is None
    for k in (1, 2, 4):
        torch.testing.assert_close(res.samples[k], noise - 1.0 / k)
        for name in ("swd", "energy", "precision", "recall"):  # default metrics for vectors
            assert math.isfinite(res.values[f"{name}/nfe_{k}"])
            assert f"metric/{name}/nfe_{k}" in res.timings
        assert res.timings[f"sampling/nfe_{k}"] > 0
    flat = res.flat()
    assert flat["num_samples"] == 64.0 and all(isinstance(v, float) for v in flat.values())
    assert set(flat) == {f"{m}/nfe_{k}" for m in ("swd", "energy", "precision", "recall") for k in (1, 2, 4)} | {
        "num_samples"}
    meta = res.metadata["swd"]
    assert meta["reference"] == "toy/test" and meta["reference_num"] == 150 and meta["num_samples"] == 64
    assert meta["extractor"] == "identity" and meta["resize"] == "none"


def test_same_noise_for_every_nfe_and_reproducible():
    ds = _toy()
    net = Recorder()
    net.train()
    res = evaluate(net, ds, nfes=(1, 4), num_samples=40, seed=7, metrics=["swd", "mmd"], batch_size=16)
    assert net.training and not any(c[4] for c in net.calls)  # eval mode inside, restored after
    steps = {1: 1, 4: 4}
    batches = [0, 16, 32]
    first_1 = torch.cat([net.calls[i][0] for i in range(len(batches))])  # NFE 1: one call per batch
    offset = len(batches) * steps[1]
    first_4 = torch.cat([net.calls[offset + 4 * i][0] for i in range(len(batches))])
    assert torch.equal(first_1, first_4)
    assert torch.equal(first_1, draw_noise((2,), 40, 7)[0])
    again = evaluate(Recorder(), ds, nfes=(1,), num_samples=40, seed=7, metrics=["swd", "mmd"], batch_size=16)
    assert torch.equal(again.samples[1], res.samples[1])
    assert again.values["swd/nfe_1"] == res.values["swd/nfe_1"]
    assert again.values["mmd/nfe_1"] == res.values["mmd/nfe_1"]
    other = evaluate(Recorder(), ds, nfes=(1,), num_samples=40, seed=8, metrics=["swd"])
    assert not torch.equal(other.samples[1], res.samples[1])


def test_class_labels_seeded_and_given():
    ds = _toy(num_classes=3)
    net = Recorder()
    evaluate(net, ds, nfes=(1, 2), num_samples=30, seed=1, metrics=["swd"])
    ys = [c[3] for c in net.calls]
    assert all(y is not None and torch.equal(y, ys[0]) for y in ys)
    assert ys[0].dtype == torch.int64 and 0 <= int(ys[0].min()) and int(ys[0].max()) < 3
    assert torch.equal(ys[0], draw_noise((2,), 30, 1, num_classes=3)[1])
    given = torch.arange(30) % 3
    net = Recorder()
    evaluate(net, ds, nfes=(1,), num_samples=30, seed=1, metrics=["swd"], labels=given)
    assert torch.equal(net.calls[0][3], given)
    with pytest.raises(ValueError, match="labels must have shape"):
        evaluate(net, ds, nfes=(1,), num_samples=30, labels=given[:5], metrics=["swd"])


def test_nan_samples_give_nan_and_diverged():
    ds = _toy()
    res = evaluate(Recorder(nan_below=0.5), ds, nfes=(1, 4), num_samples=20, metrics=["swd", "energy", "mmd"])
    assert res.diverged
    for m in ("swd", "energy", "mmd"):
        assert math.isfinite(res.values[f"{m}/nfe_1"])  # one jump of length 1: finite
        assert math.isnan(res.values[f"{m}/nfe_4"])
    assert not torch.isfinite(res.samples[4]).all()


def test_bad_metric_requests():
    ds = _toy()
    with pytest.raises(ValueError, match="unknown metric 'fdd'; valid:"):
        evaluate(const_net, ds, metrics=["fdd"], num_samples=4)
    with pytest.raises(ValueError, match="does not apply to vector data"):
        evaluate(const_net, ds, metrics=["fd_digits"], num_samples=4)


def test_digits_fd_and_too_few_samples():
    x_tr, x_te, y_tr, y_te = split_digits()
    ds = Dataset("digits", "image", x_tr, y_tr, x_te, y_te, 10, (1, 8, 8))
    res = evaluate(lambda z, r, t, y: 0.5 * z, ds, nfes=(1, 2), num_samples=100, seed=0)
    assert set(res.values) == {f"{m}/nfe_{k}" for m in ("fd_digits", "precision", "recall") for k in (1, 2)}
    assert all(math.isfinite(res.values[f"fd_digits/nfe_{k}"]) and res.values[f"fd_digits/nfe_{k}"] > 0 for k in (1, 2))
    assert all(0.0 <= res.values[f"{m}/nfe_{k}"] <= 1.0 for m in ("precision", "recall") for k in (1, 2))
    assert res.metadata["fd_digits"]["reference"] == "digits/train"
    assert res.metadata["fd_digits"]["extractor"].startswith("digits-mlp-v")
    with pytest.raises(ValueError, match="need at least 2 samples for a covariance, got 1"):
        evaluate(lambda z, r, t, y: 0.5 * z, ds, nfes=(1,), num_samples=1)


def test_timings_cover_every_phase_within_the_wall_time():
    import time

    ds = _toy()
    t0 = time.perf_counter()
    res = evaluate(Recorder(), ds, nfes=(1, 4), num_samples=64, seed=0, metrics=["swd", "energy"], batch_size=32)
    wall = time.perf_counter() - t0
    want = {f"sampling/nfe_{k}" for k in (1, 4)} | {f"metric/{m}/nfe_{k}" for m in ("swd", "energy") for k in (1, 4)}
    assert set(res.timings) == want, "every phase that ran is timed, nothing else (no decode for vectors)"
    assert all(v > 0 for v in res.timings.values()), res.timings
    assert sum(res.timings.values()) <= wall


def _fid_weights(tmp_path):
    from test_fid import _random_inception_weights  # random Inception-v3 weights (no download)

    return _random_inception_weights(tmp_path / "inception_random.pt", 0)


def test_fid_through_evaluate(tmp_path, monkeypatch):
    """FID end to end through evaluate() with random Inception weights: a sampler that reproduces
    the reference images scores ≈ 0, one that draws other images scores > 0."""
    from mfsweep.evaluation.metrics import ReferenceSet

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    weights = _fid_weights(tmp_path)
    g = torch.Generator().manual_seed(5)
    ref_x = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1
    other = torch.rand(8, 1, 8, 8, generator=g) * 2 - 1
    ds = Dataset("fidtoy", "image", ref_x, None, ref_x, None, None, (1, 8, 8))
    ref = ReferenceSet("fidtoy", "test", "image", ref_x, options={"weights_path": weights})

    def to(target):  # one Euler jump z - u from t = 1 to r = 0 lands exactly on `target`
        return lambda z, r, t, y=None: z - target

    same = evaluate(to(ref_x), ds, nfes=(1,), num_samples=8, seed=0, metrics=["fid"], reference=ref)
    diff = evaluate(to(other), ds, nfes=(1,), num_samples=8, seed=0, metrics=["fid"], reference=ref)
    assert set(same.values) == set(diff.values) == {"fid/nfe_1"}
    assert torch.allclose(same.samples[1], ref_x, atol=1e-6)
    assert math.isfinite(diff.values["fid/nfe_1"]) and diff.values["fid/nfe_1"] > 1e-3
    assert abs(same.values["fid/nfe_1"]) < 1e-6 * diff.values["fid/nfe_1"]
    meta = same.metadata["fid"]
    assert meta["num_samples"] == 8 and meta["reference_num"] == 8 and "sha256:" in meta["extractor"]
    assert same.timings["metric/fid/nfe_1"] > 0
