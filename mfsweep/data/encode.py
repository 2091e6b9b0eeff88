"""``mfsweep encode``: a folder of class sub-folders of images → a latents folder (``latents`` data).

What it does, per image (the DiT / SiT / MeanFlow ImageNet recipe)
    ``image_folder.load_image(path, resolution)`` (RGB, shorter side resized, center crop), scaled
    to [-1, 1]; ``vae.encode(x).latent_dist`` of a ``diffusers.AutoencoderKL`` loaded with
    ``from_pretrained(vae)`` (a local folder, or a hub name such as ``stabilityai/sd-vae-ft-ema``);
    ``z = mean + std * eps`` (``posterior="sample"``, the default, as DiT's feature extraction does)
    or ``z = mean`` (``posterior="mean"``); stored as ``(z - shift_factor) * scaling_factor`` with
    the VAE config's ``scaling_factor`` (0.18215 for the SD VAEs) and ``shift_factor`` (None for them).

    The noise is reproducible and independent of the batch size and device: the image written to
    row ``r`` uses ``eps = posterior_noise(seed, r, shape)``, a CPU ``torch.randn`` from a generator
    seeded by ``SeedSequence([seed, r])``. Rows are written in a seeded random order
    (``np.random.default_rng(seed).permutation``) so a contiguous held-out split is a random sample
    (see ``mfsweep.data.latents`` for the folder format and the loader).

Nothing half-written
    Inputs (``out``, the images, the VAE) are checked before anything is written; then everything is
    written into a temporary folder next to ``out`` (``.<name>.XXXX.encoding``) and renamed to ``out``
    at the end. Any error (or Ctrl-C) removes the temporary folder. ``out`` must not exist or be an
    empty folder.

Errors (``DataError``): ``out`` not empty, a missing / empty image folder, a corrupt image (named),
a VAE that cannot be loaded (with what to give instead), bad arguments.

``build_demo_latents`` writes a tiny latents folder with a randomly initialised small VAE built from
a config (no download): tests and smoke runs of latent studies.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mfsweep.data import DataError
from mfsweep.data.image_folder import list_images, load_image, to_tensor
from mfsweep.data.latents import FORMAT, META, VERSION, load_vae
from mfsweep.fileio import write_text_atomic


def posterior_noise(seed: int, row: int, shape: Sequence[int]) -> torch.Tensor:
    """The standard normal ``eps`` of row ``row`` (float32, CPU): ``z = mean + std * eps``."""
    state = np.random.SeedSequence([int(seed) % 2**64, int(row)]).generate_state(1, np.uint64)[0]
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(state)))


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise DataError(f"out: {out} exists and is not a folder; give a new folder to write the latents to")
        if any(out.iterdir()):
            raise DataError(f"out: {out} exists and is not empty; give a new (or empty) folder")


def encode_folder(image_dir: str | os.PathLike, out: str | os.PathLike, *, vae: str | os.PathLike,
                  resolution: int = 256, batch_size: int = 32, device: str | torch.device = "cpu",
                  posterior: Literal["sample", "mean"] = "sample", seed: int = 0, copy_vae: bool = False,
                  threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Encode every image of ``image_dir/<class>/`` into the latents folder ``out`` (see the module
    docstring); ``copy_vae`` also saves the VAE into ``out/vae`` (a self-contained folder). Returns a
    summary: out, count, shape, dtype, scaling_factor, shift_factor, vae, vae_kind, resolution,
    num_classes, posterior, seed, seconds."""
    from numpy.lib.format import open_memmap
    from tqdm import tqdm

    t0 = time.perf_counter()
    out = Path(out).expanduser()
    vae = str(vae)
    if not isinstance(resolution, int) or resolution < 8:
        raise DataError(f"--resolution: expected an integer ≥ 8 (e.g. 256), got {resolution!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"--batch-size: expected an integer ≥ 1, got {batch_size!r}")
    if posterior not in ("sample", "mean"):
        raise DataError(f"posterior: expected 'sample' or 'mean', got {posterior!r}")
    _check_out(out)
    image_dir = Path(image_dir).expanduser()
    files, labels, classes = list_images(image_dir)
    model = load_vae(vae, device, "--vae")
    scale = float(model.config.scaling_factor if model.config.get("scaling_factor") is not None else 1.0)
    shift = model.config.get("shift_factor")
    shift = None if shift is None else float(shift)

    n = len(files)
    order = np.random.default_rng(int(seed) % 2**64).permutation(n)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".encoding", dir=out.parent))
    try:
        latents = None
        threads = threads or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as pool, tqdm(total=n, unit="img", desc="encode", disable=not progress) as bar:
            starts = list(range(0, n, batch_size))

            def submit(s: int) -> list:
                return [pool.submit(load_image, files[j], resolution) for j in order[s:s + batch_size]]

            pending = submit(starts[0])
            for i, start in enumerate(starts):
                imgs = [f.result() for f in pending]
                if i + 1 < len(starts):
                    pending = submit(starts[i + 1])  # decode the next batch while this one encodes
                x = to_tensor(np.stack(imgs)).to(device)
                with torch.no_grad():
                    dist = model.encode(x.to(model.dtype)).latent_dist
                    z = dist.mean
                    if posterior == "sample":
                        eps = torch.stack([posterior_noise(seed, r, z.shape[1:]) for r in range(start, start + len(x))])
                        z = z + dist.std * eps.to(z.device, z.dtype)
                    if shift is not None:
                        z = z - shift
                    z = (z * scale).float().cpu().numpy()
                if latents is None:
                    latents = open_memmap(tmp / "latents.npy", mode="w+", dtype=np.float32, shape=(n, *z.shape[1:]))
                latents[start:start + len(z)] = z
                bar.update(len(z))
        shape = [int(s) for s in latents.shape[1:]]
        latents.flush()
        del latents
        np.save(tmp / "labels.npy", labels[order])
        (tmp / "files.txt").write_text("".join(f"{files[j].relative_to(image_dir).as_posix()}\n" for j in order))
        if copy_vae:
            model.save_pretrained(tmp / "vae")
            vae_id, vae_kind = "vae", "folder"
        elif Path(vae).expanduser().is_dir():
            vae_id, vae_kind = str(Path(vae).expanduser().resolve()), "path"
        else:
            vae_id, vae_kind = vae, "hub"
        meta = {"format": FORMAT, "version": VERSION, "count": n, "shape": shape, "dtype": "float32",
                "latents": "latents.npy", "labels": "labels.npy", "files": "files.txt",
                "scaling_factor": scale, "shift_factor": shift, "vae": vae_id, "vae_kind": vae_kind,
                "vae_source": vae, "resolution": resolution, "image_shape": [3, resolution, resolution],
                "class_names": classes, "num_classes": len(classes), "posterior": posterior, "seed": int(seed),
                "order": "shuffled", "source": str(image_dir.resolve()),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - t0, 3)}
        write_text_atomic(tmp / META, json.dumps(meta, indent=1) + "\n")
        if out.is_dir():
            out.rmdir()  # empty (checked above); a file that appeared since makes this fail, tmp is removed
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    keys = ("count", "shape", "dtype", "scaling_factor", "shift_factor", "vae", "vae_kind", "resolution",
            "num_classes", "posterior", "seed")
    return {"out": str(out), **{k: meta[k] for k in keys}, "seconds": round(time.perf_counter() - t0, 3)}


