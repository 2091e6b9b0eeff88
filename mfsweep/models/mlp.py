"""Residual MLP: net(z, r, t, y) -> u, z and u of shape (B, *data_shape); images are flattened."""

from __future__ import annotations

import math

from torch import Tensor, nn

from mfsweep.models.embedding import Conditioning


class _Block(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.cond = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.act = nn.SiLU()
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        a = self.act(self.fc1(self.act(h)) + self.cond(c))
        return h + self.fc2(self.drop(a))


class MLP(nn.Module):
    """``depth`` residual blocks of width ``hidden_dim``, each conditioned on (r, t, y). No norm layers."""

    def __init__(self, data_shape: tuple[int, ...], hidden_dim: int = 256, depth: int = 3,
                 time_embedding: str = "t_tr", num_classes: int | None = None, dropout: float = 0.0,
                 time_scale: float = 10.0):
        super().__init__()
        self.data_shape = tuple(data_shape)
        dim = math.prod(self.data_shape)
        self.cond = Conditioning(hidden_dim, time_embedding, num_classes, time_scale=time_scale)
        self.inp = nn.Linear(dim, hidden_dim)
        self.blocks = nn.ModuleList([_Block(hidden_dim, dropout) for _ in range(depth)])
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden_dim, dim))

    def forward(self, z: Tensor, r: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        c = self.cond(r, t, y)
        h = self.inp(z.flatten(1))
        for block in self.blocks:
            h = block(h, c)
        return self.out(h).reshape(z.shape)


def from_config(cfg, data_shape: tuple[int, ...], num_classes: int | None) -> MLP:
    return MLP(data_shape, hidden_dim=cfg.hidden_dim, depth=cfg.depth, time_embedding=cfg.time_embedding,
               num_classes=num_classes, dropout=cfg.dropout, time_scale=cfg.time_scale)
