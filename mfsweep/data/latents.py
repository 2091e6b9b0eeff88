"""Pre-encoded VAE latents (``mfsweep encode``), memory-mapped, decoded with their VAE for image metrics.

The folder format (written by ``mfsweep.data.encode.encode_folder``; version 1)::

    out/
      meta.json      what the arrays are (below)
      latents.npy    float32 (count, C, h, w): latents already multiplied by the scaling factor,
                     (z - shift_factor) * scaling_factor, rows in a seeded shuffled order
      labels.npy     int64 (count,): class index of each row (sorted class-folder names)
      files.txt      the source image of each row, relative to the encoded folder, one a line
      vae/           (optional) a copy of the VAE (``save_pretrained``), when encoded with copy_vae

    meta.json: {"format": "mfsweep-latents", "version": 1, "count": N, "shape": [C, h, w],
      "dtype": "float32", "latents": "latents.npy", "labels": "labels.npy", "files": "files.txt",
      "scaling_factor": 0.18215, "shift_factor": null, "vae": "<id>", "vae_kind": "folder" | "path" | "hub",
      "vae_source": "<as given to encode>", "resolution": 256, "image_shape": [3, 256, 256],
      "class_names": [...], "num_classes": K, "posterior": "sample" | "mean", "seed": 0,
      "order": "shuffled", "source": "<image folder>", "created": "<UTC time>", "seconds": ...}

    ``vae_kind`` says how to find ``vae``: "folder" a path relative to the latents folder, "path" an
    absolute local path, "hub" a Hugging Face hub name (e.g. stabilityai/sd-vae-ft-ema).

One file holds all rows, so each split is a view of one memory map and nothing is copied: the
loader opens ``latents.npy`` with ``np.load(mmap_mode="c")`` (copy-on-write: pages are read from the
file on demand and shared through the page cache; an in-place write by any code changes only a
private copy of that page, never the file, where a read-only map would crash the process) and wraps
slices with ``torch.from_numpy``. A torch tensor cannot be a view of an arbitrary index set, so the
held-out split is contiguous: the encoder wrote the rows in a seeded random order (``meta.seed``),
and the loader holds out the last ``round(data.test_fraction * count)`` rows; ``data.max_items``
keeps the first training rows. The split is therefore seeded by the encoder's seed (recorded as
``Dataset.split_seed``), not by ``data.seed``: encode again with another seed for another split.
Labels are small and read into memory.

Decoding: ``Dataset.decode(z)`` loads the VAE once per device, lazily (``data.vae`` when set, else
the one in meta.json), on ``z``'s device and decodes batches: ``vae.decode(z / scaling_factor +
shift_factor)`` clamped to [-1, 1], shape (N, *image_shape) with image_shape = (3, resolution,
resolution). ``data.hflip`` flips latents (a latent of a flipped image is close to a flipped latent
for the SD VAE; the exact way is to encode flipped images too).

Errors (``DataError``): a missing folder or meta.json, a meta.json of another format, arrays whose
shape or dtype differ from meta.json, a label count that differs from the latent count, labels out
of range, a missing VAE (a local folder with the VAE's config.json and weights, or a hub name such as
``stabilityai/sd-vae-ft-ema`` / ``stabilityai/sd-vae-ft-mse``, which needs internet once).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mfsweep.data import DataError, Dataset

if TYPE_CHECKING:
    from torch import Tensor

FORMAT = "mfsweep-latents"
VERSION = 1
META = "meta.json"
VAE_HINT = ("give a local folder with the VAE's config.json and weights (diffusion_pytorch_model.safetensors, "
            "as written by save_pretrained), or a hub name such as stabilityai/sd-vae-ft-ema or "
            "stabilityai/sd-vae-ft-mse (needs internet once, then it is cached)")


# ---- VAEs ------------------------------------------------------------------------------------

def looks_like_path(vae: str) -> bool:
    """A local path rather than a hub name ("org/name" or "name")."""
    return (Path(vae).expanduser().exists() or vae.startswith(("/", ".", "~")) or vae.count("/") > 1
            or os.sep != "/" and os.sep in vae)


def check_vae(vae: str, what: str = "data.vae") -> None:
    """``DataError`` now for a local VAE path that does not exist (hub names are checked on load)."""
    if looks_like_path(vae):
        p = Path(vae).expanduser()
        if not p.is_dir():
            raise DataError(f"{what}: no VAE folder at {p}; {VAE_HINT}")
        if not (p / "config.json").is_file() and not (p / "vae" / "config.json").is_file():
            raise DataError(f"{what}: {p} has no config.json (nor vae/config.json); {VAE_HINT}")


def load_vae(vae: str, device: str | torch.device = "cpu", what: str = "vae"):
    """``diffusers.AutoencoderKL.from_pretrained(vae)`` in eval mode on ``device``; a folder holding a
    whole pipeline is read from its ``vae/`` sub-folder. Failures raise ``DataError``."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as exc:
        raise DataError(f"{what}: VAE latents need the diffusers package ({exc}); pip install diffusers") from None
    check_vae(vae, what)
    # without `accelerate`, diffusers warns at every load unless low-memory loading is off explicitly
    kwargs: dict[str, Any] = {"low_cpu_mem_usage": False}
    p = Path(vae).expanduser()
    if p.is_dir():
        vae = str(p)
        if not (p / "config.json").is_file() and (p / "vae" / "config.json").is_file():
            kwargs["subfolder"] = "vae"
    try:
        model = AutoencoderKL.from_pretrained(vae, **kwargs)
    except Exception as exc:  # OSError (not found, offline), ValueError (bad config), ...
        raise DataError(f"{what}: cannot load the VAE {vae!r} ({type(exc).__name__}: {exc}); {VAE_HINT}") from None
    return model.to(device).eval().requires_grad_(False)


