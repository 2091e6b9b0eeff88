"""DiT, the Diffusion Transformer, with MeanFlow's two time inputs: ``net(z, r, t, y=None) -> u``.

z, u: (B, C, H, W) (images or latents); r, t: (B,) times with 0 ≤ r ≤ t ≤ 1; y: (B,) int64 class
labels or None. Class index ``num_classes`` is the null class of classifier-free guidance, and
y=None means the null class for every row.

Sources: W. Peebles and S. Xie, "Scalable Diffusion Models with Transformers", arXiv 2212.09748
(2023) for the architecture and the sizes; Z. Geng, M. Deng, X. Bai, J. Z. Kolter, K. He, "Mean
Flows for One-step Generative Modeling", arXiv 2505.13447 (2025), §5 and Table 2 for the two time
inputs, the extra size M and the parameter counts. This file is an independent implementation
(public code read for ideas, nothing copied).

Architecture (p = patch size, D = hidden width, N = (H/p)·(W/p) tokens):

    tokens : Conv2d(C, D, kernel=stride=p) then flatten to (B, N, D), plus a fixed (not learned)
             2-D sin-cos positional embedding (first D/2 channels encode the row, last D/2 the
             column; a non-persistent buffer recomputed by ``initialize_weights``).
    cond   : c = Conditioning(r, t, y) (mfsweep.models.embedding): sinusoidal features (256 per
             time scalar, as DiT) of the scalars chosen by ``model.time_embedding`` (Table 1c;
             default (t, t − r)) through one Linear–SiLU–Linear, plus a class embedding with a null
             row (see "Sizes" for how this differs from the paper's two time MLPs).
    block  : adaLN-Zero (DiT §3.2): (shift, scale, gate) × 2 = Linear(SiLU(c)) → 6D, zero-initialised;
                 x = x + gate₁ · proj(attn(LN(x)·(1 + scale₁) + shift₁))
                 x = x + gate₂ · MLP(LN(x)·(1 + scale₂) + shift₂),   MLP = Linear(D, 4D)–GELU(tanh)–Linear(4D, D)
    final  : LN(x)·(1 + scale) + shift (adaLN, zero-initialised), Linear(D, p·p·C) zero-initialised,
             then unpatchify to (B, C, H, W).

Because the last Linear and every gate start at zero, the network outputs exactly 0 at
initialisation and each block starts as the identity (adaLN-Zero); the first gradient step only
reaches the final Linear, the blocks start learning from the next steps.

Sizes (``model.backbone``; the name is the size; ``model.hidden_dim``/``depth``/``channels`` are
not read; ``model.dropout``, ``model.time_embedding`` and ``model.time_scale`` are). Parameters are
measured for ImageNet 256² latents (4×32×32, 1000 classes), with tests/test_dit.py:

    | name     | depth | hidden | heads | patch | params  | MeanFlow Table 2 |
    |----------|-------|--------|-------|-------|---------|------------------|
    | dit_tiny | 2     | 64     | 4     | 2     | 0.26M   | (tests, smoke)   |
    | dit_s2   | 12    | 384    | 6     | 2     | 32.96M  | (DiT-S/2)        |
    | dit_b4   | 12    | 768    | 12    | 4     | 130.57M | (B/4, Table 1)   |
    | dit_b2   | 12    | 768    | 12    | 2     | 130.50M | B/2 131M         |
    | dit_m2   | 16    | 1024   | 16    | 2     | 306.97M | M/2 308M         |
    | dit_l2   | 24    | 1024   | 16    | 2     | 458.09M | L/2 459M         |
    | dit_xl2  | 28    | 1152   | 16    | 2     | 675.11M | XL/2 676M        |

The counts are 0.1–0.4 % below Table 2's. Table 2's numbers equal these plus one more time MLP of
the same shape (256 → D → D): B/2 131.09M, M/2 308.02M, L/2 459.14M, XL/2 676.44M, i.e. the paper
embeds t and t − r with two separate MLPs and sums them, while ``Conditioning`` feeds both
scalars' features to one MLP of hidden width D (two summed MLPs are the block-diagonal case of one
MLP of hidden width 2D). This also
confirms M/2 = depth 16, hidden 1024, 16 heads. The positional embedding is a buffer, not counted.

Attention rule. The fused SDPA kernels (flash, memory-efficient, cuDNN on CUDA; the flash kernel
on CPU) have no forward-mode AD, and MeanFlow's loss takes ``torch.func.jvp`` of this network;
their backward is also not twice differentiable. So attention is written out as
softmax(q·kᵀ/√d)·v (matmul + softmax, which every autograd mode and ``torch.compile`` handle)
whenever a tangent or a gradient might flow, and the fused ``F.scaled_dot_product_attention``
is used only for a plain forward, detected by ``fused_attention_allowed()``:

    * ``torch.is_grad_enabled()`` is False (``torch.no_grad()`` or ``torch.inference_mode()``), and
    * no functorch transform is active (``torch.func.jvp``/``grad``/``vjp``/``vmap``/``jacfwd``…
      push an interpreter on functorch's stack; checked with
      ``torch._C._are_functorch_transforms_active()``; this also holds while dynamo traces the
      transform, so ``torch.compile`` of a function that calls ``torch.func.jvp`` takes the
      written-out path), and
    * no ``torch.autograd.forward_ad.dual_level`` is open (the other forward-mode API).

Note that ``meanflow.u_from: forward`` runs the JVP under ``no_grad``: the grad flag alone would
pick the fused kernel there, which is why the transform check is needed. Sampling and evaluation
under ``torch.no_grad()``/``inference_mode()`` get the fused kernel; training forwards (grad
enabled) use the written-out path. ``DiT(attention="math")`` forces the written-out path always.
The two paths agree to ~1e-6 in float32 (tests/test_dit.py). In half precision the written-out
softmax runs in float32.

Normalisation: LayerNorm without affine parameters (``elementwise_affine=False``, eps 1e-6, as
DiT), the adaLN modulation provides the scale and shift. Affine norms are avoided because
``torch.compile`` of a ``torch.func.jvp`` through them hits an internal assert in PyTorch
2.13/2.14 (docs/method.md §6). LayerNorm normalises each token of each sample, so rows of a
batch stay independent (the subset JVP of the loss relies on it).

Dropout (``model.dropout``, default 0) sits where DiT's timm blocks have it: after the attention
output projection and in the MLP (after the activation and after the output Linear).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import forward_ad

from mfsweep.models import DIT_SIZES
from mfsweep.models.embedding import Conditioning

__all__ = ["DIT_CONFIGS", "DiT", "DiTBlock", "DiTSize", "FinalLayer", "attention", "fused_attention_allowed",
           "from_config", "sincos_pos_embed_2d"]


@dataclass(frozen=True)
class DiTSize:
    """The shape of a DiT configuration."""

    depth: int
    hidden: int
    heads: int
    patch: int
    mlp_ratio: float = 4.0


#: ``model.backbone`` → size (DiT Table 1; M from MeanFlow Table 2; dit_tiny for tests and --smoke).
DIT_CONFIGS: dict[str, DiTSize] = {
    "dit_tiny": DiTSize(depth=2, hidden=64, heads=4, patch=2),
    "dit_s2": DiTSize(depth=12, hidden=384, heads=6, patch=2),
    "dit_b4": DiTSize(depth=12, hidden=768, heads=12, patch=4),
    "dit_b2": DiTSize(depth=12, hidden=768, heads=12, patch=2),
    "dit_m2": DiTSize(depth=16, hidden=1024, heads=16, patch=2),
    "dit_l2": DiTSize(depth=24, hidden=1024, heads=16, patch=2),
    "dit_xl2": DiTSize(depth=28, hidden=1152, heads=16, patch=2),
}
if tuple(DIT_CONFIGS) != DIT_SIZES:
    raise RuntimeError(f"mfsweep.models.DIT_SIZES {DIT_SIZES} and dit.DIT_CONFIGS {tuple(DIT_CONFIGS)} must list the "
                       "same sizes in the same order")

ATTENTION_MODES = ("auto", "math")


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------

def _functorch_transforms_active() -> bool:
    probe = getattr(torch._C, "_are_functorch_transforms_active", None)
    if probe is not None:
        return bool(probe())
    # Older builds: functorch's interpreter stack is empty outside transforms.
    return torch._C._functorch.peek_interpreter_stack() is not None


def fused_attention_allowed() -> bool:
    """True when nothing can need a derivative of the attention: grad mode off, no functorch
    transform (jvp, grad, vjp, vmap, jacfwd, ...) active, no forward-AD dual level open. Only then
    may a fused SDPA kernel (no forward-mode AD, single backward only) run."""
    return (not torch.is_grad_enabled()
            and not _functorch_transforms_active()
            and forward_ad._current_level < 0)


def attention(q: Tensor, k: Tensor, v: Tensor, *, fused: bool | None = None) -> Tensor:
    """Multi-head softmax attention: q, k, v (B, heads, N, d) → (B, heads, N, d), scale 1/√d.

    ``fused=None`` decides with ``fused_attention_allowed()``; True calls
    ``F.scaled_dot_product_attention`` (any backend it picks); False writes the attention out
    (matmul + softmax), which supports forward- and reverse-mode AD of any order.
    """
    if fused is None:
        fused = fused_attention_allowed()
    if fused:
        return F.scaled_dot_product_attention(q, k, v)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    # Half precision: softmax in float32 (SDPA's math backend does the same).
    low = scores.dtype in (torch.float16, torch.bfloat16)
    weights = scores.softmax(dim=-1, dtype=torch.float32 if low else None).to(v.dtype)
    return weights @ v


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's ``Attention`` layout)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, mode: str = "auto"):
        super().__init__()
        self.heads = heads
        self.mode = mode
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        o = attention(q, k, v, fused=False if self.mode == "math" else None)
        return self.drop(self.proj(o.transpose(1, 2).reshape(b, n, d)))


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------

def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, N, D) · (1 + scale) + shift, with shift, scale (B, D) per sample."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Mlp(nn.Module):
    """Linear(D, hidden) – GELU(tanh) – dropout – Linear(hidden, D) – dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop1 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.drop2 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(F.gelu(self.fc1(x), approximate="tanh"))))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (DiT §3.2)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, attention: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads, dropout, attention)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then Linear(D, p·p·C), both zero-initialised."""

    def __init__(self, dim: int, patch: int, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, *, device=None, dtype=None) -> Tensor:
    """Fixed 2-D sin-cos positional embedding (ViT/MAE/DiT style): (grid_h·grid_w, dim), row-major
    tokens. The first dim/2 channels encode the row index, the last dim/2 the column index; each
    half is [sin(pos·ω_k), cos(pos·ω_k)] with ω_k = 10000^(−k/(dim/4)), k = 0 … dim/4 − 1."""
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos positional embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float64) / quarter)

    def axis(n: int) -> Tensor:
        angles = torch.arange(n, device=device, dtype=torch.float64)[:, None] * omega  # (n, dim/4)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (n, dim/2)

    rows = axis(grid_h)[:, None, :].expand(grid_h, grid_w, dim // 2)
    cols = axis(grid_w)[None, :, :].expand(grid_h, grid_w, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(grid_h * grid_w, dim).to(dtype or torch.get_default_dtype())


# ----------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------

class DiT(nn.Module):
    """DiT with MeanFlow's (r, t) conditioning: ``forward(z, r, t, y=None) -> u``, (B, C, H, W).

    Args:
        data_shape: per-sample shape (C, H, W); H and W divisible by ``patch``.
        depth, hidden, heads, patch, mlp_ratio: the size (see ``DIT_CONFIGS``).
        num_classes: classes for conditional data (the null class is index ``num_classes``), or None.
        time_embedding: which time scalars are embedded (Table 1c; ``TIME_EMBEDDINGS``).
        time_scale: times are multiplied by this before the sinusoids (DiT: 1000; mfsweep default 10).
        dropout: dropout probability after the attention projection and in the MLP.
        attention: "auto" (fused SDPA only when ``fused_attention_allowed()``), or "math"
            (always the written-out attention).
        freq_dim: sinusoidal features per time scalar (256 as DiT).
    """

    def __init__(self, data_shape: tuple[int, ...], *, depth: int, hidden: int, heads: int, patch: int,
                 mlp_ratio: float = 4.0, num_classes: int | None = None, time_embedding: str = "t_tr",
                 time_scale: float = 10.0, dropout: float = 0.0, attention: str = "auto", freq_dim: int = 256):
        super().__init__()
        data_shape = tuple(data_shape)
        if len(data_shape) != 3:
            raise ValueError(f"the DiT backbone takes images or latents of per-sample shape (C, H, W), got "
                             f"{data_shape}; use the mlp backbone for vector data")
        channels, h, w = data_shape
        if h % patch or w % patch:
            raise ValueError(f"image size {h}x{w} is not divisible by the DiT patch size {patch}; use a size "
                             f"that is a multiple of {patch} or a DiT size with a smaller patch")
        if hidden % heads:
            raise ValueError(f"DiT hidden width {hidden} is not divisible by its {heads} attention heads")
        if hidden % 4:
            raise ValueError(f"DiT hidden width {hidden} must be divisible by 4 (2-D sin-cos positional embedding)")
        if attention not in ATTENTION_MODES:
            raise ValueError(f"unknown DiT attention mode {attention!r}; valid: {', '.join(ATTENTION_MODES)}")
        self.data_shape = data_shape
        self.patch = patch
        self.hidden = hidden
        self.grid = (h // patch, w // patch)
        self.num_classes = num_classes
        self.x_embed = nn.Conv2d(channels, hidden, kernel_size=patch, stride=patch)
        self.register_buffer("pos_embed", torch.empty(1, self.grid[0] * self.grid[1], hidden), persistent=False)
        self.cond = Conditioning(hidden, time_embedding, num_classes, freq_dim=freq_dim, time_scale=time_scale)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, dropout, attention) for _ in range(depth))
        self.final = FinalLayer(hidden, patch, channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform Linear weights and zero biases, the patch embedding
        Xavier-uniform as a Linear, N(0, 0.02²) time-MLP weights and class embedding, zero adaLN
        modulation and final Linear (adaLN-Zero); and the positional embedding. Also use it after
        ``to_empty()`` of a network built on the meta device (it recomputes the buffer)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.x_embed.weight.view(self.x_embed.weight.shape[0], -1))
        nn.init.zeros_(self.x_embed.bias)
        for m in self.cond.time_mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        if self.cond.label is not None:
            nn.init.normal_(self.cond.label.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final.adaLN_modulation[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        pos = sincos_pos_embed_2d(self.hidden, *self.grid, device=self.pos_embed.device, dtype=self.pos_embed.dtype)
        self.pos_embed.copy_(pos[None])

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, N, p·p·C) tokens → (B, C, H, W); each token's channels ordered (row-in-patch, col, C)."""
        b, p, c = x.shape[0], self.patch, self.data_shape[0]
        gh, gw = self.grid
        x = x.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, p)
        return x.reshape(b, c, gh * p, gw * p)

    def forward(self, z: Tensor, r: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """z: (B, C, H, W); r, t: (B,); y: (B,) int64 or None (the null class). Returns u like z."""
        if tuple(z.shape[1:]) != self.data_shape:
            raise ValueError(f"DiT built for per-sample shape {self.data_shape} got input of shape {tuple(z.shape)}")
        x = self.x_embed(z).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        c = self.cond(r, t, y)  # (B, D)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final(x, c))


def from_config(cfg, data_shape: tuple[int, ...], num_classes: int | None) -> DiT:
    """The DiT named by ``cfg.backbone`` (a ``ModelConfig``; one of ``DIT_CONFIGS``) for per-sample
    shape ``data_shape`` = (C, H, W), class-conditional when ``num_classes`` is given. Reads
    ``cfg.time_embedding``, ``cfg.time_scale`` and ``cfg.dropout``. Attention mode "auto"."""
    name = cfg.backbone
    if name not in DIT_CONFIGS:
        raise ValueError(f"unknown DiT size {name!r}; valid: {', '.join(DIT_CONFIGS)}")
    size = DIT_CONFIGS[name]
    return DiT(tuple(data_shape), depth=size.depth, hidden=size.hidden, heads=size.heads, patch=size.patch,
               mlp_ratio=size.mlp_ratio, num_classes=num_classes, time_embedding=cfg.time_embedding,
               time_scale=cfg.time_scale, dropout=cfg.dropout)
