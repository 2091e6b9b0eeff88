"""Exact tests of continuous-time consistency training (mfsweep/methods/consistency.py): the closed-form
fixed point, MeanFlow's target at r = 0, warm-up and tangent normalisation, JVP vs finite differences,
the loss on a real backbone, and its config block."""

import pytest
import torch

from mfsweep import sample
from mfsweep.config import ConfigError, ModelConfig, load_trial_config
from mfsweep.methods.consistency import ConsistencyLoss, consistency_target, from_config, normalize_tangent
from mfsweep.methods.meanflow import meanflow_target
from mfsweep.models import build_backbone
from mfsweep.training.train import sampling_velocity

from gaussian import ExactNet, exact_average_velocity, flow_map, marginal_velocity

torch.set_default_dtype(torch.float32)
F64 = torch.float64


def _points(b=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = 0.05 + 0.9 * torch.rand(b, generator=g, dtype=F64)
    z = 2 * torch.randn(b, 3, generator=g, dtype=F64)
    return z, t, marginal_velocity(z, t)


def _exact(z, r, t):
    return exact_average_velocity(z, r, t)


def _grad_a(loss_fn, net, z, t, v):
    loss, _ = loss_fn.regress(net, z, t, v)
    return torch.autograd.grad(loss.sum(), net.a)[0], loss


@pytest.mark.parametrize("tangent_norm", [False, True])
@pytest.mark.parametrize("p", [0.0, 1.0])
def test_exact_average_velocity_to_the_origin_is_a_fixed_point(tangent_norm, p):
    """u*(z, 0, t) = v(z, t) − t·du*/dt with the marginal velocity as tangent and in the target. With
    normalisation too: it rescales g = u_tgt − u, and g = 0 at the fixed point, so ĝ = 0."""
    z, t, v = _points()
    exact = _exact(z, torch.zeros_like(t), t)
    u, u_tgt = consistency_target(_exact, z, t, v)
    assert torch.equal(u, exact)
    assert (u_tgt - exact).norm() / exact.norm() < 1e-12
    loss_fn = ConsistencyLoss(tangent_norm=tangent_norm, tangent_warmup_frac=0.0, weight_power=p)
    grad, loss = _grad_a(loss_fn, ExactNet(), z, t, v)
    assert grad.abs() < 1e-8 and loss.abs().max() < 1e-8, (grad, loss.max())


@pytest.mark.parametrize("tangent_norm", [False, True])
def test_negative_controls_are_not_fixed_points(tangent_norm):
    z, t, v = _points()
    exact = _exact(z, torch.zeros_like(t), t)
    # a scaled solution: a = 1.1 misses the target and gets a clear gradient back towards a = 1
    net = ExactNet()
    with torch.no_grad():
        net.a.fill_(1.1)
    grad, _ = _grad_a(ConsistencyLoss(tangent_norm=tangent_norm, tangent_warmup_frac=0.0), net, z, t, v)
    assert grad > 1e-2, grad
    # a wrong tangent (v, 0, 0) drops ∂_t u: the identity then fails by a lot
    _, wrong = consistency_target(_exact, z, t, v, tangent="v00")
    assert (wrong - exact).norm() / exact.norm() > 1e-2
    # during the warm-up (w < 1) the target leans towards v and the solution is not its fixed point
    _, warm = consistency_target(_exact, z, t, v, tangent_scale=0.5)
    assert (warm - exact).norm() / exact.norm() > 1e-2


def test_normalising_only_the_jvp_term_would_move_the_fixed_point():
    """Why the whole g is normalised (sCT Algorithm 1): v − t·ĵ with ĵ = du/dt / (‖du/dt‖ + c) is not u*."""
    z, t, v = _points()
    exact = _exact(z, torch.zeros_like(t), t)
    _, u_tgt = consistency_target(_exact, z, t, v)
    dudt = (v - u_tgt) / t[:, None]
    jvp_only = v - t[:, None] * normalize_tangent(dudt, 0.1)
    assert (jvp_only - exact).norm() / exact.norm() > 1e-1


def test_one_step_origin_sampling_of_the_exact_solution_is_the_flow_map():
    e = torch.randn(32, 3, dtype=F64)
    out = sample(ExactNet(), e, None, torch.tensor([1.0, 0.0], dtype=F64), velocity="origin")
    ones = torch.ones(32, dtype=F64)
    assert torch.allclose(out, flow_map(e, 0 * ones, ones), rtol=1e-12, atol=1e-12)


def _small_net(d=3, seed=0):
    torch.manual_seed(seed)
    lin1, lin2 = torch.nn.Linear(d + 3, 32).to(F64), torch.nn.Linear(32, d).to(F64)

    def u_fn(z, r, t):
        feats = torch.cat([z, torch.sin(3 * r)[:, None], torch.cos(5 * t)[:, None], (t - r)[:, None]], 1)
        return lin2(torch.tanh(lin1(feats)))

    return u_fn


def test_target_is_meanflow_target_at_r_zero():
    u_fn = _small_net()
    z, t, _ = _points(16, seed=1)
    v = torch.randn(16, 3, dtype=F64)
    u, u_tgt = consistency_target(u_fn, z, t, v)
    u_mf, tgt_mf = meanflow_target(u_fn, z, torch.zeros_like(t), t, v)
    assert torch.equal(u, u_mf) and torch.equal(u_tgt, tgt_mf)
    assert not u_tgt.requires_grad


def test_loss_without_stabilisers_is_meanflow_l2_at_r_zero_from_the_same_random_stream():
    net = _Net()
    x = torch.randn(16, 3, dtype=F64)
    loss_fn = ConsistencyLoss(tangent_norm=False, tangent_warmup_frac=0.0, weight_power=0.0)
    loss, mon = loss_fn(net, x, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)  # e, then the sampler's pair of draws; t is the first
    e = torch.randn(x.shape, generator=g, dtype=F64)
    t = torch.sigmoid(-0.4 + torch.randn(16, generator=g)).to(F64)
    z = (1 - t[:, None]) * x + t[:, None] * e
    u, u_tgt = meanflow_target(lambda z_, r_, t_: net(z_, r_, t_), z, torch.zeros_like(t), t, e - x)
    expected = ((u - u_tgt) ** 2).sum(1)
    assert torch.allclose(loss, expected, rtol=1e-12, atol=0)
    assert mon["mse"] == pytest.approx(expected.mean().item(), rel=1e-12)


class _Linear(torch.nn.Module):
    """u(z, r, t) = A z + b·t + k·r + c: along the tangent (v, 0, 1), du/dt = A v + b exactly."""

    def __init__(self):
        super().__init__()
        self.A = torch.nn.Parameter(torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=F64))
        self.b = torch.nn.Parameter(torch.tensor([1.5, -0.5], dtype=F64))
        self.k = torch.nn.Parameter(torch.tensor([3.0, 7.0], dtype=F64))
        self.c = torch.nn.Parameter(torch.tensor([0.1, 0.2], dtype=F64))

    def forward(self, z, r, t, y=None):
        return z @ self.A.T + t[:, None] * self.b + r[:, None] * self.k + self.c


