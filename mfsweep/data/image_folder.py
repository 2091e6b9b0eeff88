"""A folder of class sub-folders of images: ``data.path/<class_name>/**/*.{png,jpg,jpeg,webp,bmp}``.

Layout and labels
    Every (non-hidden) sub-folder of ``data.path`` is a class; classes are numbered in sorted name
    order (as torchvision's ``ImageFolder`` does), and the images inside a class folder (searched
    recursively, extensions case-insensitive) are listed in sorted path order. Unlabelled data is one
    class folder.

Pixels
    Images are converted to RGB (greyscale, palette and alpha images included) and scaled to
    float32 in [-1, 1], shape (3, H, W). With ``data.resolution`` set, each image is resized so its
    shorter side equals the resolution and then center-cropped to a square, the ADM / DiT
    preprocessing (guided-diffusion's ``center_crop_arr``: halve with a box filter while the shorter
    side is at least twice the target, then one bicubic resize, then crop the middle). With
    ``data.resolution`` unset, all images must already share one size.

Split
    A seeded (``data.seed``), stratified where the class counts allow, train / held-out split with
    ``data.test_fraction`` held out; ``data.max_items`` keeps the first items of the (shuffled)
    training split. ``data.hflip`` asks the training loop for random horizontal flips.

Errors (``DataError``, naming the path): a missing folder, a folder without class sub-folders, a
class folder without images, a file that cannot be decoded (named), images of different sizes when
``data.resolution`` is unset.

``list_images`` and ``load_image`` are reused by the latent encoder (``mfsweep.data.encode``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mfsweep.data import DataError, Dataset

#: File name endings read as images (compared lower-case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(root: str | os.PathLike) -> tuple[list[Path], np.ndarray, list[str]]:
    """``(files, labels, class_names)``: every image under ``root/<class>/``, labels (N,) int64 in
    sorted class-name order; files sorted by class, then by path."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data.path: folder not found: {root} (expected a folder of class sub-folders of images)")
    if not root.is_dir():
        raise DataError(f"data.path: {root} is a file; expected a folder of class sub-folders of images")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        loose = [e.name for e in os.scandir(root) if e.is_file() and _is_image(e.name)]
        hint = (f"; it holds {len(loose)} image(s) directly: move them into a sub-folder such as "
                f"{root / 'all'} (one folder for unlabelled data)") if loose else ""
        raise DataError(f"data.path: {root} has no class sub-folders; expected {root}/<class_name>/"
                        f"<image>{'|'.join(IMAGE_EXTENSIONS)}{hint}")
    files: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for k, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f))
        if not found:
            empty.append(name)
        files.extend(found)
        labels.extend([k] * len(found))
    if not files:
        raise DataError(f"data.path: no images under {root} (looked for {', '.join(IMAGE_EXTENSIONS)} "
                        f"in the class sub-folders {', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})")
    if empty:
        raise DataError(f"data.path: class folder(s) without images under {root}: {', '.join(empty[:5])}"
                        f"{', ...' if len(empty) > 5 else ''} (remove them or add {'/'.join(IMAGE_EXTENSIONS)} files)")
    return files, np.asarray(labels, dtype=np.int64), classes


def _center_crop(img, resolution: int):
    """Shorter side → ``resolution`` (box-filter halvings, then bicubic), then crop the middle square."""
    from PIL import Image

    while min(img.size) >= 2 * resolution:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.Resampling.BOX)
    scale = resolution / min(img.size)
    w, h = (max(resolution, round(s * scale)) for s in img.size)
    img = img.resize((w, h), resample=Image.Resampling.BICUBIC)
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def load_image(path: str | os.PathLike, resolution: int | None = None) -> np.ndarray:
    """One image as uint8 (H, W, 3) RGB; resized and center-cropped to ``resolution`` × ``resolution``
    when given. A file that cannot be decoded raises ``DataError`` naming it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here
            rgb = img.convert("RGB")
    except Exception as exc:  # UnidentifiedImageError, truncated data, decompression bombs, ...
        raise DataError(f"data.path: cannot read image {path}: {exc} (re-save or remove the file)") from None
    if resolution is not None:
        rgb = _center_crop(rgb, int(resolution))
    return np.array(rgb, dtype=np.uint8)  # writable (torch.from_numpy)


def read_images(files: Sequence[str | os.PathLike], resolution: int | None = None, threads: int | None = None,
                pool: ThreadPoolExecutor | None = None) -> list[np.ndarray]:
    """``load_image`` of every file, decoded on ``threads`` threads (PIL releases the GIL), in order."""
    if pool is not None:
        return list(pool.map(lambda f: load_image(f, resolution), files))
    threads = threads or min(8, os.cpu_count() or 1)
    if threads <= 1 or len(files) < 2:
        return [load_image(f, resolution) for f in files]
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(lambda f: load_image(f, resolution), files))


def stack_images(images: Sequence[np.ndarray], files: Sequence[str | os.PathLike]) -> np.ndarray:
    """(N, H, W, 3) uint8; images of different sizes raise ``DataError`` naming two of them."""
    first = images[0].shape
    for img, f in zip(images, files):
        if img.shape != first:
            raise DataError(f"data.resolution: images differ in size ({files[0]} is {first[1]}×{first[0]}, "
                            f"{f} is {img.shape[1]}×{img.shape[0]}); set data.resolution to resize and "
                            "center-crop them to one square size")
    return np.stack(images)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) → float32 (N, C, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (stratified where the class counts allow) split of ``range(len(labels))`` → (train, test)."""
    from mfsweep.data.arrays import split

    idx = np.arange(len(labels))
    try:
        tr, te, _, _ = split(idx, labels, test_fraction, seed)
    except ValueError:  # too few held-out items to put every class in it
        try:
            tr, te, _, _ = split(idx, None, test_fraction, seed)
        except ValueError as exc:
            raise DataError(f"data.test_fraction: cannot split {len(idx)} items with test_fraction "
                            f"{test_fraction}: {exc}") from None
    return np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64)


def load(cfg) -> Dataset:
    """Images of ``cfg.path``'s class folders (see the module docstring)."""
    root = Path(cfg.path).expanduser()
    files, labels, classes = list_images(root)
    if len(files) < 2:
        raise DataError(f"data.path: {root} holds {len(files)} image; need at least 2 (train and held-out)")
    images = stack_images(read_images(files, cfg.resolution), files)
    tr, te = split_indices(labels, cfg.test_fraction, cfg.seed)
    if cfg.max_items is not None:
        tr = tr[:cfg.max_items]
    x_tr, x_te = to_tensor(images[tr]), to_tensor(images[te])
    return Dataset(root.name or "image_folder", "image", x_tr, torch.from_numpy(labels[tr]), x_te,
                   torch.from_numpy(labels[te]), len(classes), tuple(x_tr.shape[1:]), split_seed=cfg.seed,
                   test_fraction=cfg.test_fraction, hflip=bool(cfg.hflip))
