"""Sample pictures: a scatter plot for 2-D points, an image grid for images (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402


def save_samples_png(samples: Tensor, path: str | Path, title: str = "", reference: Tensor | None = None,
                     max_images: int = 100) -> Path:
    """(N, 2) → scatter (reference points in grey behind); (N, C, H, W) → grid of up to max_images."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = samples.detach().float().cpu().numpy()
    if x.ndim == 2 and x.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        if reference is not None:
            ref = reference.detach().float().cpu().numpy()
            ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.8", label="data")
        finite = np.isfinite(x).all(axis=1)
        ax.scatter(x[finite, 0], x[finite, 1], s=2, c="tab:blue", label="samples")
        lim = 5.0 if reference is None else float(np.abs(ref).max()) * 1.05  # the data's extent
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4, fontsize=7)
    else:
        imgs = x[:max_images].reshape(min(len(x), max_images), -1, *x.shape[-2:])
        n = len(imgs)
        cols = int(math.ceil(math.sqrt(n)))
        rows = int(math.ceil(n / cols))
        c, h, w = imgs.shape[1:]
        canvas = np.ones((rows * (h + 1), cols * (w + 1), c), dtype=np.float32)
        for i, im in enumerate(np.clip((imgs + 1) / 2, 0, 1)):
            r, q = divmod(i, cols)
            canvas[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = im.transpose(1, 2, 0)
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.imshow(canvas.squeeze(-1) if c == 1 else canvas, cmap="gray" if c == 1 else None,
                  vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
