"""Evaluation cost per NFE: network calls vs metric / feature extraction, and reference-stats caching.

    python benchmarks/eval_cost.py [--fid-images 64] [--skip-fid]

Prints one JSON object (seconds). Toy (moons, swd + energy + mmd) and digits (fd_digits) use a small
random MLP as the network. The FID part uses a randomly initialised Inception-v3 (the real weights
need a download) on tiny 3x32x32 images: the cost is the same as with real weights, the values are
meaningless. Everything is cached in a fresh temporary MFSWEEP_CACHE, so the first use of the
digits classifier and of the FID reference statistics are cache misses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn


class TinyNet(nn.Module):
    """u(z, r, t) = MLP([z, t, t - r]) reshaped like z; z: (B, *shape), r, t: (B,)."""

    def __init__(self, dim: int, width: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim + 2, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, dim))

    def forward(self, z, r, t, y=None):
        h = torch.cat([z.flatten(1), t[:, None], (t - r)[:, None]], dim=1)
        return self.mlp(h).view_as(z)


def _split_timings(res, nfes, metrics):
    return {f"nfe_{k}": {"network_s": round(res.timings[f"sampling/nfe_{k}"], 4),
                         **{f"{m}_s": round(res.timings[f"metric/{m}/nfe_{k}"], 4) for m in metrics}}
            for k in nfes}


def _random_inception(path: Path) -> Path:
    import torch_fidelity.feature_extractor_inceptionv3 as tfi
    with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None):
        torch.manual_seed(0)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--fid-images", type=int, default=64)
    ap.add_argument("--skip-fid", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mfsweep_bench_"))
    os.environ["MFSWEEP_CACHE"] = str(tmp / "cache")

    from mfsweep.data import TOYS, Dataset
    from mfsweep.evaluation.evaluate import evaluate
    from mfsweep.evaluation.metrics import ReferenceSet, fd_classifier, fid

    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "torch_threads": torch.get_num_threads(), "torch": torch.__version__}}
    nfes = (1, 2, 4, 8)
    torch.manual_seed(0)

    x, _, _ = TOYS["moons"](2 * args.num_samples, np.random.default_rng(0))
    x = torch.as_tensor(x, dtype=torch.float32)
    toy = Dataset("moons", "vector", x[: args.num_samples], None, x[args.num_samples:], None, None, (2,))
    metrics = ["swd", "energy", "mmd"]
    res = evaluate(TinyNet(2), toy, nfes=nfes, num_samples=args.num_samples, metrics=metrics)
    out["toy_moons"] = {"num_samples": args.num_samples, "reference_num": args.num_samples,
                        "per_nfe": _split_timings(res, nfes, metrics)}

    t0 = time.perf_counter()
    info = fd_classifier.digits_classifier_info()
    train_s = time.perf_counter() - t0
    fd_classifier._MEMO.clear()
    t0 = time.perf_counter()
    fd_classifier.digits_classifier_info()
    load_s = time.perf_counter() - t0
    (x_tr, y_tr), (x_te, y_te) = fd_classifier.digits_split("train"), fd_classifier.digits_split("test")
    digits = Dataset("digits", "image", x_tr, y_tr, x_te, y_te, 10, (1, 8, 8))
    res = evaluate(TinyNet(64), digits, nfes=nfes, num_samples=args.num_samples, metrics=["fd_digits"])
    out["digits"] = {"num_samples": args.num_samples, "reference_num": int(x_tr.shape[0]),
                     "classifier_train_s (cache miss)": round(train_s, 3),
                     "classifier_load_s (disk cache hit)": round(load_s, 3),
                     "classifier_test_accuracy": round(info["accuracy"], 4),
                     "per_nfe": _split_timings(res, nfes, ["fd_digits"])}

    if not args.skip_fid:
        n = args.fid_images
        weights = _random_inception(tmp / "inception_random.pt")
        imgs = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
        ref = ReferenceSet("bench32", "train", "image", imgs, options={"weights_path": str(weights)})
        t0 = time.perf_counter()
        fid.extract_features(imgs[:2], weights_path=weights)  # build + load the extractor once
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        fid.reference_stats(ref)
        miss_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        fid.reference_stats(ref)
        hit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        feats = fid.extract_features(imgs, weights_path=weights)
        extract_s = time.perf_counter() - t0
        from mfsweep.evaluation.metrics.frechet import feature_stats, frechet_distance
        mu, sigma = feature_stats(feats)
        stats = fid.reference_stats(ref)
        t0 = time.perf_counter()
        frechet_distance(mu, sigma, stats["mu"], stats["sigma"])
        fd_s = time.perf_counter() - t0
        ds = Dataset("bench32", "image", imgs, None, imgs, None, None, (3, 32, 32))
        fnfes = (1, 2)
        res = evaluate(TinyNet(3 * 32 * 32), ds, nfes=fnfes, num_samples=n, metrics=["fid"], reference=ref)
        out["fid_random_inception"] = {
            "note": "random-init Inception-v3 weights (cost only; values meaningless)",
            "num_images": n, "image_shape": [3, 32, 32], "resize": fid.RESIZE,
            "extractor_build_and_load_s": round(build_s, 3),
            "reference_stats_cache_miss_s": round(miss_s, 3), "reference_stats_cache_hit_s": round(hit_s, 3),
            "feature_extraction_s": round(extract_s, 3), "frechet_2048_s": round(fd_s, 3),  # eigenvalue form (benchmarks/frechet_cost.py)
            "per_nfe": _split_timings(res, fnfes, ["fid"])}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
