"""How the network runs in a trial: precision (``train.precision``) and compilation (``train.compile``).

- ``bf16``: the network's forward runs under ``torch.autocast(dtype=torch.bfloat16)`` and its output
  is cast back to float32, so the MeanFlow target, the JVP tangents (built by the loss from float32
  inputs) and the loss stay in float32. Parameters, gradients, Adam and EMA stay float32.
- ``compile``: ``torch.compile`` of the loss call (the network's forward and the JVP inside it), once
  per trial. Compiling the network module alone does nothing under ``torch.func.jvp`` (measured with
  torch 2.14.1: dynamo captured no graph), so the whole loss call is compiled; the random draws
  that take a ``torch.Generator`` are graph breaks and run eagerly, so the batch's randomness — and
  the loss — are those of the eager step (tests/test_precision_compile.py).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


class Autocast(nn.Module):
    """``net(z, r, t, y)`` under autocast to ``dtype``, output cast to float32. Holds a reference to
    the network (state dicts and checkpoints keep using the network itself)."""

    def __init__(self, net: nn.Module, device_type: str, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.net = net
        self.device_type, self.dtype = device_type, dtype

    def forward(self, z: Tensor, r: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.net(z, r, t, y)
        return out.float()


def with_precision(net: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """The callable the loss and the sampler use for ``net`` at ``train.precision``."""
    if precision == "fp32":
        return net
    if precision == "bf16":
        return Autocast(net, torch.device(device).type, torch.bfloat16)
    raise ValueError(f"unknown train.precision {precision!r}; valid: bf16, fp32")


def compiled_loss(loss_fn) -> Callable:
    """``torch.compile`` of ``loss_fn(net, x, y, generator=...)``; compiled on its first call."""
    return torch.compile(loss_fn.__call__)
