"""`fd_digits`: Fréchet distance in the penultimate features of a small classifier for 8x8 digits.

Inception-v3 features make no sense for 8x8 images (METHOD.md §7), so we train a tiny MLP on the
scikit-learn digits train split (same scaling x/8 - 1 and split as `mfsweep.data`: stratified,
test_size=0.2, random_state=0) and compute the Fréchet distance of Heusel et al. (2017) in its
64-d penultimate (pre-ReLU) features. Training is deterministic (fixed seed, full-batch Adam,
under a second on an idle CPU); weights are cached at `cache_dir()/digits-mlp-v1.pt` and loaded with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch import nn

from mfsweep.evaluation.metrics.frechet import cache_dir, feature_stats, frechet_distance

if TYPE_CHECKING:
    from mfsweep.evaluation.metrics import ReferenceSet

__all__ = ["VERSION", "DigitsClassifier", "digits_split", "load_digits_classifier",
           "digits_classifier_info", "digits_features", "fd_digits"]

VERSION = "digits-mlp-v1"  # bump when the architecture, data or training recipe changes
FEATURE_DIM = 64
TRAIN_COUNT = 0  # number of trainings in this process (tests check cache hits with it)
_MEMO: dict[str, tuple[DigitsClassifier, dict]] = {}


class DigitsClassifier(nn.Module):
    """MLP 64 -> 128 -> 64 (features, pre-ReLU) -> 10 on inputs (B, 1, 8, 8) or (B, 64) in [-1, 1].

    Features are taken before the last ReLU so that no dead unit makes their covariance singular.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(),
                                  nn.Linear(128, FEATURE_DIM))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(FEATURE_DIM, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 8, 8) -> (B, 64) penultimate features."""
        return self.body(x.reshape(x.shape[0], 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 8, 8) -> (B, 10) logits."""
        return self.head(self.features(x))


def digits_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The digits split used by `mfsweep.data`: x (N, 1, 8, 8) float32 in [-1, 1], y (N,) int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"unknown digits split '{split}'; valid: test, train")
    d = load_digits()
    x = (d.data.astype("float32") / 8.0 - 1.0).reshape(-1, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return torch.from_numpy(x), torch.from_numpy(y).long()


def _train(steps: int = 150, seed: int = 0) -> tuple[DigitsClassifier, float]:
    """Deterministic full-batch Adam training; returns (model, test accuracy)."""
    global TRAIN_COUNT
    TRAIN_COUNT += 1
    x_tr, y_tr = digits_split("train")
    x_te, y_te = digits_split("test")
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    with torch.inference_mode(False), torch.enable_grad():  # may be first used under no_grad
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x_tr), y_tr).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x_te).argmax(1) == y_te).double().mean())
    return model, acc


def load_digits_classifier(retrain: bool = False) -> tuple[DigitsClassifier, dict]:
    """The cached classifier (trained on first use) and its info dict; see `digits_classifier_info`."""
    path = cache_dir() / f"{VERSION}.pt"
    key = str(path)
    if not retrain and key in _MEMO:
        return _MEMO[key]
    model, info = DigitsClassifier(), None
    if not retrain and path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("version") == VERSION:
                model.load_state_dict(blob["state_dict"])
                info = {"version": VERSION, "test_accuracy": float(blob["test_accuracy"])}
        except Exception:  # corrupt or incompatible cache file: retrain below
            info = None
    if info is None:
        model, acc = _train()
        info = {"version": VERSION, "test_accuracy": acc}
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"version": VERSION, "state_dict": model.state_dict(), "test_accuracy": acc}, tmp)
        os.replace(tmp, path)
    model.eval().requires_grad_(False)
    info = {**info, "accuracy": info["test_accuracy"], "path": key, "feature_dim": FEATURE_DIM}
    _MEMO[key] = (model, info)
    return model, info


def digits_classifier_info() -> dict:
    """{"version", "accuracy" (= "test_accuracy", on the digits test split), "path", "feature_dim"}."""
    return dict(load_digits_classifier()[1])


@torch.no_grad()
def digits_features(x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Penultimate features of the digits classifier: (N, 1, 8, 8) -> (N, 64) float32 on CPU."""
    model, _ = load_digits_classifier()
    x = x.detach().to("cpu", torch.float32)
    return torch.cat([model.features(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def fd_digits(samples: torch.Tensor, ref: ReferenceSet, *, seed: int = 0) -> float:
    """Fréchet distance between classifier features of `samples` (N, 1, 8, 8) and the reference.

    The reference is `ref.x` when given, else the digits split named by `ref.split` (default train).
    Samples are clamped to the pixel range [-1, 1] first, as any image is before it is shown or
    scored (FID's uint8 conversion does the same); without it, guided samples that overshoot the
    range are scored on pixel values no digit has. NaN samples give NaN; fewer than 2 samples raise
    ValueError.
    """
    ref_x = ref.x if ref.x is not None else digits_split(ref.split or "train")[0]
    mu1, s1 = feature_stats(digits_features(samples.clamp(-1, 1)))
    mu2, s2 = feature_stats(digits_features(ref_x))
    return frechet_distance(mu1, s1, mu2, s2)
