"""A small convolutional U-Net for small images: net(z, r, t, y) -> u, z and u of shape (B, C, H, W).

Normalisation is GroupNorm without affine parameters plus an explicit scale/shift from the
conditioning (FiLM): per-sample, so samples stay independent and torch.func.jvp works (no
BatchNorm; docs/method.md §6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfsweep.models.embedding import Conditioning


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin, affine=False)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout, affine=False)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """Levels of ``channels × channel_mult[i]``, one residual block each, 2× down/up-sampling."""

    def __init__(self, data_shape: tuple[int, ...], channels: int = 32, channel_mult: tuple[int, ...] = (1, 2),
                 time_embedding: str = "t_tr", num_classes: int | None = None, dropout: float = 0.0,
                 time_scale: float = 10.0):
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"the unet backbone takes images (C, H, W), got per-sample shape {data_shape}")
        cin, h, w = data_shape
        factor = 2 ** (len(channel_mult) - 1)
        if h % factor or w % factor:
            raise ValueError(f"image size {h}x{w} must be divisible by {factor} for channel_mult {channel_mult}")
        cond_dim = 4 * channels
        self.cond = Conditioning(cond_dim, time_embedding, num_classes, time_scale=time_scale)
        self.inp = nn.Conv2d(cin, channels, 3, padding=1)
        widths = [channels * m for m in channel_mult]
        self.down = nn.ModuleList()
        ch = channels
        for wdt in widths:
            self.down.append(_ResBlock(ch, wdt, cond_dim, dropout))
            ch = wdt
        self.mid = _ResBlock(ch, ch, cond_dim, dropout)
        self.up = nn.ModuleList()
        for wdt in reversed(widths):
            self.up.append(_ResBlock(ch + wdt, wdt, cond_dim, dropout))
            ch = wdt
        self.out_norm = nn.GroupNorm(_groups(ch), ch, affine=False)
        self.out = nn.Conv2d(ch, cin, 3, padding=1)

    def forward(self, z: Tensor, r: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        c = self.cond(r, t, y)
        h = self.inp(z)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, c)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        h = self.mid(h, c)
        for i, block in enumerate(self.up):
            if i > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1), c)
        return self.out(F.silu(self.out_norm(h)))


def from_config(cfg, data_shape: tuple[int, ...], num_classes: int | None) -> UNet:
    return UNet(data_shape, channels=cfg.channels, channel_mult=tuple(cfg.channel_mult),
                time_embedding=cfg.time_embedding, num_classes=num_classes, dropout=cfg.dropout,
                time_scale=cfg.time_scale)
