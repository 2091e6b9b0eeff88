"""GPU check for paper-scale work, one JSON object on stdout (run through benchmarks/gpu_check.sh).

- MF/FM step-time and peak-memory ratios (25% r ≠ t, and the full-batch JVP) for DiT-B/2 on
  4×32×32 latents in bf16 at batch 256, halved until it fits, and for the CIFAR-10 U-Net in bf16
  (benchmarks/step_cost.py's ``measure``, the same code as the CPU figures);
- 1-NFE sampling throughput (images/s, DiT-B/2 latents, no decoding);
- the FID feature throughput (images/s: uint8 → 299×299 → Inception-v3 pool features, torchvision's
  architecture with random weights: the device has no internet, so this times the network, not a FID).

``--tiny`` runs the same code on the tiny backbones (a CPU dry run of this script).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import step_cost
from mfsweep.config import ModelConfig
from mfsweep.methods.sampling import make_time_grid, sample
from mfsweep.models import build_backbone


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_ratios(name: str, device, batch: int, iters: int) -> dict:
    while batch >= 8:
        try:
            return step_cost.measure(name, device, iters, 3, 0.25, precision="bf16", batch=batch)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            batch //= 2
    return {"error": "out of memory down to batch 8"}


def sampling_throughput(backbone: str, shape, device, batch: int, reps: int = 5) -> float:
    net = build_backbone(ModelConfig(backbone=backbone, time_scale=1000.0), shape, 1000).to(device).eval()
    z = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    grid = make_time_grid(1, "linspace").to(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        sample(net, z, y, grid)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            sample(net, z, y, grid)
        _sync(device)
    return round(batch * reps / (time.perf_counter() - t0), 1)


def fid_feature_throughput(device, batch: int, reps: int = 3) -> float:
    from torchvision.models import inception_v3

    # torchvision's Inception-v3 architecture with random weights (the device cannot download
    # torch-fidelity's weights); pool features, as FID uses
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    model.fc = torch.nn.Identity()
    model = model.to(device).eval()
    x = torch.randint(0, 256, (batch, 3, 256, 256), device=device, dtype=torch.uint8)
    with torch.no_grad():
        def run():
            img = torch.nn.functional.interpolate(x.float() / 127.5 - 1, size=(299, 299), mode="bilinear")
            return model(img)
        run()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            run()
        _sync(device)
    return round(batch * reps / (time.perf_counter() - t0), 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", action="store_true", help="tiny backbones (a CPU dry run)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "tiny": args.tiny}
    dit, unet = ("dit", "unet_cifar_tiny") if args.tiny else ("dit_b2", "unet_cifar")
    iters = 3 if args.tiny else 20
    out["dit_b2_bf16"] = step_ratios(dit, device, 16 if args.tiny else 256, iters)
    out["unet_cifar_bf16"] = step_ratios(unet, device, 8 if args.tiny else 128, iters)
    shape = (4, 8, 8) if args.tiny else (4, 32, 32)
    out["sampling_1nfe_images_per_s"] = sampling_throughput("dit_tiny" if args.tiny else "dit_b2", shape, device,
                                                            8 if args.tiny else 256)
    out["fid_features_images_per_s_random_inception"] = fid_feature_throughput(device, 4 if args.tiny else 200,
                                                                               1 if args.tiny else 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
