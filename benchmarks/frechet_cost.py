"""Cost of one Fréchet distance at D = 2048: the former `scipy.linalg.sqrtm` form against the
eigenvalue form now used by `frechet_distance`, measured in one process on the same statistics.

    python benchmarks/frechet_cost.py [--dim 2048] [--num 3000] [--repeat-new 3] [--repeat-old 1]

Statistics: features |G W| with G (num, dim) standard normal and W (dim, dim) a fixed random mixing
(non-negative and correlated, like Inception pool3 features), a second set scaled by 1.1 and
shifted by 0.05; `--num` below `--dim` gives rank-deficient covariances. Prints one JSON object:
seconds per call (median over the repeats) of each form, their ratio and the relative difference of
the two values. No threshold is checked here (timings depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfsweep.evaluation.metrics.frechet import feature_stats, frechet_distance, frechet_distance_sqrtm  # noqa: E402


def make_stats(dim: int, num: int, seed: int = 0):
    """Two (mu, sigma) pairs from seeded random features (see the module docstring)."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    f1 = np.abs(rng.standard_normal((num, dim)) @ mix)
    f2 = np.abs(rng.standard_normal((num, dim)) @ mix * 1.1 + 0.05)
    return (*feature_stats(f1), *feature_stats(f2))


def _time(fn, args, repeat: int) -> tuple[float, float]:
    """(median seconds per call, value of the last call)."""
    times, value = [], float("nan")
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--num", type=int, default=3000, help="features per set (below --dim: rank-deficient)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat-new", type=int, default=3)
    ap.add_argument("--repeat-old", type=int, default=1)
    args = ap.parse_args()
    stats = make_stats(args.dim, args.num, args.seed)
    new_s, new = _time(frechet_distance, stats, args.repeat_new)
    old_s, old = _time(frechet_distance_sqrtm, stats, args.repeat_old)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    out = {"dim": args.dim, "num": args.num, "seed": args.seed,
           "old_sqrtm_s_per_call": round(old_s, 3), "new_eigh_s_per_call": round(new_s, 3),
           "ratio_old_over_new": round(old_s / new_s, 2),
           "old_value": old, "new_value": new, "relative_difference": abs(new - old) / abs(old),
           "repeats": {"old": args.repeat_old, "new": args.repeat_new},
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "numpy": np.__version__,
                       "load_average_1_5_15": load}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
