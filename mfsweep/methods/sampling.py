"""Few-step sampling with the average velocity (docs/method.md §1; k-diffusion-style signature).

One jump of the flow from t to r is z_r = z_t − (t − r)·u(z_t, r, t). With a time grid
1 = t_0 > t_1 > … > t_k = 0 the sampler makes k jumps, so NFE = len(grid) − 1. A Flow Matching
network used the same way is plain Euler integration (u(z, r, t) ≈ v(z, t)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mfsweep.methods import TIME_GRIDS


def linspace_grid(nfe: int, dtype=torch.float32, device="cpu") -> Tensor:
    """Equal steps: 1, 1 − 1/nfe, …, 0."""
    return torch.linspace(1.0, 0.0, nfe + 1, dtype=dtype, device=device)


def make_time_grid(nfe: int, rule: str = "linspace", dtype=torch.float32, device="cpu") -> Tensor:
    """Decreasing time grid of shape (nfe + 1,) from 1 (noise) to 0 (data); ``rule`` from TIME_GRIDS."""
    if not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    return TIME_GRIDS.lookup(rule)(nfe, dtype=dtype, device=device)


def check_time_grid(time_grid: Tensor) -> Tensor:
    """Validate a custom grid: 1-D, at least two points, strictly decreasing, inside [0, 1]."""
    g = torch.as_tensor(time_grid)
    if g.ndim != 1 or g.numel() < 2:
        raise ValueError(f"time grid must be 1-D with at least 2 points, got shape {tuple(g.shape)}")
    if not bool((g[1:] < g[:-1]).all()):
        raise ValueError(f"time grid must be strictly decreasing (noise t=1 → data t=0), got {g.tolist()}")
    if float(g.max()) > 1.0 or float(g.min()) < 0.0:
        raise ValueError(f"time grid must lie in [0, 1], got {g.tolist()}")
    return g


VELOCITIES = ("average", "instantaneous", "origin")


@torch.no_grad()
def sample(net, noise: Tensor, labels: Tensor | None, time_grid: Tensor, *, velocity: str = "average",
           generator: torch.Generator | None = None) -> Tensor:
    """Integrate from noise at time_grid[0] to time_grid[-1] with len(time_grid) − 1 network calls.

    Args:
        net: ``net(z, r, t, y) -> u`` with z (B, ...), r and t (B,), y (B,) or None.
        noise: e ~ N(0, I), shape (B, ...). Reusing it across grids compares NFEs on the same noise.
        labels: class labels (B,) int64, or None for an unconditional model.
        time_grid: decreasing times, shape (k + 1,); NFE = k.
        velocity: what the network is asked for on a step from t to r:
            "average": u(z, r, t), the average velocity over [r, t]; the jump
            z_r = z_t − (t − r)·u is the flow map (MeanFlow and its relatives);
            "instantaneous": u(z, t, t) = v(z, t), plain Euler steps (Flow Matching networks,
            never trained with r ≠ t);
            "origin": u(z, 0, t), the average velocity to the data end, giving the prediction
            x̂ = z_t − t·u(z, 0, t); a step to r > 0 re-noises it with fresh noise,
            z_r = (1 − r)·x̂ + r·e′ (the multistep sampler of consistency models, Song et al. 2023,
            Algorithm 1). A network trained with r = 0 only knows nothing of the flow map to r > 0,
            and moving along the line from z_t to x̂ instead keeps the noise correlated with x̂,
            which widens the samples (measured on the Gaussian closed form).
        generator: source of e′ for "origin" with more than one step (seeded, reproducible).

    Returns:
        Samples of the same shape as noise. With the grid [1, 0] this is x̂ = e − u(e, r, 1) with
        r = 0 for "average" and "origin".
    """
    if velocity not in VELOCITIES:
        raise ValueError(f"unknown sampling velocity {velocity!r}; valid: {', '.join(sorted(VELOCITIES))}")
    grid = check_time_grid(time_grid).to(device=noise.device, dtype=noise.dtype)
    z = noise
    b = noise.shape[0]
    for i in range(grid.numel() - 1):
        t, r = grid[i], grid[i + 1]
        tb = t.expand(b)
        if velocity == "origin":
            x_hat = z - t * net(z, torch.zeros_like(tb), tb, labels)
            fresh = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype) if r > 0 else 0.0
            z = (1 - r) * x_hat + r * fresh
        else:
            z = z - (t - r) * net(z, r.expand(b) if velocity == "average" else tb, tb, labels)
    return z
