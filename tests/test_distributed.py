"""Data-parallel trials (mfsweep.training.distributed) on CPU with gloo, 2 processes.

- 2-process training (the real ``train()``, MeanFlow loss with r ≠ t rows, so the JVP path runs)
  ends with the same parameters as one process taking the same optimizer steps on the mean loss
  over the same two shards (same per-rank generator draws);
- a rank whose gradients bypass the sync makes the cross-rank check raise RuntimeError naming the step;
- sharded evaluation: 2 ranks sample their shares of the evaluation batches (ragged: 37 samples in
  batches of 8) and rank 0 gathers exactly the samples and metric values of one process;
- a global batch that does not split over the workers is a ConfigError naming both fields;
- end to end: `mfsweep run` of a study with ``resources: {workers: 2}`` → one MLflow child run per
  trial with ``resources.workers = 2`` and one set of metrics (slow).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from mfsweep.config import ConfigError, load_trial_config
from mfsweep.sweep.study import parse_study
from mfsweep.training import checkpoint as ckpt
from mfsweep.training import distributed as D
from mfsweep.training.train import _batches, _lr_lambda, build_loss, build_model, train
from mfsweep.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
STEPS, BATCH = 5, 32


def _cfg(**train):
    return load_trial_config({
        "name": "dp", "seed": 3,
        "data": {"name": "moons", "num_train": 500, "num_test": 200},
        "model": {"backbone": "mlp", "hidden_dim": 32, "depth": 1},
        "method": {"name": "meanflow"}, "meanflow": {"frac_r_neq_t": 0.5},
        "train": {"steps": STEPS, "batch_size": BATCH, "lr": 1e-2, "warmup_steps": 2, "grad_clip": 0.5,
                  "checkpoint_every": STEPS, "log_every": 1, "device": "cpu", "threads": 1, **train},
        # periodic and final evaluation, both shared by the ranks (batches of 16: 2 or 4 per evaluation)
        "eval": {"nfe": [1], "num_samples": 64, "batch_size": 16, "every_steps": 2, "num_samples_during": 21},
    })


def _rank(rank: int, world: int, init_method: str, out: str, skip_from: int, check_every: int,
          resume_at: int) -> None:
    """One rank: the real train(); errors are written to out/rank{r}.json for the test to read."""
    ctx = D.init(rank, world, init_method, "cpu", check_every=check_every)
    if rank == 1 and skip_from:  # this rank's gradients bypass the sync from step `skip_from` on
        real = D.GradSync.reduce

        def reduce(self):
            if self.syncs + 1 >= skip_from:
                saved = [None if p.grad is None else p.grad.clone() for p in self.params]
                real(self)  # takes part in the all-reduce (no deadlock) ...
                for p, g in zip(self.params, saved):
                    p.grad = g  # ... but keeps its own unsynced gradients
            else:
                real(self)
        D.GradSync.reduce = reduce
    report = {"rank": rank}
    try:
        if resume_at:  # train to resume_at (final checkpoint, rank 0 evaluates), then resume to STEPS
            train(_cfg(steps=resume_at), out, dist=ctx, progress=False)
        logged, evals = [], []
        hooks = type("Hooks", (), {"on_log": lambda self, step, m: logged.append(step),
                                   "on_eval": lambda self, step, m, n, kind: evals.append([step, kind, n, sorted(m)]),
                                   "on_checkpoint": lambda self, *a: None})()
        res = train(_cfg(), out, hooks=hooks, dist=ctx, progress=False)
        report.update(status=res.status, step=res.step, logged=logged, evals=evals)
    except RuntimeError as exc:
        report["error"] = str(exc)
    finally:
        torch.distributed.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


def _spawn(out: Path, skip_from: int = 0, check_every: int = 100, resume_at: int = 0) -> list[dict]:
    init_method = f"tcp://127.0.0.1:{D.free_port()}"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, 2, init_method, str(out), skip_from, check_every, resume_at)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, f"{p.name} exit code {p.exitcode}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def _single_process_reference(cfg, shards: int) -> dict[str, torch.Tensor]:
    """One process: the mean loss over `shards` shards, each drawn as rank r would draw it."""
    dataset = load_dataset(cfg.data)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, dataset)
    loss_fn = build_loss(cfg, dataset)
    tc = cfg.train
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(tc.warmup_steps))
    gens = []
    for r in range(shards):
        sb, sn = D.rank_seeds(cfg.seed, r)
        gn = torch.Generator().manual_seed(sn)
        gens.append((_batches(dataset, cfg, torch.device("cpu"), torch.Generator().manual_seed(sb), BATCH // 2), gn))
    for _ in range(tc.steps):
        losses = []
        for next_batch, gn in gens:
            x, y = next_batch()
            loss_vec, _ = loss_fn(model, x, y, generator=gn)
            losses.append(loss_vec.mean())
        loss = torch.stack(losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    """Also through a resume at step 3: every rank's generators come back from rank 0's checkpoint."""
    reports = _spawn(tmp_path, resume_at=3)
    assert [r.get("status") for r in reports] == ["finished", "finished"], reports
    assert reports[0]["logged"] == [4, 5] and reports[1]["logged"] == []  # resumed; hooks on rank 0 only
    # the shared periodic (step 4) and final evaluations reported once, by rank 0, with their values
    assert [e[:3] for e in reports[0]["evals"]] == [[4, "eval", 21], [5, "final", 64]] and reports[1]["evals"] == []
    assert all("swd/nfe_1" in e[3] and "energy/nfe_1" in e[3] for e in reports[0]["evals"])
    got = ckpt.load(tmp_path / ckpt.CHECKPOINT_NAME)
    assert got["step"] == STEPS and got["world_size"] == 2 and len(got["rank_gens"]) == 2
    ref = _single_process_reference(_cfg(), shards=2)
    diff = max(float((got["model"][k] - ref[k]).abs().max()) for k in ref)
    print(f"max abs parameter difference, 2 processes vs 1: {diff:.3g}")
    assert diff <= 1e-6
    # the comparison can fail: rank 0's shard alone gives other parameters, and training moved them
    torch.manual_seed(_cfg().seed)
    init = build_model(_cfg(), load_dataset(_cfg().data)).state_dict()
    assert max(float((got["model"][k] - init[k]).abs().max()) for k in ref) > 1e-3
    cfg1 = _cfg(batch_size=BATCH // 2)
    alone = _single_process_reference(cfg1, shards=1)  # rank 0's shard only (same draws as rank 0)
    assert max(float((got["model"][k] - alone[k]).abs().max()) for k in ref) > 1e-4
    # rank 0 wrote the outputs; the seeds of both ranks are recorded and differ
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["status"] == "finished"
    assert metrics["rank_seeds"] == [list(D.rank_seeds(3, 0)), list(D.rank_seeds(3, 1))]
    assert metrics["rank_seeds"][0] != metrics["rank_seeds"][1]
    assert not (torch.equal(got["rank_gens"][0]["batch"], got["rank_gens"][1]["batch"]))
    # the final evaluation (sampled by both ranks, gathered on rank 0) equals one process's on the EMA weights
    from torch.optim.swa_utils import AveragedModel

    from mfsweep.evaluation.evaluate import evaluate
    from mfsweep.training.train import sampling_velocity

    cfg = _cfg()
    ema = AveragedModel(build_model(cfg, load_dataset(cfg.data)), use_buffers=True)
    ema.load_state_dict(got["ema"])
    ev = cfg.eval
    one = evaluate(ema.module, load_dataset(cfg.data), nfes=ev.nfe, num_samples=ev.num_samples, seed=ev.seed,
                   metrics=ev.metrics, grid=ev.grid, batch_size=ev.batch_size, device="cpu",
                   velocity=sampling_velocity(cfg, build_loss(cfg, load_dataset(cfg.data))))
    finals = {k: v for k, v in metrics["metrics"].items() if k != "num_samples"}
    assert finals and finals.keys() == one.values.keys()
    for k, v in one.values.items():
        assert abs(finals[k] - v) <= 1e-6 * max(1.0, abs(v)), (k, finals[k], v)


EVAL = dict(nfes=(1, 2, 4), num_samples=37, seed=11, batch_size=8, metrics=["swd"])  # 37 = 4·8 + 5: ragged


def _eval_net_and_data():
    cfg = _cfg()
    dataset = load_dataset(cfg.data)
    torch.manual_seed(cfg.seed)
    return build_model(cfg, dataset), dataset


def _eval_rank(rank: int, world: int, init_method: str, out: str) -> None:
    """One rank of a sharded evaluation, both sampling velocities; results to out/eval{r}.pt."""
    from mfsweep.evaluation.evaluate import evaluate

    ctx = D.init(rank, world, init_method, "cpu")
    try:
        net, dataset = _eval_net_and_data()
        res = {v: evaluate(net, dataset, velocity=v, shard=ctx, **EVAL) for v in ("average", "origin")}
        torch.save({v: {"values": r.values, "samples": r.samples} for v, r in res.items()}, Path(out, f"eval{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_sharded_evaluation_gathers_the_samples_of_one_process(tmp_path):
    """2 ranks share the batches (rank 0: rows 0, 16, 32..36; rank 1: rows 8, 24); rank 0 gets the
    one-process samples row for row, and the same metric values; rank 1 returns none."""
    from mfsweep.evaluation.evaluate import evaluate

    init_method = f"tcp://127.0.0.1:{D.free_port()}"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_eval_rank, args=(r, 2, init_method, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, f"{p.name} exit code {p.exitcode}"
    got = [torch.load(tmp_path / f"eval{r}.pt") for r in range(2)]
    net, dataset = _eval_net_and_data()
    for velocity in ("average", "origin"):
        one = evaluate(net, dataset, velocity=velocity, **EVAL)
        sharded = got[0][velocity]
        assert got[1][velocity]["values"] == {} and got[1][velocity]["samples"] == {}
        assert sorted(sharded["samples"]) == [1, 2, 4] and sharded["values"].keys() == one.values.keys()
        for k in (1, 2, 4):
            x, ref = sharded["samples"][k], one.samples[k]
            assert x.shape == ref.shape == (37, 2)
            assert float((x - ref).abs().max()) <= 1e-6, (velocity, k)
            for row in (0, 8, 15, 16, 36):  # rows of both ranks' batches, the ragged last one included
                assert torch.allclose(x[row], ref[row], atol=1e-6, rtol=0)
            assert not torch.allclose(x[8], ref[0], atol=1e-3)  # rows are not interchangeable
        for key, v in one.values.items():
            assert abs(sharded["values"][key] - v) <= 1e-6 * max(1.0, abs(v)), (velocity, key)
    # "origin" re-noises between steps: NFE 2 differs from NFE 1 (the per-batch generators are used)
    assert float((got[0]["origin"]["samples"][2] - got[0]["origin"]["samples"][1]).abs().max()) > 1e-4


def _eval_rank_no_reference(rank: int, world: int, init_method: str, out: str) -> None:
    """One rank of a sharded evaluation where rank 0 cannot build its reference; the error each
    rank raises goes to out/error{r}.txt."""
    from mfsweep.evaluation import evaluate as E

    def no_reference(*args, **kwargs):
        raise FileNotFoundError("reference statistics missing: /nowhere/ref.npz")

    if rank == 0:
        E.make_reference = no_reference
    ctx = D.init(rank, world, init_method, "cpu")
    try:
        net, dataset = _eval_net_and_data()
        try:
            E.evaluate(net, dataset, shard=ctx, **EVAL)
            Path(out, f"error{rank}.txt").write_text("no error")
        except Exception as exc:
            Path(out, f"error{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
    finally:
        torch.distributed.destroy_process_group()


def test_sharded_evaluation_stops_every_rank_when_rank_0_cannot_build_the_reference(tmp_path):
    """Rank 0 fails before sampling; rank 1 hears of it in the one collective before sampling and
    raises too (naming rank 0's error), instead of waiting in the samples' gather."""
    init_method = f"tcp://127.0.0.1:{D.free_port()}"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_eval_rank_no_reference, args=(r, 2, init_method, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, f"{p.name} exit code {p.exitcode}"
    errors = [(tmp_path / f"error{r}.txt").read_text() for r in range(2)]
    assert errors[0] == "FileNotFoundError: reference statistics missing: /nowhere/ref.npz"
    assert errors[1].startswith("RuntimeError: evaluation stopped on rank 1: rank 0 could not build the reference")
    assert "FileNotFoundError: reference statistics missing" in errors[1]


def test_a_rank_that_bypasses_the_sync_fails_loudly(tmp_path):
    """Rank 1 keeps its own gradients from step 3 on; the check (every 2 steps) fires at step 4."""
    reports = _spawn(tmp_path, skip_from=3, check_every=2)
    for r in reports:
        assert "error" in r, r
        assert "at step 4" in r["error"] and "rank(s) [1]" in r["error"], r["error"]
    assert not (tmp_path / "metrics.json").exists()


def test_batch_must_split_over_workers(tmp_path):
    with pytest.raises(ConfigError) as e:
        D.check_batch(33, 2)
    assert "train.batch_size" in str(e.value) and "resources.workers" in str(e.value)
    D.check_batch(32, 2)
    D.check_batch(33, 1)
    # train() refuses before any collective (a context without a process group is enough)
    with pytest.raises(ConfigError, match="resources.workers = 2"):
        train(_cfg(batch_size=33), tmp_path, dist=D.DistContext(0, 2, torch.device("cpu"), "gloo"))
    assert not any(tmp_path.iterdir())
    # and the study is refused when it is read: base value and list axis values
    study = {"name": "s", "base": {"train": {"batch_size": 33}}, "resources": {"workers": 2, "cpu": 1}}
    with pytest.raises(ConfigError) as e:
        parse_study(study)
    assert "base.train.batch_size" in str(e.value) and "resources.workers = 2" in str(e.value)
    study["axes"] = {"train.batch_size": [32, 34, 35]}
    with pytest.raises(ConfigError) as e:
        parse_study(study)
    assert "axes.train.batch_size[2]" in str(e.value) and "[1]" not in str(e.value)
    study["resources"]["workers"] = 1
    assert parse_study(study).resources.workers == 1


def test_workers_default_and_fractional_gpu_unchanged(monkeypatch):
    from mfsweep.sweep.plan import make_plan
    from mfsweep.sweep.tune import trainable

    study = parse_study({"name": "s", "base": {"train": {"steps": 10}}, "resources": {"gpu": 0.25}})
    assert study.resources.workers == 1
    res = trainable(make_plan(study), "/tmp/x")._resources  # the PlacementGroupFactory Tune uses
    assert res.bundles == [{"CPU": 1.0, "GPU": 0.25}]
    study = parse_study({"name": "s", "base": {"train": {"steps": 10}}, "resources": {"gpu": 1, "cpu": 4, "workers": 8}})
    assert trainable(make_plan(study), "/tmp/x")._resources.bundles == [{"CPU": 32.0, "GPU": 8.0}]
    # concurrent trials count the per-trial totals: 8 CPUs / (2 × 1), 4 GPUs / (2 × 1) → 2
    import ray

    from mfsweep.sweep import runner

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 4.0})
    study = parse_study({"name": "s", "base": {"train": {"steps": 10}}, "seeds": [0, 1, 2, 3],
                         "resources": {"gpu": 1, "cpu": 1, "workers": 2}})
    assert runner._slots(make_plan(study), None) == 2


@pytest.mark.slow
def test_run_a_two_worker_study_through_ray_tune(tmp_path):
    from mlflow import MlflowClient

    study = {"name": "dp2", "storage": str(tmp_path / "ray"),
             "base": {"data": {"name": "moons", "num_train": 1000, "num_test": 300},
                      "model": {"backbone": "mlp", "hidden_dim": 32, "depth": 1},
                      "train": {"steps": 100, "batch_size": 64, "checkpoint_every": 50, "log_every": 25,
                                "warmup_steps": 10},
                      "eval": {"nfe": [1], "num_samples": 200}},
             "axes": {"meanflow.frac_r_neq_t": [0.5]}, "seeds": [0],
             "resources": {"workers": 2, "cpu": 1}}
    path = tmp_path / "dp2.yaml"
    path.write_text(yaml.safe_dump(study))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    # a Ray temp dir of its own: a `ray start` elsewhere on this machine would be joined otherwise
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="r", dir="/tmp")
    proc = subprocess.run([sys.executable, "-m", "mfsweep.cli", "run", str(path), "--num-cpus", "2",
                           "--tracking-uri", uri], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("dp2").experiment_id])
    children = [r for r in runs if r.data.tags.get("mfsweep.role") == "trial"]
    assert len(children) == 1
    run = children[0]
    assert run.info.status == "FINISHED" and run.data.params["resources.workers"] == "2"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [25, 50, 75, 100]  # one set of metrics: no step twice
    assert len(client.get_metric_history(run.info.run_id, "final/swd/nfe_1")) == 1
    assert run.data.tags["mfsweep.status"] == "finished"
    written = [json.loads(f.read_text()) for f in (tmp_path / "ray").rglob("metrics.json")]
    assert written and all(m["world_size"] == 2 and len(m["rank_seeds"]) == 2 for m in written)
