"""Image data sources: synthetic images, image folders, CIFAR-10 (on a fake folder) and VAE latents
(encode → memory-mapped folder → loader → decode), all offline: data are generated here and the VAE
is a randomly initialised small ``AutoencoderKL`` built from a config."""

from __future__ import annotations

import json
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mfsweep.config import DataConfig
from mfsweep.data import DataError, load_dataset
from mfsweep.data.image_folder import list_images, load_image
from mfsweep.data.synthetic import make_images, write_image_folder, write_synthetic_folder


def _png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# ---- synthetic images ------------------------------------------------------------------------------

def test_synthetic_is_seeded_class_dependent_and_shaped():
    a, ya = make_images(300, 16, 3, 4, seed=1)
    b, yb = make_images(300, 16, 3, 4, seed=1)
    c, _ = make_images(300, 16, 3, 4, seed=2)
    assert a.shape == (300, 16, 16, 3) and a.dtype == np.uint8 and ya.dtype == np.int64
    assert np.array_equal(a, b) and np.array_equal(ya, yb) and not np.array_equal(a, c)
    assert set(ya.tolist()) == {0, 1, 2, 3}
    assert np.array_equal(make_images(40, 16, 3, 4, seed=1)[0], a[:40])  # prefix-stable
    means = np.stack([a[ya == k].astype(float).mean(0) for k in range(4)])  # per-class mean image
    gaps = [np.abs(means[i] - means[j]).mean() for i in range(4) for j in range(i + 1, 4)]
    assert min(gaps) > 10, gaps  # classes differ (pixel units), far beyond sampling noise
    assert a.std() > 20  # not a flat colour

    cfg = DataConfig(name="synthetic_images", num_train=100, num_test=30, resolution=8, channels=1, num_classes=3,
                     seed=5, max_items=40, hflip=True)
    ds = load_dataset(cfg)
    assert ds.x_train.shape == (40, 1, 8, 8) and ds.x_test.shape == (30, 1, 8, 8) and ds.shape == (1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64 and ds.num_classes == 3
    assert -1 <= ds.x_train.min() and ds.x_train.max() <= 1 and ds.hflip and ds.kind == "image"
    full = load_dataset(cfg.model_copy(update={"max_items": None}))
    assert torch.equal(full.x_train[:40], ds.x_train) and torch.equal(full.x_test, ds.x_test)  # max_items = first items
    assert not torch.equal(full.x_train[:30], full.x_test)  # train and test are different draws


# ---- image folders ---------------------------------------------------------------------------------

def test_image_folder_round_trip_resize_crop_and_split(tmp_path):
    images, labels = make_images(30, 12, 3, 3, seed=0)
    root = write_image_folder(tmp_path / "imgs", images, labels, ["cat", "ant", "bee"])
    files, lab, classes = list_images(root)
    assert classes == ["ant", "bee", "cat"] and len(files) == 30  # sorted class names
    assert all(f.parent.name == classes[k] for f, k in zip(files, lab))
    # a non-square image, black | white | black thirds: shorter side → 8, the middle 8 columns kept
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 255
    odd = _png(root / "ant" / "zz_wide.jpg", wide)
    assert load_image(odd, 8).shape == (8, 8, 3) and load_image(odd, 8).mean() > 200
    tall = load_image(_png(tmp_path / "tall.png", np.full((50, 20, 3), 7, np.uint8)), 16)
    assert tall.shape == (16, 16, 3) and np.all(np.abs(tall.astype(int) - 7) <= 1)
    grey = _png(root / "bee" / "grey.png", np.full((12, 12), 100, np.uint8))  # greyscale → RGB
    assert load_image(grey).shape == (12, 12, 3)

    cfg = DataConfig(name="image_folder", path=str(root), resolution=8, test_fraction=0.25, seed=3, hflip=True)
    ds = load_dataset(cfg)
    n = 32
    assert len(ds.x_train) + len(ds.x_test) == n and len(ds.x_test) == 8
    assert ds.x_train.shape[1:] == (3, 8, 8) == ds.shape and ds.x_train.dtype == torch.float32
    assert -1 <= ds.x_train.min() < 0 < ds.x_train.max() <= 1
    assert ds.num_classes == 3 and ds.hflip and ds.split_seed == 3 and ds.test_fraction == 0.25
    all_labels = torch.cat([ds.y_train, ds.y_test]).sort().values
    assert torch.equal(all_labels, torch.from_numpy(np.sort(list_images(root)[1])))
    assert set(ds.y_test.tolist()) == {0, 1, 2}  # stratified
    again = load_dataset(cfg)
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)
    other = load_dataset(cfg.model_copy(update={"seed": 4}))
    assert not torch.equal(other.y_train, ds.y_train) or not torch.equal(other.x_train, ds.x_train)
    capped = load_dataset(cfg.model_copy(update={"max_items": 5}))
    assert torch.equal(capped.x_train, ds.x_train[:5]) and torch.equal(capped.y_train, ds.y_train[:5])
    # one image equals load_image scaled to [-1, 1]
    one = load_dataset(DataConfig(name="image_folder", path=str(root), resolution=8, test_fraction=0.5, max_items=32))
    want = torch.from_numpy(load_image(odd, 8)).permute(2, 0, 1).float() / 127.5 - 1
    assert any(torch.allclose(x, want) for x in torch.cat([one.x_train, one.x_test]))


