"""Shortcut models (mfsweep/methods/shortcut.py): the exact Gaussian flow is a fixed point of the
self-consistency target, wrong fields are not, the sampled (t, r) are dyadic as configured, and the
loss trains a real backbone through ``from_config``."""

import pytest
import torch

from mfsweep.config import ConfigError, ModelConfig, load_trial_config
from mfsweep.methods import METHODS
from mfsweep.methods.shortcut import (ShortcutLoss, prediction_and_target, self_consistency_target,
                                      self_consistency_times, step_levels)
from mfsweep.models import build_backbone

from gaussian import ExactNet, M, S, exact_average_velocity, marginal_velocity


def _points(b: int, seed: int = 0):
    """z_t on the Gaussian path (float64) at shortcut times: (z, r, t, n) with n self-consistency rows."""
    g = torch.Generator().manual_seed(seed)
    loss = ShortcutLoss(num_levels=7, frac_self_consistency=0.5)
    t, r = (a.double() for a in loss.times(b, g))
    x = M + S * torch.randn(b, 3, generator=g, dtype=torch.float64)
    e = torch.randn(b, 3, generator=g, dtype=torch.float64)
    z = (1 - t[:, None]) * x + t[:, None] * e
    return z, r, t, b // 2


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# ---- the closed-form fixed point ---------------------------------------------------------------

def test_exact_average_velocity_is_a_fixed_point_of_the_self_consistency_target():
    # Semigroup of the flow map: (t − r)·u(z, r, t) = h·u(z, s, t) + h·u(z_s, r, s), s = t − h.
    z, r, t, n = _points(512)
    target = self_consistency_target(exact_average_velocity, z[:n], r[:n], t[:n])
    assert _rel(target, exact_average_velocity(z[:n], r[:n], t[:n])) < 1e-6
    # every level takes part, d = 1 included (t = 1, r = 0: the one-step jump)
    assert set((t[:n] - r[:n]).tolist()) == {2.0**-k for k in range(7)}


def test_flow_matching_rows_with_the_marginal_velocity_and_zero_gradient():
    """With the marginal velocity v(z, t) in place of the conditional e − x, the FM rows' target is
    the exact u(z, t, t) too; so every row's error is zero and so is the gradient in ExactNet.a."""
    z, r, t, n = _points(512, seed=1)
    net = ExactNet()
    u, target = prediction_and_target(net, z, r, t, marginal_velocity(z, t), None, n)
    assert torch.equal(r[n:], t[n:])
    assert _rel(target[n:], exact_average_velocity(z[n:], r[n:], t[n:])) < 1e-12
    assert _rel(target, u.detach()) < 1e-6
    (u - target).pow(2).sum(1).mean().backward()
    assert abs(net.a.grad.item()) < 1e-8


def test_all_self_consistency_loss_vanishes_on_the_exact_net():
    """Through the public loss (all rows self-consistency): loss ≈ 0 and zero gradient at a = 1."""
    g = torch.Generator().manual_seed(2)
    x = M + S * torch.randn(256, 3, generator=g, dtype=torch.float64)
    net = ExactNet()
    loss, mon = ShortcutLoss(frac_self_consistency=1.0)(net, x, generator=g)
    assert loss.shape == (256,) and mon["mse"] < 1e-20
    loss.mean().backward()
    assert abs(net.a.grad.item()) < 1e-8


