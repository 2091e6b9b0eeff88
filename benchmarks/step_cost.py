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

Each setup also reports the full-batch-JVP ratio (``ratio_full_jvp``: 100% r ≠ t), so that the 25%
figure is not compared apples to oranges with a full-batch one, and with ``--compile`` the same
ratios for the torch.compile'd loss call (train.compile; the compile time of each loss is reported
apart, ``compile_s``). ``--setups`` picks backbones: mlp, unet, dit (dit_tiny, CPU sizes; the
default) and the paper sizes dit_b2, unet_cifar for a GPU; ``--precision bf16`` runs the network under
bf16 autocast (train.precision); ``--batch`` overrides every setup's batch.
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
from mfsweep.training.fast import compiled_loss, with_precision

SETUPS = {
    "mlp": dict(model=ModelConfig(backbone="mlp", hidden_dim=256, depth=3), shape=(2,), batch=256),
    "unet": dict(model=ModelConfig(backbone="unet", channels=32, channel_mult=[1, 2]), shape=(1, 8, 8), batch=128),
    "dit": dict(model=ModelConfig(backbone="dit_tiny"), shape=(4, 8, 8), batch=64),
    "unet_cifar_tiny": dict(model=ModelConfig(backbone="unet_cifar_tiny"), shape=(3, 16, 16), batch=32),
    # paper sizes, for a GPU (benchmarks/gpu_check.sh)
    "dit_b2": dict(model=ModelConfig(backbone="dit_b2", time_scale=1000.0), shape=(4, 32, 32), batch=256),
    "unet_cifar": dict(model=ModelConfig(backbone="unet_cifar", time_scale=1000.0), shape=(3, 32, 32), batch=128),
}
DEFAULT_SETUPS = ("mlp", "unet", "dit")


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


def _setup(name: str, device: torch.device, batch: int | None = None):
    """Backbone, optimizer, a fixed batch (``batch`` rows, default the setup's) and a generator."""
    s = SETUPS[name]
    torch.manual_seed(0)
    net = build_backbone(s["model"], s["shape"], None).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(batch or s["batch"], *s["shape"], device=device)
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


def measure(name: str, device: torch.device, iters: int, warmup: int, frac: float, precision: str = "fp32",
            compile: bool = False, batch: int | None = None) -> dict:
    net, opt, x, gen = _setup(name, device, batch)
    call = with_precision(net, precision, device)
    losses = {"fm": MeanFlowLoss(frac_r_neq_t=0.0), "mf": MeanFlowLoss(frac_r_neq_t=frac),
              "mf_fwd": MeanFlowLoss(frac_r_neq_t=frac, u_from="forward"),
              "mf_full": MeanFlowLoss(frac_r_neq_t=1.0)}
    ms = _median_ms(call, opt, losses, x, gen, device, iters, warmup)
    mem = {k: _peak_bytes(call, opt, fn, x, gen, device) for k, fn in losses.items()}
    out = {"jvp_rows": frac, "precision": precision, "fm_ms": round(ms["fm"], 3), "mf_ms": round(ms["mf"], 3),
           "ratio": round(ms["mf"] / ms["fm"], 3), "mem_ratio": round(mem["mf"] / mem["fm"], 3),
           # meanflow.u_from = "forward": no-grad JVP for the target, one plain forward for u
           "mf_forward_ms": round(ms["mf_fwd"], 3), "forward_ratio": round(ms["mf_fwd"] / ms["fm"], 3),
           "forward_mem_ratio": round(mem["mf_fwd"] / mem["fm"], 3),
           "ratio_full_jvp": round(ms["mf_full"] / ms["fm"], 3), "mem_ratio_full_jvp": round(mem["mf_full"] / mem["fm"], 3),
           "batch": int(x.shape[0]),
           "mem_method": "cuda_max_allocated" if device.type == "cuda" else "autograd_saved_bytes"}
    if compile:
        compiled, compile_s = {}, {}
        torch._dynamo.reset()  # each setup starts as a fresh trial process would (no recompile limit carried over)
        for key in ("fm", "mf"):
            compiled[key] = compiled_loss(losses[key], fresh=False)  # both stay compiled, timed side by side
            _sync(device)
            t0 = time.perf_counter()
            _step(call, opt, compiled[key], x, gen)  # the first call compiles
            _sync(device)
            compile_s[key] = round(time.perf_counter() - t0, 1)
        cms = _median_ms(call, opt, compiled, x, gen, device, iters, warmup)
        out["compiled"] = {"fm_ms": round(cms["fm"], 3), "mf_ms": round(cms["mf"], 3),
                           "ratio": round(cms["mf"] / cms["fm"], 3), "mf_speedup_vs_eager": round(ms["mf"] / cms["mf"], 3),
                           "compile_s": compile_s}
    return out


def measure_methods(name: str, device: torch.device, iters: int, warmup: int, batch: int | None = None) -> dict:
    """Median step time of every registered method (default settings) and its ratio to flow_matching."""
    net, opt, x, gen = _setup(name, device, batch)
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
    p.add_argument("--setups", default=",".join(DEFAULT_SETUPS), help=f"comma-separated, from {', '.join(SETUPS)}")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd loss call")
    p.add_argument("--batch", type=int, help="batch size for every setup")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        p.error(f"unknown setup(s) {unknown}; valid: {', '.join(SETUPS)}")
    result = {name: measure(name, device, args.iters, args.warmup, args.frac, args.precision, args.compile, args.batch)
              for name in setups}
    if not args.no_methods:
        result["methods"] = {name: measure_methods(name, device, args.iters, args.warmup, args.batch)
                             for name in setups}
    if not args.json:
        print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} frac_r_neq_t={args.frac}")
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
