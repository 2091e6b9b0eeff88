"""Metric versus NFE on the same noise (docs/method.md §7).

Per-sample noise e ~ N(0, I) (and labels, for class-conditional data) is drawn once from a
torch.Generator seeded with `seed` and reused for every NFE, so NFE=1 and NFE=4 differ only in the
sampler. Network time ("sampling/nfe_k"), decoding time of latent datasets ("decode/nfe_k") and metric
time ("metric/{name}/nfe_k") are timed apart. Features of one NFE's samples are computed once and
shared by the metrics (`mfsweep.evaluation.metrics.feature_memo`): the first metric that needs them
(in the order asked) carries their cost in its timing, and `recall` reuses `precision`'s computation.

Sharded sampling (`shard=`, one rank of a data-parallel trial): the noise and labels are drawn for all
`num_samples` on every rank as above; rank r samples the batches starting at rows
r·batch_size, (r + W)·batch_size, ...; the batches are gathered to rank 0 in row order, so rank 0's
samples are those of one process (the "origin" sampler's fresh noise is seeded per batch, by its first
row). Only rank 0 decodes and scores; the other ranks return an EvalResult without values or samples.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor

from mfsweep.evaluation.metrics import (METRICS, ReferenceSet, decode_batched, default_metrics, feature_memo,
                                        make_reference)
from mfsweep.methods.sampling import make_time_grid, sample
from mfsweep.schema import metric_key

__all__ = ["EvalResult", "EvalShard", "evaluate", "draw_noise"]


class EvalShard(Protocol):
    """One rank of a group sharing the sampling (e.g. `mfsweep.training.distributed.DistContext`):
    `gather(obj)` is a collective that returns every rank's picklable `obj`, in rank order, on every
    rank."""

    rank: int
    world_size: int
    gather: Callable[[Any], list]


@dataclass
class EvalResult:
    """values: "{metric}/nfe_{k}" -> float; samples: nfe -> (num_samples, *shape) CPU tensor (decoded
    images, (num_samples, *dataset.image_shape), for a dataset with `decode`); timings: seconds,
    "sampling/nfe_{k}", "decode/nfe_{k}" (latent datasets) and "metric/{name}/nfe_{k}"; metadata: metric ->
    {"extractor", "resize", "num_samples", "reference", "reference_num", ...}; diverged: any NFE
    produced NaN/inf samples (its metric values are NaN)."""

    values: dict[str, float]
    samples: dict[int, Tensor]
    num_samples: int
    timings: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    diverged: bool = False
    nfes: tuple[int, ...] = ()

    def flat(self) -> dict[str, float]:
        """All metric values plus "num_samples", as plain floats (for MLflow)."""
        return {**{k: float(v) for k, v in self.values.items()}, "num_samples": float(self.num_samples)}


def draw_noise(shape: Sequence[int], num_samples: int, seed: int,
               num_classes: int | None = None) -> tuple[Tensor, Tensor | None]:
    """Seeded noise (num_samples, *shape) float32 and labels (num_samples,) int64 (or None)."""
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((num_samples, *shape), generator=g)
    labels = None if num_classes is None else torch.randint(0, num_classes, (num_samples,), generator=g)
    return noise, labels


def _sync(device: Any) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


#: Metrics that compare with reference samples and cannot use an ADM-style statistics npz alone.
NEEDS_REFERENCE_SAMPLES = frozenset({"kid", "precision", "recall", "swd", "energy", "mmd"})


def evaluate(net, dataset, *, nfes: Sequence[int] = (1, 2, 4, 8), num_samples: int = 2000, seed: int = 0,
             metrics: Sequence[str] | None = None, grid: str = "linspace", labels: Tensor | None = None,
             batch_size: int = 1000, device: str = "cpu", reference: ReferenceSet | None = None,
             velocity: str = "average", shard: EvalShard | None = None) -> EvalResult:
    """Sample `num_samples` points at every NFE from the same noise and score them.

    Args:
        net: `net(z, r, t, y) -> u` (z: (B, *dataset.shape), r, t: (B,), y: (B,) or None).
        dataset: a `mfsweep.data.Dataset` (uses name, kind, shape, num_classes, the splits and, for
            latent data, `decode`: generated latents are decoded to images in batches of
            `batch_size` on `device`, once per NFE, before the metrics and before they are stored in
            `EvalResult.samples`).
        metrics: names from `mfsweep.evaluation.metrics.METRICS`; None -> `default_metrics(name, kind)`
            (kind "image" for decoded latents). Defaults that need reference samples (precision,
            recall) are left out, with a warning, when the reference has only statistics (a
            `stats_path` npz); named ones then raise ValueError before any sampling.
        grid: time-grid rule for `make_time_grid`. labels: (num_samples,) int64 to condition on;
            default: uniform labels from the seeded generator when dataset.num_classes is set.
        reference: what to compare with; default `make_reference(dataset, device=device)` (for
            latent data: a decoded, seeded subset of at most 10,000 reference latents).
        velocity: which velocity the sampler asks the network for ("average", "instantaneous",
            "origin"), see `mfsweep.methods.sampling.sample`.
        shard: this process's rank in a group that shares the sampling (every rank must call with
            the same arguments); None: one process samples everything. Ranks other than 0 skip
            building the default reference and return an EvalResult with no values and no samples.
    Returns:
        EvalResult (see its docstring).
    """
    nfes = tuple(int(k) for k in nfes)
    decode = getattr(dataset, "decode", None)
    kind = "image" if decode is not None else dataset.kind  # metrics see decoded images
    names = list(metrics) if metrics is not None else default_metrics(dataset.name, kind)
    specs = {name: METRICS.lookup(name) for name in names}  # unknown names fail before any work
    for spec in specs.values():
        if kind not in spec.kinds:
            raise ValueError(f"metric '{spec.name}' does not apply to {kind} data "
                             f"(dataset '{dataset.name}'); it needs {sorted(spec.kinds)}")
    rank, world = (0, 1) if shard is None else (int(shard.rank), int(shard.world_size))
    main = rank == 0
    ref, failed = reference, None
    if ref is None and main:
        try:
            ref = make_reference(dataset, device=device, decode_batch_size=batch_size)
        except Exception as exc:  # the other ranks must hear of it, or they would wait in the gather
            if shard is None:
                raise
            failed = exc
    if shard is not None:  # one collective before sampling: every rank stops if rank 0 could not go on
        said = shard.gather(None if failed is None else f"{type(failed).__name__}: {failed}")
        if failed is not None:
            raise failed
        if said[0] is not None:
            raise RuntimeError(f"evaluation stopped on rank {rank}: rank 0 could not build the reference ({said[0]})")
    if ref is not None and ref.x is None:
        if metrics is None:  # precision/recall are defaults for images: leave them out, loudly
            dropped = [n for n in specs if n in ("precision", "recall")]
            if dropped:
                warnings.warn(f"reference '{ref.name}/{ref.split}' has no samples (only statistics "
                              f"{ref.stats_path}); leaving out the default metrics {dropped}; "
                              f"make_reference(..., decode_with_stats=True) gives them decoded reference images",
                              stacklevel=2)
                specs = {n: s for n, s in specs.items() if n not in dropped}
        without = [n for n in specs if n in NEEDS_REFERENCE_SAMPLES]
        if without:
            raise ValueError(f"metrics {without} need reference samples, but reference '{ref.name}/{ref.split}' "
                             f"has only statistics ({ref.stats_path}); drop them or pass a reference with samples "
                             f"(make_reference(..., decode_with_stats=True) for latent datasets)")
    meta = {name: {**spec.metadata(ref), "num_samples": num_samples} for name, spec in specs.items()} if main else {}

    noise, drawn = draw_noise(dataset.shape, num_samples, seed, dataset.num_classes)
    if labels is None:
        labels = drawn
    elif labels.shape != (num_samples,):
        raise ValueError(f"labels must have shape ({num_samples},), got {tuple(labels.shape)}")

    was_training = getattr(net, "training", None)
    if was_training:
        net.eval()
    result = EvalResult({}, {}, num_samples, nfes=nfes, metadata=meta)
    try:
        for k in nfes:
            time_grid = make_time_grid(k, grid)
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                chunks = {}
                for i in range(rank * batch_size, num_samples, world * batch_size):  # this rank's batches
                    y = None if labels is None else labels[i:i + batch_size].to(device)
                    # fresh noise for stochastic multistep samplers ("origin"), seeded per batch (by its
                    # first row), so the samples do not depend on how the batches are shared out
                    renoise = torch.Generator(device=torch.device(device)).manual_seed(int(seed) + 1 + i)
                    chunks[i] = sample(net, noise[i:i + batch_size].to(device), y, time_grid.to(device),
                                       velocity=velocity, generator=renoise).cpu()
            _sync(device)
            if shard is not None:  # every rank's batches to rank 0, in row order
                gathered = shard.gather(chunks)
                if not main:
                    result.timings[f"sampling/nfe_{k}"] = time.perf_counter() - t0
                    continue
                chunks = {i: c for part in gathered for i, c in part.items()}
            result.timings[f"sampling/nfe_{k}"] = time.perf_counter() - t0  # rank 0: its share and the gather
            x = torch.cat([chunks[i] for i in sorted(chunks)]) if chunks else noise[:0]
            finite = bool(torch.isfinite(x).all())
            result.diverged |= not finite
            if decode is not None and x.shape[0] > 0:
                _sync(device)
                t0 = time.perf_counter()
                x = decode_batched(decode, x, batch_size=batch_size, device=device)
                _sync(device)
                result.timings[f"decode/nfe_{k}"] = time.perf_counter() - t0
                finite = finite and bool(torch.isfinite(x).all())
                result.diverged |= not finite
            result.samples[k] = x
            with feature_memo():  # features of x once, shared by the metrics of this NFE
                for name, spec in specs.items():
                    t0 = time.perf_counter()
                    result.values[metric_key(name, k)] = spec(x, ref, seed=seed) if finite else math.nan
                    result.timings[f"metric/{name}/nfe_{k}"] = time.perf_counter() - t0
    finally:
        if was_training:
            net.train()
    return result
