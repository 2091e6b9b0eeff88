"""Exact tests of improved MeanFlow (mfsweep/methods/imf.py): the closed-form Gaussian fixed point,
the MeanFlow equivalence of the conditional tangent, the subset JVP, and the config checks."""

import pytest
import torch

from mfsweep.config import ConfigError, load_trial_config, set_dotted
from mfsweep.methods import METHODS
from mfsweep.methods.imf import IMFLoss, compound_velocity
from mfsweep.methods.meanflow import MeanFlowLoss, linear_path
from mfsweep.methods.timesteps import sample_t_r

from gaussian import ExactNet, exact_average_velocity, marginal_velocity, sample_data
from test_meanflow import _Net


def _gaussian_batch(b=256, seed=0):
    """z_t on the path of the closed-form Gaussian, with its e − x, and 0 < r < t < 1."""
    g = torch.Generator().manual_seed(seed)
    x = sample_data(b, g)
    e = torch.randn(b, 3, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(b, generator=g, dtype=torch.float64)
    r = t * torch.rand(b, generator=g, dtype=torch.float64) * 0.95
    z, v_cond = linear_path(x, e, t)
    return z, r, t, v_cond


def test_closed_form_gaussian_compound_velocity_is_the_marginal_velocity():
    """With the exact u*, the model tangent u*(z, t, t) is the marginal velocity and V(u*) equals the
    marginal velocity v(z_t, t) (the MeanFlow identity), which is E[e − x | z_t]."""
    z, r, t, v_cond = _gaussian_batch()
    tangent = exact_average_velocity(z, t, t)
    marginal = marginal_velocity(z, t)
    assert torch.equal(tangent, marginal)
    big_v = compound_velocity(exact_average_velocity, z, r, t, tangent)
    rel = (big_v - marginal).norm() / marginal.norm()
    assert rel < 1e-6, rel
    # Negative controls: not trivially satisfied. MeanFlow's tangent e − x misses it per sample (it
    # is right only in expectation), and a wrong u (scaled by 1.1) misses it too.
    for u_fn, tan in ((exact_average_velocity, v_cond),
                      (lambda z_, r_, t_: 1.1 * exact_average_velocity(z_, r_, t_), 1.1 * tangent)):
        miss = (compound_velocity(u_fn, z, r, t, tan) - marginal).norm() / marginal.norm()
        assert miss > 1e-2, miss
    # and the term (t − r)·du/dt is not negligible: u* alone is far from v
    assert (exact_average_velocity(z, r, t) - marginal).norm() / marginal.norm() > 1e-1


def test_exact_solution_is_a_stationary_point_of_the_plain_v_loss():
    """E[∂loss/∂a] = 0 at u = u* (a = 1), not at a = 0.9: V(u*) = E[e − x | z_t] (weight_power 0,
    so the adaptive weight does not depend on e)."""
    net = ExactNet()
    loss_fn = IMFLoss(frac_r_neq_t=0.5, weight_power=0.0)
    grads = {}
    for a in (1.0, 0.9):
        net.zero_grad()
        with torch.no_grad():
            net.a.fill_(a)
        x = sample_data(100_000, torch.Generator().manual_seed(1))
        loss, _ = loss_fn(net, x, generator=torch.Generator().manual_seed(2))
        loss.mean().backward()
        grads[a] = net.a.grad.item()
    assert abs(grads[1.0]) < 0.02 * abs(grads[0.9]), grads


def _setup(conditional: bool, b: int = 32):
    """A seeded toy net ``net(z, r, t, y)`` (tests/test_meanflow.py), b float64 data rows and, if
    conditional, labels of 4 classes."""
    torch.manual_seed(0)
    k = 4 if conditional else None
    x = torch.randn(b, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (b,)) if conditional else None
    return _Net(num_classes=k), x, y, k


def _loss_and_grads(net, loss_fn, x, y, seed=3):
    net.zero_grad()
    loss, monitors = loss_fn(net, x, y, generator=torch.Generator().manual_seed(seed))
    loss.mean().backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]), monitors


