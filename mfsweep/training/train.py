"""The explicit training loop: one MeanFlow (or Flow Matching) run, no Ray and no MLflow.

``train(cfg, out_dir)`` writes into out_dir: ``config.yaml``, ``checkpoint.pt`` (atomic, every
``train.checkpoint_every`` steps and at the end), ``samples/nfe_{k}.png`` and ``.npy`` and
``metrics.json``. Rerunning it on the same out_dir resumes from the checkpoint. Callers (the CLI,
the Ray Tune adapter) watch progress through ``TrainHooks``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from mfsweep.config import ConfigError, TrialConfig, dump_yaml
from mfsweep.data import DataError, Dataset, load_dataset
from mfsweep.evaluation.evaluate import evaluate
from mfsweep.evaluation.metrics import make_reference
from mfsweep.fileio import write_text_atomic
from mfsweep.methods import METHODS
from mfsweep.models import build_backbone
from mfsweep.training import checkpoint as ckpt
from mfsweep.training.distributed import DistContext, GradSync, check_batch, rank_seeds
from mfsweep.training.fast import compiled_loss, with_precision
from mfsweep.training.viz import save_samples_png


class TrainHooks(Protocol):
    def on_log(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_eval(self, step: int, values: dict[str, float], num_samples: int, phase: str) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...


class _NoHooks:
    def on_log(self, step, metrics): pass
    def on_eval(self, step, values, num_samples, phase): pass
    def on_checkpoint(self, step, path): pass


@dataclass
class TrainResult:
    status: str  # "finished" | "diverged"
    step: int
    metrics: dict[str, float] = field(default_factory=dict)  # final "{metric}/nfe_{k}" values
    # metric -> {"extractor", "resize", "reference", "num_samples", ...} (weights hash included)
    metric_metadata: dict[str, dict] = field(default_factory=dict)
    train_time_s: float = 0.0  # the training loop itself: periodic evaluation and checkpoints excluded
    eval_time_s: float = 0.0  # periodic and final evaluation (sampling, metrics, saving samples)
    checkpoint_time_s: float = 0.0  # writing checkpoints and handing them to the caller (Ray Tune)
    # train.compile: the first step of each trial (Dynamo traces the loss call; Inductor compiles
    # or loads from its on-disk cache), summed over resumes; not in train_time_s
    compile_time_s: float = 0.0
    error: str | None = None
    out_dir: str = ""
    world_size: int = 1  # data-parallel processes (resources.workers)
    rank_seeds: list[list[int]] = field(default_factory=list)  # per rank: [batch seed, noise seed]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_loss(cfg: TrialConfig, dataset: Dataset):
    """The loss of ``method.name`` (the contract in mfsweep.methods)."""
    num_classes = dataset.num_classes if cfg.data.conditional else None
    if cfg.data.conditional and (dataset.y_train is None or dataset.num_classes is None):
        raise DataError(f"data.conditional: dataset {dataset.name!r} has no class labels")
    return METHODS.lookup(cfg.method.name)(cfg, num_classes)


def build_model(cfg: TrialConfig, dataset: Dataset) -> torch.nn.Module:
    return build_backbone(cfg.model, dataset.shape, dataset.num_classes if cfg.data.conditional else None)


def sampling_velocity(cfg: TrialConfig, loss_fn) -> str:
    """``eval.velocity``, or with ``auto`` the method's own (e.g. Euler for Flow Matching networks,
    which were never trained with r ≠ t)."""
    return loss_fn.sampling_velocity if cfg.eval.velocity == "auto" else cfg.eval.velocity


def _lr_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def _comparable(cfg: TrialConfig) -> dict:
    """The parts of a config that a checkpoint must agree with to be resumed (steps may grow)."""
    d = cfg.model_dump()
    for key in ("steps", "checkpoint_every", "log_every", "device", "threads", "compile"):
        d["train"].pop(key)
    d.pop("eval")
    return d


#: Datasets up to this size are moved to the accelerator once; larger ones (memory-mapped latents)
#: stay in host memory and each batch is gathered there and copied.
_ON_DEVICE_BYTES = 2 * 2**30


#: At most this many bytes of samples are saved per NFE (``samples/nfe_{k}.npy``); at least 64 rows.
_SAVE_BYTES = 256 * 2**20


def _saved_count(samples: torch.Tensor) -> int:
    per_row = max(1, samples[:1].numel() * samples.element_size())
    return min(len(samples), max(64, _SAVE_BYTES // per_row))


def _batches(dataset: Dataset, cfg: TrialConfig, device: torch.device, gen: torch.Generator,
             batch_size: int | None = None):
    """``next_batch() -> (x, y)``: ``batch_size`` (default ``train.batch_size``) rows drawn with replacement from ``gen`` (a
    CPU generator, part of the checkpoint), flipped left-right at random when ``dataset.hflip``."""
    x_all, y_all = dataset.x_train, dataset.y_train if cfg.data.conditional else None
    if x_all.numel() * x_all.element_size() <= _ON_DEVICE_BYTES:
        x_all = x_all.to(device)
        y_all = None if y_all is None else y_all.to(device)
    n, b = len(x_all), batch_size or cfg.train.batch_size

    def next_batch():
        idx = torch.randint(n, (b,), generator=gen)
        if dataset.hflip:
            flip = (torch.rand(b, generator=gen) < 0.5).to(device)
        idx_on = idx.to(x_all.device)
        x = x_all[idx_on].to(device, non_blocking=True)
        y = None if y_all is None else y_all[idx_on].to(device, non_blocking=True)
        if dataset.hflip:
            x = torch.where(flip.view(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)
        return x, y

    return next_batch


def train(cfg: TrialConfig, out_dir: str | Path, hooks: TrainHooks | None = None, progress: bool = True,
          dist: DistContext | None = None) -> TrainResult:
    """Train, checkpoint, evaluate at the end; resumes from ``out_dir/checkpoint.pt`` if present.

    ``dist``: one rank of a data-parallel group (mfsweep.training.distributed): each rank trains on
    ``batch_size / world_size`` rows, gradients are averaged over the ranks; only rank 0 writes files,
    calls ``hooks`` and evaluates, the other ranks return after the last checkpoint."""
    world, rank = (1, 0) if dist is None else (dist.world_size, dist.rank)
    main = rank == 0
    if dist is not None:
        check_batch(cfg.train.batch_size, world, f"trial {cfg.name}")
    hooks = hooks if main and hooks is not None else _NoHooks()
    progress = progress and main
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device) if dist is None else dist.device
    dataset = load_dataset(cfg.data)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, dataset).to(device)
    if dist is not None:
        dist.broadcast_module(model)  # identical start on every rank (seeded build, and rank 0's copy)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay), use_buffers=True)
    loss_fn = build_loss(cfg, dataset)
    on_step = getattr(loss_fn, "on_step", None)  # methods with a schedule (e.g. α-Flow's curriculum)
    tc = cfg.train
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(tc.warmup_steps))
    seed_batch, seed_noise = rank_seeds(cfg.seed, rank)
    gen_batch = torch.Generator().manual_seed(seed_batch)
    gen_noise = torch.Generator(device=device).manual_seed(seed_noise)
    all_seeds = [list(rank_seeds(cfg.seed, r)) for r in range(world)]
    if main:
        (out / "config.yaml").write_text(dump_yaml(cfg))

    step = 0
    times = {"train": 0.0, "eval": 0.0, "checkpoint": 0.0, "compile": 0.0}  # seconds, kept across resumes
    ckpt_path = out / ckpt.CHECKPOINT_NAME
    if dist is not None and not main:
        dist.barrier()  # rank 0 first: load_for_resume may set a damaged checkpoint aside
    state = ckpt.load_for_resume(ckpt_path)  # checkpoint.pt, else checkpoint.prev.pt if it is damaged
    if dist is not None and main:
        dist.barrier()
    if state is not None and int(state.get("world_size", 1)) != world:
        raise ConfigError([("resources.workers", f"{ckpt_path} was written by {int(state.get('world_size', 1))} "
                                                 f"data-parallel workers, this run has {world}; resume with the same "
                                                 "number or use a new --out")], "resume")
    if state is not None:
        if state["config"] != _comparable(cfg):
            raise ConfigError([("--out", f"{ckpt_path} was written with a different config; use a new --out "
                                         "or delete it")], "resume")  # exit 2, not a traceback
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gens = state["rank_gens"][rank] if world > 1 else {"batch": state["gen_batch"], "noise": state["gen_noise"]}
        gen_batch.set_state(gens["batch"])
        gen_noise.set_state(gens["noise"].to(gen_noise.get_state().device))
        step = int(state["step"])
        times.update(train=float(state["train_time_s"]), eval=float(state.get("eval_time_s", 0.0)),
                     checkpoint=float(state.get("checkpoint_time_s", 0.0)),
                     compile=float(state.get("compile_time_s", 0.0)))

    def save_checkpoint() -> Path:
        t0 = time.perf_counter()
        times["train"] = t0 - t_start - times["eval"] - times["checkpoint"] - times["compile"]
        state = {"step": step, "train_time_s": times["train"], "eval_time_s": times["eval"],
                 "checkpoint_time_s": times["checkpoint"], "compile_time_s": times["compile"],
                 "config": _comparable(cfg),
                 "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                 "sched": sched.state_dict(), "gen_batch": gen_batch.get_state(), "gen_noise": gen_noise.get_state()}
        if dist is not None:  # every rank's generators, in rank 0's checkpoint
            state["world_size"] = world
            state["rank_gens"] = dist.gather({"batch": gen_batch.get_state(), "noise": gen_noise.get_state().cpu()})
            if not main:
                return ckpt_path
        path = ckpt.save_atomic(state, ckpt_path)
        hooks.on_checkpoint(step, path)
        times["checkpoint"] += time.perf_counter() - t0
        return path

    next_batch = _batches(dataset, cfg, device, gen_batch, cfg.train.batch_size // world)
    grad_sync = GradSync(model.parameters(), dist) if dist is not None else None
    if dist is not None and state is not None and len(set(steps := dist.gather(step))) != 1:
        raise RuntimeError(f"data-parallel ranks resumed from different steps: {steps}")
    net = with_precision(model, tc.precision, device)  # what the loss calls; model holds the weights
    step_loss = compiled_loss(loss_fn) if tc.compile else loss_fn
    ev = cfg.eval
    reference = make_reference(dataset, stats_path=ev.reference_stats, device=device) if ev.reference_stats else None
    eval_kwargs = dict(nfes=ev.nfe, seed=ev.seed, metrics=ev.metrics, grid=ev.grid, batch_size=ev.batch_size,
                       device=device, velocity=sampling_velocity(cfg, loss_fn), reference=reference)
    status, error = "finished", None
    running: list[torch.Tensor] = []
    bar = tqdm(total=tc.steps, initial=step, desc=cfg.name, disable=not progress, dynamic_ncols=True)
    t_start = time.perf_counter() - sum(times.values())
    model.train()
    compiling = tc.compile  # this trial's first step (in this process) compiles: timed apart as time/compile_s
    while step < tc.steps:
        t_step = time.perf_counter()
        x, y = next_batch()
        if on_step is not None:
            on_step(step, tc.steps)
        loss_vec, mon = step_loss(net, x, y, generator=gen_noise)
        loss = loss_vec.mean()
        loss_all = loss if dist is None else dist.mean(loss)  # every rank agrees on divergence
        if not bool(torch.isfinite(loss_all)):  # before the update: the weights stay good
            status, error = "diverged", f"diverged at step {step + 1}: loss is {loss_all.item()}"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_sync is not None:
            grad_sync(step + 1)  # mean over the ranks, checked every dist.check_every steps
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
        ema.update_parameters(model)
        step += 1
        if compiling:
            times["compile"] += time.perf_counter() - t_step
            compiling = False
        running.append(mon["mse"])
        bar.update(1)
        if step % tc.log_every == 0 or step == tc.steps:
            mse = torch.stack(running).mean()
            log = {"train/loss": loss_all.item(), "train/mse": (mse if dist is None else dist.mean(mse)).item(),
                   "train/lr": sched.get_last_lr()[0]}
            running.clear()
            bar.set_postfix(loss=f"{log['train/loss']:.4g}", mse=f"{log['train/mse']:.4g}")
            hooks.on_log(step, log)
        if ev.every_steps and step % ev.every_steps == 0 and step < tc.steps:
            t0 = time.perf_counter()  # every rank samples its share; rank 0 gathers, scores and reports
            res = evaluate(with_precision(ema.module, tc.precision, device), dataset,
                           num_samples=ev.num_samples_during, shard=dist, **eval_kwargs)
            hooks.on_eval(step, res.flat(), ev.num_samples_during, "eval")  # EMA copy: model stays in train mode
            times["eval"] += time.perf_counter() - t0
            if dist is not None:
                dist.barrier()
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            save_checkpoint()
    bar.close()
    times["train"] = time.perf_counter() - t_start - times["eval"] - times["checkpoint"] - times["compile"]

    result = TrainResult(status=status, step=step, train_time_s=times["train"], error=error, out_dir=str(out),
                         world_size=world, rank_seeds=all_seeds)
    t_final = time.perf_counter()
    if status == "finished":  # every rank samples its share (same status on every rank: mean loss)
        res = evaluate(with_precision(ema.module, tc.precision, device), dataset, num_samples=ev.num_samples,
                       shard=dist, **eval_kwargs)
    if not main:  # rank 0 scores, saves the samples and writes metrics.json
        return result
    if status == "finished":
        result.metrics = res.flat()
        result.metric_metadata = res.metadata
        if res.diverged:
            result.status, result.error = "diverged", "evaluation produced NaN/inf samples"
        (out / "samples").mkdir(exist_ok=True)
        ref = dataset.x_test[:2000] if dataset.kind == "vector" else None
        for nfe, samples in res.samples.items():
            samples = samples[:_saved_count(samples)]  # FID-50K of 256² images would be 39 GB per NFE
            np.save(out / "samples" / f"nfe_{nfe}.npy", samples.numpy())
            save_samples_png(samples, out / "samples" / f"nfe_{nfe}.png", f"{cfg.name}: NFE = {nfe}", ref)
        times["eval"] += time.perf_counter() - t_final
        hooks.on_eval(step, result.metrics, ev.num_samples, "final")
    result.eval_time_s, result.checkpoint_time_s = times["eval"], times["checkpoint"]
    result.compile_time_s = times["compile"]
    write_text_atomic(out / "metrics.json", json.dumps(asdict(result), indent=2, default=str))
    return result
