"""(t, r) samplers for MeanFlow training (docs/method.md §3; paper §4.3, Table 1a and 1d).

Convention: t = 1 is noise, t = 0 is data, 0 ≤ r ≤ t ≤ 1.

A sampler draws two times per row from a named distribution; ``order`` turns them into (t, r):
"max_min" (the paper) sets t = max, r = min; "clip_r" keeps the first draw as t and sets
r = min(t, second draw), so t keeps its own distribution (the official PyTorch code's improved
CIFAR-10 setting, t ~ LN(−0.6, 1.6), r ~ LN(−4.0, 1.6); with max/min, t would shift upward). Then
``frac_r_neq_t`` of the batch (a fixed count, ``round(frac_r_neq_t * B)``, placed first so shapes
stay static) keeps r ≠ t; every other row gets r = t, where the MeanFlow target reduces to the
Flow Matching target v.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mfsweep.methods import TIME_SAMPLERS


def uniform_pair(n: int, params: dict, gen, device) -> tuple[Tensor, Tensor]:
    a = torch.rand(n, generator=gen, device=device)
    b = torch.rand(n, generator=gen, device=device)
    return a, b


def _logit_normal(mu: float, sigma: float, n: int, gen, device) -> Tensor:
    return torch.sigmoid(mu + sigma * torch.randn(n, generator=gen, device=device))


def logit_normal_pair(n: int, params: dict, gen, device) -> tuple[Tensor, Tensor]:
    mu, sigma = params["mu"], params["sigma"]
    return _logit_normal(mu, sigma, n, gen, device), _logit_normal(mu, sigma, n, gen, device)


def separate_logit_normal_pair(n: int, params: dict, gen, device) -> tuple[Tensor, Tensor]:
    # t ~ LN(mu, sigma), r ~ LN(r_mu, r_sigma), then ordered (public CIFAR-10 setting:
    # t ~ LN(-0.6, 1.6), r ~ LN(-4.0, 1.6)).
    t = _logit_normal(params["mu"], params["sigma"], n, gen, device)
    r = _logit_normal(params["r_mu"], params["r_sigma"], n, gen, device)
    return t, r


def num_r_neq_t(batch_size: int, frac_r_neq_t: float) -> int:
    """Number of rows with r ≠ t: a fixed count so that tensor shapes stay static."""
    if not 0.0 <= frac_r_neq_t <= 1.0:
        raise ValueError(f"frac_r_neq_t must be in [0, 1], got {frac_r_neq_t}")
    return int(round(frac_r_neq_t * batch_size))


def sample_t_r(
    batch_size: int,
    name: str,
    params: dict,
    frac_r_neq_t: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Draw (t, r), each of shape (B,), with 0 ≤ r ≤ t ≤ 1.

    The first ``round(frac_r_neq_t * B)`` rows keep r ≤ t (``params["order"]``: "max_min", the
    default, r = min(draws) and t = max(draws); "clip_r", t = first draw and r = min(t, second draw));
    the remaining rows have r = t exactly. mfsweep fixes the count of r ≠ t rows per batch where the
    official code draws r ≠ t per row (same expectation, less variance; docs/method.md §3).
    """
    fn = TIME_SAMPLERS.lookup(name)
    a, b = fn(batch_size, params, generator, torch.device(device))
    order = params.get("order", "max_min")
    if order == "max_min":
        t, r = torch.maximum(a, b), torch.minimum(a, b)
    elif order == "clip_r":
        t, r = a, torch.minimum(a, b)
    else:
        raise ValueError(f"unknown time-sampler order {order!r}; valid: clip_r, max_min")
    n = num_r_neq_t(batch_size, frac_r_neq_t)
    r = torch.cat([r[:n], t[n:]])
    return t, r
