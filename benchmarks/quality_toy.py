"""MeanFlow's central claim at toy scale: one step of MeanFlow ≈ many Euler steps of Flow Matching.

    python benchmarks/quality_toy.py --dataset checkerboard --steps 4000 --json

Trains MeanFlow (frac_r_neq_t as given) and Flow Matching (frac_r_neq_t = 0, plain L2 by default,
sampled with r = t) with the same config and number of steps, then reports the sliced Wasserstein distance (and energy
distance) of 1-, 2- and 32-step samples to held-out data, all from the same seeded noise, and the
training time of each. The floor of the metric (held-out data against training data of the same
size) is printed too: no model can beat it.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

from mfsweep.config import load_config_file
from mfsweep.data import load_dataset
from mfsweep.evaluation.metrics.toy import energy_distance, sliced_wasserstein
from mfsweep.training.train import train


def run(config: str, dataset: str, steps: int, frac: float, seed: int, extra: list[str], fm_power: float,
        fm_steps: int | None = None) -> dict:
    common = [f"data.name={dataset}", f"seed={seed}", "eval.nfe=[1, 2, 32]",
              "eval.metrics=[swd, energy]", f"train.log_every={max(1, steps // 10)}", *extra]
    out = {}
    variants = {"mf": [f"meanflow.frac_r_neq_t={frac}", f"train.steps={steps}"],
                "fm": ["meanflow.frac_r_neq_t=0.0", f"meanflow.weight_power={fm_power}",
                       f"train.steps={fm_steps or steps}"]}
    for label, overrides in variants.items():
        cfg = load_config_file(config, [*common, *overrides, f"name={label}"])
        with tempfile.TemporaryDirectory() as tmp:
            res = train(cfg, tmp, progress=False)
        out[label] = {k: round(v, 4) for k, v in res.metrics.items() if "/" in k}
        out[label]["train_s"] = round(res.train_time_s, 1)
        out[label]["steps"] = res.step
    d = load_dataset(cfg.data)
    n = cfg.eval.num_samples
    out["floor"] = {"swd": round(sliced_wasserstein(d.x_train[:n], d.x_test[:n]), 4),
                    "energy": round(energy_distance(d.x_train[:n], d.x_test[:n]), 4)}
    mf1, fm32, fm1 = out["mf"]["swd/nfe_1"], out["fm"]["swd/nfe_32"], out["fm"]["swd/nfe_1"]
    out["claim"] = {"mf1_over_fm32": round(mf1 / fm32, 3), "fm1_over_mf1": round(fm1 / mf1, 3),
                    "within_1.5x_of_fm32": mf1 <= 1.5 * fm32, "1.5x_better_than_fm1": fm1 >= 1.5 * mf1}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="studies/configs/checkerboard.yaml")
    p.add_argument("--dataset", default="checkerboard")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--fm-steps", type=int, default=None,
                   help="Flow Matching steps (default: --steps); more steps give it MeanFlow's wall time")
    p.add_argument("--frac", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fm-weight-power", type=float, default=0.0,
                   help="Flow Matching's loss power p (default 0: the standard L2 regression to E[v | z])")
    p.add_argument("--set", action="append", default=[], help="extra config overrides for both runs")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.config, args.dataset, args.steps, args.frac, args.seed, args.set, args.fm_weight_power,
                 args.fm_steps)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
