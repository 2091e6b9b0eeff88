"""Gaussian data with a closed-form flow, for exact tests of every training method.

x ~ N(M, diag(S²)), e ~ N(0, I), z_t = (1 − t)·x + t·e has per-dimension std σ_t = sqrt((1 − t)² S² + t²).
The marginal flow is affine: z_τ = (1 − τ)·M + (σ_τ / σ_t)·(z_t − (1 − t)·M), so

    v(z, t)        = −M + (t − (1 − t)·S²) / σ_t² · (z − (1 − t)·M)     (marginal velocity)
    z_r(z_t)       = (1 − r)·M + (σ_r / σ_t)·(z_t − (1 − t)·M)           (flow map from t to r)
    u(z_t, r, t)   = (z_t − z_r) / (t − r)                               (average velocity)

All in float64; the functions take z: (B, 3), r, t: (B,).
"""

from __future__ import annotations

import torch

M = torch.tensor([1.5, -0.5, 0.25], dtype=torch.float64)
S = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)


def col(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.reshape(-1, *([1] * (like.ndim - 1)))


def sigma(t: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((1 - t) ** 2 * S**2 + t**2)


def marginal_velocity(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    tc = col(t, z)
    return -M + (tc - (1 - tc) * S**2) / sigma(tc) ** 2 * (z - (1 - tc) * M)


def flow_map(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_r from z_t along the marginal flow (exact for any 0 ≤ r, t ≤ 1)."""
    tc, rc = col(t, z), col(r, z)
    return (1 - rc) * M + sigma(rc) / sigma(tc) * (z - (1 - tc) * M)


def exact_average_velocity(z: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """u(z_t, r, t) = (z_t − z_r) / (t − r); at r = t the limit, the marginal velocity."""
    tc, rc = col(t, z), col(r, z)
    same = (tc - rc).abs() < 1e-12
    safe = torch.where(same, torch.ones_like(tc), tc - rc)
    return torch.where(same, marginal_velocity(z, t), (z - flow_map(z, r, t)) / safe)


def sample_data(n: int, generator: torch.Generator) -> torch.Tensor:
    return M + S * torch.randn(n, 3, generator=generator, dtype=torch.float64)


class ExactNet(torch.nn.Module):
    """The exact average velocity as a network ``net(z, r, t, y=None) -> u`` with one trainable
    scalar ``a`` (= 1 at the solution): u = a · u*(z, r, t). A method whose loss is minimised by
    the exact solution has zero gradient in ``a`` there (in expectation, for per-sample targets)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, z, r, t, y=None):
        return self.a * exact_average_velocity(z, r, t)
