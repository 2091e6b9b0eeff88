"""Continuous-time consistency training, sCT (Lu & Song, "Simplifying, Stabilizing and Scaling
Continuous-Time Consistency Models", ICLR 2025, arXiv 2410.11081: §3 TrigFlow, §4.2 and Algorithm 1),
translated into the project's linear path (docs/method.md §1) with r ≡ 0.

The paper works in TrigFlow: x_t = cos(t)·x_0 + sin(t)·z, t ∈ [0, π/2], consistency function
f = cos(t)·x_t − sin(t)·σ_d·F(x_t/σ_d, t) and, in Algorithm 1, the tangent
g = −cos²(t)·(σ_d·F⁻ − dx_t/dt) − w·cos(t)·sin(t)·(x_t + σ_d·dF⁻/dt), normalised to
g / (‖g‖ + c) and regressed as ‖F − F⁻ − g‖² (F⁻ = sg(F), w: tangent warm-up), with a learned
weight e^{w_φ(t)}/D and penalty −w_φ(t). Here (t = 1 noise, t = 0 data):

    z_t = (1 − t)·x + t·e,  v = e − x,  f(z_t, t) = z_t − t·u(z_t, 0, t)      (f(z, 0) = z for any u)
    df/dt = v − u − t·du/dt,  du/dt = ∂_z u·v + ∂_t u   (one JVP along the tangent (v, 0, 1))
    g = sg(v − u − w·t·du/dt),  g ← g / (‖g‖ + c),  loss = ‖u − sg(u + g)‖²  (per sample, summed)

d f/dt = 0 gives u(z_t, 0, t) = v − t·du/dt: MeanFlow's identity (paper Eq. 6, docs/method.md §2)
with r fixed at 0, so without normalisation and with w = 1 the target is ``meanflow_target`` at
r = 0 and the loss equals MeanFlow's on rows with r = 0. The differences from MeanFlow are r ≡ 0 on
every row (no r = t Flow Matching rows, no r ∉ {0}), sampling with u(z, 0, t), and the two
stabilisers. Translated from TrigFlow: sCT's weight 1/(σ_d·tan t) becomes 1/t (it turns the loss on
f into a regression on u); the warm-up w multiplies t·du/dt, the counterpart of the term
cos(t)·sin(t)·(x_t + σ_d·dF/dt) (our skip coefficient of z_t is the constant 1); with w = 0 the
target is v, Flow Matching on u(z, 0, t) (the paper: "diffusion pretraining" at r = 0). sCT's
proposal τ ~ N(P_mean, P_std), t = arctan(e^τ/σ_d), is the EDM noise level σ = e^τ; on our path
σ = t/(1 − t), so it is t = sigmoid(τ): a logit-normal in our t (CIFAR-10 LN(−1.0, 1.4), ImageNet
64 LN(−1.0, 1.6), ImageNet 512 LN(−0.8, 1.6)).

Choices made here (docs/method.md §8):
- t is one draw of ``meanflow.time_sampler`` (the first of its pair, as for Flow Matching), not the
  max of two: sCT draws one time per row. r ≡ 0; ``meanflow.frac_r_neq_t`` does not apply.
- Tangent normalisation (``tangent_norm``, c = ``tangent_norm_c`` = 0.1, sCT's value) acts on the whole
  g, as in Algorithm 1, not on the JVP term alone, so the fixed point is kept: g = 0 ⇔ ĝ = 0. ‖·‖ is
  the per-sample Euclidean norm over all data dimensions (some public code uses the RMS instead).
  c is kept at 0.1 although our g is in velocity units, not TrigFlow's σ_d·cos²(t)-scaled units.
- Tangent warm-up w = min(1, step / (``tangent_warmup_frac`` · total steps)), via ``on_step``; sCT ramps
  over 10k iterations (of 400k on ImageNet 64, hence 0.025). Before the first ``on_step`` w = 0 (step 0).
- sCT's learned adaptive weighting w_φ(t) and TrigFlow are not used; MeanFlow's per-sample
  ``adaptive_weight`` (``meanflow.weight_power`` / ``weight_eps``) applies to the squared error actually
  regressed (after normalisation; p = 0 is sCT's plain squared norm). "mse" monitors the raw
  consistency residual ‖u − (v − w·t·du/dt)‖², comparable with MeanFlow's mse.
- ``meanflow.tangent`` (Table 1b ablations) and ``meanflow.u_from`` apply as for MeanFlow. θ⁻ = sg(θ):
  no EMA teacher (as sCT); the EMA is only the training loop's evaluation copy.
- Sampling asks for u(z, 0, t) (``sampling_velocity = "origin"``): one step is x̂ = e − u(e, 0, 1) = f(e, 1);
  a jump t → r gives z_r = (r/t)·z_t + (1 − r/t)·x̂, a deterministic re-noising of x̂ with its implied
  noise, not the fresh noise of consistency models' multistep sampler.
- No guidance: MeanFlow's folded ṽ needs the instantaneous velocity u(z_t, t, t | c), which a network
  trained only at r = 0 never learns. Class dropout to the null class (``meanflow.cfg.class_dropout``)
  is kept for class-conditional data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mfsweep.methods import TANGENTS, TIME_SAMPLERS
from mfsweep.methods.meanflow import adaptive_weight, draw_path_batch, meanflow_target, per_sample


def consistency_target(u_fn, z: Tensor, t: Tensor, v: Tensor, tangent: str = "v01", tangent_scale: float = 1.0
                       ) -> tuple[Tensor, Tensor]:
    """u(z, 0, t) and its detached target v − w·t·du/dt, from MeanFlow's single JVP at r = 0.

    u_fn(z, r, t) -> u; z, v: (B, ...); t: (B,); w = ``tangent_scale`` in [0, 1]. Returns (u, u_tgt),
    both (B, ...): w = 1 is ``meanflow_target`` at r = 0 exactly, w = 0 gives u_tgt = v.
    """
    u, u_tgt = meanflow_target(u_fn, z, torch.zeros_like(t), t, v, tangent)
    if tangent_scale != 1.0:
        u_tgt = tangent_scale * u_tgt + (1.0 - tangent_scale) * v.detach()
    return u, u_tgt


def normalize_tangent(g: Tensor, c: float) -> Tensor:
    """g / (‖g‖ + c) with ‖·‖ the Euclidean norm of each row over all data dimensions; g: (B, ...)."""
    return g / (per_sample(g.flatten(1).norm(dim=1), g.ndim) + c)


class ConsistencyLoss:
    """``loss(net, x, y) -> (loss (B,), monitors)``: sCT's tangent regression of u(z_t, 0, t)."""

    sampling_velocity = "origin"

    def __init__(self, *, time_sampler: str = "logit_normal", time_params: dict | None = None, tangent: str = "v01",
                 tangent_norm: bool = True, tangent_norm_c: float = 0.1, tangent_warmup_frac: float = 0.025,
                 weight_power: float = 0.0, weight_eps: float = 1e-3, class_dropout: float = 0.1,
                 num_classes: int | None = None, u_from: str = "jvp"):
        TANGENTS.check(tangent)
        if not tangent_norm_c > 0 or not 0 <= tangent_warmup_frac <= 1 or u_from not in ("jvp", "forward"):
            raise ValueError(f"need tangent_norm_c > 0, 0 ≤ tangent_warmup_frac ≤ 1, u_from in (jvp, forward); got "
                             f"{tangent_norm_c}, {tangent_warmup_frac}, {u_from!r}")
        self.time_fn = TIME_SAMPLERS.lookup(time_sampler)
        self.time_params = dict(time_params or {"mu": -0.4, "sigma": 1.0})
        self.tangent, self.u_from = tangent, u_from
        self.tangent_norm, self.tangent_norm_c = tangent_norm, tangent_norm_c
        self.tangent_warmup_frac = tangent_warmup_frac
        self.weight_power, self.weight_eps = weight_power, weight_eps
        self.class_dropout, self.num_classes = class_dropout, num_classes
        self.tangent_scale = 0.0 if tangent_warmup_frac > 0 else 1.0  # w at step 0; the only state

    def on_step(self, step: int, total_steps: int) -> None:
        """Tangent warm-up: w = min(1, step / (tangent_warmup_frac · total_steps))."""
        n = self.tangent_warmup_frac * total_steps
        self.tangent_scale = min(1.0, step / n) if n > 0 else 1.0

    def __call__(self, net, x: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """x: data (B, ...); y: labels (B,) int64 or None. Draws e, t (and class dropout) from ``generator``."""
        z, _, t, v, y, _ = draw_path_batch(x, y, generator, self.times, self.class_dropout, self.num_classes)
        return self.regress(net, z, t, v, y)

    def times(self, b: int, generator=None, device=None) -> tuple[Tensor, Tensor]:
        """(t, r = 0): one draw of the time sampler per row (the first of its pair)."""
        t = self.time_fn(b, self.time_params, generator, torch.device(device or "cpu"))[0]
        return t, torch.zeros_like(t)

    def regress(self, net, z: Tensor, t: Tensor, v: Tensor, y: Tensor | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss at given points z (B, ...), times t (B,) and velocity v (B, ...), the JVP's z-tangent
        and the velocity in the target (the conditional e − x in training; tests pass the marginal one)."""
        u_fn = lambda z_, r_, t_: net(z_, r_, t_, y)  # noqa: E731
        if self.u_from == "forward":  # target from a no-grad JVP, u from one plain forward
            with torch.no_grad():
                u_sg, u_tgt = consistency_target(u_fn, z, t, v, self.tangent, self.tangent_scale)
            u = net(z, torch.zeros_like(t), t, y)
        else:
            u, u_tgt = consistency_target(u_fn, z, t, v, self.tangent, self.tangent_scale)
            u_sg = u.detach()
        target = u_sg + normalize_tangent(u_tgt - u_sg, self.tangent_norm_c) if self.tangent_norm else u_tgt
        sq_err = (u - target).pow(2).flatten(1).sum(1)  # (B,); = ‖ĝ‖² with normalisation
        loss = adaptive_weight(sq_err, self.weight_power, self.weight_eps)
        raw = (u_sg - u_tgt).pow(2).flatten(1).sum(1)  # the unnormalised consistency residual
        return loss, {"mse": raw.mean(), "loss": loss.detach().mean(),
                      "tangent_scale": torch.full((), self.tangent_scale, device=z.device)}


def from_config(cfg, num_classes: int | None) -> ConsistencyLoss:
    """``method.name: consistency``: ``method.consistency`` plus the ``meanflow.*`` keys it reads."""
    mf, own = cfg.meanflow, cfg.method.settings()
    return ConsistencyLoss(time_sampler=mf.time_sampler.name, time_params=mf.time_sampler.model_dump(exclude={"name"}),
                           tangent=mf.tangent, tangent_norm=own.tangent_norm, tangent_norm_c=own.tangent_norm_c,
                           tangent_warmup_frac=own.tangent_warmup_frac, weight_power=mf.weight_power,
                           weight_eps=mf.weight_eps, class_dropout=mf.cfg.class_dropout, num_classes=num_classes,
                           u_from=mf.u_from)