def test_image_folder_errors_name_the_path(tmp_path):
    def err(path, **kw):
        with pytest.raises(DataError) as info:
            load_dataset(DataConfig(name="image_folder", path=str(path), **kw))
        return str(info.value)

    assert str(tmp_path / "nope") in err(tmp_path / "nope") and "not found" in err(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "no class sub-folders" in err(tmp_path / "empty") and str(tmp_path / "empty") in err(tmp_path / "empty")
    _png(tmp_path / "loose" / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert "sub-folder" in err(tmp_path / "loose", resolution=4)
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "notes.txt").write_text("x")
    assert "no images" in err(tmp_path / "noimg")
    write_synthetic_folder(tmp_path / "partly", 6, 8, 3, 2)
    (tmp_path / "partly" / "class_zz").mkdir()
    assert "class_zz" in err(tmp_path / "partly", resolution=8)  # a class folder without images

    write_synthetic_folder(tmp_path / "bad", 6, 8, 3, 2)
    bad = tmp_path / "bad" / "class_01" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    msg = err(tmp_path / "bad", resolution=8)
    assert str(bad) in msg and "cannot read image" in msg
    # mixed sizes without data.resolution: both files named; with it they load
    write_synthetic_folder(tmp_path / "mixed", 6, 8, 3, 2)
    big = _png(tmp_path / "mixed" / "class_00" / "big.png", np.zeros((10, 12, 3), np.uint8))
    msg = err(tmp_path / "mixed")
    assert str(big) in msg and "data.resolution" in msg and "12×10" in msg
    assert load_dataset(DataConfig(name="image_folder", path=str(tmp_path / "mixed"), resolution=8)).shape == (3, 8, 8)


# ---- CIFAR-10 on a fake folder ---------------------------------------------------------------------

def _fake_cifar(root: Path, per_batch: int = 4, n_test: int = 6) -> tuple[np.ndarray, list[int]]:
    """torchvision's pickled layout: data (n, 3072) uint8 in CHW plane order, labels a list."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
        xs.append(data)
        ys.extend(labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}, f)
    return np.concatenate(xs), ys


@pytest.fixture
def no_md5(monkeypatch):
    """The fake files cannot match torchvision's md5s: skip that one check (the reading is torchvision's)."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)


