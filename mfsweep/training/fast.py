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


def compiled_loss(loss_fn, fresh: bool = True) -> Callable:
    """``torch.compile`` of ``loss_fn(net, x, y, generator=...)``; compiled on its first call.

    ``fresh`` (the default, one call per trial) first clears dynamo's in-memory state with
    ``torch._dynamo.reset()``. A study reuses Ray's worker processes between trials
    (``reuse_actors``), and dynamo keys its compiled graphs by code object with a limit of 8
    recompiles each (``torch._dynamo.config.recompile_limit``); the loss's settings (``frac_r_neq_t``,
    the backbone, shapes) are guarded constants, so without the reset the ninth distinct trial in
    one process would run eagerly with only a warning in the log. Inductor's on-disk cache is kept,
    so a trial that repeats an earlier configuration loads its kernels instead of recompiling.
    ``fresh=False`` compiles alongside what is already compiled (two losses timed side by side).

    Shapes are static (``dynamic=False``): a trial's batch never changes shape, and without it
    Dynamo's profile-guided "automatic dynamic" shapes, which it records on disk per source line
    (``automatic_dynamic_local_pgo``), would compile every later trial with symbolic batch sizes once
    any process on the machine had called the loss at two sizes (a backbone sweep, a test run);
    on the tiny DiT the compiled Flow Matching step took 36.5 ms that way, 16.6 ms with static
    shapes, 21.6 ms eager (docs/benchmarks.md, "The compiled fast path, measured again").
    """
    if fresh:
        torch._dynamo.reset()
    return torch.compile(loss_fn.__call__, dynamic=False)
