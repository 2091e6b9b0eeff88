"""What ``train.compile`` costs a trial's first step, with Inductor's cache cold and warm.

Each trial of a study compiles afresh: in a new process (a retry, a resumed run, a new Ray
worker) or in a reused Ray worker after ``torch._dynamo.reset()`` (``compiled_loss``), so each one
pays ``torch.compile``'s first call again: Dynamo traces the loss call (the JVP included) every
time, and Inductor either generates and builds kernels (cache cold) or loads them from its on-disk
cache (warm: ``TORCHINDUCTOR_CACHE_DIR``, by default ``/tmp/torchinductor_<user>``, shared by
every process of the machine). This script runs the first compiled MeanFlow step of a backbone in
fresh processes with a new, empty cache folder: the first process fills it (cold), the next ones
reuse it (warm), as the second and later trials of a study on one machine do; each process then
runs a second "trial" (new network, ``compiled_loss`` again) as a reused worker does. Prints JSON:
per backbone, the cold and warm first-step seconds, their ratio, the reused-process first step,
and a later (compiled) step's time.

    python benchmarks/compile_cache.py [--setups mlp,unet] [--warm-runs 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, {bench!r})
torch.set_num_threads({threads})
import step_cost as S
from mfsweep.methods.meanflow import MeanFlowLoss
from mfsweep.training.fast import compiled_loss
net, opt, x, gen = S._setup({setup!r}, torch.device("cpu"))
step = compiled_loss(MeanFlowLoss(frac_r_neq_t=0.25))
t0 = time.perf_counter(); S._step(net, opt, step, x, gen); first = time.perf_counter() - t0
later = []
for _ in range(5):
    t0 = time.perf_counter(); S._step(net, opt, step, x, gen); later.append(time.perf_counter() - t0)
net, opt, x, gen = S._setup({setup!r}, torch.device("cpu"))  # a second trial in the same process
step = compiled_loss(MeanFlowLoss(frac_r_neq_t=0.25))
t0 = time.perf_counter(); S._step(net, opt, step, x, gen); again = time.perf_counter() - t0
print(json.dumps({{"first_s": first, "later_ms": 1e3 * sorted(later)[2], "reused_first_s": again}}))
"""


def first_step(setup: str, cache: str, threads: int) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    code = CHILD.format(bench=str(Path(__file__).parent), threads=threads, setup=setup)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default="mlp,unet", help="comma-separated setups of benchmarks/step_cost.py")
    ap.add_argument("--warm-runs", type=int, default=2, help="processes after the cold one")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    result = {"torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "frac_r_neq_t": 0.25, "threads": args.threads,
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "setups": {}}
    for setup in args.setups.split(","):
        with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
            cold = first_step(setup, cache, args.threads)
            warm = [first_step(setup, cache, args.threads) for _ in range(args.warm_runs)]
        warm_s = sorted(w["first_s"] for w in warm)[len(warm) // 2]
        result["setups"][setup] = {"cold_first_step_s": round(cold["first_s"], 2),
                                   "warm_first_step_s": [round(w["first_s"], 2) for w in warm],
                                   "cold_over_warm": round(cold["first_s"] / warm_s, 1),
                                   "reused_process_first_step_s": round(sorted(w["reused_first_s"] for w in warm)[len(warm) // 2], 2),
                                   "later_step_ms": round(cold["later_ms"], 2)}
        print(f"{setup}: first step {cold['first_s']:.1f} s cold, {warm_s:.1f} s warm", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
