"""The backbone registry. Every backbone is ``net(z, r, t, y=None) -> u`` with z, u: (B, *data_shape),
r, t: (B,), y: (B,) int64 or None; class index ``num_classes`` is the null class (CFG).

    embedding.py   the time-embedding variants (paper Table 1c) and the class embedding
    mlp.py         residual MLP (2-D toys, small vectors, flattened images)
    unet.py        a small convolutional U-Net (small images)

A backbone module exposes ``from_config(model_cfg, data_shape, num_classes) -> nn.Module`` and is
registered here by import path, so naming one in a config does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mfsweep.registry import Registry, lazy

if TYPE_CHECKING:
    from torch import nn

#: Which scalars the network sees (paper Table 1c; docs/method.md §2). Default (t, t − r).
TIME_EMBEDDINGS = Registry("time embedding", {
    "t_tr": ("t", "t-r"),
    "t_r": ("t", "r"),
    "tr": ("t-r",),
    "t_r_tr": ("t", "r", "t-r"),
})

#: ``model.backbone`` → ``from_config(model_cfg, data_shape, num_classes) -> nn.Module``.
BACKBONES = Registry("backbone", {
    "mlp": lazy("mfsweep.models.mlp:from_config"),
    "unet": lazy("mfsweep.models.unet:from_config"),
})


def build_backbone(model_cfg, data_shape: tuple[int, ...], num_classes: int | None) -> nn.Module:
    """Build the backbone named by ``model_cfg.backbone`` (a ``ModelConfig``)."""
    return BACKBONES.lookup(model_cfg.backbone)(model_cfg, tuple(data_shape), num_classes)