def _linear_case():
    net = _Linear()
    z = torch.tensor([[1.0, 2.0], [-0.5, 0.25], [0.0, -3.0]], dtype=F64)
    v = torch.tensor([[0.5, -1.0], [2.0, 1.0], [-1.0, 0.0]], dtype=F64)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    with torch.no_grad():
        u = net(z, 0 * t, t)
        dudt = v @ net.A.T + net.b
    return net, z, t, v, u, dudt


def test_warmup_schedule_and_scaled_target_exact():
    loss_fn = ConsistencyLoss(tangent_warmup_frac=0.1)
    assert loss_fn.tangent_scale == 0.0  # before training: step 0
    for step, w in [(0, 0.0), (5, 0.25), (10, 0.5), (20, 1.0), (150, 1.0)]:
        loss_fn.on_step(step, 200)  # 0.1 · 200 = 20 warm-up steps
        assert loss_fn.tangent_scale == w
    off = ConsistencyLoss(tangent_warmup_frac=0.0)
    off.on_step(0, 200)
    assert off.tangent_scale == 1.0
    net, z, t, v, u, dudt = _linear_case()
    for w in (0.0, 0.25, 1.0):
        _, u_tgt = consistency_target(lambda z_, r_, t_: net(z_, r_, t_), z, t, v, tangent_scale=w)
        assert torch.allclose(u_tgt, v - w * t[:, None] * dudt, rtol=1e-14, atol=1e-14), w
    _, fm = consistency_target(lambda z_, r_, t_: net(z_, r_, t_), z, t, v, tangent_scale=0.0)
    assert torch.equal(fm, v)  # w = 0: Flow Matching's target at r = 0
    loss_fn.tangent_norm, loss_fn.weight_power = False, 0.0
    loss_fn.on_step(5, 200)  # w = 0.25 inside the loss too
    loss, mon = loss_fn.regress(net, z, t, v)
    expected = ((u - (v - 0.25 * t[:, None] * dudt)) ** 2).sum(1)
    assert torch.allclose(loss, expected, rtol=1e-13) and mon["tangent_scale"] == 0.25


