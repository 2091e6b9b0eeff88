"""α-Flow (mfsweep/methods/alphaflow.py): schedule, exact Gaussian fixed points, JVP and α → 0 limit,
weighting, the loss on a tiny MLP, config."""

import math

import pytest
import torch

from mfsweep.config import ConfigError, ModelConfig, load_trial_config
from mfsweep.methods.alphaflow import AlphaFlowLoss, alpha_schedule, alphaflow_target, from_config
from mfsweep.methods.meanflow import CFGSettings
from mfsweep.models import build_backbone

from gaussian import ExactNet, exact_average_velocity, marginal_velocity


# ---- schedule ------------------------------------------------------------------------------------

def _sigmoid_formula(k, ks, ke, gamma):
    """Their ``sigmoid`` scheduler from 1 to 0, written independently: 1 − 1 / (1 + exp(−γ·progress))."""
    progress = (k - (ks + ke) / 2) / (ke - ks)
    return 1.0 - 1.0 / (1.0 + math.exp(-gamma * progress))


def test_schedule_start_middle_end_and_formula():
    T = 1000
    assert alpha_schedule(0, T) == 1.0
    assert alpha_schedule(500, T) == pytest.approx(0.5, abs=1e-12)
    assert alpha_schedule(T - 1, T) == 0.0
    for step in (350, 420, 580, 650):  # inside the clamp band: the plain formula
        assert alpha_schedule(step, T) == pytest.approx(_sigmoid_formula(step / T, 0.0, 1.0, 25.0), rel=1e-12)
    # η = 0.005 clamps: raw α(0.25) ≈ 0.998 → 1 and raw α(0.75) ≈ 0.0019 → 0 (the MeanFlow JVP phase)
    assert _sigmoid_formula(0.25, 0, 1, 25) > 0.995 and alpha_schedule(250, T) == 1.0
    assert _sigmoid_formula(0.75, 0, 1, 25) < 0.005 and alpha_schedule(750, T) == 0.0
    values = [alpha_schedule(s, T) for s in range(T)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone non-increasing
    assert values[0] == 1.0 and values[-1] == 0.0 and len(set(values)) > 100


def test_schedule_keys_move_alpha():
    T = 1000
    base = alpha_schedule(600, T)
    assert alpha_schedule(600, T, sharpness=5.0) == pytest.approx(_sigmoid_formula(0.6, 0, 1, 5.0), rel=1e-12)
    assert alpha_schedule(600, T, sharpness=5.0) > base
    assert alpha_schedule(400, T, start_frac=0.5) == 1.0 and alpha_schedule(400, T) < 1.0
    assert alpha_schedule(600, T, end_frac=0.5) == 0.0 and base > 0.0
    assert alpha_schedule(T - 1, T, clamp=0.0) > 0.0  # no clamp: α never quite reaches 0 inside the window
    assert alpha_schedule(600, T, clamp=0.2) == 0.0 and 0.0 < base < 0.2
    cfg = load_trial_config({"method": {"name": "alphaflow", "alphaflow": {
        "anneal_start_frac": 0.2, "anneal_end_frac": 0.6, "sigmoid_sharpness": 10.0, "alpha_clamp": 0.01}}})
    loss = from_config(cfg, None)
    assert loss.alpha == 1.0  # before on_step: the value at step 0
    loss.on_step(450, T)
    assert loss.alpha == pytest.approx(_sigmoid_formula(0.45, 0.2, 0.6, 10.0), rel=1e-12)


# ---- exact Gaussian fixed points (float64) -------------------------------------------------------

def _gaussian_batch(b=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = 0.05 + 0.9 * torch.rand(b, generator=g, dtype=torch.float64)
    r = t * torch.rand(b, generator=g, dtype=torch.float64) * 0.95
    z = torch.randn(b, 3, generator=g, dtype=torch.float64) * 2
    return z, r, t


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _grad_a(loss_fn, net, z, r, t, v, n):
    net.zero_grad()
    loss, _ = loss_fn.per_sample_loss(*loss_fn.regression(net, z, r, t, v, None, n), n)
    loss.mean().backward()
    return float(net.a.grad)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
def test_exact_average_velocity_is_a_fixed_point_for_every_alpha_with_the_exact_shift_velocity(alpha):
    """With ṽ = u*(z_t, s, t), the exact average velocity over [s, t], the two-jump target
    α·u*(z_t, s, t) + (1 − α)·u*(z_s, r, s) is u*(z_t, r, t) for every α (the flow map's semigroup
    property). This checks where s and z_s are placed; at α = 0, ṽ is the marginal velocity."""
    z, r, t = _gaussian_batch()
    s = t - alpha * (t - r)
    v = exact_average_velocity(z, s, t)
    exact = exact_average_velocity(z, r, t)
    assert _rel(alphaflow_target(exact_average_velocity, z, r, t, v, alpha), exact) < 1e-6
    loss_fn = AlphaFlowLoss(weight_power=1.0)
    loss_fn.alpha = alpha
    n = 48  # 48 rows with r < t, 16 with r = t (target v = u*(z, t, t) = marginal velocity)
    r = torch.cat([r[:n], t[n:]])
    v = torch.cat([v[:n], marginal_velocity(z[n:], t[n:])])
    u, target = loss_fn.regression(ExactNet(), z, r, t, v, None, n)
    assert _rel(target, u.detach()) < 1e-6
    assert abs(_grad_a(loss_fn, ExactNet(), z, r, t, v, n)) < 1e-8
    wrong = ExactNet()
    with torch.no_grad():
        wrong.a.fill_(1.1)
    u, target = loss_fn.regression(wrong, z, r, t, v, None, n)
    assert _rel(target, u.detach()) > 1e-2
    assert abs(_grad_a(loss_fn, wrong, z, r, t, v, n)) > 1e-3


def test_alpha_zero_marginal_velocity_fixed_point_and_its_negative_control():
    """With the marginal velocity v(z_t, t) in place of e − x (what the per-sample target equals in
    expectation: u* is affine in z for Gaussian data), α = 0 is the MeanFlow target: u* is its fixed point."""
    z, r, t = _gaussian_batch()
    n = 48
    r = torch.cat([r[:n], t[n:]])
    v = marginal_velocity(z, t)
    loss_fn = AlphaFlowLoss()
    loss_fn.alpha = 0.0
    for u_from in ("jvp", "forward"):
        loss_fn.u_from = u_from
        u, target = loss_fn.regression(ExactNet(), z, r, t, v, None, n)
        assert _rel(target, exact_average_velocity(z, r, t)) < 1e-6 and _rel(u.detach(), target) < 1e-6
        assert abs(_grad_a(loss_fn, ExactNet(), z, r, t, v, n)) < 1e-8
    wrong = ExactNet()
    with torch.no_grad():
        wrong.a.fill_(1.1)
    u, target = loss_fn.regression(wrong, z, r, t, v, None, n)
    assert _rel(target, u.detach()) > 1e-2 and abs(_grad_a(loss_fn, wrong, z, r, t, v, n)) > 1e-3


def test_with_the_marginal_velocity_alpha_biases_the_fixed_point_by_order_alpha_squared():
    """For 0 < α the published target (ṽ = v) does NOT have u* as its fixed point: α = 1 is trajectory
    Flow Matching, whose fixed point is the instantaneous velocity u(z, r, t) = v(z, t) for every r; the
    gap to u* shrinks as α² (the Gaussian flow is curved, so it is not zero)."""
    z, r, t = _gaussian_batch()
    v = marginal_velocity(z, t)
    exact = exact_average_velocity(z, r, t)

    def gap(alpha):
        return _rel(alphaflow_target(exact_average_velocity, z, r, t, v, alpha), exact)

    assert gap(0.0) < 1e-6
    assert gap(1.0) > 1e-2 and gap(0.5) > 1e-3
    assert gap(0.02) / gap(0.01) == pytest.approx(4.0, rel=0.05)

    def instantaneous(z_, r_, t_):
        return marginal_velocity(z_, t_)

    assert _rel(alphaflow_target(instantaneous, z, r, t, v, 1.0), v) == 0.0  # α = 1: v is the fixed point
    assert _rel(alphaflow_target(instantaneous, z, r, t, v, 0.5), v) > 1e-3  # ... and no longer at α = ½


# ---- JVP, finite differences and the α → 0 limit (paper Theorem 1) -------------------------------

def _small_net(seed=0):
    torch.manual_seed(seed)
    lin1 = torch.nn.Linear(6, 32).to(torch.float64)
    lin2 = torch.nn.Linear(32, 3).to(torch.float64)

    def u_fn(z, r, t):
        return lin2(torch.tanh(lin1(torch.cat([z, torch.sin(3 * r)[:, None], torch.cos(5 * t)[:, None],
                                               (t - r)[:, None]], 1))))

    return u_fn, list(lin1.parameters()) + list(lin2.parameters())


def _batch(seed=1, b=16):
    g = torch.Generator().manual_seed(seed)
    t = 0.2 + 0.7 * torch.rand(b, generator=g, dtype=torch.float64)
    return (torch.randn(b, 3, generator=g, dtype=torch.float64), 0.5 * t, t,
            torch.randn(b, 3, generator=g, dtype=torch.float64))


def test_alpha_zero_target_matches_central_finite_differences():
    u_fn, _ = _small_net()
    z, r, t, v = _batch()
    h = 1e-6
    fd = (u_fn(z + h * v, r, t + h) - u_fn(z - h * v, r, t - h)) / (2 * h)
    expected = v - (t - r)[:, None] * fd
    assert torch.allclose(alphaflow_target(u_fn, z, r, t, v, 0.0), expected, rtol=1e-6, atol=1e-8)


def test_small_alpha_target_and_gradient_tend_to_meanflow():
    """(u_tgt(α) − u)/α → u_tgt(0) − u, so α⁻¹·‖Δ‖² (the paper's loss, p = 0) has the MeanFlow gradient."""
    u_fn, params = _small_net()
    z, r, t, v = _batch()
    u = u_fn(z, r, t).detach()
    mf = alphaflow_target(u_fn, z, r, t, v, 0.0) - u
    alpha = 1e-5
    assert torch.allclose((alphaflow_target(u_fn, z, r, t, v, alpha) - u) / alpha, mf, rtol=1e-3, atol=1e-6)
    net = lambda z_, r_, t_, y_=None: u_fn(z_, r_, t_)  # noqa: E731
    grads = []
    for a in (0.0, alpha):
        loss_fn = AlphaFlowLoss(weight_power=0.0)
        loss_fn.alpha = a
        loss, _ = loss_fn.per_sample_loss(*loss_fn.regression(net, z, r, t, v, None, len(z)), len(z))
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss.mean(), params)]))
    assert torch.allclose(grads[1], grads[0], rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("alpha,p,head_scale", [(0.5, 1.0, 0.5), (0.5, 0.0, 2.0), (0.25, 0.5, 1.0), (1.0, 1.0, 1.0),
                                                (0.0, 1.0, 1.0)])
def test_weighting(alpha, p, head_scale):
    loss_fn = AlphaFlowLoss(weight_power=p, weight_eps=1e-3)
    loss_fn.alpha = alpha
    u, target = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    loss, d = loss_fn.per_sample_loss(u, target, 4)
    base = d / (d + 1e-3) ** p
    assert torch.allclose(d, ((u - target) ** 2).sum(1))
    assert torch.allclose(loss[:4], head_scale * base[:4]) and torch.allclose(loss[4:], base[4:])


# ---- the loss on a tiny MLP ----------------------------------------------------------------------

def _mlp(num_classes=None):
    torch.manual_seed(0)
    return build_backbone(ModelConfig(hidden_dim=32, depth=1), (2,), num_classes)


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("alpha", [1.0, 0.4, 0.0])
def test_loss_on_tiny_mlp(conditional, alpha):
    k = 3 if conditional else None
    net = _mlp(k)
    cfg = CFGSettings(omega=2.0, kappa=0.3, t_start=0.1, t_end=0.9) if conditional else None
    loss_fn = AlphaFlowLoss(frac_r_neq_t=0.5, cfg=cfg, num_classes=k)
    loss_fn.alpha = alpha
    x = torch.randn(32, 2)
    y = torch.randint(0, 3, (32,)) if conditional else None
    loss, mon = loss_fn(net, x, y, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (32,) and torch.isfinite(loss).all()
    assert set(mon) >= {"mse", "loss", "alpha"} and all(m.ndim == 0 and not m.requires_grad for m in mon.values())
    assert float(mon["alpha"]) == pytest.approx(alpha)
    loss.mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_u_from_forward_equals_jvp_at_alpha_zero():
    net, x = _mlp(), torch.randn(32, 2)
    out = []
    for u_from in ("jvp", "forward"):
        loss_fn = AlphaFlowLoss(u_from=u_from)
        loss_fn.alpha = 0.0
        net.zero_grad()
        loss, _ = loss_fn(net, x, generator=torch.Generator().manual_seed(1))
        loss.mean().backward()
        out.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    assert torch.allclose(out[0][0], out[1][0], rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(out[0][1], out[1][1]))


# ---- config --------------------------------------------------------------------------------------

def test_from_config_defaults_and_shared_keys():
    cfg = load_trial_config({"method": {"name": "alphaflow"}, "data": {"conditional": True, "name": "eight_gaussians"},
                             "meanflow": {"frac_r_neq_t": 0.5, "weight_power": 0.5, "u_from": "forward",
                                          "cfg": {"omega": 2.0}}})
    loss = from_config(cfg, 4)
    assert isinstance(loss, AlphaFlowLoss) and loss.sampling_velocity == "average"
    assert loss.schedule == {"start_frac": 0.0, "end_frac": 1.0, "sharpness": 25.0, "clamp": 0.005}
    assert (loss.frac_r_neq_t, loss.weight_power, loss.u_from, loss.cfg.omega, loss.num_classes) == (0.5, 0.5, "forward", 2.0, 4)
    fm_like = from_config(load_trial_config({"method": {"name": "alphaflow"}, "meanflow": {"frac_r_neq_t": 0.0}}), None)
    assert fm_like.sampling_velocity == "instantaneous"


@pytest.mark.parametrize("field,value", [("anneal_start_frac", -0.1), ("anneal_start_frac", 1.0),
                                         ("anneal_end_frac", 0.0), ("anneal_end_frac", 1.5),
                                         ("sigmoid_sharpness", 0.0), ("alpha_clamp", -0.01), ("alpha_clamp", 0.5),
                                         ("nope", 1)])
def test_bad_values_name_their_path(field, value):
    with pytest.raises(ConfigError) as exc:
        load_trial_config({"method": {"name": "alphaflow", "alphaflow": {field: value}}})
    assert f"method.alphaflow.{field}" in [path for path, _ in exc.value.errors]


def test_empty_window_and_tangent_are_rejected():
    with pytest.raises(ConfigError) as exc:
        load_trial_config({"method": {"name": "alphaflow", "alphaflow": {"anneal_start_frac": 0.6, "anneal_end_frac": 0.4}}})
    assert [p for p, _ in exc.value.errors] == ["method.alphaflow"]
    with pytest.raises(ConfigError) as exc:
        load_trial_config({"method": {"name": "alphaflow"}, "meanflow": {"tangent": "v00"}})
    assert [p for p, _ in exc.value.errors] == ["meanflow.tangent"]