def test_flow_matching_rows_have_zero_gradient_in_expectation():
    """With e − x (the loss as trained) the FM gradient at a = 1 is zero only on average: small at
    a = 1 over a large batch, clearly positive at a = 1.1."""
    x = M + S * torch.randn(40000, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = []
    for a in (1.0, 1.1):
        net = ExactNet()
        net.a.data.fill_(a)
        loss, _ = ShortcutLoss(frac_self_consistency=0.0)(net, x, generator=torch.Generator().manual_seed(4))
        loss.mean().backward()
        grads.append(net.a.grad.item())
    assert abs(grads[0]) < 0.05 * grads[1], grads


# ---- negative controls -------------------------------------------------------------------------

def test_a_scaled_exact_net_is_not_a_fixed_point():
    z, r, t, n = _points(512)
    wrong = lambda z_, r_, t_: 1.1 * exact_average_velocity(z_, r_, t_)  # noqa: E731
    target = self_consistency_target(wrong, z[:n], r[:n], t[:n])
    assert _rel(target, wrong(z[:n], r[:n], t[:n])) > 1e-3


def test_the_instantaneous_velocity_is_not_a_fixed_point():
    """u(z, r, t) = v(z, t) (Euler) would be self-consistent only on straight flows; this one curves."""
    z, r, t, n = _points(512)
    euler = lambda z_, r_, t_: marginal_velocity(z_, t_)  # noqa: E731
    target = self_consistency_target(euler, z[:n], r[:n], t[:n])
    assert _rel(target, euler(z[:n], r[:n], t[:n])) > 1e-2


# ---- (t, r) and row layout ---------------------------------------------------------------------

@pytest.mark.parametrize("n,levels", [(64, 7), (10, 3), (5, 7), (1, 1)])
def test_step_sizes_are_dyadic_with_fixed_counts(n, levels):
    k = step_levels(n, levels)
    counts = torch.bincount(k, minlength=levels)
    assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert (counts[:-1] >= counts[1:]).all()  # the remainder goes to the largest steps
    t, r = self_consistency_times(n, levels, torch.Generator().manual_seed(0))
    d = t - r
    assert torch.equal(d, 2.0 ** -k.float())
    assert ((r >= 0) & (r < t) & (t <= 1)).all()
    assert torch.equal(t / d, torch.round(t / d))  # t is a multiple of d


def test_times_over_a_batch():
    loss = ShortcutLoss(num_levels=5, frac_self_consistency=0.25)
    t, r = loss.times(256, torch.Generator().manual_seed(1))
    n = 64
    d = t[:n] - r[:n]
    assert ((d > 0) & (r[:n] >= 0)).all() and ((t <= 1) & (t > 0)).all()
    assert set(d.tolist()) == {1.0, 0.5, 0.25, 0.125, 0.0625}
    assert torch.equal(r[n:], t[n:])
    # the multiples of d are all reached over many draws (t uniform on {d, …, 1})
    t, r = self_consistency_times(5000, 3, torch.Generator().manual_seed(2))
    assert set(t[(t - r) == 0.25].tolist()) == {0.25, 0.5, 0.75, 1.0}


class _Spy(torch.nn.Module):
    """u = w·z: records (r, t, y, training) of every call."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
        self.calls = []

    def forward(self, z, r, t, y=None):
        self.calls.append((r.clone(), t.clone(), None if y is None else y.clone(), self.training))
        return self.w * z


def test_zero_net_loss_is_e_minus_x_on_fm_rows_and_zero_on_self_consistency_rows():
    x = torch.randn(32, 2, dtype=torch.float64)
    net = _Spy().train()
    loss, mon = ShortcutLoss(frac_self_consistency=0.25)(net, x, generator=torch.Generator().manual_seed(5))
    e = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)  # the first draw
    assert torch.equal(loss[:8], torch.zeros(8, dtype=x.dtype))
    assert torch.allclose(loss[8:], (e - x)[8:].pow(2).sum(1), rtol=1e-12)
    assert set(mon) == {"mse", "loss", "mse_self_consistency", "mse_flow_matching"}
    # two target calls on the 8 self-consistency rows in eval mode, then one training forward on all
    (r1, t1, _, tr1), (r2, t2, _, tr2), (r3, t3, _, tr3) = net.calls
    assert len(t1) == len(t2) == 8 and len(t3) == 32 and (tr1, tr2, tr3) == (False, False, True) and net.training
    assert torch.equal(t2, r1) and torch.equal(r2, r3[:8]) and torch.equal(t1, t3[:8])
    assert torch.allclose(t1 - r1, (t3 - r3)[:8] / 2)


def test_class_dropout_to_the_null_class():
    x, y = torch.randn(16, 2, dtype=torch.float64), torch.randint(0, 3, (16,))
    for p, expected in ((0.0, y), (0.999999, torch.full_like(y, 3))):
        net = _Spy()
        ShortcutLoss(class_dropout=p, num_classes=3)(net, x, y, generator=torch.Generator().manual_seed(0))
        assert torch.equal(net.calls[-1][2], expected)
        assert torch.equal(net.calls[0][2], expected[:4])


def test_sampling_velocity():
    assert ShortcutLoss().sampling_velocity == "average"
    assert ShortcutLoss(frac_self_consistency=0.0).sampling_velocity == "instantaneous"


# ---- a real backbone and the config ------------------------------------------------------------

@pytest.mark.parametrize("num_classes", [None, 4])
def test_tiny_mlp_loss_shapes_and_gradients(num_classes):
    torch.manual_seed(0)
    net = build_backbone(ModelConfig(hidden_dim=32, depth=1), (2,), num_classes)
    x = torch.randn(64, 2)
    y = None if num_classes is None else torch.randint(0, num_classes, (64,))
    loss, mon = ShortcutLoss(num_classes=num_classes)(net, x, y, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (64,) and torch.isfinite(loss).all()
    assert all(v.ndim == 0 and not v.requires_grad for v in mon.values())
    loss.mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_from_config_defaults_and_settings():
    loss = METHODS.lookup("shortcut")(load_trial_config({"method": {"name": "shortcut"}}), None)
    assert isinstance(loss, ShortcutLoss)
    assert (loss.num_levels, loss.frac_self_consistency, loss.sampling_velocity) == (7, 0.25, "average")
    cfg = load_trial_config({"method": {"name": "shortcut", "shortcut": {"num_levels": 3}},
                             "data": {"name": "digits", "conditional": True},
                             "meanflow": {"frac_r_neq_t": 0.5, "cfg": {"class_dropout": 0.2},
                                          "time_sampler": {"name": "uniform"}}})
    loss = METHODS.lookup("shortcut")(cfg, 10)
    assert (loss.num_levels, loss.frac_self_consistency) == (3, 0.5)
    assert (loss.class_dropout, loss.num_classes) == (0.2, 10)


@pytest.mark.parametrize("raw,path", [
    ({"method": {"name": "shortcut", "shortcut": {"num_levels": 0}}}, "method.shortcut.num_levels"),
    ({"method": {"name": "shortcut", "shortcut": {"num_levels": 21}}}, "method.shortcut.num_levels"),
    ({"method": {"name": "shortcut", "shortcut": {"num_levels": 2.5}}}, "method.shortcut.num_levels"),
    ({"method": {"name": "shortcut", "shortcut": {"levels": 3}}}, "method.shortcut.levels"),
    ({"method": {"name": "shortcut"}, "meanflow": {"tangent": "v00"}}, "meanflow.tangent"),
    ({"method": {"name": "shortcut"}, "meanflow": {"u_from": "forward"}}, "meanflow.u_from"),
    ({"method": {"name": "shortcut"}, "meanflow": {"weight_power": 1.0}}, "meanflow.weight_power"),
    ({"method": {"name": "shortcut"}, "data": {"name": "digits", "conditional": True},
      "meanflow": {"cfg": {"omega": 2.0}}}, "meanflow.cfg"),
])
def test_bad_settings_name_their_path(raw, path):
    with pytest.raises(ConfigError) as info:
        load_trial_config(raw)
    assert path in [p for p, _ in info.value.errors], info.value
