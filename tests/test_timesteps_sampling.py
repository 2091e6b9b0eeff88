"""(t, r) samplers, time grids and the sampler's NFE accounting."""

import pytest
import torch

from mfsweep.methods.sampling import check_time_grid, make_time_grid, sample
from mfsweep.methods.timesteps import TIME_SAMPLERS, num_r_neq_t, sample_t_r


@pytest.mark.parametrize("name", sorted(TIME_SAMPLERS))
@pytest.mark.parametrize("frac", [0.0, 0.25, 0.5, 1.0])
def test_sampler_orders_times_and_fixes_the_r_neq_t_count(name, frac):
    params = {"mu": -0.4, "sigma": 1.0, "r_mu": -4.0, "r_sigma": 1.6}
    t, r = sample_t_r(1000, name, params, frac, torch.Generator().manual_seed(0))
    n = num_r_neq_t(1000, frac)
    assert n == round(1000 * frac)
    assert ((0 <= r) & (r <= t) & (t <= 1)).all()
    assert (r[:n] < t[:n]).all()  # continuous draws: ties have probability 0
    assert torch.equal(r[n:], t[n:])


def test_logit_normal_median_is_sigmoid_mu():
    g = torch.Generator().manual_seed(0)
    # Both draws share LN(mu, sigma): max and min straddle the median, their pooled median is it.
    t, r = sample_t_r(200_000, "logit_normal", {"mu": -0.4, "sigma": 1.0}, 1.0, g)
    pooled = torch.cat([t, r])
    assert pooled.median().item() == pytest.approx(torch.sigmoid(torch.tensor(-0.4)).item(), abs=5e-3)


def test_separate_logit_normal_puts_r_near_zero():
    g = torch.Generator().manual_seed(0)
    t, r = sample_t_r(50_000, "separate_logit_normal", {"mu": -0.6, "sigma": 1.6, "r_mu": -4.0, "r_sigma": 1.6}, 1.0, g)
    assert r.median() < 0.05 < t.median()


@pytest.mark.parametrize("frac", [0.25, 1.0])
def test_clip_r_keeps_the_distribution_of_t_and_max_min_shifts_it(frac):
    """The official CIFAR-10 setting: t ~ LN(-0.6, 1.6) keeps its own law under clip_r (median
    sigmoid(-0.6) = 0.354); max/min takes the larger of the two draws, so its t is never below
    clip_r's on the same draws and is above it wherever r's draw exceeded t's (a shift of t's median
    by about 0.007 here)."""
    params = {"mu": -0.6, "sigma": 1.6, "r_mu": -4.0, "r_sigma": 1.6}
    median = torch.sigmoid(torch.tensor(-0.6)).item()
    t_clip, r_clip = sample_t_r(200_000, "separate_logit_normal", {**params, "order": "clip_r"}, frac,
                                torch.Generator().manual_seed(0))
    t_max, _ = sample_t_r(200_000, "separate_logit_normal", {**params, "order": "max_min"}, frac,
                          torch.Generator().manual_seed(0))
    assert t_clip.median().item() == pytest.approx(median, abs=5e-3)
    assert (t_max >= t_clip).all() and (t_max > t_clip).float().mean() > 0.01
    assert t_max.median().item() > median + 0.004
    assert ((0 <= r_clip) & (r_clip <= t_clip)).all()
    n = num_r_neq_t(200_000, frac)
    assert torch.equal(r_clip[n:], t_clip[n:])
    with pytest.raises(ValueError, match="valid: clip_r, max_min"):
        sample_t_r(4, "uniform", {"order": "sorted"}, 0.5)


def test_uniform_pair_has_the_order_statistic_means():
    t, r = sample_t_r(200_000, "uniform", {}, 1.0, torch.Generator().manual_seed(1))
    assert t.mean().item() == pytest.approx(2 / 3, abs=5e-3)  # E[max of two U(0,1)]
    assert r.mean().item() == pytest.approx(1 / 3, abs=5e-3)


