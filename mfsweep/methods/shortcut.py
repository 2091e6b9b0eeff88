"""Shortcut models (Frans, Hafner, Levine, Abbeel, "One Step Diffusion via Shortcut Models", ICLR 2025,
arXiv 2410.12557, §3 Eq. 3–5 and Algorithm 1; official JAX code: github.com/kvfrans/shortcut-models,
``targets_shortcut.py``).

The paper's network s(x_t, t, d) moves a step of size d; its time runs from noise (0) to data (1).
Translated into this project's convention (docs/method.md §1: t = 1 noise, t = 0 data,
z_t = (1 − t)·x + t·e, v = e − x) the step of size d from t lands at r = t − d, and s is our
u(z_t, t − d, t) with the sign of the velocity flipped (their x_{t+d} = x_t + d·s, ours
z_r = z_t − d·u). The self-consistency of Eq. 4, "one step of 2d is two steps of d", becomes

    u(z_t, t − 2h, t) = ½·(u(z_t, t − h, t) + u(z', t − 2h, t − h)),   z' = z_t − h·u(z_t, t − h, t),

with the right side under stop-gradient (h = d / 2 below, d the step of the trained row), and the
Flow-Matching rows (their d = 0) regress u(z_t, t, t) onto e − x. The exact average velocity of a
flow satisfies the first identity exactly (the semigroup property of the flow map), so no JVP
and no discretisation error enter the target. Sampling jumps z_r = z_t − (t − r)·u(z_t, r, t) are
exactly shortcut steps (``sampling_velocity = "average"``).

Choices made here (docs/method.md §8):
- Rows: the first round(frac·B) rows are self-consistency rows, the rest Flow Matching
  (``meanflow.frac_r_neq_t``, default 0.25 = the paper's k = 1/4; the official code's default
  ``bootstrap_every = 8`` is 1/8). Fixed counts, so shapes are static.
- Step sizes: d = 2^−k, k = 0 … L − 1 (L = ``method.shortcut.num_levels``, default 7: the
  official 128 = 2^7 denoising steps), the same number of rows per level and the remainder on the
  largest steps (the official code puts it on d = 1). t on those rows is uniform on the multiples
  of d in (0, 1] (official: t ∈ {0, d, …, 1 − d} in their direction), so 0 ≤ r = t − d < t ≤ 1.
- Smallest step: the two half steps of the finest level (2^−L) are asked of the network at their
  true size; the official code instead labels its Flow-Matching rows with that finest size (a
  discrete step embedding). Here Flow Matching is d = 0 exactly (r = t) and the continuous
  (t, t − r) conditioning links d = 0 and d = 2^−L; this keeps the exact flow a fixed point.
- Times of the Flow-Matching rows: the shared ``meanflow.time_sampler`` (first draw), as for
  ``flow_matching`` (official: uniform on the 1/128 grid).
- Targets come from the online network under no_grad with the module in eval mode (official:
  ``train=False``, from the EMA weights by default; the method contract has no EMA in the loss),
  and are not clipped (the official code clips x' and the target to [−4, 4], a latent-scale hack).
- Loss: plain ‖u − sg(target)‖² summed over data dimensions, both row kinds weighted alike, as in
  the paper (Eq. 5) and code. ``meanflow.weight_power`` is not read: with MeanFlow's adaptive weight
  (p = 1, a log-like loss whose gradient fades for large errors) the purely bootstrapped targets
  ran away on the checkerboard (outputs ~1e5 within 800 steps); p = 0 trains.
- Labels: class dropout to the null class ``num_classes`` on every row (official: Flow-Matching
  rows only). Guidance is not supported: the official default trains unguided targets
  (``bootstrap_cfg = 0``) and applies CFG only when sampling the 128-step flow, at two network
  calls per step; ``sample`` makes one.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import Tensor

from mfsweep.methods import TIME_SAMPLERS
from mfsweep.methods.meanflow import draw_path_batch, per_sample
from mfsweep.methods.timesteps import num_r_neq_t


def step_levels(n: int, num_levels: int, device=None) -> Tensor:
    """k for n self-consistency rows (step d = 2^−k): n // L rows per level, the remainder on k = 0, 1, …"""
    per, rest = divmod(n, num_levels)
    return torch.cat([torch.arange(rest, device=device), torch.arange(num_levels, device=device).repeat_interleave(per)])


def self_consistency_times(n: int, num_levels: int, generator=None, device=None) -> tuple[Tensor, Tensor]:
    """(t, r), each (n,): d = t − r = 2^−k by ``step_levels``, t uniform on {d, 2d, …, 1}."""
    cells = 2.0 ** step_levels(n, num_levels, device)
    j = torch.floor(torch.rand(n, generator=generator, device=device) * cells) + 1  # 1 … 2^k
    t = j / cells
    return t, t - 1 / cells


