"""The MeanFlow training target and loss (Geng et al. 2025, arXiv 2505.13447; docs/method.md §2–§4).

Convention (docs/method.md §1): t = 1 is noise, t = 0 is data, z_t = (1 − t)·x + t·e, v = e − x.
The network predicts the average velocity u(z_t, r, t) = 1/(t − r) ∫_r^t v(z_τ, τ) dτ.

The MeanFlow identity (paper Eq. 6) is u = v − (t − r)·(v·∂_z u + ∂_t u); the bracket is one
Jacobian-vector product of u along the tangent (v, 0, 1) on the inputs (z, r, t).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from mfsweep.methods import TANGENTS
from mfsweep.methods.timesteps import num_r_neq_t, sample_t_r


def per_sample(x: Tensor, ndim: int) -> Tensor:
    """Reshape (B,) to (B, 1, ..., 1) so it broadcasts against a (B, ...) tensor of ndim dims."""
    return x.reshape(-1, *([1] * (ndim - 1)))


def linear_path(x: Tensor, e: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The point z_t = (1 − t)·x + t·e and the conditional velocity v = e − x (docs/method.md §1).

    x, e: (B, ...); t: (B,). Returns z_t and v, both (B, ...).
    """
    tb = per_sample(t, x.ndim)
    return (1 - tb) * x + tb * e, e - x


class PathBatch(NamedTuple):
    """One training batch on the path: z_t, v (B, ...); r, t (B,); labels y after class dropout (B,)
    or None; dropped (B,) bool or None."""

    z: Tensor
    r: Tensor
    t: Tensor
    v: Tensor
    y: Tensor | None
    dropped: Tensor | None


def draw_path_batch(x: Tensor, y: Tensor | None, generator: torch.Generator | None, times: Callable,
                    class_dropout: float, num_classes: int | None) -> PathBatch:
    """The draws every method's loss starts with, in one order: the noise e ~ N(0, I), the times
    ``times(B, generator, device) -> (t, r)``, the path point z_t and velocity v (``linear_path``),
    then class dropout to the null class ``num_classes`` (conditional data only). x: (B, ...)."""
    b = x.shape[0]
    e = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    t, r = (a.to(x.dtype) for a in times(b, generator, x.device))
    z, v = linear_path(x, e, t)
    dropped = None
    if y is not None and num_classes is not None:
        dropped = torch.rand(b, generator=generator, device=x.device) < class_dropout
        y = torch.where(dropped, torch.full_like(y, num_classes), y)
    return PathBatch(z, r, t, v, y, dropped)


def adaptive_weight(sq_err: Tensor, power: float, eps: float) -> Tensor:
    """‖Δ‖² / sg(‖Δ‖² + c)^p (paper §4.3, "adaptive loss weighting"); p = 0 returns ‖Δ‖² itself.
    sq_err: (B,) per-sample squared errors. The weight is a constant for the gradient."""
    return sq_err / (sq_err.detach() + eps).pow(power) if power > 0 else sq_err


def meanflow_target(
    u_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    z: Tensor,
    r: Tensor,
    t: Tensor,
    v: Tensor,
    tangent: str = "v01",
) -> tuple[Tensor, Tensor]:
    """Network output and stop-gradient MeanFlow target, from one forward-mode JVP (paper Eq. 6, 10).

    Args:
        u_fn: ``u_fn(z, r, t) -> u``, with ``z: (B, ...)``, ``r, t: (B,)``, ``u: (B, ...)``.
        z: points on the path z_t, shape (B, ...).
        r, t: times, shape (B,), 0 ≤ r ≤ t ≤ 1.
        v: the velocity used both as the z-tangent and in the target, shape (B, ...)
            (the conditional velocity e − x, or the CFG-folded ṽ of docs/method.md §4).
        tangent: "v01" (correct: tangent (v, 0, 1)), or the ablations "v00", "v10", "v11".

    Returns:
        ``(u, u_tgt)``: u is the JVP's primal output (it carries gradients to the network);
        ``u_tgt = v − (t − r)·dudt`` is detached.
    """
    dr, dt = TANGENTS.lookup(tangent)
    tangents = (v, torch.full_like(r, dr), torch.full_like(t, dt))
    u, dudt = torch.func.jvp(u_fn, (z, r, t), tangents)
    u_tgt = v - per_sample(t - r, z.ndim) * dudt
    return u, u_tgt.detach()


@dataclass(frozen=True)
class CFGSettings:
    """Classifier-free guidance folded into the target (paper §4.2, docs/method.md §4).

    ṽ = ω·v + κ·u(z_t, t, t | c) + (1 − ω − κ)·u(z_t, t, t | ∅) for t in [t_start, t_end];
    elsewhere, and on class-dropped rows, ṽ = v. The effective scale is ω / (1 − κ).
    """

    omega: float = 1.0
    kappa: float = 0.0
    t_start: float = 0.0
    t_end: float = 1.0
    class_dropout: float = 0.1

    @property
    def guided(self) -> bool:
        return self.omega != 1.0 or self.kappa != 0.0


def guided_velocity(net, cfg: CFGSettings, z: Tensor, t: Tensor, v: Tensor, y: Tensor, dropped: Tensor,
                    null_class: int) -> Tensor:
    """ṽ of docs/method.md §4 from the network's own r = t predictions, without gradient.

    z, v: (B, ...); t: (B,); y: (B,) labels (dropped rows already set to ``null_class``);
    dropped: (B,) bool. Returns ṽ (B, ...).
    """
    null = torch.full_like(y, null_class)
    with torch.no_grad():
        both = net(torch.cat([z, z]), torch.cat([t, t]), torch.cat([t, t]), torch.cat([y, null]))
    u_c, u_null = both.chunk(2)
    active = (t >= cfg.t_start) & (t <= cfg.t_end) & ~dropped
    # full_like keeps v's dtype (a Python scalar in torch.where would round through float32).
    omega = per_sample(torch.where(active, torch.full_like(t, cfg.omega), torch.ones_like(t)), v.ndim)
    kappa = per_sample(torch.where(active, torch.full_like(t, cfg.kappa), torch.zeros_like(t)), v.ndim)
    return omega * v + kappa * u_c + (1.0 - omega - kappa) * u_null


