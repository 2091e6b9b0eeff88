"""GPU-hour estimates for the paper studies (studies/paper/): an estimate, not a measurement.

Forward FLOPs per sample are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta``
device (nothing allocated). A MeanFlow training step is taken as 3 forwards (forward + backward) for
every row plus 2 more for the rows that take the JVP (the tangent pass and its backward):
``3 · F · B · (1 + 2/3 · frac_r_neq_t)``. Time = steps × step FLOPs / an assumed sustained throughput
(``--tflops``, default 300 TFLOP/s in bf16 on one H100, about 30% of its dense peak), plus nothing for
evaluation. Usage: ``python benchmarks/gpu_hours.py [--tflops 300] [--json]``.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from mfsweep.config import load_trial_config
from mfsweep.models import build_backbone

# (name, backbone, data shape, classes, batch, steps, frac_r_neq_t): the paper's settings
# (Geng et al. 2025, §5 and Appendix; ImageNet 1,281,167 images, batch 256: 80 epochs = 400,365 steps,
# 240 epochs = 1,201,094 steps; CIFAR-10: batch 1024, 800k steps, 75% r ≠ t).
RUNS = [
    ("table1 (MF-B/4, 80 ep), per trial", "dit_b4", (4, 32, 32), 1000, 256, 400_365, 0.25),
    ("table2 MF-B/2 (240 ep)", "dit_b2", (4, 32, 32), 1000, 256, 1_201_094, 0.25),
    ("table2 MF-M/2 (240 ep)", "dit_m2", (4, 32, 32), 1000, 256, 1_201_094, 0.25),
    ("table2 MF-L/2 (240 ep)", "dit_l2", (4, 32, 32), 1000, 256, 1_201_094, 0.25),
    ("table2 MF-XL/2 (240 ep)", "dit_xl2", (4, 32, 32), 1000, 256, 1_201_094, 0.25),
    ("cifar10 U-Net (800k it)", "unet_cifar", (3, 32, 32), None, 1024, 800_000, 0.75),
]


def forward_flops(backbone: str, shape: tuple[int, ...], classes: int | None) -> float:
    cfg = load_trial_config({"data": {"name": "synthetic_images"}, "model": {"backbone": backbone}})
    with torch.device("meta"):
        net = build_backbone(cfg.model, shape, classes)
        z, r, t = torch.randn(1, *shape), torch.rand(1), torch.rand(1)
        y = None if classes is None else torch.zeros(1, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            net(z, r, t, y)
    return float(counter.get_total_flops())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tflops", type=float, default=300.0, help="assumed sustained TFLOP/s per GPU")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = []
    for name, backbone, shape, classes, batch, steps, frac in RUNS:
        f = forward_flops(backbone, shape, classes)
        step = 3 * f * batch * (1 + 2 / 3 * frac)
        hours = steps * step / (args.tflops * 1e12) / 3600
        rows.append({"run": name, "backbone": backbone, "forward_gflops": round(f / 1e9, 2), "batch": batch,
                     "steps": steps, "gpu_hours": round(hours, 1), "assumed_tflops": args.tflops})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['run']:36s} {r['forward_gflops']:8.2f} GFLOP/sample  {r['gpu_hours']:8.1f} GPU-h")


if __name__ == "__main__":
    main()
