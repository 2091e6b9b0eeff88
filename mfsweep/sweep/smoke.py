"""``--smoke``: any study shrunk to a few minutes on a CPU, offline, same code path.

A paper-scale study (DiT on ImageNet latents, the CIFAR-10 U-Net, FID-50K) cannot run on a laptop,
but every piece of it can: ``smoke_study(raw)`` rewrites the study file's dict before validation

- backbones → the tiny size of the same family (``dit_*`` → ``dit_tiny``, ``unet_cifar`` →
  ``unet_cifar_tiny``), in ``base`` and in axes (duplicates that this creates are dropped);
- data → a few hundred generated items of the same kind: ``cifar10`` / ``image_folder`` →
  ``synthetic_images`` (16×16, RGB, 10 classes); ``latents`` → demo latent shards that
  ``prepare_smoke_data`` encodes with a randomly initialised small VAE (``data.encode``), so the
  decode-before-metrics path runs too;
- training → ``SMOKE_STEPS`` steps of small batches, fp32, no compile, CPU;
- evaluation → 64 samples, and for image data the pixel-space ``swd`` instead of FID / KID /
  precision-recall (their Inception weights are a download); ``eval.reference_stats`` dropped;
- one seed, at most 2 search points, no GPU, and ``_smoke`` appended to the name (its own MLflow
  experiment and Ray folder, so a smoke run never resumes or mixes with the real study).

Axes, paper table, scheduler and search algorithm are kept: the smoke run exercises the study's own
structure, tags and report.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

SMOKE_STEPS = 30
SMOKE_RESOLUTION = 16
_IMAGE_SOURCES = ("cifar10", "image_folder")


def smoke_backbone(name: Any) -> Any:
    """The tiny backbone of ``name``'s family (unchanged for small backbones and non-strings)."""
    if isinstance(name, str) and name.startswith("dit_"):
        return "dit_tiny"
    if name == "unet_cifar":
        return "unet_cifar_tiny"
    return name


def smoke_latents_dir() -> Path:
    """Where ``--smoke`` keeps its demo latents (absolute: Ray trials run in their own folders)."""
    return (Path.cwd() / "runs" / "smoke" / f"latents_{SMOKE_RESOLUTION}").resolve()


def _smoke_data(data: dict) -> dict:
    name = data.get("name", "checkerboard")
    keep = {k: data[k] for k in ("conditional", "hflip", "seed") if k in data}
    if name in _IMAGE_SOURCES:
        return {**keep, "name": "synthetic_images", "resolution": SMOKE_RESOLUTION, "channels": 3,
                "num_classes": 10, "num_train": 256, "num_test": 64}
    if name == "latents":
        return {**keep, "name": "latents", "path": str(smoke_latents_dir())}
    return data


def _is_image(data: dict) -> bool:
    """Image (or latent) data: anything but the 2-D toys and a user's .npy (whose kind is its shape's)."""
    from mfsweep.data import TOYS

    name = data.get("name", "checkerboard")
    return name not in TOYS and name != "npy"


def _smoke_eval(ev: dict, image: bool) -> dict:
    ev = dict(ev or {})
    ev.pop("reference_stats", None)
    ev["num_samples"] = min(int(ev.get("num_samples", 64)), 64)
    ev["batch_size"] = 64
    if ev.get("every_steps"):
        ev["every_steps"] = SMOKE_STEPS // 3
        ev["num_samples_during"] = 32
    if image:
        ev["metrics"] = ["swd"]
    return ev


def _smoke_axis(key: str, values: Any) -> Any:
    if key == "model.backbone" and isinstance(values, list):
        out: list = []
        for v in map(smoke_backbone, values):
            if v not in out:
                out.append(v)
        return out
    if key == "model" and isinstance(values, dict):  # labelled model blocks
        return {label: ({**block, "backbone": smoke_backbone(block.get("backbone"))} if isinstance(block, dict)
                        else block) for label, block in values.items()}
    return values


def smoke_study(raw: Any) -> Any:
    """The study dict shrunk for ``--smoke`` (see the module docstring); a non-mapping is returned
    as is so that validation reports it."""
    if not isinstance(raw, dict):
        return raw
    raw = copy.deepcopy(raw)
    if isinstance(raw.get("name"), str):
        raw["name"] = raw["name"] + "_smoke"
    tracking = raw.get("tracking")
    if isinstance(tracking, dict) and isinstance(tracking.get("experiment"), str):
        tracking["experiment"] += "_smoke"
    base = raw.setdefault("base", {})
    if not isinstance(base, dict):
        return raw
    model = base.setdefault("model", {})
    if isinstance(model, dict):
        model["backbone"] = smoke_backbone(model.get("backbone", "mlp"))
    if isinstance(base.get("data"), dict):
        base["data"] = _smoke_data(base["data"])
    train = base.setdefault("train", {})
    if isinstance(train, dict):
        train.update(steps=min(int(train.get("steps", SMOKE_STEPS)), SMOKE_STEPS),
                     batch_size=min(int(train.get("batch_size", 32)), 32),
                     warmup_steps=min(int(train.get("warmup_steps", 0)), 5),
                     checkpoint_every=SMOKE_STEPS // 2, log_every=5, precision="fp32", compile=False,
                     device="cpu", threads=1)
    image = _is_image(base.get("data") or {})
    base["eval"] = _smoke_eval(base.get("eval"), image)
    if "eval" in raw:
        raw["eval"] = _smoke_eval(raw["eval"], image)
    if isinstance(raw.get("axes"), dict):
        raw["axes"] = {k: _smoke_axis(k, v) for k, v in raw["axes"].items()}
    if isinstance(raw.get("seeds"), list) and raw["seeds"]:
        raw["seeds"] = raw["seeds"][:1]
    search = raw.get("search")
    if isinstance(search, dict):
        search["num_samples"] = min(int(search.get("num_samples", 1)), 2)
        if image:
            search.pop("metric", None)
    scheduler = raw.get("scheduler")
    if isinstance(scheduler, dict):
        scheduler["grace_period"] = SMOKE_STEPS // 3
        scheduler.pop("max_t", None)
        if image:
            scheduler.pop("metric", None)
    raw["resources"] = {"cpu": 1, "gpu": 0}
    raw.pop("max_concurrent_trials", None)
    return raw


def prepare_smoke_data(plan, progress: bool = True) -> None:
    """Write the demo latent shards the smoke plan's trials read, once (kept for later smoke runs)."""
    wanted = {t.config.data.path for t in plan.trials if t.config.data.name == "latents"}
    target = str(smoke_latents_dir())
    if target in wanted and not (Path(target) / "meta.json").is_file():
        from mfsweep.data.encode import build_demo_latents

        Path(target).parent.mkdir(parents=True, exist_ok=True)
        build_demo_latents(target, num_images=256, resolution=SMOKE_RESOLUTION, num_classes=10, seed=0)
