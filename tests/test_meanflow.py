"""Exact tests of the MeanFlow target: closed form, finite differences, tangents, subsets, CFG."""

import pytest
import torch

from mfsweep import meanflow_target, sample
from mfsweep.methods.meanflow import CFGSettings, MeanFlowLoss, guided_velocity, linear_path
from mfsweep.methods.timesteps import sample_t_r

from gaussian import M, S, exact_average_velocity, marginal_velocity

torch.set_default_dtype(torch.float32)


# Gaussian data with a closed-form flow: tests/gaussian.py


def test_closed_form_gaussian_average_velocity_is_a_fixed_point():
    g = torch.Generator().manual_seed(0)
    b = 64
    t = 0.05 + 0.9 * torch.rand(b, generator=g, dtype=torch.float64)
    r = t * torch.rand(b, generator=g, dtype=torch.float64) * 0.95
    z = torch.randn(b, 3, generator=g, dtype=torch.float64) * 2
    v = marginal_velocity(z, t)
    u, u_tgt = meanflow_target(exact_average_velocity, z, r, t, v)
    exact = exact_average_velocity(z, r, t)
    rel = (u_tgt - exact).norm() / exact.norm()
    assert rel < 1e-6, rel
    assert torch.equal(u, exact)
    # The identity is not trivially satisfied: a wrong tangent misses it by a lot.
    _, wrong = meanflow_target(exact_average_velocity, z, r, t, v, tangent="v00")
    assert (wrong - exact).norm() / exact.norm() > 1e-2


