"""Where a MeanFlow step's extra time goes on CPU: the dual-tensor matrix product, and the ops of
the MLP step under torch.profiler (issue 13 §1). Measured in one process; prints one JSON object.

    python benchmarks/jvp_profile.py [--threads 1] [--json]

1. ``matmul``: a 1024×256 @ 256×256 product — plain, inside ``torch.func.jvp`` (primal and tangent),
   and two plain products (what the maths needs: A·W and Ȧ·W) — median over repeats, and how the
   ratio moves with the row count.
2. ``profile``: the top self-CPU ops of one Flow Matching step and one MeanFlow step (25% r ≠ t)
   of the MLP 256×3 at batch 256, and the number of ops each launches (per-op overhead: at toy
   sizes the step is bound by how many ops run, not by their arithmetic).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mfsweep.config import ModelConfig
from mfsweep.methods.meanflow import MeanFlowLoss
from mfsweep.models import build_backbone


def _median_ms(fn, repeats: int = 50, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def matmul(rows: int, width: int = 256) -> dict:
    a, w, da = torch.randn(rows, width), torch.randn(width, width), torch.randn(rows, width)
    plain = _median_ms(lambda: a @ w)
    dual = _median_ms(lambda: torch.func.jvp(lambda x: x @ w, (a,), (da,)))
    two = _median_ms(lambda: (a @ w, da @ w))
    return {"rows": rows, "plain_ms": round(plain, 3), "jvp_ms": round(dual, 3), "two_plain_ms": round(two, 3),
            "jvp_over_plain": round(dual / plain, 2), "jvp_over_two_plain": round(dual / two, 2)}


def step_profile(frac: float, batch: int = 256) -> dict:
    torch.manual_seed(0)
    net = build_backbone(ModelConfig(backbone="mlp", hidden_dim=256, depth=3), (2,), None)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn, x, gen = MeanFlowLoss(frac_r_neq_t=frac), torch.randn(batch, 2), torch.Generator().manual_seed(0)

    def step():
        loss, _ = loss_fn(net, x, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()

    ms = _median_ms(step, repeats=30)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    events = prof.key_averages()
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return {"frac_r_neq_t": frac, "step_ms": round(ms, 3), "ops_per_step": sum(e.count for e in events) // 10,
            "top_self_cpu": [{"op": e.key, "calls_per_step": e.count // 10,
                              "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / 10, 3)} for e in top]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "matmul": [matmul(n) for n in (64, 256, 1024, 4096)],
           "fm_step": step_profile(0.0), "mf_step": step_profile(0.25)}
    out["ops_ratio_mf_over_fm"] = round(out["mf_step"]["ops_per_step"] / out["fm_step"]["ops_per_step"], 2)
    out["step_ratio_mf_over_fm"] = round(out["mf_step"]["step_ms"] / out["fm_step"]["step_ms"], 3)
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