def test_cifar10_reads_a_fake_folder(tmp_path, no_md5):
    data, labels = _fake_cifar(tmp_path / "c10")
    cfg = DataConfig(name="cifar10", path=str(tmp_path / "c10"), download=False, hflip=True)
    ds = load_dataset(cfg)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32) and ds.shape == (3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64 and ds.num_classes == 10
    assert ds.hflip and ds.kind == "image" and ds.name == "cifar10"
    want = torch.from_numpy(data[:20].reshape(20, 3, 32, 32)).float() / 127.5 - 1
    assert torch.allclose(ds.x_train, want) and ds.y_train.tolist() == labels[:20] and ds.y_test.tolist() == labels[20:]
    assert ds.x_train.min() >= -1 and ds.x_train.max() <= 1
    small = load_dataset(cfg.model_copy(update={"max_items": 7, "hflip": False}))
    assert torch.equal(small.x_train, ds.x_train[:7]) and len(small.y_train) == 7 and not small.hflip
    # the archive alone is extracted (no download)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "c10" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    (tmp_path / "only_tar").mkdir()
    shutil.move(tmp_path / "cifar-10-python.tar.gz", tmp_path / "only_tar")
    assert torch.equal(load_dataset(cfg.model_copy(update={"path": str(tmp_path / "only_tar")})).x_test, ds.x_test)


def test_cifar10_missing_offline_and_corrupt_errors(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar
    from urllib.error import URLError

    root = tmp_path / "c10"
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name="cifar10", path=str(root), download=False))
    msg = str(info.value)
    assert str(root) in msg and "cifar-10-python.tar.gz" in msg and "cifar-10-batches-py" in msg and "data.download" in msg

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    monkeypatch.setenv("MFSWEEP_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name="cifar10", download=True))  # default folder: $MFSWEEP_DATA/cifar10
    msg = str(info.value)
    assert str(tmp_path / "cache" / "cifar10") in msg and "download failed" in msg and "name resolution" in msg
    assert "cifar-10-python.tar.gz" in msg
    # files present but not the official ones: torchvision's md5 check says so
    _fake_cifar(root)
    with pytest.raises(DataError, match="fail torchvision's check"):
        load_dataset(DataConfig(name="cifar10", path=str(root), download=False))


# ---- latents: encode → folder → loader → decode ----------------------------------------------------

@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """24 synthetic 16×16 images in 2 classes, a tiny random VAE (saved), and their latents."""
    from mfsweep.data.encode import encode_folder, tiny_vae

    base = tmp_path_factory.mktemp("latents")
    images = write_synthetic_folder(base / "images", 24, 16, 3, 2, seed=0)
    torch.manual_seed(0)
    tiny_vae(16).save_pretrained(base / "vae")
    summary = encode_folder(images, base / "out", vae=base / "vae", resolution=16, batch_size=5, seed=7,
                            progress=False, threads=2)
    return base, summary


def test_encode_loader_decode_round_trip(encoded):
    from diffusers import AutoencoderKL

    from mfsweep.data.encode import posterior_noise

    base, summary = encoded
    out = base / "out"
    assert sorted(p.name for p in out.iterdir()) == ["files.txt", "labels.npy", "latents.npy", "meta.json"]
    meta = json.loads((out / "meta.json").read_text())
    vae = AutoencoderKL.from_pretrained(base / "vae").eval()
    assert meta["scaling_factor"] == vae.config.scaling_factor == summary["scaling_factor"]
    assert meta["count"] == summary["count"] == 24 and meta["shape"] == summary["shape"] == [4, 8, 8]
    assert meta["vae_kind"] == "path" and meta["vae"] == str((base / "vae").resolve())
    assert meta["class_names"] == ["class_00", "class_01"] and meta["posterior"] == "sample" and meta["seed"] == 7

    ds = load_dataset(DataConfig(name="latents", path=str(out), test_fraction=0.25))
    assert ds.x_train.shape == (18, 4, 8, 8) and ds.x_test.shape == (6, 4, 8, 8) and ds.shape == (4, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64 and ds.num_classes == 2
    assert ds.image_shape == (3, 16, 16) and ds.kind == "image" and ds.split_seed == 7
    # labels preserved: each row's label is its source image's class folder
    rows = (out / "files.txt").read_text().split()
    assert len(rows) == 24 and sorted(rows) == sorted(p.relative_to(base / "images").as_posix()
                                                      for p in list_images(base / "images")[0])
    labels = torch.cat([ds.y_train, ds.y_test]).tolist()
    assert labels == [meta["class_names"].index(r.split("/")[0]) for r in rows]
    # a row equals vae.encode of its image, recomputed here: (mean + std * eps) * scaling_factor
    x_all = torch.cat([ds.x_train, ds.x_test])
    for r in (0, 13, 23):
        img = torch.from_numpy(load_image(base / "images" / rows[r], 16)).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            dist = vae.encode(img).latent_dist
        # the documented noise recipe, written out: randn from a CPU generator seeded by SeedSequence([seed, row])
        state = int(np.random.SeedSequence([7, r]).generate_state(1, np.uint64)[0])
        eps = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(state))
        assert torch.equal(eps, posterior_noise(7, r, (4, 8, 8)))
        want = (dist.mean + dist.std * eps) * vae.config.scaling_factor
        assert torch.allclose(x_all[r], want[0], atol=1e-5), (x_all[r] - want[0]).abs().max()
        assert not torch.allclose(x_all[r], dist.mean[0] * vae.config.scaling_factor, atol=1e-3)  # sampled
    # decode: images of image_shape in [-1, 1], equal to the VAE's own decode
    imgs = ds.decode(ds.x_train[:5])
    assert imgs.shape == (5, 3, 16, 16) and imgs.dtype == torch.float32 and imgs.min() >= -1 and imgs.max() <= 1
    with torch.no_grad():
        ref = vae.decode(ds.x_train[:5] / vae.config.scaling_factor).sample.clamp(-1, 1)
    assert torch.allclose(imgs, ref, atol=1e-5)
    assert ds.decode(ds.x_train[:0]).shape == (0, 3, 16, 16)
    restored = pickle.loads(pickle.dumps(ds.decode))  # picklable (Ray), reloads its VAE
    assert torch.allclose(restored(ds.x_train[:2]), imgs[:2], atol=1e-6)
    capped = load_dataset(DataConfig(name="latents", path=str(out), test_fraction=0.25, max_items=4, hflip=True))
    assert torch.equal(capped.x_train, ds.x_train[:4]) and torch.equal(capped.y_train, ds.y_train[:4]) and capped.hflip


def test_encoding_is_reproducible_whatever_the_batch_size(encoded, tmp_path):
    from mfsweep.data.encode import encode_folder

    base, _ = encoded
    encode_folder(base / "images", tmp_path / "again", vae=base / "vae", resolution=16, batch_size=24, seed=7,
                  progress=False, threads=1)
    a, b = (np.load(p / "latents.npy") for p in (base / "out", tmp_path / "again"))
    assert np.allclose(a, b, atol=1e-5)
    encode_folder(base / "images", tmp_path / "mean", vae=base / "vae", resolution=16, seed=7, posterior="mean",
                  progress=False, threads=1)
    m = np.load(tmp_path / "mean" / "latents.npy")
    assert m.shape == a.shape and not np.allclose(m, a, atol=1e-3)
    assert json.loads((tmp_path / "mean" / "meta.json").read_text())["posterior"] == "mean"


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process that map ``path`` (Linux /proc/self/maps)."""
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] == str(path):
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            out.append((lo, hi))
    return out


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_latents_are_memory_mapped_not_copied(encoded, tmp_path):
    base, _ = encoded
    out = tmp_path / "copy"
    shutil.copytree(base / "out", out)
    ds = load_dataset(DataConfig(name="latents", path=str(out), test_fraction=0.25, vae=str(base / "vae")))
    file = (out / "latents.npy").resolve()
    ranges = _mapped_ranges(file)
    assert ranges, "latents.npy is not mapped into memory"
    for t in (ds.x_train, ds.x_test):
        ptr = t.data_ptr()
        assert any(lo <= ptr < hi for lo, hi in ranges), "x_train / x_test do not live in the file's mapping"
    # a change to the file shows through the tensors: they are the file's pages, not a copy
    before = ds.x_train[3, 0, 0, 0].item()
    disk = np.load(file, mmap_mode="r+")
    disk[3, 0, 0, 0] = before + 1000.0
    disk.flush()
    del disk
    assert ds.x_train[3, 0, 0, 0].item() == pytest.approx(before + 1000.0)


def test_latent_folder_errors(encoded, tmp_path):
    base, _ = encoded

    def err(path, **kw):
        with pytest.raises(DataError) as info:
            load_dataset(DataConfig(name="latents", path=str(path), **kw))
        return str(info.value)

    assert str(tmp_path / "nope") in err(tmp_path / "nope")
    (tmp_path / "nometa").mkdir()
    assert "meta.json" in err(tmp_path / "nometa")
    # latents of another shape / dtype than meta.json says
    shaped = tmp_path / "shaped"
    shutil.copytree(base / "out", shaped)
    np.save(shaped / "latents.npy", np.zeros((24, 4, 4, 4), np.float32))
    assert "shape or dtype" in err(shaped) and "latents.npy" in err(shaped)
    np.save(shaped / "latents.npy", np.zeros((24, 4, 8, 8), np.float64))
    assert "shape or dtype" in err(shaped)
    # one label per latent
    counted = tmp_path / "counted"
    shutil.copytree(base / "out", counted)
    np.save(counted / "labels.npy", np.zeros(23, np.int64))
    assert "labels" in err(counted) and "24" in err(counted)
    # a missing VAE: the override, or the one meta.json records
    msg = err(base / "out", vae=str(tmp_path / "no_vae"))
    assert str(tmp_path / "no_vae") in msg and "stabilityai/sd-vae-ft-ema" in msg and "config.json" in msg
    moved = tmp_path / "moved"
    shutil.copytree(base / "out", moved)
    meta = json.loads((moved / "meta.json").read_text())
    (moved / "meta.json").write_text(json.dumps({**meta, "vae": str(tmp_path / "gone")}))
    assert "data.vae" in err(moved) and "stabilityai/sd-vae-ft-mse" in err(moved)


def test_encode_refuses_bad_input_and_leaves_nothing(encoded, tmp_path):
    from mfsweep.data.encode import encode_folder

    base, _ = encoded
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "keep.txt").write_text("x")

    def fails(images, out, vae, match, **kw):
        with pytest.raises(DataError, match=match):
            encode_folder(images, out, vae=vae, resolution=16, progress=False, **kw)
        assert sorted(p.name for p in parent.iterdir()) == ["keep.txt"], list(parent.iterdir())

    fails(base / "images", parent / "out", tmp_path / "no_vae", "stabilityai/sd-vae-ft-ema")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", parent / "out", base / "vae", "no class sub-folders")
    # a corrupt image found mid-way (after the temporary folder exists): named, and nothing left
    bad_dir = tmp_path / "bad"
    shutil.copytree(base / "images", bad_dir)
    bad = bad_dir / "class_01" / "000099.png"
    bad.write_bytes(b"garbage")
    fails(bad_dir, parent / "out", base / "vae", str(bad).replace("\\", "\\\\"), batch_size=4, threads=1)
    # out exists and is not empty
    with pytest.raises(DataError, match="not empty"):
        encode_folder(base / "images", parent, vae=base / "vae", resolution=16, progress=False)
    assert sorted(p.name for p in parent.iterdir()) == ["keep.txt"]


def test_demo_latents_are_self_contained(tmp_path):
    from mfsweep.data.encode import build_demo_latents

    out = build_demo_latents(tmp_path / "demo", num_images=12, resolution=16, num_classes=3, seed=1)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vae_kind"] == "folder" and meta["vae"] == "vae" and (out / "vae" / "config.json").is_file()
    moved = shutil.move(out, tmp_path / "elsewhere")  # the VAE copy travels with the folder
    ds = load_dataset(DataConfig(name="latents", path=str(moved), conditional=True, test_fraction=0.25))
    assert ds.shape == (4, 8, 8) and ds.num_classes == 3 and len(ds.x_train) == 9
    assert ds.decode(ds.x_test).shape == (3, 3, 16, 16)
    again = build_demo_latents(tmp_path / "demo2", num_images=12, resolution=16, num_classes=3, seed=1)
    assert np.allclose(np.load(again / "latents.npy"), np.load(Path(moved) / "latents.npy"))


def test_encode_command_exit_codes_and_nothing_written(encoded, tmp_path, capsys):
    """`mfsweep encode` through the CLI: 0 and a summary line on good input; 2, one clear line and
    nothing written on an empty folder, a missing VAE or a non-empty output folder."""
    from mfsweep.cli import main

    base, _ = encoded
    out = tmp_path / "cli_out"
    assert main(["encode", str(base / "images"), str(out), "--vae", str(base / "vae"), "--resolution", "16",
                 "--device", "cpu", "--no-progress"]) == 0
    assert "scaling factor" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["count"] > 0
    (tmp_path / "empty").mkdir()
    for args, match in ((["encode", str(tmp_path / "empty"), str(tmp_path / "o1"), "--vae", str(base / "vae")],
                         "no class sub-folders"),
                        (["encode", str(base / "images"), str(tmp_path / "o2"), "--vae", str(tmp_path / "nope")],
                         "sd-vae-ft-ema"),
                        (["encode", str(base / "images"), str(out), "--vae", str(base / "vae")], "not empty")):
        assert main([*args, "--resolution", "16", "--device", "cpu", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and match in err and "Traceback" not in err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("name", ["moons", "digits"])
def test_max_items_caps_every_source_not_only_the_image_loaders(name):
    full = load_dataset(DataConfig(name=name, num_train=200, conditional=True))
    capped = load_dataset(DataConfig(name=name, num_train=200, conditional=True, max_items=10))
    assert capped.x_train.shape[0] == 10 and capped.y_train.shape[0] == 10
    assert torch.equal(capped.x_train, full.x_train[:10]) and torch.equal(capped.y_train, full.y_train[:10])
    assert torch.equal(capped.x_test, full.x_test)  # the held-out split is untouched