def _by_hand(net, x, y, k, frac, seed=3, eps=1e-2):
    """The v-loss recomputed from the same random stream: JVP on every row, tangent u(z, t, t | y)
    with the row's label after dropout, V = u + (t − r)·sg(du/dt), adaptive weight p = 1."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(x.shape, generator=g, dtype=x.dtype)
    t, r = sample_t_r(x.shape[0], "logit_normal", {"mu": -0.4, "sigma": 1.0}, frac, g)
    t, r = t.to(x.dtype), r.to(x.dtype)
    z, v = linear_path(x, e, t)
    if y is not None:
        y = torch.where(torch.rand(x.shape[0], generator=g) < 0.1, torch.full_like(y, k), y)
    tangent = net(z, t, t, y).detach()
    u, dudt = torch.func.jvp(lambda z_, r_, t_: net(z_, r_, t_, y), (z, r, t),
                             (tangent, torch.zeros_like(r), torch.ones_like(t)))
    sq = (u + (t - r)[:, None] * dudt.detach() - v).pow(2).sum(1)
    return sq / (sq.detach() + eps)


@pytest.mark.parametrize("conditional", [False, True])
def test_subset_jvp_matches_full_batch_by_hand(conditional):
    net, x, y, k = _setup(conditional)
    loss, grads, _ = _loss_and_grads(net, IMFLoss(frac_r_neq_t=0.25, num_classes=k), x, y)
    net.zero_grad()
    ref = _by_hand(net, x, y, k, 0.25)
    ref.mean().backward()
    ref_grads = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
    assert torch.allclose(loss, ref.detach(), rtol=1e-12, atol=1e-14)
    assert torch.allclose(grads, ref_grads, rtol=1e-10, atol=1e-12)


def test_model_tangent_differs_from_conditional_tangent():
    net, x, _, _ = _setup(False)
    model, _, _ = _loss_and_grads(net, IMFLoss(frac_r_neq_t=0.25, weight_power=0.0), x, None)
    cond, _, _ = _loss_and_grads(net, IMFLoss(frac_r_neq_t=0.25, weight_power=0.0, tangent_velocity="conditional"),
                                 x, None)
    # the r ≠ t rows are the first 8: there the tangents differ; the r = t rows agree exactly
    assert not torch.allclose(model[:8], cond[:8], rtol=1e-3)
    assert torch.equal(model[8:], cond[8:])


@pytest.mark.parametrize("conditional", [False, True])
def test_conditional_tangent_is_meanflow_exactly(conditional):
    """‖u + (t − r)·sg(du/dt) − v‖² with tangent e − x is MeanFlow's ‖u − sg(v − (t − r)·du/dt)‖²."""
    net, x, y, k = _setup(conditional)
    settings = dict(frac_r_neq_t=0.5, weight_power=1.0, weight_eps=1e-2, num_classes=k)
    imf = _loss_and_grads(net, IMFLoss(tangent_velocity="conditional", **settings), x, y)
    mf = _loss_and_grads(net, MeanFlowLoss(**settings), x, y)
    assert torch.allclose(imf[0], mf[0], rtol=1e-12, atol=1e-14)
    assert torch.allclose(imf[1], mf[1], rtol=1e-10, atol=1e-12)


def test_frac_zero_is_flow_matching_and_samples_with_euler():
    net, x, _, _ = _setup(False, b=16)
    loss_fn = IMFLoss(frac_r_neq_t=0.0, weight_power=0.0)
    assert loss_fn.sampling_velocity == "instantaneous" and IMFLoss().sampling_velocity == "average"
    loss, _, monitors = _loss_and_grads(net, loss_fn, x, None)
    g = torch.Generator().manual_seed(3)
    e = torch.randn(x.shape, generator=g, dtype=x.dtype)
    t, _ = sample_t_r(16, "logit_normal", {"mu": -0.4, "sigma": 1.0}, 0.0, g)
    z, v = linear_path(x, e, t.double())
    ref = (net(z, t.double(), t.double()) - v).pow(2).sum(1).detach()
    assert torch.allclose(loss, ref, rtol=1e-12)
    assert set(monitors) >= {"mse", "loss"} and not monitors["loss"].requires_grad


def test_full_batch_of_r_neq_t_and_float32():
    net = _setup(False)[0].float()
    loss, _, _ = _loss_and_grads(net, IMFLoss(frac_r_neq_t=1.0), torch.randn(8, 3), None)
    assert loss.dtype == torch.float32 and loss.shape == (8,) and torch.isfinite(loss).all()


def test_unknown_tangent_velocity_lists_valid_names():
    with pytest.raises(ValueError, match="unknown tangent_velocity 'v'; valid: model, conditional$"):
        IMFLoss(tangent_velocity="v")


# ---- config -----------------------------------------------------------------------------------


def _cfg(**over):
    raw = {"method": {"name": "imf"}, "data": {"name": "checkerboard", "conditional": True}}
    for key, value in over.items():  # train__steps=5 sets train.steps
        set_dotted(raw, key.replace("__", "."), value)
    return load_trial_config(raw)


def test_from_config_reads_shared_and_own_settings():
    cfg = _cfg(method__imf={"tangent_velocity": "conditional"}, meanflow__frac_r_neq_t=0.5,
               meanflow__weight_eps=0.01, meanflow__time_sampler={"name": "uniform"},
               meanflow__cfg={"class_dropout": 0.2})
    loss = METHODS.lookup("imf")(cfg, num_classes=3)
    assert isinstance(loss, IMFLoss)
    assert (loss.tangent_velocity, loss.frac_r_neq_t, loss.weight_eps, loss.time_sampler, loss.class_dropout,
            loss.num_classes) == ("conditional", 0.5, 0.01, "uniform", 0.2, 3)
    assert METHODS.lookup("imf")(_cfg(), None).tangent_velocity == "model"  # block omitted: defaults


@pytest.mark.parametrize("over,path", [
    ({"meanflow__tangent": "v00"}, "meanflow.tangent"),
    ({"meanflow__u_from": "forward"}, "meanflow.u_from"),
    ({"meanflow__cfg": {"omega": 2.0}}, "meanflow.cfg"),
    ({"meanflow__cfg": {"kappa": 0.5}}, "meanflow.cfg"),
    ({"method__imf": {"tangent_velocity": "noise"}}, "method.imf.tangent_velocity"),
])
def test_config_rejects_what_imf_does_not_read(over, path):
    with pytest.raises(ConfigError) as info:
        _cfg(**over)
    assert [p for p, _ in info.value.errors] == [path], info.value.errors
