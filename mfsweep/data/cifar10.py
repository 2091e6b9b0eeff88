"""CIFAR-10 through torchvision: 50,000 training and 10,000 test images of 10 classes, (3, 32, 32) in
[-1, 1], with their labels.

Source and folder
    ``data.path`` is the folder that holds (or will hold) torchvision's files: the archive
    ``cifar-10-python.tar.gz`` and / or the extracted ``cifar-10-batches-py/`` (data_batch_1..5,
    test_batch, batches.meta). Unset, it is ``$MFSWEEP_DATA/cifar10``, or
    ``~/.cache/mfsweep/data/cifar10`` without ``MFSWEEP_DATA``. An archive that is present but not
    extracted is checked (md5) and extracted. With ``data.download`` (the default) missing files are
    downloaded from https://www.cs.toronto.edu/~kriz/cifar.html into the folder; offline machines
    copy one of the two forms above into it.

Reading
    The batches are read by ``torchvision.datasets.CIFAR10``, which verifies every file's md5 (the
    official files only). The split is the official one (``split_seed`` is None); ``data.max_items``
    keeps the first training items; ``data.hflip`` (the paper's random horizontal flips) asks the
    training loop to flip training batches at random.

Errors (``DataError``): the files missing and the download disabled or failing (the message names
the folder and what to put there), files that fail torchvision's md5 check.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mfsweep.data import DataError, Dataset

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
         "batches.meta")


def data_dir() -> Path:
    """The default folder of downloaded data sets: ``$MFSWEEP_DATA`` or ``~/.cache/mfsweep/data``."""
    env = os.environ.get("MFSWEEP_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mfsweep" / "data"


def cifar10_root(path: str | os.PathLike | None) -> Path:
    """``data.path``, or the default ``data_dir() / "cifar10"``."""
    return Path(path).expanduser() if path else data_dir() / "cifar10"


def _complete(root: Path) -> bool:
    return all((root / FOLDER / f).is_file() for f in FILES)


def _what_to_put(root: Path) -> str:
    return (f"put {ARCHIVE} (from {URL}) or its extracted {FOLDER}/ folder into {root} "
            f"(so that {root / FOLDER / 'data_batch_1'} exists)")


def ensure_files(root: Path, download: bool) -> None:
    """Make ``root/cifar-10-batches-py`` complete: extract a present archive, else download (when
    allowed); ``DataError`` naming the folder when neither works."""
    import torchvision.datasets.cifar as tv_cifar
    from torchvision.datasets.utils import extract_archive

    if _complete(root):
        return
    archive = root / ARCHIVE
    if archive.is_file() and tv_cifar.check_integrity(str(archive), tv_cifar.CIFAR10.tgz_md5):
        try:
            extract_archive(str(archive), str(root))
        except Exception as exc:
            raise DataError(f"data.path: cannot extract {archive}: {exc}; {_what_to_put(root)}") from None
        if _complete(root):
            return
    if not download:
        bad = f" ({archive} is there but fails the md5 check)" if archive.is_file() else ""
        raise DataError(f"data.path: CIFAR-10 is not in {root}{bad}; {_what_to_put(root)}, "
                        "or set data.download: true to download it (needs internet)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        tv_cifar.CIFAR10(str(root), train=True, download=True)
    except Exception as exc:  # URLError when offline, HTTP errors, a bad checksum, a read-only folder
        raise DataError(f"data.path: CIFAR-10 is not in {root} and the download failed ({type(exc).__name__}: "
                        f"{exc}); offline, {_what_to_put(root)}") from None


def _read(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 3, 32, 32) images and int64 labels of one official split (torchvision checks md5s)."""
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=train, download=False)
    except RuntimeError as exc:  # "Dataset not found or corrupted"
        raise DataError(f"data.path: the CIFAR-10 files in {root / FOLDER} fail torchvision's check ({exc}); "
                        f"delete them and {_what_to_put(root)}, or download again") from None
    return np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)), np.asarray(ds.targets, dtype=np.int64)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float().div_(127.5).sub_(1.0)


def load(cfg) -> Dataset:
    """CIFAR-10's official train (→ x_train) and test (→ x_test) splits from ``cfg.path``."""
    root = cifar10_root(cfg.path)
    ensure_files(root, cfg.download)
    x_tr, y_tr = _read(root, train=True)
    x_te, y_te = _read(root, train=False)
    return Dataset("cifar10", "image", _to_tensor(x_tr), torch.from_numpy(y_tr), _to_tensor(x_te),
                   torch.from_numpy(y_te), 10, (3, 32, 32), hflip=bool(cfg.hflip))
