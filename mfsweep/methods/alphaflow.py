"""α-Flow: a curriculum from trajectory Flow Matching to MeanFlow (Zhang, Siarohin, Menapace, Vasilkovsky,
Tulyakov, Qu, Skorokhodov, "AlphaFlow: Understanding and Improving MeanFlow Models", arXiv 2510.20771, 2025:
the α-Flow loss L_α and Theorem 1 (equation numbers not checked: the PDF was not readable here); public
code: snap-research/alphaflow, ``src/training/loss.py:AlphaFlowLoss`` and ``get_ratio``).

Their code already uses this project's convention (t = 1 noise, z_t = (1 − t)·x + t·e, v = e − x, the
network input is the later time t and r ≤ t; their ``sigma``/``t_next`` are our t/r), so nothing is
flipped. With the consistency step ratio α ∈ [0, 1] and the intermediate time s = α·r + (1 − α)·t:

    z_s   = z_t − (t − s)·ṽ                     (one step along the velocity; t − s = α·(t − r))
    u_tgt = α·ṽ + (1 − α)·u(z_s, r, s)          (no gradient; ṽ = v, or the CFG-folded ṽ of §4)
    L_α   = α⁻¹ · ‖u(z_t, r, t) − sg(u_tgt)‖²   (paper's α-Flow loss)

α = 1 gives u_tgt = v, trajectory Flow Matching (its minimiser is the instantaneous velocity for every r);
α = ½ with ṽ = u(z_t, s, t) is the shortcut model; α → 0 has the MeanFlow gradient, since
(u_tgt − u)/α → v − (t − r)·du/dt − u. The α = 0 end is the MeanFlow target from one JVP
(docs/method.md §2). Only α → 0 has the exact average velocity as its fixed point; for 0 < α the fixed
point is biased by O(α²) towards the instantaneous velocity (the paper's "high bias" early phase).

Choices made here (docs/method.md §8):
- α follows their ``sigmoid`` scheduler: α = 1 − σ(γ·(k − k_mid)/(k_e − k_s)) on [k_s, k_e], 1 before, 0
  after; then α < η → 0 and α > 1 − η → 1 (their ``clamp_value``). k_s, k_e are fractions of the
  training steps (``method.alphaflow.anneal_start_frac``, ``anneal_end_frac``), γ = ``sigmoid_sharpness``
  (25), η = ``alpha_clamp`` (0.005); defaults are their B/2 run (0 → max_steps).
- α = 0 uses the MeanFlow JVP with tangent (v, 0, 1); ``meanflow.tangent`` is not read (the α > 0 target
  steps along (v, 0, 1) by construction). ``meanflow.u_from`` applies to the α = 0 phase only.
- ṽ is the (guided) conditional velocity, their default, not the model's own velocity; θ⁻ is the online
  network (no EMA), as in their code; no ±clamp of u_tgt (their ``clamp_utgt``, off for B/2).
- Rows with r = t (a share 1 − ``meanflow.frac_r_neq_t``) keep target v and weight 1, as in their code.
  t, r come from ``meanflow.time_sampler`` (t = max of two draws also on r = t rows; their code draws
  those rows' t once).
- Weighting: r ≠ t rows with α > 0 get α^(2p−1)·d / sg(d + c)^p, with d = ‖Δ‖² and p, c =
  ``meanflow.weight_power``, ``weight_eps``: p = 0 is the paper's α⁻¹·d, p = 1 (default) is their code's
  α·d / sg(d + c). Other rows get MeanFlow's d / sg(d + c)^p.
- Guidance is folded into ṽ exactly as MeanFlow's (``guided_velocity``; their code does the same), class
  dropout to the null class as MeanFlowLoss; dropped rows keep ṽ = v.
- Sampling with average-velocity jumps (their 1-NFE "trajectory sampling"); instantaneous if no r ≠ t rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mfsweep.methods.meanflow import CFGSettings, adaptive_weight, draw_path_batch, guided_velocity, meanflow_target
from mfsweep.methods.timesteps import num_r_neq_t, sample_t_r


def alpha_schedule(step: int, total_steps: int, start_frac: float = 0.0, end_frac: float = 1.0,
                   sharpness: float = 25.0, clamp: float = 0.005) -> float:
    """α at ``step`` of ``total_steps``: 1 → 0 along a sigmoid over [start_frac, end_frac], clamped at η."""
    k, width = step / max(total_steps, 1), end_frac - start_frac
    if k < start_frac:
        alpha = 1.0
    elif k > end_frac:
        alpha = 0.0
    else:
        x = sharpness * (k - (start_frac + end_frac) / 2) / width
        alpha = 1.0 / (1.0 + math.exp(x))  # 1 − sigmoid(x), without cancellation near 0
    return 0.0 if alpha < clamp else 1.0 if alpha > 1.0 - clamp else alpha


def alphaflow_target(u_fn, z: Tensor, r: Tensor, t: Tensor, v: Tensor, alpha: float) -> Tensor:
    """Detached α-Flow target (B, ...) for ``u_fn(z, r, t) -> u``; z, v: (B, ...), r, t: (B,), r < t.

    v is the shift velocity ṽ. α = 0: the MeanFlow target v − (t − r)·du/dt (one JVP along (v, 0, 1)).
    """
    if alpha == 0.0:
        with torch.no_grad():
            return meanflow_target(u_fn, z, r, t, v)[1]
    if alpha == 1.0:
        return v.detach()  # s = r: the second term has weight 0; no network call
    step = alpha * (t - r)  # t − s, (B,)
    s = t - step
    with torch.no_grad():
        u_next = u_fn(z - step.reshape(-1, *([1] * (z.ndim - 1))) * v, r, s)
    return (alpha * v + (1.0 - alpha) * u_next).detach()


class AlphaFlowLoss:
    """``loss(net, x, y) -> (loss (B,), monitors)``; ``on_step(step, total)`` sets α from the schedule."""

    def __init__(self, *, anneal_start_frac: float = 0.0, anneal_end_frac: float = 1.0,
                 sigmoid_sharpness: float = 25.0, alpha_clamp: float = 0.005,
                 time_sampler: str = "logit_normal", time_params: dict | None = None, frac_r_neq_t: float = 0.25,
                 weight_power: float = 1.0, weight_eps: float = 1e-3, cfg: CFGSettings | None = None,
                 num_classes: int | None = None, u_from: str = "jvp"):
        if u_from not in ("jvp", "forward"):
            raise ValueError(f"unknown u_from {u_from!r}; valid: forward, jvp")
        num_r_neq_t(1, frac_r_neq_t)  # range check
        self.schedule = dict(start_frac=anneal_start_frac, end_frac=anneal_end_frac, sharpness=sigmoid_sharpness,
                             clamp=alpha_clamp)
        self.time_sampler, self.time_params = time_sampler, dict(time_params or {"mu": -0.4, "sigma": 1.0})
        self.frac_r_neq_t, self.weight_power, self.weight_eps = frac_r_neq_t, weight_power, weight_eps
        self.cfg, self.num_classes, self.u_from = cfg or CFGSettings(), num_classes, u_from
        self.sampling_velocity = "instantaneous" if frac_r_neq_t == 0 else "average"
        self.on_step(0, 1)

    def on_step(self, step: int, total_steps: int) -> None:
        self.alpha = alpha_schedule(step, total_steps, **self.schedule)

    def times(self, b: int, generator=None, device=None) -> tuple[Tensor, Tensor]:
        return sample_t_r(b, self.time_sampler, self.time_params, self.frac_r_neq_t, generator, device)

    def regression(self, net, z: Tensor, r: Tensor, t: Tensor, v: Tensor, y: Tensor | None, n: int
                   ) -> tuple[Tensor, Tensor]:
        """(u, detached target), both (B, ...); the first n rows have r < t, the rest r = t (target v)."""
        y_head = None if y is None else y[:n]
        head = (lambda z_, r_, t_: net(z_, r_, t_, y_head), z[:n], r[:n], t[:n], v[:n])
        if self.alpha == 0.0 and self.u_from == "jvp" and n:  # u from the JVP's primal output
            u_head, tgt = meanflow_target(*head)
            u = u_head if n == z.shape[0] else torch.cat([u_head, net(z[n:], r[n:], t[n:], None if y is None else y[n:])])
        else:
            tgt = alphaflow_target(*head, self.alpha) if n else v[:0]
            u = net(z, r, t, y)
        return u, torch.cat([tgt, v[n:].detach()])

    def per_sample_loss(self, u: Tensor, target: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """(weighted loss (B,), squared error d (B,)); see "Weighting" in the module docstring."""
        sq_err = (u - target).pow(2).flatten(1).sum(1)
        loss = adaptive_weight(sq_err, self.weight_power, self.weight_eps)
        if 0.0 < self.alpha < 1.0 and n:
            scale = torch.ones_like(loss)
            scale[:n] = self.alpha ** (2 * self.weight_power - 1)
            loss = loss * scale
        return loss, sq_err

    def __call__(self, net, x: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """x: data (B, ...); y: labels (B,) int64 or None. Returns loss (B,) and monitor values."""
        z, r, t, v, y, dropped = draw_path_batch(x, y, generator, self.times, self.cfg.class_dropout, self.num_classes)
        if dropped is not None and self.cfg.guided:
            v = guided_velocity(net, self.cfg, z, t, v, y, dropped, self.num_classes)
        n = num_r_neq_t(x.shape[0], self.frac_r_neq_t)
        loss, sq_err = self.per_sample_loss(*self.regression(net, z, r, t, v, y, n), n)
        return loss, {"mse": sq_err.detach().mean(), "loss": loss.detach().mean(),
                      "alpha": torch.tensor(self.alpha, device=x.device)}


def from_config(cfg, num_classes: int | None) -> AlphaFlowLoss:
    """``method.name: alphaflow``: ``method.alphaflow`` (schedule) and the shared ``meanflow`` keys."""
    mf = cfg.meanflow
    return AlphaFlowLoss(**cfg.method.settings().model_dump(), time_sampler=mf.time_sampler.name,
                         time_params=mf.time_sampler.model_dump(exclude={"name"}), frac_r_neq_t=mf.frac_r_neq_t,
                         weight_power=mf.weight_power, weight_eps=mf.weight_eps,
                         cfg=CFGSettings(**mf.cfg.model_dump()), num_classes=num_classes, u_from=mf.u_from)