def _small_net(d=3, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    lin1 = torch.nn.Linear(d + 3, 32).to(dtype)
    lin2 = torch.nn.Linear(32, d).to(dtype)

    def u_fn(z, r, t):
        feats = torch.cat([z, torch.sin(3 * r)[:, None], torch.cos(5 * t)[:, None], (t - r)[:, None]], 1)
        return lin2(torch.tanh(lin1(feats)))

    return u_fn


def _fd_derivative(u_fn, z, r, t, v, dr, dt, h=1e-6):
    plus = u_fn(z + h * v, r + h * dr, t + h * dt)
    minus = u_fn(z - h * v, r - h * dr, t - h * dt)
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize("tangent,dr,dt", [("v01", 0, 1), ("v00", 0, 0), ("v10", 1, 0), ("v11", 1, 1)])
def test_each_tangent_matches_finite_differences(tangent, dr, dt):
    u_fn = _small_net()
    g = torch.Generator().manual_seed(1)
    b = 16
    t = 0.2 + 0.7 * torch.rand(b, generator=g, dtype=torch.float64)
    r = t * 0.5
    z = torch.randn(b, 3, generator=g, dtype=torch.float64)
    v = torch.randn(b, 3, generator=g, dtype=torch.float64)
    _, u_tgt = meanflow_target(u_fn, z, r, t, v, tangent=tangent)
    dudt = (v - u_tgt) / (t - r)[:, None]
    fd = _fd_derivative(u_fn, z, r, t, v, dr, dt)
    assert torch.allclose(dudt, fd, rtol=1e-6, atol=1e-8)


def test_rows_with_r_equal_t_have_target_v():
    u_fn = _small_net()
    t = torch.rand(8, dtype=torch.float64)
    z, v = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    _, u_tgt = meanflow_target(u_fn, z, t.clone(), t, v)
    assert torch.equal(u_tgt, v)


def test_target_is_detached_and_u_carries_gradient():
    lin = torch.nn.Linear(4, 2)
    u_fn = lambda z, r, t: lin(torch.cat([z, r[:, None], t[:, None]], 1))  # noqa: E731
    z, v = torch.randn(5, 2), torch.randn(5, 2)
    t = torch.rand(5)
    u, u_tgt = meanflow_target(u_fn, z, t / 2, t, v)
    assert not u_tgt.requires_grad and u.requires_grad
    ((u - u_tgt) ** 2).sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_works_in_float32_and_float64(dtype):
    u_fn = _small_net(dtype=dtype)
    z, v = torch.randn(4, 3, dtype=dtype), torch.randn(4, 3, dtype=dtype)
    t = torch.rand(4, dtype=dtype)
    u, u_tgt = meanflow_target(u_fn, z, t / 3, t, v)
    assert u.dtype == dtype and u_tgt.dtype == dtype and torch.isfinite(u_tgt).all()


def test_unknown_tangent_lists_valid_names():
    with pytest.raises(ValueError, match="unknown tangent 'v02'; valid: v00, v01, v10, v11$"):
        meanflow_target(_small_net(), torch.zeros(1, 3), torch.zeros(1), torch.ones(1), torch.zeros(1, 3), "v02")


class _Net(torch.nn.Module):
    """Conditioned toy net with the backbone contract net(z, r, t, y)."""

    def __init__(self, d=3, num_classes=None):
        super().__init__()
        self.lin = torch.nn.Linear(d + 2, 16, dtype=torch.float64)
        self.out = torch.nn.Linear(16, d, dtype=torch.float64)
        self.emb = torch.nn.Embedding(num_classes + 1, 16, dtype=torch.float64) if num_classes else None

    def forward(self, z, r, t, y=None):
        h = self.lin(torch.cat([z, torch.sin(4 * t)[:, None], (t - r)[:, None]], 1))
        if self.emb is not None:
            h = h + self.emb(y)
        return self.out(torch.tanh(h))


def _full_batch_jvp_loss(net, x, y, cfg, k, seed):
    """The loss recomputed by hand from the same random stream, with the JVP on every row."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(x.shape, generator=g, dtype=x.dtype)
    t, r = sample_t_r(x.shape[0], "logit_normal", {"mu": -0.4, "sigma": 1.0}, 0.25, g)
    t, r = t.to(x.dtype), r.to(x.dtype)
    z, v = linear_path(x, e, t)
    if y is not None:
        dropped = torch.rand(x.shape[0], generator=g) < cfg.class_dropout
        y = torch.where(dropped, torch.full_like(y, k), y)
        v = guided_velocity(net, cfg, z, t, v, y, dropped, k)
    u, u_tgt = meanflow_target(lambda z_, r_, t_: net(z_, r_, t_, y), z, r, t, v)
    sq = (u - u_tgt).pow(2).sum(1)
    return sq / (sq.detach() + 1e-3)


@pytest.mark.parametrize("conditional", [False, True])
def test_jvp_subset_full_batch_and_separate_forward_agree(conditional):
    """Subset JVP == full-batch JVP (recomputed by hand) == (no-grad JVP for the target + forward for u)."""
    k = 4 if conditional else None
    net = _Net(num_classes=k)
    x = torch.randn(32, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (32,)) if conditional else None
    cfg = CFGSettings(omega=2.0, kappa=0.3, t_start=0.1, t_end=0.9) if conditional else CFGSettings()
    grads, losses = [], []
    for u_from in ("jvp", "forward", None):
        net.zero_grad()
        if u_from is None:
            loss = _full_batch_jvp_loss(net, x, y, cfg, k, seed=3)
        else:
            loss_fn = MeanFlowLoss(frac_r_neq_t=0.25, cfg=cfg, num_classes=k, u_from=u_from)
            loss, _ = loss_fn(net, x, y, generator=torch.Generator().manual_seed(3))
        loss.mean().backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
    for other in (1, 2):
        assert torch.allclose(losses[0], losses[other], rtol=1e-12, atol=1e-14)
        assert torch.allclose(grads[0], grads[other], rtol=1e-10, atol=1e-12)
    # the r ≠ t rows are the first round(0.25 · 32) = 8: their targets differ from v, so the check bites
    assert losses[0][:8].abs().sum() > 0


def test_flow_matching_is_frac_zero_and_matches_plain_l2():
    net = _Net()
    x = torch.randn(16, 3, dtype=torch.float64)
    loss_fn = MeanFlowLoss(frac_r_neq_t=0.0, weight_power=0.0, time_sampler="uniform", time_params={})
    g = torch.Generator().manual_seed(5)
    loss, mon = loss_fn(net, x, generator=g)
    # Recompute by hand with the same random stream: e, then the (t, r) pair draws.
    g = torch.Generator().manual_seed(5)
    e = torch.randn(x.shape, generator=g, dtype=x.dtype)
    a, b = torch.rand(16, generator=g), torch.rand(16, generator=g)
    t = torch.maximum(a, b).double()
    z = (1 - t[:, None]) * x + t[:, None] * e
    expected = ((net(z, t, t) - (e - x)) ** 2).sum(1)
    assert torch.allclose(loss, expected, rtol=1e-12)
    assert mon["mse"] == pytest.approx(expected.mean().item())


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_adaptive_weight_divides_by_stop_grad_error(p):
    net = _Net()
    x = torch.randn(16, 3, dtype=torch.float64)
    l2 = MeanFlowLoss(weight_power=0.0)(net, x, generator=torch.Generator().manual_seed(0))[0]
    c = 1e-2
    weighted = MeanFlowLoss(weight_power=p, weight_eps=c)(net, x, generator=torch.Generator().manual_seed(0))[0]
    assert torch.allclose(weighted, l2 / (l2.detach() + c) ** p, rtol=1e-12)
    # The weight is a constant for the gradient: d(weighted)/dθ = w · d(l2)/dθ, not d(l2/(l2+c)^p)/dθ.
    g_w = torch.autograd.grad(weighted.sum(), net.out.bias)[0]
    w = 1 / (l2.detach() + c) ** p
    g_l2 = torch.autograd.grad((w * l2).sum(), net.out.bias)[0]
    assert torch.allclose(g_w, g_l2, rtol=1e-10)


class _ClassConstNet(torch.nn.Module):
    """u(z, r, t | y) = a[y], independent of z and t: ṽ is then known exactly."""

    def __init__(self, k):
        super().__init__()
        self.a = torch.nn.Parameter(torch.arange((k + 1) * 2, dtype=torch.float64).reshape(k + 1, 2))

    def forward(self, z, r, t, y=None):
        return self.a[y] + 0 * z


def test_cfg_guided_velocity_matches_method_formula():
    k = 3
    net = _ClassConstNet(k)
    cfg = CFGSettings(omega=0.2, kappa=0.5, t_start=0.3, t_end=0.7, class_dropout=0.0)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.5], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, k])
    dropped = torch.tensor([False, False, False, False, False, True])
    v = torch.randn(6, 2, dtype=torch.float64)
    z = torch.randn(6, 2, dtype=torch.float64)
    got = guided_velocity(net, cfg, z, t, v, y, dropped, null_class=k)
    a = net.a.detach()
    for i in range(6):
        active = 0.3 <= t[i] <= 0.7 and not dropped[i]
        exp = 0.2 * v[i] + 0.5 * a[y[i]] + 0.3 * a[k] if active else v[i]
        assert torch.allclose(got[i], exp, rtol=1e-12), i


def test_cfg_with_class_dropout_one_trains_on_null_class_with_target_v():
    k = 3
    net = _ClassConstNet(k)
    loss_fn = MeanFlowLoss(cfg=CFGSettings(omega=3.0, class_dropout=0.999999), num_classes=k, frac_r_neq_t=0.0,
                           weight_power=0.0)
    x = torch.randn(8, 2, dtype=torch.float64)
    loss, _ = loss_fn(net, x, torch.zeros(8, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    e = torch.randn(x.shape, generator=g, dtype=x.dtype)
    expected = ((net.a[k].detach() - (e - x)) ** 2).sum(1)
    assert torch.allclose(loss, expected, rtol=1e-12)


def test_one_step_sampling_is_noise_minus_u_at_0_1():
    net = _Net()
    e = torch.randn(10, 3, dtype=torch.float64)
    out = sample(net, e, None, torch.tensor([1.0, 0.0]))
    ones, zeros = torch.ones(10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)
    assert torch.allclose(out, e - net(e, zeros, ones), rtol=0, atol=0)


def test_mean_flow_sampling_is_exact_for_the_exact_average_velocity():
    """With the closed-form u, 1 step and 4 steps land on the same point: the flow map."""
    from mfsweep.methods.sampling import make_time_grid

    net = lambda z, r, t, y: exact_average_velocity(z, r, t)  # noqa: E731
    e = torch.randn(50, 3, dtype=torch.float64)
    one = sample(net, e, None, make_time_grid(1, dtype=torch.float64))
    four = sample(net, e, None, make_time_grid(4, dtype=torch.float64))
    assert torch.allclose(one, four, atol=1e-10)
    # ...and it is the exact transport: z_0 = m + s · e (σ_1 = 1, σ_0 = s).
    assert torch.allclose(one, M + S * e, atol=1e-10)
