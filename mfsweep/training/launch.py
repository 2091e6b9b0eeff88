"""Launching a data-parallel trial on one node: this process is rank 0 and runs ``train()`` with the
caller's hooks (Ray Tune's reporter), ranks 1..W-1 are spawned here and run the same ``train()``
without hooks. The synchronisation itself lives in ``mfsweep.training.distributed`` (kept apart so
that ``train`` can import it without an import circle)."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as tdist

from mfsweep.training.distributed import check_batch, free_port, init
from mfsweep.training.train import train


def _worker(cfg, out_dir: str, rank: int, world_size: int, init_method: str) -> None:
    """Ranks 1..W-1: the same ``train()`` without hooks; rank 0 writes every file."""
    ctx = init(rank, world_size, init_method, cfg.train.device)
    try:
        train(cfg, out_dir, hooks=None, progress=False, dist=ctx)
    finally:
        tdist.destroy_process_group()


def launch(cfg, out_dir: str | Path, world_size: int, hooks=None, progress: bool = False):
    """Train ``cfg`` with ``world_size`` data-parallel processes on this node: this process is rank 0
    (``hooks`` see its progress), the others are spawned here. Returns rank 0's TrainResult. A rank
    that fails makes the trial fail (its exit code in the error)."""
    import multiprocessing as mp

    check_batch(cfg.train.batch_size, world_size, f"trial {cfg.name}")
    init_method = f"tcp://127.0.0.1:{free_port()}"
    spawn = mp.get_context("spawn")
    procs = [spawn.Process(target=_worker, args=(cfg, str(out_dir), r, world_size, init_method), daemon=True,
                           name=f"mfsweep-rank{r}") for r in range(1, world_size)]
    for p in procs:
        p.start()
    ok = False
    try:
        ctx = init(0, world_size, init_method, cfg.train.device)
        try:
            result = train(cfg, out_dir, hooks=hooks, progress=progress, dist=ctx)
        finally:
            tdist.destroy_process_group()
        ok = True
    finally:
        for p in procs:
            p.join(timeout=None if ok else 10)
            if p.is_alive():
                p.terminate()
                p.join()
    failed = [(p.name, p.exitcode) for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"data-parallel ranks failed: {', '.join(f'{n} exit code {c}' for n, c in failed)}")
    return result
