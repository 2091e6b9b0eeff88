"""Cost of one MeanFlow training step relative to Flow Matching, measured in one process.

    python benchmarks/step_cost.py --json

For each backbone (the MLP on 2-D data, the small U-Net on 8×8 digits) it times a full optimizer
step (loss, backward, Adam) for MeanFlow at 25% r ≠ t (u from the JVP's primal output, and with
meanflow.u_from = "forward") and for Flow Matching (0%), alternating them so that machine noise
hits all alike, and prints the median step times, their ratio and the
ratio of peak memory. Peak memory is CUDA's max_memory_allocated on a GPU; on a CPU it is the bytes
autograd saves for the backward pass (the activation memory that dominates the peak), counted
with saved_tensors_hooks. The paper reports a MeanFlow/FM step ratio of 1.16 (JAX, TPU).

It also times every registered training method (``method.name``, mfsweep.methods.METHODS) with its
default settings, built from a trial config as a study would, relative to ``flow_matching`` on the
same backbone and batch. Methods with a schedule are timed in their end-of-training state
(``on_step(total, total)``: α-Flow at its final α, consistency training after warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from mfsweep.config import ModelConfig, load_trial_config
from mfsweep.methods import METHODS
from mfsweep.methods.meanflow import MeanFlowLoss
from mfsweep.models import build_backbone

SETUPS = {
    "mlp": dict(model=ModelConfig(backbone="mlp", hidden_dim=256, depth=3), shape=(2,), batch=256),
    "unet": dict(model=ModelConfig(backbone="unet", channels=32, channel_mult=[1, 2]), shape=(1, 8, 8), batch=128),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _step(net, opt, loss_fn, x, gen):
    loss, _ = loss_fn(net, x, generator=gen)
    opt.zero_grad(set_to_none=True)
    loss.mean().backward()
    opt.step()


def _saved_bytes(net, loss_fn, x, gen) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = loss_fn(net, x, generator=gen)
    loss.mean().backward()
    return total


def _peak_bytes(net, opt, loss_fn, x, gen, device) -> int:
    if device.type != "cuda":
        return _saved_bytes(net, loss_fn, x, gen)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _step(net, opt, loss_fn, x, gen)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _setup(name: str, device: torch.device):
    """Backbone, optimizer, a fixed batch and a generator for the setup ``name``."""
    s = SETUPS[name]
    torch.manual_seed(0)
    net = build_backbone(s["model"], s["shape"], None).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(s["batch"], *s["shape"], device=device)
    return net, opt, x, torch.Generator(device=device).manual_seed(0)


def _median_ms(net, opt, losses: dict, x, gen, device, iters: int, warmup: int) -> dict[str, float]:
    """Median step time (ms) of each loss, the losses interleaved so that machine noise hits all alike."""
    times = {k: [] for k in losses}
    for i in range(warmup + iters):
        for key, loss_fn in losses.items():
            _sync(device)
            t0 = time.perf_counter()
            _step(net, opt, loss_fn, x, gen)
            _sync(device)
            if i >= warmup:
                times[key].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def measure(name: str, device: torch.device, iters: int, warmup: int, frac: float) -> dict:
    net, opt, x, gen = _setup(name, device)
    losses = {"fm": MeanFlowLoss(frac_r_neq_t=0.0), "mf": MeanFlowLoss(frac_r_neq_t=frac),
              "mf_fwd": MeanFlowLoss(frac_r_neq_t=frac, u_from="forward")}
    ms = _median_ms(net, opt, losses, x, gen, device, iters, warmup)
    mem = {k: _peak_bytes(net, opt, fn, x, gen, device) for k, fn in losses.items()}
    return {"fm_ms": round(ms["fm"], 3), "mf_ms": round(ms["mf"], 3), "ratio": round(ms["mf"] / ms["fm"], 3),
            "mem_ratio": round(mem["mf"] / mem["fm"], 3),
            # meanflow.u_from = "forward": no-grad JVP for the target, one plain forward for u
            "mf_forward_ms": round(ms["mf_fwd"], 3), "forward_ratio": round(ms["mf_fwd"] / ms["fm"], 3),
            "forward_mem_ratio": round(mem["mf_fwd"] / mem["fm"], 3), "batch": SETUPS[name]["batch"],
            "mem_method": "cuda_max_allocated" if device.type == "cuda" else "autograd_saved_bytes"}


def measure_methods(name: str, device: torch.device, iters: int, warmup: int) -> dict:
    """Median step time of every registered method (default settings) and its ratio to flow_matching."""
    net, opt, x, gen = _setup(name, device)
    losses = {}
    for method in METHODS:
        loss_fn = METHODS.lookup(method)(load_trial_config({"method": {"name": method}}), None)
        if hasattr(loss_fn, "on_step"):
            loss_fn.on_step(1000, 1000)
        losses[method] = loss_fn
    ms = _median_ms(net, opt, losses, x, gen, device, iters, warmup)
    return {k: {"ms": round(v, 3), "ratio_vs_flow_matching": round(v / ms["flow_matching"], 3)} for k, v in ms.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--frac", type=float, default=0.25, help="fraction of rows with r ≠ t for MeanFlow")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-methods", action="store_true", help="skip timing every registered method vs flow_matching")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {name: measure(name, device, args.iters, args.warmup, args.frac) for name in SETUPS}
    if not args.no_methods:
        result["methods"] = {name: measure_methods(name, device, args.iters, args.warmup) for name in SETUPS}
    if not args.json:
        print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} frac_r_neq_t={args.frac}")
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
