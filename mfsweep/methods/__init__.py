"""The training methods and their ablation axes, in one time convention (docs/method.md §1): t = 1
is noise, t = 0 is data, z_t = (1 − t)·x + t·e, v = e − x; the network predicts u(z_t, r, t).

    meanflow.py       the MeanFlow target (one torch.func.jvp) and loss (Geng et al. 2025)
    flow_matching.py  plain conditional Flow Matching (r = t, no JVP), sampled with Euler
    imf.py            improved MeanFlow: the v-loss with the model's own velocity as JVP tangent
    alphaflow.py      α-Flow: a curriculum from trajectory Flow Matching to MeanFlow
    shortcut.py       shortcut models: self-consistency over the step size, no JVP
    consistency.py    continuous-time consistency training (r ≡ 0)
    timesteps.py      (t, r) samplers (paper Table 1a, 1d)
    sampling.py       time grids and few-step sampling, ``sample(net, noise, labels, time_grid)``

The method contract (``METHODS``): ``from_config(cfg: TrialConfig, num_classes: int | None)``
returns a loss object with

    loss(net, x, y=None, generator=None) -> (per-sample loss (B,), monitors)
        net(z, r, t, y) -> u; x: data (B, ...); y: labels (B,) or None; monitors: detached
        scalar tensors, at least "mse" and "loss". Hyper-parameters are fixed at construction;
        no optimizer, EMA or DDP inside.
    loss.sampling_velocity: "average" | "instantaneous" | "origin"
        how ``sample`` calls the network (``eval.velocity: auto`` uses it).
    loss.on_step(step, total_steps)   (optional)
        called by the training loop before each step, for methods with a schedule.

The registries below list the names a config may use without importing torch.
"""

from __future__ import annotations

from mfsweep.registry import Registry, lazy

#: ``meanflow.time_sampler.name`` → ``fn(n, params, generator, device) -> (a, b)``: two independent
#: draws of shape (n,); t = max, r = min.
TIME_SAMPLERS = Registry("time sampler", {
    "uniform": lazy("mfsweep.methods.timesteps:uniform_pair"),
    "logit_normal": lazy("mfsweep.methods.timesteps:logit_normal_pair"),
    "separate_logit_normal": lazy("mfsweep.methods.timesteps:separate_logit_normal_pair"),
})

#: ``meanflow.tangent`` → the JVP tangent's (dr, dt) on (z, r, t); z always gets v. Paper Table 1b:
#: only (v, 0, 1), the total derivative d/dt along the trajectory, is correct.
TANGENTS = Registry("tangent", {
    "v01": (0.0, 1.0),
    "v00": (0.0, 0.0),
    "v10": (1.0, 0.0),
    "v11": (1.0, 1.0),
})

#: ``method.name`` → ``from_config(cfg, num_classes) -> loss`` (the contract above).
METHODS = Registry("method", {name: lazy(f"mfsweep.methods.{name}:from_config") for name in (
    "flow_matching", "meanflow", "imf", "alphaflow", "shortcut", "consistency")})

#: ``eval.grid`` → ``fn(nfe, dtype, device) -> (nfe + 1,)`` decreasing times from 1 to 0.
TIME_GRIDS = Registry("time-grid rule", {
    "linspace": lazy("mfsweep.methods.sampling:linspace_grid"),
})
