"""The backbone registry. Every backbone is ``net(z, r, t, y=None) -> u`` with z, u: (B, *data_shape),
r, t: (B,), y: (B,) int64 or None; class index ``num_classes`` is the null class (CFG).

    embedding.py   the time-embedding variants (paper Table 1c) and the class embedding
    mlp.py         residual MLP (2-D toys, small vectors, flattened images)
    unet.py        a small convolutional U-Net (small images)
    dit.py         DiT with MeanFlow's two time inputs (latents / images), sizes by name
    unet_cifar.py  the CIFAR-10 U-Net (DDPM++ / EDM style) the paper used, and a tiny one

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

#: DiT sizes (dit_tiny for tests and --smoke).
DIT_SIZES = ("dit_tiny", "dit_s2", "dit_b4", "dit_b2", "dit_m2", "dit_l2", "dit_xl2")

#: ``model.backbone`` → ``from_config(model_cfg, data_shape, num_classes) -> nn.Module``.
BACKBONES = Registry("backbone", {
    "mlp": lazy("mfsweep.models.mlp:from_config"),
    "unet": lazy("mfsweep.models.unet:from_config"),
    # DiT sizes by name (Peebles & Xie 2023; MeanFlow Table 2): the name is the size, read by from_config
    **{name: lazy("mfsweep.models.dit:from_config") for name in DIT_SIZES},
    **{name: lazy("mfsweep.models.unet_cifar:from_config") for name in ("unet_cifar", "unet_cifar_tiny")},
})

#: Backbones that take images or latents (C, H, W), not 2-D vectors.
IMAGE_BACKBONES = frozenset({"unet", "unet_cifar", "unet_cifar_tiny", *DIT_SIZES})


def build_backbone(model_cfg, data_shape: tuple[int, ...], num_classes: int | None) -> nn.Module:
    """Build the backbone named by ``model_cfg.backbone`` (a ``ModelConfig``)."""
    return BACKBONES.lookup(model_cfg.backbone)(model_cfg, tuple(data_shape), num_classes)