class MeanFlowLoss:
    """Per-sample MeanFlow loss; Flow Matching is the special case ``frac_r_neq_t = 0``.

    ``loss(net, x, y) -> (loss_per_sample (B,), monitors)`` where ``net(z, r, t, y) -> u``.
    Hyper-parameters are fixed at construction; no optimizer, EMA or DDP in here.
    """

    def __init__(
        self,
        *,
        time_sampler: str = "logit_normal",
        time_params: dict | None = None,
        frac_r_neq_t: float = 0.25,
        tangent: str = "v01",
        weight_power: float = 1.0,
        weight_eps: float = 1e-3,
        cfg: CFGSettings | None = None,
        num_classes: int | None = None,
        u_from: str = "jvp",
    ):
        TANGENTS.check(tangent)
        num_r_neq_t(1, frac_r_neq_t)  # range check
        self.time_sampler = time_sampler
        self.time_params = dict(time_params or {"mu": -0.4, "sigma": 1.0})
        self.frac_r_neq_t = frac_r_neq_t
        self.tangent = tangent
        self.weight_power = weight_power
        self.weight_eps = weight_eps
        self.cfg = cfg or CFGSettings()
        self.num_classes = num_classes
        # Where u (the prediction that gets gradients) comes from: "jvp", the JVP's primal output
        # (docs/method.md §2; autograd also records the tangent computation), or "forward": the JVP
        # runs under no_grad for the target only and one ordinary forward of the whole batch gives
        # u. Same loss and gradients without dropout; less activation memory, one more forward of
        # the r ≠ t rows. With dropout the two passes would draw different masks.
        if u_from not in ("jvp", "forward"):
            raise ValueError(f"unknown u_from {u_from!r}; valid: forward, jvp")
        self.u_from = u_from
        # A network never trained with r ≠ t only knows its instantaneous velocity: sample it with Euler.
        self.sampling_velocity = "instantaneous" if frac_r_neq_t == 0 else "average"

    def __call__(
        self, net, x: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """x: data (B, ...); y: labels (B,) int64 or None. Returns loss (B,) and monitor values."""
        z, r, t, v, y, dropped = draw_path_batch(x, y, generator, self.times, self.cfg.class_dropout, self.num_classes)
        if dropped is not None and self.cfg.guided:
            v = guided_velocity(net, self.cfg, z, t, v, y, dropped, self.num_classes)
        u, u_tgt = self._prediction_and_target(net, z, r, t, v, y, num_r_neq_t(x.shape[0], self.frac_r_neq_t))
        sq_err = (u - u_tgt).pow(2).flatten(1).sum(1)  # (B,), summed over data dimensions
        loss = adaptive_weight(sq_err, self.weight_power, self.weight_eps)  # paper §4.3; p = 0: plain L2
        # Detached tensors, not floats: .item() every step would force a device sync.
        return loss, {"mse": sq_err.detach().mean(), "loss": loss.detach().mean()}

    def times(self, b: int, generator=None, device=None) -> tuple[Tensor, Tensor]:
        """(t, r) for a batch of b: the r ≠ t rows first (docs/method.md §3)."""
        return sample_t_r(b, self.time_sampler, self.time_params, self.frac_r_neq_t, generator, device)

    def _prediction_and_target(self, net, z, r, t, v, y, n: int) -> tuple[Tensor, Tensor]:
        """u and the detached target for the batch whose first ``n`` rows have r ≠ t.

        Rows with r = t have target v exactly (the JVP term is multiplied by t − r = 0), so the
        JVP runs on the first n rows only (docs/method.md §2).
        """
        y_head, y_tail = (None, None) if y is None else (y[:n], y[n:])
        head = (lambda z_, r_, t_: net(z_, r_, t_, y_head), z[:n], r[:n], t[:n], v[:n], self.tangent)
        empty = v[:0]
        if self.u_from == "forward":
            with torch.no_grad():
                tgt_head = meanflow_target(*head)[1] if n else empty
            u = net(z, r, t, y)
        else:
            u_head, tgt_head = meanflow_target(*head) if n else (empty, empty)
            b = z.shape[0]
            u = u_head if n == b else torch.cat([u_head, net(z[n:], r[n:], t[n:], y_tail)])
        return u, torch.cat([tgt_head, v[n:].detach()])


def cfg_settings(cfg) -> CFGSettings:
    """The ``meanflow.cfg`` block of a TrialConfig as CFGSettings."""
    return CFGSettings(**cfg.meanflow.cfg.model_dump())


def from_config(cfg, num_classes: int | None) -> MeanFlowLoss:
    """``method.name: meanflow``: the loss from the ``meanflow`` block of a TrialConfig."""
    mf = cfg.meanflow
    return MeanFlowLoss(
        time_sampler=mf.time_sampler.name,
        time_params=mf.time_sampler.model_dump(exclude={"name"}),
        frac_r_neq_t=mf.frac_r_neq_t,
        tangent=mf.tangent,
        weight_power=mf.weight_power,
        weight_eps=mf.weight_eps,
        cfg=cfg_settings(cfg),
        num_classes=num_classes,
        u_from=mf.u_from,
    )
