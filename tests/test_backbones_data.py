"""Backbones keep one contract and samples independent; datasets load and fail clearly."""

import numpy as np
import pytest
import torch

from mfsweep import meanflow_target
from mfsweep.models import build_backbone
from mfsweep.models.embedding import TIME_EMBEDDINGS, time_scalars
from mfsweep.config import DataConfig, ModelConfig
from mfsweep.data import TOYS, DataError, load_dataset


@pytest.mark.parametrize("backbone,shape", [("mlp", (2,)), ("mlp", (1, 8, 8)), ("unet", (1, 8, 8)), ("unet", (3, 16, 16))])
@pytest.mark.parametrize("classes", [None, 10])
def test_forward_contract_and_jvp(backbone, shape, classes):
    torch.manual_seed(0)
    net = build_backbone(ModelConfig(backbone=backbone, hidden_dim=32, channels=8), shape, classes)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    b = 4
    z, v = torch.randn(b, *shape), torch.randn(b, *shape)
    t = torch.rand(b)
    y = torch.randint(0, 10, (b,)) if classes else None
    u = net(z, t / 2, t, y)
    assert u.shape == z.shape
    u2, u_tgt = meanflow_target(lambda z_, r_, t_: net(z_, r_, t_, y), z, t / 2, t, v)
    assert torch.allclose(u, u2, atol=1e-6) and torch.isfinite(u_tgt).all()


@pytest.mark.parametrize("backbone,shape", [("mlp", (2,)), ("unet", (1, 8, 8))])
def test_samples_are_independent(backbone, shape):
    """No cross-sample coupling (the BatchNorm trap): a row's output ignores the other rows."""
    torch.manual_seed(0)
    net = build_backbone(ModelConfig(backbone=backbone, hidden_dim=32, channels=8), shape, None)
    z, t = torch.randn(6, *shape), torch.rand(6)
    full = net(z, t / 2, t)
    alone = torch.cat([net(z[i:i + 1], t[i:i + 1] / 2, t[i:i + 1]) for i in range(6)])
    assert torch.allclose(full, alone, atol=1e-5)


def test_time_embedding_variants():
    r, t = torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.9])
    assert torch.allclose(time_scalars("t_tr", r, t), torch.stack([t, t - r], 1))
    assert torch.allclose(time_scalars("t_r", r, t), torch.stack([t, r], 1))
    assert torch.allclose(time_scalars("tr", r, t), (t - r)[:, None])
    assert torch.allclose(time_scalars("t_r_tr", r, t), torch.stack([t, r, t - r], 1))
    assert set(TIME_EMBEDDINGS) == {"t_tr", "t_r", "tr", "t_r_tr"}
    with pytest.raises(ValueError, match="unknown time embedding 'rt'; valid: t_r, t_r_tr, t_tr, tr$"):
        time_scalars("rt", r, t)


def test_network_sees_only_the_variant_scalars():
    """With time_embedding 'tr', u depends on t − r only: shifting both times changes nothing."""
    torch.manual_seed(0)
    net = build_backbone(ModelConfig(hidden_dim=16, time_embedding="tr"), (2,), None)
    z = torch.randn(3, 2)
    assert torch.allclose(net(z, torch.full((3,), 0.1), torch.full((3,), 0.4)),
                          net(z, torch.full((3,), 0.5), torch.full((3,), 0.8)), atol=1e-6)


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toys_are_seeded_and_labelled(name):
    a = load_dataset(DataConfig(name=name, num_train=500, num_test=100))
    b = load_dataset(DataConfig(name=name, num_train=500, num_test=100))
    assert a.x_train.shape == (500, 2) and a.x_test.shape == (100, 2) and a.kind == "vector"
    assert torch.equal(a.x_train, b.x_train)
    assert a.y_train.max() < a.num_classes and a.y_train.dtype == torch.long
    assert a.x_train.abs().max() < 10


def test_two_gaussians_sit_at_plus_minus_three():
    d = load_dataset(DataConfig(name="two_gaussians", num_train=4000))
    means = [d.x_train[d.y_train == k].mean(0) for k in (0, 1)]
    assert torch.allclose(means[0], torch.tensor([3.0, 3.0]), atol=0.1)
    assert torch.allclose(means[1], torch.tensor([-3.0, -3.0]), atol=0.1)


def test_digits_scaled_and_split():
    d = load_dataset(DataConfig(name="digits"))
    assert d.shape == (1, 8, 8) and d.num_classes == 10 and d.kind == "image"
    assert len(d.x_train) + len(d.x_test) == 1797
    assert d.x_train.min() == -1 and d.x_train.max() == 1


def test_user_npz_vectors_and_images(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "v.npz", x=rng.standard_normal((50, 3)).astype(np.float32), y=rng.integers(0, 3, 50))
    d = load_dataset(DataConfig(name="npy", path=str(tmp_path / "v.npz")))
    assert d.shape == (3,) and d.num_classes == 3 and len(d.x_train) == 40
    np.save(tmp_path / "img.npy", rng.integers(0, 256, (20, 4, 4), dtype=np.uint8))
    d = load_dataset(DataConfig(name="npy", path=str(tmp_path / "img.npy")))
    assert d.shape == (1, 4, 4) and d.kind == "image" and d.y_train is None
    assert d.x_train.min() >= -1 and d.x_train.max() <= 1


@pytest.mark.parametrize("make,match", [
    (lambda p: None, "file not found"),
    (lambda p: np.save(p, np.zeros((5,), np.float32)), "expected \\(N, D\\)"),
    (lambda p: np.save(p, np.array([[1.0, np.nan]] * 4)), "NaN/inf"),
    (lambda p: np.save(p, np.array([["a", "b"]] * 4)), "dtype"),
])
def test_user_file_errors_name_the_problem(tmp_path, make, match):
    path = tmp_path / "bad.npy"
    make(path)
    with pytest.raises(DataError, match=match):
        load_dataset(DataConfig(name="npy", path=str(path)))


def test_npz_label_errors(tmp_path):
    np.savez(tmp_path / "a.npz", features=np.zeros((4, 2)))
    with pytest.raises(DataError, match="array named 'x'"):
        load_dataset(DataConfig(name="npy", path=str(tmp_path / "a.npz")))
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 2)), y=np.array([0.5, 1, 0, 1]))
    with pytest.raises(DataError, match="integer labels"):
        load_dataset(DataConfig(name="npy", path=str(tmp_path / "b.npz")))