def test_unknown_sampler_and_bad_fraction_are_clear_errors():
    with pytest.raises(ValueError, match="valid: logit_normal, separate_logit_normal, uniform"):
        sample_t_r(4, "beta", {}, 0.5)
    with pytest.raises(ValueError, match="frac_r_neq_t must be in"):
        sample_t_r(4, "uniform", {}, 1.5)


def test_time_grid_and_nfe_count():
    assert torch.allclose(make_time_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    calls = []

    def net(z, r, t, y):
        calls.append((r[0].item(), t[0].item()))
        return torch.zeros_like(z)

    sample(net, torch.randn(3, 2), None, make_time_grid(8))
    assert len(calls) == 8 and calls[0] == (0.875, 1.0) and calls[-1] == (0.0, 0.125)
    calls.clear()
    sample(net, torch.randn(3, 2), None, torch.tensor([1.0, 0.9, 0.2, 0.0]))  # a custom grid
    assert len(calls) == 3


@pytest.mark.parametrize("grid", [[1.0], [0.0, 1.0], [1.0, 0.5, 0.5, 0.0], [1.5, 0.0]])
def test_bad_custom_grids_are_rejected(grid):
    with pytest.raises(ValueError, match="time grid"):
        check_time_grid(torch.tensor(grid))


def test_flow_matching_sampling_is_euler():
    """A velocity net used by sample() is Euler: for v = −z the k-step result is (1 − 1/k)^k · e."""
    net = lambda z, r, t, y: z  # noqa: E731   z ← z − Δ·z
    e = torch.randn(5, 2, dtype=torch.float64)
    out = sample(net, e, None, make_time_grid(4, dtype=torch.float64))
    assert torch.allclose(out, e * (1 - 0.25) ** 4)


def test_instantaneous_sampling_calls_the_network_with_r_equal_t():
    seen = []

    def net(z, r, t, y):
        seen.append(torch.equal(r, t))
        return torch.zeros_like(z)

    sample(net, torch.randn(2, 2), None, make_time_grid(4), velocity="instantaneous")
    assert seen == [True] * 4
    seen.clear()
    sample(net, torch.randn(2, 2), None, make_time_grid(4))
    assert seen == [False] * 4


def test_origin_sampling_predicts_the_data_point_and_renoises_with_fresh_noise():
    """velocity="origin" asks for u(z, 0, t): x̂ = z_t − t·u; a step to r > 0 re-noises x̂ with fresh
    seeded noise, z_r = (1 − r)·x̂ + r·e′ (consistency models' multistep sampler)."""
    seen = []
    x_hat = torch.tensor([[0.5, -1.0]], dtype=torch.float64)

    def net(z, r, t, y):  # the exact average velocity to t = 0 for a point mass at x_hat
        seen.append((bool((r == 0).all()), round(float(t[0]), 6), z.clone()))
        return (z - x_hat) / t[:, None]

    e = torch.randn(1, 2, dtype=torch.float64)
    grid = make_time_grid(2, dtype=torch.float64)
    out = sample(net, e, None, grid, velocity="origin", generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, x_hat)
    assert [s[:2] for s in seen] == [(True, 1.0), (True, 0.5)]
    fresh = torch.randn(1, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.allclose(seen[1][2], 0.5 * x_hat + 0.5 * fresh)  # re-noised with e′, not along the line to e
    with pytest.raises(ValueError, match="unknown sampling velocity 'sideways'; valid: average, instantaneous, origin"):
        sample(net, e, None, grid, velocity="sideways")


def test_origin_sampling_keeps_the_gaussian_marginal_at_every_nfe():
    """With the exact Gaussian solution, multistep "origin" samples have the data's mean and std."""
    from gaussian import M, S, exact_average_velocity

    net = lambda z, r, t, y: exact_average_velocity(z, r, t)  # noqa: E731
    e = torch.randn(20000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for k in (1, 2, 4):
        x = sample(net, e, None, make_time_grid(k, dtype=torch.float64), velocity="origin",
                   generator=torch.Generator().manual_seed(1))
        assert torch.allclose(x.mean(0), M, atol=0.05) and torch.allclose(x.std(0), S, rtol=0.03), (k, x.std(0))
