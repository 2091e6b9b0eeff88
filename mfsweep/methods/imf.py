"""Improved MeanFlow, iMF (Geng, Lu, Wu, Shechtman, Kolter, He, "Improved Mean Flows: On the
Challenges of Fastforward Generative Models", arXiv 2512.02012, 2025, §4.1 and Algorithm 1; official
code: github.com/Lyy-iiis/imeanflow, ``imf.py``).

Convention (docs/method.md §1): t = 1 is noise, t = 0 is data, z_t = (1 − t)·x + t·e, v = e − x.

The "v-loss": the network still predicts the average velocity u(z_t, r, t), but the loss is on
the instantaneous velocity it implies through the MeanFlow identity,

    V(z_t, r, t) = u(z_t, r, t) + (t − r)·sg(du/dt),    loss = ‖V − (e − x)‖²,

with du/dt one JVP of u along (ṽ, 0, 1) on (z, r, t), where the z-tangent ṽ = u(z_t, t, t) is the
network's own instantaneous velocity (no gradient). V is then a function of z_t alone and the loss
is a plain regression onto the conditional velocity, like Flow Matching's; rows with r = t have
V = u exactly (Flow Matching). With ṽ = e − x instead (``tangent_velocity="conditional"``), V
depends on e and x and the loss is MeanFlow's exactly: ‖u + (t − r)·sg(du/dt) − v‖² =
‖u − sg(v − (t − r)·du/dt)‖² (docs/method.md §2), so the two values of that setting are the
paper's MF → iMF objective change and nothing else.

Choices made here:
- Left out: the auxiliary v-head (a second output trained on ‖v_head − (e − x)‖² and used as the
  tangent in the official code; the paper's Algorithm 1 uses u(z_t, t, t), as here), and guidance
  as a network input (ω, t_min, t_max as conditions). Guidance is rejected for this method
  (``METHOD_KEYS`` in mfsweep/config.py); class-conditional training with label dropout works.
- Kept, as in the official code: the adaptive weight of ``meanflow.weight_power`` /
  ``weight_eps`` (official p = 1, c = 0.01), the (t, r) sampler and ``frac_r_neq_t`` of MeanFlow
  (official: both times LN(−0.4, 1.0), t = max, r = min, 50 % of rows with r ≠ t).
- The tangent is taken with the row's own label, after label dropout, so a dropped row is
  differentiated along its own (unconditional) velocity; the official code passes the undropped
  label's velocity there.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from mfsweep.methods.meanflow import adaptive_weight, draw_path_batch, per_sample
from mfsweep.methods.timesteps import num_r_neq_t, sample_t_r

TANGENT_VELOCITIES = ("model", "conditional")


def compound_velocity(
    u_fn: Callable[[Tensor, Tensor, Tensor], Tensor], z: Tensor, r: Tensor, t: Tensor, tangent: Tensor
) -> Tensor:
    """V = u(z, r, t) + (t − r)·sg(du/dt), du/dt the JVP of u along (tangent, 0, 1) on (z, r, t)
    (iMF §4.1, Algorithm 1).

    u_fn(z, r, t) -> u with z, u: (B, ...), r, t: (B,); tangent: the z-tangent, (B, ...).
    Returns V, (B, ...); its gradient flows through u only (the JVP's primal output).
    """
    u, dudt = torch.func.jvp(u_fn, (z, r, t), (tangent, torch.zeros_like(r), torch.ones_like(t)))
    return u + per_sample(t - r, z.ndim) * dudt.detach()


class IMFLoss:
    """Per-sample iMF v-loss ``loss(net, x, y) -> (loss (B,), monitors)``; ``net(z, r, t, y) -> u``.

    The first ``round(frac_r_neq_t · B)`` rows have r ≠ t and get the JVP; the others have r = t,
    where V = u(z_t, t, t) (Flow Matching), and take one plain forward.
    """

    def __init__(self, *, time_sampler: str = "logit_normal", time_params: dict | None = None,
                 frac_r_neq_t: float = 0.5, tangent_velocity: str = "model", weight_power: float = 1.0,
                 weight_eps: float = 1e-2, class_dropout: float = 0.1, num_classes: int | None = None):
        num_r_neq_t(1, frac_r_neq_t)  # range check
        if tangent_velocity not in TANGENT_VELOCITIES:
            raise ValueError(f"unknown tangent_velocity {tangent_velocity!r}; valid: {', '.join(TANGENT_VELOCITIES)}")
        self.time_sampler = time_sampler
        self.time_params = dict(time_params or {"mu": -0.4, "sigma": 1.0})
        self.frac_r_neq_t = frac_r_neq_t
        self.tangent_velocity = tangent_velocity
        self.weight_power, self.weight_eps = weight_power, weight_eps
        self.class_dropout, self.num_classes = class_dropout, num_classes
        # Trained with r = t only, the network knows only its instantaneous velocity: sample it with Euler.
        self.sampling_velocity = "instantaneous" if frac_r_neq_t == 0 else "average"

    def __call__(self, net, x: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """x: data (B, ...); y: labels (B,) int64 or None. Returns loss (B,) and monitor values."""
        # The same random stream as MeanFlowLoss: with tangent_velocity="conditional" the two agree.
        z, r, t, v, y, _ = draw_path_batch(x, y, generator, self.times, self.class_dropout, self.num_classes)
        big_v = self._compound_velocity(net, z, r, t, v, y, num_r_neq_t(x.shape[0], self.frac_r_neq_t))
        sq_err = (big_v - v).pow(2).flatten(1).sum(1)  # (B,), summed over data dimensions
        loss = adaptive_weight(sq_err, self.weight_power, self.weight_eps)
        return loss, {"mse": sq_err.detach().mean(), "loss": loss.detach().mean()}

    def times(self, b: int, generator=None, device=None) -> tuple[Tensor, Tensor]:
        return sample_t_r(b, self.time_sampler, self.time_params, self.frac_r_neq_t, generator, device)

    def _compound_velocity(self, net, z, r, t, v, y, n: int) -> Tensor:
        """V for the batch whose first ``n`` rows have r ≠ t; V = u on the rest."""
        y_head, y_tail = (None, None) if y is None else (y[:n], y[n:])
        z_h, r_h, t_h = z[:n], r[:n], t[:n]
        head = v[:0]
        if n:
            if self.tangent_velocity == "model":
                with torch.no_grad():
                    tangent = net(z_h, t_h, t_h, y_head)
            else:
                tangent = v[:n]
            head = compound_velocity(lambda z_, r_, t_: net(z_, r_, t_, y_head), z_h, r_h, t_h, tangent)
        return head if n == z.shape[0] else torch.cat([head, net(z[n:], r[n:], t[n:], y_tail)])


def from_config(cfg, num_classes: int | None) -> IMFLoss:
    """``method.name: imf``: the shared settings from the ``meanflow`` block, its own from ``method.imf``."""
    mf = cfg.meanflow
    return IMFLoss(time_sampler=mf.time_sampler.name, time_params=mf.time_sampler.model_dump(exclude={"name"}),
                   frac_r_neq_t=mf.frac_r_neq_t, tangent_velocity=cfg.method.settings().tangent_velocity,
                   weight_power=mf.weight_power, weight_eps=mf.weight_eps,
                   class_dropout=mf.cfg.class_dropout, num_classes=num_classes)