class LatentDecoder:
    """``decode(z) -> images``: latents (N, C, h, w) → images (N, *image_shape) in [-1, 1], batched,
    on ``z``'s device; the VAE is loaded on first use for each device and kept."""

    def __init__(self, vae: str, scaling_factor: float, shift_factor: float | None,
                 latent_shape: tuple[int, ...], image_shape: tuple[int, ...], batch_size: int = 32):
        self.vae, self.scaling_factor, self.shift_factor = vae, float(scaling_factor), shift_factor
        self.latent_shape, self.image_shape, self.batch_size = tuple(latent_shape), tuple(image_shape), batch_size
        self._models: dict[str, Any] = {}

    def __getstate__(self) -> dict:  # picklable (Ray); the loaded VAEs stay behind
        return {**self.__dict__, "_models": {}}

    def model(self, device: str | torch.device):
        key = str(torch.device(device))
        if key not in self._models:
            self._models[key] = load_vae(self.vae, device, "data.vae")
        return self._models[key]

    @torch.no_grad()
    def __call__(self, z: Tensor) -> Tensor:
        if tuple(z.shape[1:]) != self.latent_shape:
            want = ", ".join(map(str, self.latent_shape))
            raise DataError(f"decode: latents of shape {tuple(z.shape)}; expected (N, {want})")
        if len(z) == 0:
            return z.new_zeros((0, *self.image_shape), dtype=torch.float32)
        vae = self.model(z.device)
        out = []
        for chunk in z.split(self.batch_size):
            chunk = chunk.to(vae.dtype) / self.scaling_factor
            if self.shift_factor:
                chunk = chunk + self.shift_factor
            out.append(vae.decode(chunk).sample.float().clamp_(-1.0, 1.0))
        return torch.cat(out)


# ---- the folder --------------------------------------------------------------------------------

