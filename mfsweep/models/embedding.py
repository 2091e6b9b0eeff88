"""Conditioning: the time-embedding variants of Table 1c and class labels with a null class."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mfsweep.models import TIME_EMBEDDINGS


def time_scalars(variant: str, r: Tensor, t: Tensor) -> Tensor:
    """Stack the variant's scalars: (B,) and (B,) → (B, k)."""
    names = TIME_EMBEDDINGS.lookup(variant)
    values = {"t": t, "r": r, "t-r": t - r}
    return torch.stack([values[name] for name in names], dim=1)


def sinusoidal(x: Tensor, dim: int, scale: float, max_period: float = 10000.0) -> Tensor:
    """Transformer-style features of scalars in [0, 1]: (B, k) → (B, k·dim).

    The scalars are multiplied by ``scale`` first (DiT uses 1000; mfsweep's default is
    ``model.time_scale`` = 10, see docs/benchmarks.md "time_scale")."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=x.dtype) / half)
    args = scale * x[..., None] * freqs  # (B, k, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).flatten(1)


class Conditioning(nn.Module):
    """(r, t, y) → one conditioning vector (B, dim): embedded times plus an optional class."""

    def __init__(self, dim: int, time_embedding: str = "t_tr", num_classes: int | None = None, freq_dim: int = 64,
                 time_scale: float = 10.0):
        super().__init__()
        self.time_embedding = TIME_EMBEDDINGS.check(time_embedding)
        self.freq_dim = freq_dim
        # Times in [0, 1] are multiplied by time_scale before the sinusoids. The JVP differentiates
        # through them, so a large scale (DiT's 1000) means large ∂u/∂t in the target.
        self.time_scale = time_scale
        k = len(TIME_EMBEDDINGS[time_embedding])
        self.time_mlp = nn.Sequential(nn.Linear(k * freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        # Index num_classes is the null class used by classifier-free guidance.
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes else None

    def forward(self, r: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        c = self.time_mlp(sinusoidal(time_scalars(self.time_embedding, r, t), self.freq_dim, self.time_scale))
        if self.label is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.label.num_embeddings - 1, device=t.device, dtype=torch.long)
            c = c + self.label(y)
        return c
