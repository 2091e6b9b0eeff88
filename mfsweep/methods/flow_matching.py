"""Plain conditional Flow Matching (Lipman et al., "Flow Matching for Generative Modeling", ICLR 2023,
arXiv 2210.02747, Eq. 23 with the linear path of rectified flow; Liu et al. 2023).

In the project's convention (docs/method.md §1): z_t = (1 − t)·x + t·e, the regression target is the
conditional velocity v = e − x, and the network is asked for its instantaneous velocity
u(z_t, t, t). No JVP. Sampling is Euler (``sampling_velocity = "instantaneous"``).

Choices made here (docs/method.md §8):
- t is one draw of the configured time sampler (``meanflow.time_sampler``; the first of its pair),
  not the max of two draws that MeanFlow's (t, r) sampler takes. MeanFlow with
  ``frac_r_neq_t: 0`` is the other reading of "Flow Matching" (the paper's Table 1a row), with
  MeanFlow's time distribution.
- The adaptive weight of ``meanflow.weight_power`` applies as for MeanFlow (p = 0 is the paper's
  plain squared error); a study comparing methods sets it once for all of them.
- Class-conditional training with the null class (``meanflow.cfg.class_dropout``) is supported;
  guidance is not (the Flow Matching paper has none, and CFG at sampling time would cost two
  network calls per step where every other method here costs one).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mfsweep.methods import TIME_SAMPLERS
from mfsweep.methods.meanflow import adaptive_weight, draw_path_batch


class FlowMatchingLoss:
    """``loss(net, x, y) -> (loss (B,), monitors)`` regressing u(z_t, t, t) onto v = e − x."""

    sampling_velocity = "instantaneous"

    def __init__(self, *, time_sampler: str = "logit_normal", time_params: dict | None = None,
                 weight_power: float = 0.0, weight_eps: float = 1e-3, class_dropout: float = 0.1,
                 num_classes: int | None = None):
        self.time_fn = TIME_SAMPLERS.lookup(time_sampler)
        self.time_params = dict(time_params or {"mu": -0.4, "sigma": 1.0})
        self.weight_power, self.weight_eps = weight_power, weight_eps
        self.class_dropout, self.num_classes = class_dropout, num_classes

    def times(self, b: int, generator=None, device=None) -> tuple[Tensor, Tensor]:
        """(t, t): one draw of the time sampler per row (the first of its pair)."""
        t = self.time_fn(b, self.time_params, generator, torch.device(device or "cpu"))[0]
        return t, t

    def __call__(self, net, x: Tensor, y: Tensor | None = None, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        z, _, t, v, y, _ = draw_path_batch(x, y, generator, self.times, self.class_dropout, self.num_classes)
        sq_err = (net(z, t, t, y) - v).pow(2).flatten(1).sum(1)
        loss = adaptive_weight(sq_err, self.weight_power, self.weight_eps)
        return loss, {"mse": sq_err.detach().mean(), "loss": loss.detach().mean()}


def from_config(cfg, num_classes: int | None) -> FlowMatchingLoss:
    mf = cfg.meanflow
    return FlowMatchingLoss(time_sampler=mf.time_sampler.name, time_params=mf.time_sampler.model_dump(exclude={"name"}),
                            weight_power=mf.weight_power, weight_eps=mf.weight_eps,
                            class_dropout=mf.cfg.class_dropout, num_classes=num_classes)
