"""`fd_digits`: Fréchet distance in the penultimate features of a small classifier for 8x8 digits.

Inception-v3 features make no sense for 8x8 images (docs/method.md §7), so we train a tiny MLP on the
digits train split of the dataset being scored (`mfsweep.data.digits`: the same scaling and the same
split, seeded by `data.seed` with `data.test_fraction` held out) and compute the Fréchet distance of
Heusel et al. (2017) in its 64-d penultimate (pre-ReLU) features. Training is deterministic (fixed
seed, full-batch Adam, under a second on an idle CPU); weights are cached per split under
`cache_dir()` and loaded with `torch.load(weights_only=True)`. The extractor id names the split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mfsweep.data.digits import split_digits
from mfsweep.evaluation.metrics import IMAGE, MetricSpec
from mfsweep.evaluation.metrics.frechet import cache_dir, feature_stats, frechet_distance
from mfsweep.fileio import atomic_write

if TYPE_CHECKING:
    from pathlib import Path

    from mfsweep.evaluation.metrics import ReferenceSet

__all__ = ["VERSION", "DigitsClassifier", "classifier_path", "load_digits_classifier", "digits_classifier_info",
           "digits_features", "fd_digits", "FD_DIGITS"]

VERSION = "digits-mlp-v1"  # bump when the architecture, data or training recipe changes
FEATURE_DIM = 64
TRAIN_COUNT = 0  # number of trainings in this process (tests check cache hits with it)
_MEMO: dict[str, tuple[DigitsClassifier, dict]] = {}
DEFAULT_SPLIT = (0, 0.2)  # (data.seed, data.test_fraction) of a default DataConfig


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


def _split_tag(split_seed: int, test_fraction: float) -> str:
    return f"seed{int(split_seed)}-test{float(test_fraction):g}"


def classifier_path(split_seed: int = 0, test_fraction: float = 0.2) -> Path:
    """Where the classifier trained on this split is cached."""
    return cache_dir() / f"{VERSION}-{_split_tag(split_seed, test_fraction)}.pt"


def _train(split_seed: int, test_fraction: float, steps: int = 150, seed: int = 0) -> tuple[DigitsClassifier, float]:
    """Deterministic full-batch Adam training on the split's train part; returns (model, test accuracy)."""
    global TRAIN_COUNT
    TRAIN_COUNT += 1
    x_tr, x_te, y_tr, y_te = split_digits(split_seed, test_fraction)
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


def load_digits_classifier(split_seed: int = 0, test_fraction: float = 0.2) -> tuple[DigitsClassifier, dict]:
    """The classifier for this split (cached in memory and on disk; trained on first use) and its info
    dict (see `digits_classifier_info`)."""
    path = classifier_path(split_seed, test_fraction)
    key = str(path)
    if key in _MEMO:
        return _MEMO[key]
    model, info = DigitsClassifier(), None
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("version") == VERSION:
                model.load_state_dict(blob["state_dict"])
                info = {"version": VERSION, "test_accuracy": float(blob["test_accuracy"])}
        except Exception:  # corrupt or incompatible cache file: retrain below
            info = None
    if info is None:
        model, acc = _train(split_seed, test_fraction)
        info = {"version": VERSION, "test_accuracy": acc}
        with atomic_write(path) as f:
            torch.save({"version": VERSION, "state_dict": model.state_dict(), "test_accuracy": acc}, f)
    model.eval().requires_grad_(False)
    info = {**info, "accuracy": info["test_accuracy"], "path": key, "feature_dim": FEATURE_DIM,
            "split": _split_tag(split_seed, test_fraction)}
    _MEMO[key] = (model, info)
    return model, info


def digits_classifier_info(split_seed: int = 0, test_fraction: float = 0.2) -> dict:
    """{"version", "accuracy" (= "test_accuracy", on the split's held-out part), "path", "feature_dim",
    "split"}."""
    return dict(load_digits_classifier(split_seed, test_fraction)[1])


@torch.no_grad()
def digits_features(x: torch.Tensor, batch_size: int = 4096, split: tuple[int, float] = DEFAULT_SPLIT) -> torch.Tensor:
    """Penultimate features of the digits classifier: (N, 1, 8, 8) -> (N, 64) float32 on CPU."""
    model, _ = load_digits_classifier(*split)
    x = x.detach().to("cpu", torch.float32)
    return torch.cat([model.features(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _split_of(ref: ReferenceSet) -> tuple[int, float]:
    return (int(ref.options.get("split_seed", DEFAULT_SPLIT[0])),
            float(ref.options.get("test_fraction", DEFAULT_SPLIT[1])))


def fd_digits(samples: torch.Tensor, ref: ReferenceSet, *, seed: int = 0) -> float:
    """Fréchet distance between classifier features of `samples` (N, 1, 8, 8) and the reference.

    The classifier is trained on the train part of the reference's split (`ref.options`
    "split_seed" and "test_fraction", as `make_reference` records them; default seed 0, 0.2). The
    reference is `ref.x` when given, else that split's part named by `ref.split`. Samples are
    clamped to the pixel range [-1, 1] first, as any image is before it is shown or scored (FID's
    uint8 conversion does the same); without it, guided samples that overshoot the range are scored
    on pixel values no digit has. NaN samples give NaN; fewer than 2 samples raise ValueError.
    """
    split = _split_of(ref)
    if ref.x is not None:
        ref_x = ref.x
    else:
        x_tr, x_te, _, _ = split_digits(*split)
        ref_x = x_te if ref.split == "test" else x_tr
    mu1, s1 = feature_stats(digits_features(samples.clamp(-1, 1), split=split))
    mu2, s2 = feature_stats(digits_features(ref_x, split=split))
    return frechet_distance(mu1, s1, mu2, s2)


def _describe(ref: ReferenceSet) -> dict:
    return {"extractor": f"{VERSION}/{_split_tag(*_split_of(ref))}/penultimate-{FEATURE_DIM}"}


FD_DIGITS = MetricSpec("fd_digits", fd_digits, IMAGE, f"{VERSION}/penultimate-{FEATURE_DIM}", "none", _describe)
