"""Backbone registry. Every backbone is ``net(z, r, t, y=None) -> u`` with z, u: (B, *data_shape),
r, t: (B,), y: (B,) int64 or None; class index ``num_classes`` is the null class (CFG)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from mfsweep.models.embedding import TIME_EMBEDDINGS
from mfsweep.models.mlp import MLP
from mfsweep.models.unet import UNet


def _mlp(cfg, data_shape, num_classes) -> nn.Module:
    return MLP(data_shape, hidden_dim=cfg.hidden_dim, depth=cfg.depth, time_embedding=cfg.time_embedding,
               num_classes=num_classes, dropout=cfg.dropout, time_scale=cfg.time_scale)


def _unet(cfg, data_shape, num_classes) -> nn.Module:
    return UNet(data_shape, channels=cfg.channels, channel_mult=tuple(cfg.channel_mult),
                time_embedding=cfg.time_embedding, num_classes=num_classes, dropout=cfg.dropout, time_scale=cfg.time_scale)


BACKBONES: dict[str, Callable[..., nn.Module]] = {"mlp": _mlp, "unet": _unet}


def build_backbone(model_cfg, data_shape: tuple[int, ...], num_classes: int | None) -> nn.Module:
    """Build the backbone named by ``model_cfg.backbone`` (a ``ModelConfig``)."""
    try:
        factory = BACKBONES[model_cfg.backbone]
    except KeyError:
        raise ValueError(f"unknown backbone {model_cfg.backbone!r}; valid: {', '.join(BACKBONES)}") from None
    return factory(model_cfg, tuple(data_shape), num_classes)


__all__ = ["BACKBONES", "TIME_EMBEDDINGS", "build_backbone", "MLP", "UNet"]
