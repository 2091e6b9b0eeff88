"""Sweep efficiency of a study on Ray Tune: how much of the machine's time goes into training.

    python benchmarks/sweep_efficiency.py [STUDY.yaml] [--set KEY=VALUE ...] [--num-cpus N]
    python benchmarks/sweep_efficiency.py --cluster [--cluster-workers 2]  # 3-node loopback cluster

With --cluster the same study runs on a multi-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``: a head with 0 CPUs, N worker nodes with 1 CPU each, the storage
folder marked shared), joined by address as `mfsweep run --address` does; the figures then include
what a multi-node cluster adds (remote actor start-up per node, checkpoints and results crossing
the object store and the storage folder between processes of different raylets).

Runs the study from scratch (a fresh execution in a temporary storage folder and SQLite store,
unless --storage / --tracking-uri are given) and prints one JSON object:

    wall_s          Tuner.fit wall time (trials only)
    total_wall_s    the whole command: Ray start, MLflow setup, trials, summary
    sum_train_s     Σ over trials of time/train_s (the training loop alone)
    sum_eval_s      Σ time/eval_s (periodic and final evaluation: sampling, metrics, sample files)
    sum_checkpoint_s  Σ time/checkpoint_s (writing checkpoints, handing them to Tune)
    sum_compile_s   Σ time/compile_s (train.compile: each trial process's first, compiling step;
                    0 without compile); like checkpoints, shown apart and not counted as useful work
    slots           trials that can run at once (CPU / per-trial CPU, max_concurrent_trials)
    efficiency      (sum_train_s + sum_eval_s) / (wall_s × slots): the share of slot time spent on
                    useful work (training and the evaluation the study asks for)
    overhead_s      wall_s × slots − Σ(train + eval + checkpoint + compile): worker start-up, scheduling,
                    result hand-offs, MLflow logging on the driver, idle slots at the end
    overhead_by_cause  the overhead split by what the driver saw (mfsweep.sweep.timeline):
                    in_trials_unmeasured_s  a trial held its slot but was not training, evaluating,
                        checkpointing or compiling (worker start or reuse, data and model set-up,
                        the result's way back to the driver)
                    idle_before_first_s     no trial had started yet (Ray starting workers)
                    idle_between_s          slots idle between a trial's end and the next start
                    idle_tail_s             slots idle after the last start (the last trials finishing)
                    driver_callbacks_s      time the driver spent in mfsweep's Tune callbacks (MLflow
                        logging, artifacts); it overlaps the rows above (no trial starts meanwhile)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def by_cause(outcome, sums: dict[str, float]) -> dict:
    """The overhead split by the driver's timeline of the study (see the module's docstring)."""
    from mfsweep.sweep.timeline import slot_breakdown

    parts = slot_breakdown(outcome.trial_spans.values(), outcome.wall_s, outcome.slots)
    out = {"in_trials_unmeasured_s": round(parts["in_trials_s"] - sum(sums.values()), 1),
           **{k: round(parts[k], 1) for k in ("idle_before_first_s", "idle_between_s", "idle_tail_s")},
           "driver_callbacks_s": {k.removeprefix("on_trial_"): round(v, 1) for k, v in outcome.callback_s.items()}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study", nargs="?", default=str(ROOT / "studies" / "rt_sampling.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="study override")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    ap.add_argument("--storage", default=None, help="Ray storage (default: a temporary folder)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow URI (default: a temporary SQLite file)")
    ap.add_argument("--cluster", action="store_true",
                    help="run on a loopback multi-node Ray cluster (head 0 CPU + worker nodes of 1 CPU)")
    ap.add_argument("--cluster-workers", type=int, default=2, help="worker nodes of the --cluster (default 2)")
    args = ap.parse_args(argv)

    from mfsweep.sweep.plan import make_plan
    from mfsweep.sweep.runner import run_plan
    from mfsweep.sweep.study import load_study

    cluster, address, cluster_start = None, None, 0.0
    if args.cluster:  # started before the clock: a real cluster is up before `mfsweep run`
        from ray.cluster_utils import Cluster

        c0 = time.perf_counter()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(args.cluster_workers):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        address, cluster_start = cluster.address, time.perf_counter() - c0
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="sweep-eff-") as tmp:
            overrides = [f"storage.path={args.storage or os.path.join(tmp, 'ray')}", *args.set]
            if cluster is not None:
                overrides.append("storage.shared=true")  # one machine: every node sees the folder
            study, text = load_study(args.study, overrides)
            plan = make_plan(study)
            uri = args.tracking_uri or f"sqlite:///{tmp}/mlflow.db"
            outcome = run_plan(plan, text, tracking_uri=uri, restart=True, num_cpus=args.num_cpus, address=address)
        total = time.perf_counter() - t0
    finally:
        if cluster is not None:
            cluster.shutdown()
    def summed(key: str) -> float:
        return sum(r[key] for r in outcome.rows if r.get(key) is not None)

    train_s = [r["time/train_s"] for r in outcome.rows if r.get("time/train_s") is not None]
    sums = {k: summed(f"time/{k}_s") for k in ("train", "eval", "checkpoint", "compile")}
    slot_s = outcome.wall_s * outcome.slots
    statuses = [r["status"] for r in outcome.rows]
    result = {
        "study": study.name, "trials": len(outcome.rows),
        "ray": (f"loopback cluster: head 0 CPU + {args.cluster_workers} worker nodes x 1 CPU "
                f"(started in {cluster_start:.1f} s, not counted)") if cluster is not None
               else f"local, {args.num_cpus or os.cpu_count()} CPUs",
        "finished": statuses.count("finished"), "slots": outcome.slots,
        "wall_s": round(outcome.wall_s, 1), "total_wall_s": round(total, 1),
        "sum_train_s": round(sums["train"], 1), "sum_eval_s": round(sums["eval"], 1),
        "sum_checkpoint_s": round(sums["checkpoint"], 1), "sum_compile_s": round(sums["compile"], 1),
        "mean_train_s": round(sum(train_s) / max(1, len(train_s)), 1),
        "efficiency": round((sums["train"] + sums["eval"]) / slot_s, 3) if slot_s else None,
        "share_of_slot_time": {k: round(v / slot_s, 3) for k, v in sums.items()} if slot_s else None,
        "overhead_s": round(slot_s - sum(sums.values()), 1),
        "overhead_share": round(1 - sum(sums.values()) / slot_s, 3) if slot_s else None,
        "overhead_by_cause": by_cause(outcome, sums),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    print(json.dumps(result, indent=2))
    return 0 if outcome.rows and not outcome.failed and not outcome.interrupted else 3


if __name__ == "__main__":
    sys.exit(main())