def self_consistency_target(u_fn: Callable[[Tensor, Tensor, Tensor], Tensor], z: Tensor, r: Tensor, t: Tensor) -> Tensor:
    """½·(u(z, s, t) + u(z', r, s)) with s = (t + r)/2 and z' = z − (t − s)·u(z, s, t): two half steps.

    u_fn(z, r, t) -> u with z, u: (n, ...), r, t: (n,). Returns the detached target, (n, ...).
    """
    with torch.no_grad():
        h = (t - r) / 2
        s = t - h
        u_first = u_fn(z, s, t)
        u_second = u_fn(z - per_sample(h, z.ndim) * u_first, r, s)
        return (u_first + u_second).detach() / 2


@contextmanager
def _eval_mode(net):
    was_training = getattr(net, "training", False)
    if was_training:
        net.eval()
    try:
        yield
    finally:
        if was_training:
            net.train()


class ShortcutLoss:
    """``loss(net, x, y) -> (loss (B,), monitors)``; ``net(z, r, t, y) -> u``. Rows [0, n) are
    self-consistency rows (r = t − d), rows [n, B) Flow Matching (r = t, target e − x)."""

    def __init__(self, *, num_levels: int = 7, frac_self_consistency: float = 0.25,
                 time_sampler: str = "logit_normal", time_params: dict | None = None,
                 class_dropout: float = 0.1, num_classes: int | None = None):
        if num_levels < 1:
            raise ValueError(f"num_levels must be ≥ 1, got {num_levels}")
        num_r_neq_t(1, frac_self_consistency)  # range check
        self.num_levels, self.frac_self_consistency = num_levels, frac_self_consistency
        self.time_fn = TIME_SAMPLERS.lookup(time_sampler)
        self.time_params = dict(time_params or {"mu": -0.4, "sigma": 1.0})
        self.class_dropout, self.num_classes = class_dropout, num_classes
        # Never trained with r ≠ t: only the instantaneous velocity is known, so sample with Euler.
        self.sampling_velocity = "instantaneous" if frac_self_consistency == 0 else "average"

    def times(self, b: int, generator=None, device=None) -> tuple[Tensor, Tensor]:
        """(t, r), each (B,) float32: self-consistency rows first, then Flow-Matching rows (r = t)."""
        n = num_r_neq_t(b, self.frac_self_consistency)
        t_sc, r_sc = self_consistency_times(n, self.num_levels, generator, device)
        t_fm = self.time_fn(b - n, self.time_params, generator, torch.device(device or "cpu"))[0]
        return torch.cat([t_sc, t_fm]), torch.cat([r_sc, t_fm])

    def __call__(self, net, x: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """x: data (B, ...); y: labels (B,) int64 or None. Returns loss (B,) and monitor values."""
        b = x.shape[0]
        n = num_r_neq_t(b, self.frac_self_consistency)
        z, r, t, v, y, _ = draw_path_batch(x, y, generator, self.times, self.class_dropout, self.num_classes)
        u, target = prediction_and_target(net, z, r, t, v, y, n)
        loss = (u - target).pow(2).flatten(1).sum(1)  # (B,), plain L2 (paper Eq. 5)
        mon = {"mse": loss.detach().mean(), "loss": loss.detach().mean()}
        if 0 < n < b:
            mon |= {"mse_self_consistency": loss[:n].detach().mean(), "mse_flow_matching": loss[n:].detach().mean()}
        return loss, mon


def prediction_and_target(net, z: Tensor, r: Tensor, t: Tensor, v: Tensor, y: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
    """u = net(z, r, t, y) on all B rows (with gradient) and the detached target: the two-half-step
    target on rows [0, n), v on rows [n, B). z, v: (B, ...); r, t: (B,); y: (B,) or None."""
    if n:
        y_sc = None if y is None else y[:n]
        with _eval_mode(net):
            tgt = self_consistency_target(lambda z_, r_, t_: net(z_, r_, t_, y_sc), z[:n], r[:n], t[:n])
    else:
        tgt = v[:0]
    return net(z, r, t, y), torch.cat([tgt, v[n:].detach()])


def from_config(cfg, num_classes: int | None) -> ShortcutLoss:
    """``method.name: shortcut``: ``method.shortcut`` plus meanflow.{frac_r_neq_t, time_sampler,
    cfg.class_dropout}."""
    mf, own = cfg.meanflow, cfg.method.settings()
    return ShortcutLoss(num_levels=own.num_levels, frac_self_consistency=mf.frac_r_neq_t,
                        time_sampler=mf.time_sampler.name, time_params=mf.time_sampler.model_dump(exclude={"name"}),
                        class_dropout=mf.cfg.class_dropout, num_classes=num_classes)