def test_tangent_normalisation_exact_values_and_gradient():
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.3, -0.4]], dtype=F64)
    assert torch.allclose(normalize_tangent(g, 0.1), torch.tensor(
        [[3 / 5.1, 4 / 5.1], [0.0, 0.0], [0.3 / 0.6, -0.4 / 0.6]], dtype=F64), rtol=1e-15)
    net, z, t, v, u, dudt = _linear_case()
    raw = v - t[:, None] * dudt - u  # g = u_tgt − u
    norm = raw.norm(dim=1, keepdim=True)
    loss_fn = ConsistencyLoss(tangent_norm=True, tangent_norm_c=0.1, tangent_warmup_frac=0.0, weight_power=0.0)
    loss, mon = loss_fn.regress(net, z, t, v)
    assert torch.allclose(loss, (norm[:, 0] / (norm[:, 0] + 0.1)) ** 2, rtol=1e-13)
    assert mon["mse"] == pytest.approx((norm ** 2).mean().item(), rel=1e-13)  # mse: the raw residual
    # the gradient moves u along ĝ: d loss / d c = Σ_rows −2·ĝ
    (grad_c,) = torch.autograd.grad(loss.sum(), net.c)
    assert torch.allclose(grad_c, -2 * (raw / (norm + 0.1)).sum(0), rtol=1e-12)


def test_jvp_matches_central_finite_differences():
    u_fn = _small_net()
    z, t, _ = _points(16, seed=2)
    t = 0.2 + 0.6 * t
    v = torch.randn(16, 3, dtype=F64)
    _, u_tgt = consistency_target(u_fn, z, t, v)
    dudt = (v - u_tgt) / t[:, None]
    h, r = 1e-6, torch.zeros_like(t)
    fd = (u_fn(z + h * v, r, t + h) - u_fn(z - h * v, r, t - h)) / (2 * h)
    assert torch.allclose(dudt, fd, rtol=1e-6, atol=1e-8)


class _Net(torch.nn.Module):
    def __init__(self, d=3):
        super().__init__()
        self.lin = torch.nn.Linear(d + 2, 16, dtype=F64)
        self.out = torch.nn.Linear(16, d, dtype=F64)

    def forward(self, z, r, t, y=None):
        return self.out(torch.tanh(self.lin(torch.cat([z, torch.sin(4 * t)[:, None], (t - r)[:, None]], 1))))