def tiny_vae(resolution: int = 16, latent_channels: int = 4):
    """A randomly initialised small ``AutoencoderKL`` (2 blocks of 8 / 16 channels, 2× down-sampling),
    built from a config: no download. Seed torch first for a fixed one."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=resolution)


def build_demo_latents(out: str | os.PathLike, *, num_images: int = 64, resolution: int = 16, num_classes: int = 2,
                       seed: int = 0, posterior: Literal["sample", "mean"] = "sample", progress: bool = False) -> Path:
    """A tiny self-contained latents folder at ``out``: ``num_images`` synthetic images
    (``mfsweep.data.synthetic``) encoded by ``tiny_vae`` (seeded by ``seed``), which is saved in
    ``out/vae``. Latents have shape (4, resolution / 2, resolution / 2)."""
    from mfsweep.data.synthetic import write_synthetic_folder

    out = Path(out).expanduser()
    _check_out(out)
    with tempfile.TemporaryDirectory(prefix="mfsweep-demo-") as tmp:
        images = write_synthetic_folder(Path(tmp) / "images", num_images, resolution, 3, num_classes, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = tiny_vae(resolution)
        vae.save_pretrained(Path(tmp) / "vae")
        encode_folder(images, out, vae=Path(tmp) / "vae", resolution=resolution, posterior=posterior, seed=seed,
                      copy_vae=True, threads=1, progress=progress)
    return out
