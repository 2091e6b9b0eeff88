"""Data-parallel trials on one node: ``resources.workers`` processes train one trial together.

Launch (``launch``): the calling process (the Ray Tune actor of the trial) is rank 0 and runs
``train()`` with the caller's hooks; ranks 1..W-1 are local processes (multiprocessing *spawn*) that
run the same ``train()`` without hooks. Rendezvous on ``tcp://127.0.0.1:<free port>``; backend
``nccl`` when every rank has its own CUDA device, else ``gloo``.

Gradient sync is explicit, not ``DistributedDataParallel``: the MeanFlow loss calls the network
through ``torch.func.jvp``, which cannot run through the DDP wrapper, and calling ``model.module``
instead silently skips DDP's all-reduce. So after ``loss.backward()`` every gradient is flattened into
one bucket, all-reduced and divided by W (``GradSync``) before clipping and the optimizer step; every
``check_every`` steps (and always at the first) a checksum of the synced gradients is gathered from
all ranks and a RuntimeError names the step and the ranks whose gradients differ.

``train.batch_size`` is the global batch: each rank draws ``batch_size / W`` rows from its own
generators, seeded from (seed, rank) (``rank_seeds``; rank 0 keeps the single-process seeds).
"""

from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as tdist

from mfsweep.config import ConfigError

#: How long a collective may wait for the other ranks (also while rank 0 runs a periodic evaluation).
TIMEOUT = datetime.timedelta(hours=2)


def check_batch(batch_size: int, workers: int, source: str = "trial config") -> None:
    """The global batch must split evenly over the workers."""
    if workers > 1 and batch_size % workers:
        raise ConfigError([("train.batch_size", f"{batch_size} does not split over resources.workers = {workers} "
                                                f"processes; use a multiple of {workers}")], source)


def rank_seeds(seed: int, rank: int) -> tuple[int, int]:
    """(batch seed, noise seed) of a rank: rank 0 uses the single-process seeds (seed, seed + 1);
    the others draw two from ``numpy.random.SeedSequence([seed, rank])``."""
    if rank == 0:
        return seed, seed + 1
    a, b = np.random.SeedSequence([seed, rank]).generate_state(2, dtype=np.uint64)
    return int(a) >> 1, int(b) >> 1  # non-negative int64


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    backend: str
    check_every: int = 100

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over the ranks (NaN anywhere → NaN everywhere, so every rank agrees
        on divergence)."""
        buf = value.detach().reshape(1).to(torch.float64).clone()
        tdist.all_reduce(buf)
        return (buf / self.world_size)[0]

    def barrier(self) -> None:
        tdist.barrier()

    def gather(self, obj) -> list:
        """Every rank's ``obj`` on every rank (picklable objects, e.g. generator states)."""
        out = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank."""
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                tdist.broadcast(t.data, src=0)


def rank_device(name: str, rank: int) -> torch.device:
    """The device of a rank: ``cuda:<rank>`` among the GPUs the trial sees (shared round-robin when
    there are fewer GPUs than ranks), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type != "cuda":
        return dev
    return torch.device("cuda", ((dev.index or 0) + rank) % torch.cuda.device_count())


def init(rank: int, world_size: int, init_method: str, device: str, check_every: int = 100) -> DistContext:
    """Join the trial's process group; returns the rank's context."""
    dev = rank_device(device, rank)
    nccl = dev.type == "cuda" and torch.cuda.device_count() >= world_size and tdist.is_nccl_available()
    backend = "nccl" if nccl else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kwargs = {"device_id": dev} if nccl else {}
    tdist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, timeout=TIMEOUT,
                             **kwargs)
    return DistContext(rank, world_size, dev, backend, check_every)


class GradSync:
    """All-reduce (mean) of every parameter's gradient in one flat bucket, then, every ``check_every``
    steps, a cross-rank check that the synced gradients are identical."""

    def __init__(self, params, ctx: DistContext):
        self.params = [p for p in params if p.requires_grad]
        self.ctx = ctx
        self.syncs = 0

    def reduce(self) -> None:
        """Average the gradients over the ranks, in place. A parameter without a gradient on every
        rank keeps ``grad = None`` (as in one process); one with a gradient on some rank gets the
        mean with zeros elsewhere."""
        ps = self.params
        has = torch.tensor([p.grad is not None for p in ps], dtype=torch.float32, device=self.ctx.device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in ps]
                         + [has])
        tdist.all_reduce(flat)
        flat /= self.ctx.world_size
        self._unflatten(flat)
        self.syncs += 1

    def _unflatten(self, flat: torch.Tensor) -> None:
        offset = 0
        any_grad = flat[-len(self.params):] > 0
        for i, p in enumerate(self.params):
            n = p.numel()
            if bool(any_grad[i]):
                g = flat[offset:offset + n].view_as(p)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
            offset += n

    def checksum(self) -> torch.Tensor:
        """(syncs done, Σg, Σ|g|, Σ g·(i mod 7 + 1)) in float64 over all gradients."""
        gs = [p.grad.detach().reshape(-1).to(torch.float64) for p in self.params if p.grad is not None]
        g = torch.cat(gs) if gs else torch.zeros(1, dtype=torch.float64, device=self.ctx.device)
        w = (torch.arange(g.numel(), device=g.device) % 7 + 1).to(torch.float64)
        return torch.stack([torch.tensor(float(self.syncs), dtype=torch.float64, device=g.device),
                            g.sum(), g.abs().sum(), (g * w).sum()])

    def check(self, step: int) -> None:
        """Raise RuntimeError on every rank if the ranks' gradients (or their sync counts) differ."""
        mine = self.checksum().to(self.ctx.device)
        every = [torch.empty_like(mine) for _ in range(self.ctx.world_size)]
        tdist.all_gather(every, mine)
        sums = torch.stack(every).cpu().view(torch.int64)  # bit patterns: a NaN gradient everywhere is equal
        bad = [r for r in range(self.ctx.world_size) if not torch.equal(sums[r], sums[0])]
        if bad:
            syncs = sums[:, 0].view(torch.float64).long().tolist()
            raise RuntimeError(f"gradients differ across ranks after the gradient sync at step {step}: rank(s) "
                               f"{bad} differ from rank 0 (gradient syncs done per rank: {syncs}); a rank skipped "
                               "or bypassed the all-reduce")

    def __call__(self, step: int) -> None:
        """After ``loss.backward()`` of step ``step`` (1-based): reduce, and check when it is due."""
        self.reduce()
        if step == 1 or step % self.ctx.check_every == 0:
            self.check(step)