@pytest.mark.parametrize("num_classes", [None, 3])
def test_loss_on_the_mlp_backbone(num_classes):
    torch.manual_seed(0)
    net = build_backbone(ModelConfig(hidden_dim=32, depth=1), (2,), num_classes)
    x = torch.randn(64, 2)
    y = torch.randint(0, 3, (64,)) if num_classes else None
    results = []
    for u_from in ("jvp", "forward"):
        loss_fn = ConsistencyLoss(num_classes=num_classes, weight_power=1.0, u_from=u_from)
        loss_fn.on_step(50, 100)  # warm-up done
        net.zero_grad()
        loss, mon = loss_fn(net, x, y, generator=torch.Generator().manual_seed(1))
        assert loss.shape == (64,) and torch.isfinite(loss).all()
        assert {"mse", "loss"} <= set(mon) and all(m.ndim == 0 and not m.requires_grad for m in mon.values())
        loss.mean().backward()
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
        results.append((loss.detach(), torch.cat([g.flatten() for g in grads])))
    # the same loss and gradients whether u is the JVP's primal output or a separate forward
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_from_config_builds_the_loss_with_its_settings():
    cfg = load_trial_config({"method": {"name": "consistency"}})
    loss_fn = from_config(cfg, None)
    assert isinstance(loss_fn, ConsistencyLoss) and sampling_velocity(cfg, loss_fn) == "origin"
    assert (loss_fn.tangent_norm, loss_fn.tangent_norm_c, loss_fn.tangent_warmup_frac) == (True, 0.1, 0.025)
    assert loss_fn.weight_power == 0.0 and loss_fn.tangent == "v01"  # the method's default p (METHOD_DEFAULTS)
    cfg = load_trial_config({
        "method": {"name": "consistency", "consistency": {"tangent_norm": False, "tangent_warmup_frac": 0.2}},
        "data": {"conditional": True, "name": "checkerboard"},
        "meanflow": {"time_sampler": {"name": "logit_normal", "mu": -1.0, "sigma": 1.4}, "weight_power": 0.5,
                     "tangent": "v00", "u_from": "forward", "cfg": {"class_dropout": 0.2}}})
    loss_fn = from_config(cfg, 4)
    assert (loss_fn.tangent_norm, loss_fn.tangent_warmup_frac, loss_fn.weight_power) == (False, 0.2, 0.5)  # set wins
    assert loss_fn.time_params["mu"] == -1.0 and loss_fn.time_params["sigma"] == 1.4
    assert (loss_fn.tangent, loss_fn.u_from, loss_fn.class_dropout, loss_fn.num_classes) == ("v00", "forward", 0.2, 4)


@pytest.mark.parametrize("field,value", [("tangent_norm_c", 0.0), ("tangent_norm_c", -0.1),
                                         ("tangent_warmup_frac", 1.5), ("tangent_warmup_frac", -0.1),
                                         ("tangent_norm", "maybe"), ("tangent_nrom", True)])
def test_bad_values_name_their_path(field, value):
    with pytest.raises(ConfigError) as exc:
        load_trial_config({"method": {"name": "consistency", "consistency": {field: value}}})
    assert [p for p, _ in exc.value.errors] == [f"method.consistency.{field}"]


@pytest.mark.parametrize("raw,path", [({"meanflow": {"frac_r_neq_t": 0.5}}, "meanflow.frac_r_neq_t"),
                                      ({"data": {"conditional": True}, "meanflow": {"cfg": {"omega": 2.0}}},
                                       "meanflow.cfg")])
def test_keys_that_do_not_apply_are_rejected(raw, path):
    with pytest.raises(ConfigError) as exc:
        load_trial_config({"method": {"name": "consistency"}, **raw})
    assert path in [p for p, _ in exc.value.errors]
    # class dropout alone is fine
    load_trial_config({"method": {"name": "consistency"}, "data": {"conditional": True},
                       "meanflow": {"cfg": {"class_dropout": 0.2}}})
