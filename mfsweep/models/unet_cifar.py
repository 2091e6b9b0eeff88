"""The CIFAR-10 U-Net of MeanFlow (DDPM++ / EDM ``SongUNet`` style) and a tiny one for tests.

net(z, r, t, y=None) -> u, with z, u: (B, C, H, W); r, t: (B,); y: (B,) int64 or None.

MeanFlow's unconditional CIFAR-10 result (1-NFE FID 2.92, Geng et al. 2025, arXiv 2505.13447,
§5 "CIFAR-10 Comparisons" and Tab. 3) uses "the same U-net developed from [Song et al. 2021]
(~55M)" as the consistency-model baselines, applied to pixels without a preconditioner; the
appendix adds dropout 0.2 and the two times (t, t − r) embedded positionally and concatenated.
That network is the DDPM++ CIFAR-10 configuration of Song et al. 2021 ("Score-based generative
modeling through stochastic differential equations", arXiv 2011.13456) as re-implemented in EDM's
``SongUNet`` (Karras et al. 2022, arXiv 2206.00364; github.com/NVlabs/edm,
``training/networks.py``). This file is an independent re-implementation of that layout (read for
ideas, not copied), with mfsweep's ``Conditioning`` for MeanFlow's two time inputs.

Architecture (L = len(channel_mult) levels, N = num_blocks, level i has side H / 2^i):

    cond   : Conditioning(r, t, y) -> SiLU -> emb (B, 4·model_channels); sinusoidal features of
             model_channels per time scalar (EDM's channel_mult_noise 1), class embedding with a
             null class when num_classes is given (y=None means the null class).
    encoder: conv3x3 C -> model_channels; per level i: (i > 0) a down block, then N residual
             blocks to model_channels·channel_mult[i], with self-attention at levels in attn_levels.
             Every encoder output is kept as a skip.
    decoder: per level from the lowest: (lowest) two blocks, the first with attention
             (the "middle"); (others) an up block; then N + 1 blocks, each taking one skip by
             channel concatenation, the last one with attention at levels in attn_levels.
    out    : GroupNorm -> SiLU -> conv3x3 to C channels.

    block(x, emb): h = conv3x3(SiLU(GN(x)))                   (after the 2× resample, if any)
                   h = conv3x3(dropout(SiLU(GN(h + Linear(emb)))))   (DDPM++: the conditioning is
                       a per-channel shift added before the norm, EDM's adaptive_scale=False)
                   x = (h + skip(x)) / √2                     (skip: 1×1 conv when the width
                                                               changes or the block resamples)
                   attention: x = (proj(softmax(qᵀk / √d) v) + x) / √2, q, k, v from GN(x), 1 head.

Resampling is EDM's ``resample_filter=[1, 1]`` FIR filter, which is exactly 2×2 average pooling
down and nearest-neighbour 2× up; it is written here as ``F.avg_pool2d`` / ``F.interpolate``.
Initialisation follows EDM's DDPM++: Xavier-uniform weights, zero biases, the layers that end a
residual branch (each block's second conv, the attention output, the final conv) scaled by
``zero_init`` (1e-5), the qkv projection by √0.2.

Configurations (``model.backbone``; the name is the size, ``model.channels`` / ``channel_mult``
are not read; ``model.dropout``, ``model.time_embedding``, ``model.time_scale`` are):

    | name            | model_channels | channel_mult | num_blocks | attention          | params, 3×32×32 |
    |-----------------|----------------|--------------|------------|--------------------|-----------------|
    | unet_cifar      | 128            | (2, 2, 2)    | 4          | level 1 (16×16)    | 55.80M          |
    | unet_cifar_tiny | 16             | (1, 2)       | 1          | level 1 (lowest)   | 0.19M           |

The paper's CIFAR-10 run uses dropout 0.2; ``model.dropout`` defaults to 0, so a paper-faithful
config must set it. Any image whose sides are divisible by 2^(L − 1) and any channel count is
accepted (attention is placed by level, not by absolute resolution, so the parameter count does
not depend on the image size).

Normalisation: GroupNorm with min(32, C/4) groups (EDM; the largest divisor of C not above that),
computed by ``nn.GroupNorm(affine=False)`` followed by an explicit per-channel weight and bias
(nn.Parameter), so the parameter count equals EDM's affine GroupNorm. Affine GroupNorm/LayerNorm
is avoided because ``torch.compile`` of a ``torch.func.jvp`` through an affine norm hits an internal
assert in PyTorch 2.13/2.14 (docs/method.md §6). GroupNorm is per sample, so rows stay independent;
there is no BatchNorm. Attention is written out (matmul + softmax) rather than
``F.scaled_dot_product_attention``: the flash / memory-efficient kernels have no forward-mode AD, and
MeanFlow's loss takes a forward-mode JVP of the network.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mfsweep.models.embedding import Conditioning


@dataclass(frozen=True)
class UNetCifarSize:
    """The size of a configuration: widths, depth and where attention goes."""

    model_channels: int
    channel_mult: tuple[int, ...]
    num_blocks: int
    attn_levels: tuple[int, ...]
    emb_mult: int = 4  # conditioning width = emb_mult · model_channels (EDM channel_mult_emb)
    num_heads: int = 1


#: ``model.backbone`` → size. unet_cifar is EDM's DDPM++ CIFAR-10 configuration (MeanFlow Tab. 3).
SIZES: dict[str, UNetCifarSize] = {
    "unet_cifar": UNetCifarSize(model_channels=128, channel_mult=(2, 2, 2), num_blocks=4, attn_levels=(1,)),
    "unet_cifar_tiny": UNetCifarSize(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_levels=(1,)),
}


def num_groups(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> int:
    """EDM's min(32, C // 4) groups, lowered to the largest count that divides C."""
    g = max(1, min(max_groups, channels // min_channels_per_group))
    while channels % g:
        g -= 1
    return g


class ScaleShiftGroupNorm(nn.Module):
    """GroupNorm without affine parameters, then an explicit per-channel weight and bias.

    Same function and parameter count as ``nn.GroupNorm(affine=True)``, but the normalisation
    itself is a non-affine ``nn.GroupNorm`` (see the module docstring for why)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups(channels), channels, eps=eps, affine=False)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x) * self.weight[:, None, None] + self.bias[:, None, None]


def _init(layer: nn.Conv2d | nn.Linear, gain: float = 1.0) -> None:
    """EDM's DDPM++ init: Xavier-uniform weight times ``gain``, zero bias."""
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _conv(cin: int, cout: int, kernel: int, gain: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    _init(conv, gain)
    return conv


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions, softmax written out (forward-mode AD safe)."""

    def __init__(self, channels: int, num_heads: int, zero_init: float):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention width {channels} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = ScaleShiftGroupNorm(channels)
        self.qkv = _conv(channels, 3 * channels, 1, gain=math.sqrt(0.2))
        self.proj = _conv(channels, channels, 1, gain=zero_init)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        d = c // self.num_heads
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, d, h * w).unbind(1)  # (B, heads, d, N)
        # Plain softmax attention: the fused SDPA kernels (flash / memory-efficient) lack forward-mode AD.
        weights = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(d), dim=-1)
        a = torch.einsum("bhnm,bhdm->bhdn", weights, v).reshape(b, c, h, w)
        return self.proj(a)


class UNetBlock(nn.Module):
    """DDPM++ residual block (optionally 2× down/up-sampling, optionally followed by attention)."""

    skip_scale = 1 / math.sqrt(2)

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, resample: str | None = None,
                 attention: bool = False, num_heads: int = 1, takes_skip: bool = False, zero_init: float = 1e-5):
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        self.resample = resample
        self.takes_skip = takes_skip  # the decoder concatenates one encoder output before this block
        self.norm0 = ScaleShiftGroupNorm(cin)
        self.conv0 = _conv(cin, cout, 3)
        self.emb = nn.Linear(emb_dim, cout)
        _init(self.emb)
        self.norm1 = ScaleShiftGroupNorm(cout)
        self.drop = nn.Dropout(dropout)
        self.conv1 = _conv(cout, cout, 3, gain=zero_init)
        # EDM resample_proj=True: a 1×1 projection whenever the width changes or the block resamples.
        self.skip = _conv(cin, cout, 1) if cin != cout or resample else None
        self.attn = SelfAttention(cout, num_heads, zero_init) if attention else None

    def _resample(self, x: Tensor) -> Tensor:
        # EDM's FIR filter [1, 1]: average pooling down, nearest neighbour up.
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = F.silu(self.norm1(h + self.emb(emb)[:, :, None, None]))
        h = self.conv1(self.drop(h))
        s = self._resample(x)
        x = (h + (self.skip(s) if self.skip is not None else s)) * self.skip_scale
        if self.attn is not None:
            x = (self.attn(x) + x) * self.skip_scale
        return x


class UNetCifar(nn.Module):
    """DDPM++ U-Net with MeanFlow's two time inputs; see the module docstring for the layout."""

    def __init__(self, data_shape: tuple[int, ...], model_channels: int = 128,
                 channel_mult: tuple[int, ...] = (2, 2, 2), num_blocks: int = 4,
                 attn_levels: tuple[int, ...] = (1,), dropout: float = 0.0,
                 num_classes: int | None = None, time_embedding: str = "t_tr", time_scale: float = 10.0,
                 emb_mult: int = 4, num_heads: int = 1, zero_init: float = 1e-5, name: str = "unet_cifar"):
        super().__init__()
        data_shape = tuple(data_shape)
        levels = len(channel_mult)
        if levels < 1 or num_blocks < 1 or model_channels < 1:
            raise ValueError(f"{name}: need channel_mult with at least one level, num_blocks ≥ 1 and "
                             f"model_channels ≥ 1; got {channel_mult}, {num_blocks}, {model_channels}")
        bad_levels = [lvl for lvl in attn_levels if not 0 <= lvl < levels]
        if bad_levels:
            raise ValueError(f"{name}: attn_levels {bad_levels} out of range; levels are 0..{levels - 1}")
        self.name = name
        self.factor = 2 ** (levels - 1)
        self.data_shape = _check_shape(name, data_shape, self.factor, levels)
        cin = data_shape[0]
        emb_dim = emb_mult * model_channels
        # EDM: positional features of model_channels per noise scalar; here one set per time scalar.
        self.cond = Conditioning(emb_dim, time_embedding, num_classes, freq_dim=model_channels, time_scale=time_scale)
        blk = dict(emb_dim=emb_dim, dropout=dropout, num_heads=num_heads, zero_init=zero_init)

        self.inp = _conv(cin, model_channels, 3)
        self.enc = nn.ModuleList()
        skips = [model_channels]
        c = model_channels
        for level, mult in enumerate(channel_mult):
            if level > 0:
                self.enc.append(UNetBlock(c, c, resample="down", **blk))
                skips.append(c)
            for _ in range(num_blocks):
                self.enc.append(UNetBlock(c, model_channels * mult, attention=level in attn_levels, **blk))
                c = model_channels * mult
                skips.append(c)

        self.dec = nn.ModuleList()
        for level in reversed(range(levels)):
            if level == levels - 1:
                self.dec.append(UNetBlock(c, c, attention=True, **blk))
                self.dec.append(UNetBlock(c, c, **blk))
            else:
                self.dec.append(UNetBlock(c, c, resample="up", **blk))
            for idx in range(num_blocks + 1):
                cout = model_channels * channel_mult[level]
                attn = idx == num_blocks and level in attn_levels
                self.dec.append(UNetBlock(c + skips.pop(), cout, attention=attn, takes_skip=True, **blk))
                c = cout
        assert not skips, "every encoder output must feed one decoder block"
        self.out_norm = ScaleShiftGroupNorm(c)
        self.out = _conv(c, cin, 3, gain=zero_init)

    def forward(self, z: Tensor, r: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """z: (B, C, H, W); r, t: (B,); y: (B,) int64 labels or None (null class). Returns u like z."""
        self._check_input(z, r, t)
        emb = F.silu(self.cond(r, t, y))
        h = self.inp(z)
        skips = [h]
        for block in self.enc:
            h = block(h, emb)
            skips.append(h)
        for block in self.dec:
            if block.takes_skip:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))

    def _check_input(self, z: Tensor, r: Tensor, t: Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.data_shape[0]:
            raise ValueError(f"{self.name}: z must be (B, {self.data_shape[0]}, H, W), got {tuple(z.shape)}")
        if z.shape[2] % self.factor or z.shape[3] % self.factor:
            raise ValueError(f"{self.name}: image size {z.shape[2]}x{z.shape[3]} is not divisible by {self.factor}")
        if r.shape != (z.shape[0],) or t.shape != (z.shape[0],):
            raise ValueError(f"{self.name}: r and t must be ({z.shape[0]},), got {tuple(r.shape)} and {tuple(t.shape)}")


def _check_shape(name: str, data_shape: tuple[int, ...], factor: int, levels: int) -> tuple[int, int, int]:
    """(C, H, W) with H and W divisible by ``factor`` = 2^(levels − 1), else a ValueError saying why."""
    if len(data_shape) != 3 or any(not isinstance(s, numbers.Integral) or s < 1 for s in data_shape):
        raise ValueError(f"{name} takes images of per-sample shape (C, H, W), got {data_shape}; "
                         "use the mlp backbone for vectors")
    _, h, w = data_shape
    if h % factor or w % factor:
        def near(s: int) -> str:
            lo, hi = s // factor * factor, -(-s // factor) * factor
            return f"{lo} or {hi}" if lo else str(hi)
        raise ValueError(f"{name}: image size {h}x{w} is not divisible by {factor} = 2^({levels} - 1) "
                         f"for its {levels} levels; use a side that is a multiple of {factor} "
                         f"(height {near(h)}, width {near(w)})")
    return data_shape  # type: ignore[return-value]


def from_config(model_cfg, data_shape: tuple[int, ...], num_classes: int | None) -> UNetCifar:
    """``model.backbone: unet_cifar | unet_cifar_tiny``: the size comes from the name (``SIZES``)."""
    name = model_cfg.backbone
    if name not in SIZES:
        raise ValueError(f"unknown unet_cifar size {name!r}; valid: {', '.join(sorted(SIZES))}")
    size = SIZES[name]
    return UNetCifar(tuple(data_shape), model_channels=size.model_channels, channel_mult=size.channel_mult,
                     num_blocks=size.num_blocks, attn_levels=size.attn_levels, dropout=model_cfg.dropout,
                     num_classes=num_classes, time_embedding=model_cfg.time_embedding,
                     time_scale=model_cfg.time_scale, emb_mult=size.emb_mult, num_heads=size.num_heads, name=name)