def read_meta(root: str | os.PathLike) -> dict:
    """meta.json of a latents folder, checked for the keys the loader needs."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path: latents folder not found: {root} "
                        f"(write one with `mfsweep encode IMAGE_DIR {root}`)")
    path = root / META
    if not path.is_file():
        raise DataError(f"data.path: {root} has no {META}; expected a folder written by `mfsweep encode`")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"data.path: cannot read {path}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"data.path: {path} is not an mfsweep latents description (format {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise DataError(f"data.path: {path} has format version {meta.get('version')}; this mfsweep reads "
                        f"version {VERSION} (encode the images again)")
    missing = [k for k in ("count", "shape", "dtype", "latents", "labels", "scaling_factor", "vae", "resolution")
               if k not in meta]
    if missing:
        raise DataError(f"data.path: {path} lacks {', '.join(missing)}")
    return meta


def _open_array(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"data.path: {what} file missing: {path}")
    try:
        return np.load(path, mmap_mode="c", allow_pickle=False)
    except Exception as exc:
        raise DataError(f"data.path: cannot memory-map {path}: {exc}") from None


def open_latents(root: str | os.PathLike) -> tuple[dict, np.memmap, np.ndarray]:
    """(meta, latents memmap (count, C, h, w) float32, labels (count,) int64), all checked against
    meta.json."""
    root = Path(root).expanduser()
    meta = read_meta(root)
    count, shape, dtype = int(meta["count"]), tuple(int(s) for s in meta["shape"]), np.dtype(meta["dtype"])
    if dtype != np.float32:
        raise DataError(f"data.path: {root / META} says dtype {dtype}; the loader reads float32 latents")
    lat = _open_array(root / meta["latents"], "latents")
    if lat.shape != (count, *shape) or lat.dtype != dtype:
        raise DataError(f"data.path: {root / meta['latents']} is {lat.dtype} {tuple(lat.shape)}, but {META} says "
                        f"{dtype} {(count, *shape)}; the latents differ in shape or dtype (encode again)")
    labels = _open_array(root / meta["labels"], "labels")
    if labels.ndim != 1 or labels.shape[0] != count:
        raise DataError(f"data.path: {root / meta['labels']} holds {labels.shape} labels for {count} latents; "
                        "expected one label per latent")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"data.path: {root / meta['labels']} has dtype {labels.dtype}; expected integer labels")
    labels = np.array(labels, dtype=np.int64)  # small: read into memory
    k = meta.get("num_classes")
    if count and (labels.min() < 0 or (k is not None and labels.max() >= int(k))):
        raise DataError(f"data.path: {root / meta['labels']} has labels outside 0..{k - 1 if k else '?'}")
    return meta, lat, labels


def meta_vae(root: Path, meta: dict) -> str:
    """The VAE recorded in meta.json as something ``from_pretrained`` takes (a folder copy is
    resolved against the latents folder); a missing local one raises ``DataError``."""
    vae, kind = str(meta["vae"]), meta.get("vae_kind")
    if kind == "folder":
        vae = str(root / vae)
    if kind in ("folder", "path") and not Path(vae).is_dir():
        raise DataError(f"data.vae: the VAE recorded in {root / META} is missing ({vae}); set data.vae: "
                        f"{VAE_HINT}")
    return vae


def load(cfg) -> Dataset:
    """The latents of ``cfg.path`` (see the module docstring)."""
    root = Path(cfg.path).expanduser()
    meta, lat, labels = open_latents(root)
    count = lat.shape[0]
    if count < 2:
        raise DataError(f"data.path: {root} holds {count} latent; need at least 2 (train and held-out)")
    n_test = min(count - 1, max(1, round(cfg.test_fraction * count)))
    n_train = count - n_test
    if cfg.vae:
        vae = cfg.vae
        check_vae(vae, "data.vae")
    else:
        vae = meta_vae(root, meta)
    res = int(meta["resolution"])
    image_shape = tuple(int(s) for s in meta.get("image_shape", (3, res, res)))
    decoder = LatentDecoder(vae, meta["scaling_factor"], meta.get("shift_factor"), lat.shape[1:], image_shape)
    classes = meta.get("class_names") or []
    num_classes = int(meta.get("num_classes") or len(classes) or int(labels.max()) + 1)
    return Dataset(root.name or "latents", "image", torch.from_numpy(lat[:n_train]), torch.from_numpy(labels[:n_train]),
                   torch.from_numpy(lat[n_train:]), torch.from_numpy(labels[n_train:]), num_classes,
                   tuple(lat.shape[1:]), split_seed=meta.get("seed"), test_fraction=cfg.test_fraction,
                   hflip=bool(cfg.hflip), decode=decoder, image_shape=image_shape)
