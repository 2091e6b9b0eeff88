"""Typed trial configuration, validated at load (pydantic): unknown keys are rejected with their dotted
path, ranges and registry names are checked, and every error is reported at once.

The rest of the code never sees a raw dict: ``load_trial_config(dict) -> TrialConfig``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mfsweep.data import DATASETS, TOYS
from mfsweep.methods import METHODS, TANGENTS, TIME_GRIDS, TIME_SAMPLERS
from mfsweep.models import BACKBONES, IMAGE_BACKBONES, TIME_EMBEDDINGS


class ConfigError(ValueError):
    """Invalid configuration. ``errors`` is a list of (dotted path, message); str() lists them all."""

    def __init__(self, errors: list[tuple[str, str]], source: str = "config"):
        self.errors = errors
        self.source = source
        if len(errors) == 1:  # one problem, one line (what a shell user reads first)
            path, msg = errors[0]
            super().__init__(f"invalid {source}: {path + ': ' if path else ''}{msg}")
            return
        lines = "\n".join(f"  {path or '<root>'}: {msg}" for path, msg in errors)
        n = len(errors)
        super().__init__(f"invalid {source} ({n} error{'s' * (n != 1)}):\n{lines}")


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, defaults are validated too, and a float
    must be finite (``.nan`` / ``.inf`` in YAML are errors, not a silently broken run)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class DataConfig(Strict):
    name: str = "checkerboard"
    # npy: a .npy (x) or .npz (x, optional y) file; image_folder: the folder of class sub-folders;
    # latents: the folder `mfsweep encode` wrote; cifar10: the download folder (default: the cache)
    path: str | None = None
    num_train: int = Field(20000, ge=2, description="toys / synthetic_images: generated training items")
    num_test: int = Field(5000, ge=2, description="toys / synthetic_images: generated held-out items")
    test_fraction: float = Field(0.2, gt=0, lt=1, description=(
        "digits / npy / image_folder / latents: held-out fraction (latents: the last rows of the file, "
        "whose order `mfsweep encode --seed` fixed)"))
    seed: int = 0  # data generation and split; fixed across a study's trials
    conditional: bool = False  # train on class labels (needed for CFG)
    resolution: int | None = Field(None, ge=4, description="image_folder / synthetic_images: image side in pixels")
    channels: int = Field(3, ge=1, le=4, description="synthetic_images: image channels")
    num_classes: int = Field(10, ge=1, description="synthetic_images: classes")
    hflip: bool = Field(False, description="images: random horizontal flips of training batches (paper: CIFAR-10)")
    download: bool = Field(True, description="cifar10: download into data.path when it is missing")
    max_items: int | None = Field(None, ge=2, description="use at most this many training items (smoke runs)")
    vae: str | None = Field(None, description="latents: decode with this VAE (path or hub name) instead of the shards' own")

    _name = field_validator("name")(lambda v: DATASETS.check(v))

    @model_validator(mode="after")
    def _path_required(self):
        if self.name in ("npy", "image_folder", "latents") and not self.path:
            what = {"npy": "a .npy or .npz file", "image_folder": "a folder of class sub-folders",
                    "latents": "the folder `mfsweep encode` wrote"}[self.name]
            raise ValueError(f"data.path is required when data.name is {self.name!r} ({what})")
        return self


class ModelConfig(Strict):
    backbone: str = "mlp"
    hidden_dim: int = Field(256, ge=1, description="mlp width")
    depth: int = Field(3, ge=1, description="mlp residual blocks")
    channels: int = Field(32, ge=1, description="unet base channels")
    channel_mult: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    time_embedding: str = "t_tr"  # (t, t−r); Table 1c variants: t_r, tr, t_r_tr
    # Times in [0, 1] are multiplied by this before the sinusoidal features. DiT uses 1000; the JVP
    # differentiates through the sinusoids, and on the checkerboard 10 gave better 1-NFE samples
    # (docs/benchmarks.md, "time_scale").
    time_scale: float = Field(10.0, gt=0, description="times are multiplied by this before the sinusoids")
    dropout: float = Field(0.0, ge=0, lt=1)

    _backbone = field_validator("backbone")(lambda v: BACKBONES.check(v))
    _emb = field_validator("time_embedding")(lambda v: TIME_EMBEDDINGS.check(v))


class TimeSamplerConfig(Strict):
    name: str = "logit_normal"
    mu: float = -0.4  # logit-normal location (of t for separate_logit_normal)
    sigma: float = Field(1.0, gt=0)
    # How the two draws become (t, r): "max_min" t = max, r = min (the paper); "clip_r" the first draw
    # is t and r = min(t, second draw), so t keeps its own distribution (the official PyTorch code's
    # improved CIFAR-10 setting, docs/method.md §3).
    order: Literal["max_min", "clip_r"] = "max_min"
    r_mu: float = -4.0  # separate_logit_normal only: r ~ LN(r_mu, r_sigma)
    r_sigma: float = Field(1.6, gt=0)

    _name = field_validator("name")(lambda v: TIME_SAMPLERS.check(v))


class CFGConfig(Strict):
    omega: float = Field(1.0, gt=0)
    kappa: float = Field(0.0, ge=0, lt=1)
    t_start: float = Field(0.0, ge=0, le=1)
    t_end: float = Field(1.0, ge=0, le=1)
    class_dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _interval(self):
        if not self.t_start < self.t_end:
            raise ValueError(f"need 0 ≤ t_start < t_end ≤ 1, got t_start={self.t_start}, t_end={self.t_end}")
        return self


class MeanFlowConfig(Strict):
    frac_r_neq_t: float = Field(0.25, ge=0, le=1, description="fraction of rows with r ≠ t; 0 = Flow Matching")
    time_sampler: TimeSamplerConfig = Field(default_factory=TimeSamplerConfig)
    tangent: str = "v01"
    weight_power: float = Field(1.0, ge=0, description="adaptive weight power p; 0 = plain L2")
    weight_eps: float = Field(1e-3, gt=0, description="adaptive weight constant c")
    cfg: CFGConfig = Field(default_factory=CFGConfig)
    # "jvp": u is the JVP's primal output (docs/method.md §2). "forward": the JVP only makes the target
    # (no_grad) and one plain forward gives u: same gradients, less memory (needs dropout 0).
    u_from: Literal["jvp", "forward"] = "jvp"

    _tangent = field_validator("tangent")(lambda v: TANGENTS.check(v))


# ---- the training method (mfsweep.methods) ------------------------------------------------------
# Each method's own settings live in its block under `method:`; only the chosen method's block may
# be given. Shared settings (time sampler, weighting, class dropout and guidance) stay in the
# `meanflow:` block; METHOD_KEYS says which of its keys each method reads.


class IMFConfig(Strict):
    """``method.imf``: improved MeanFlow (mfsweep/methods/imf.py)."""

    # The JVP's z-tangent: "model", the network's own u(z_t, t, t) without gradient (iMF §4.1), or
    # "conditional", e − x, with which the v-loss equals MeanFlow's loss: the paper's MF → iMF change.
    tangent_velocity: Literal["model", "conditional"] = "model"


class AlphaFlowConfig(Strict):
    """``method.alphaflow``: α-Flow (mfsweep/methods/alphaflow.py). The curriculum anneals the consistency
    step ratio α from 1 (trajectory Flow Matching) to 0 (MeanFlow) along a sigmoid over the window
    [anneal_start_frac, anneal_end_frac] of train.steps; defaults from the public B/2 recipe
    (snap-research/alphaflow: sigmoid 0 → max_steps, gamma 25, clamp 0.005)."""

    anneal_start_frac: float = Field(0.0, ge=0, lt=1, description="fraction of train.steps where α starts to leave 1")
    anneal_end_frac: float = Field(1.0, gt=0, le=1, description="fraction of train.steps where α has reached 0")
    sigmoid_sharpness: float = Field(25.0, gt=0, description="γ: slope of the sigmoid over the normalised window")
    alpha_clamp: float = Field(0.005, ge=0, lt=0.5, description="η: α < η becomes 0 (MeanFlow JVP target), α > 1 − η becomes 1")

    @model_validator(mode="after")
    def _window(self):
        if not self.anneal_start_frac < self.anneal_end_frac:
            raise ValueError(f"need anneal_start_frac < anneal_end_frac, got {self.anneal_start_frac} ≥ {self.anneal_end_frac}")
        return self


class ShortcutConfig(Strict):
    """``method.shortcut``: shortcut models (mfsweep/methods/shortcut.py). The share of
    self-consistency rows is ``meanflow.frac_r_neq_t`` (their r ≠ t; paper k = 1/4)."""

    num_levels: int = Field(7, ge=1, le=20, description=(
        "dyadic step sizes d = 1, 1/2, …, 2^-(num_levels-1) on the self-consistency rows (their half "
        "steps reach 2^-num_levels); 7 = the paper's 128 = 2^7 denoising steps"))


class ConsistencyConfig(Strict):
    """``method.consistency``: continuous-time consistency training (mfsweep/methods/consistency.py).

    sCT's two stabilisers (Lu & Song 2024, arXiv 2410.11081, §4.2, Algorithm 1); its learned
    adaptive weighting w_φ(t) is not used (``meanflow.weight_power`` is the shared weighting)."""

    tangent_norm: bool = Field(True, description="normalise the tangent g = sg(u_tgt) − sg(u) to g / (‖g‖ + c)")
    tangent_norm_c: float = Field(0.1, gt=0, description="c of the tangent normalisation (sCT: 0.1)")
    tangent_warmup_frac: float = Field(0.025, ge=0, le=1, description=(
        "fraction of training over which the t·du/dt term ramps 0 → 1; 0 = none (sCT: 10k of 400k iterations)"))


class MethodConfig(Strict):
    name: str = "meanflow"
    imf: IMFConfig | None = None
    alphaflow: AlphaFlowConfig | None = None
    shortcut: ShortcutConfig | None = None
    consistency: ConsistencyConfig | None = None

    _name = field_validator("name")(lambda v: METHODS.check(v))

    @model_validator(mode="after")
    def _own_block(self):
        """The chosen method's block with its defaults when not given, so that the resolved config (and
        the params logged to MLflow) shows the settings the trial ran with."""
        field = MethodConfig.model_fields.get(self.name)
        if field is not None and getattr(self, self.name) is None:
            setattr(self, self.name, next(a for a in field.annotation.__args__ if a is not type(None))())
        return self

    def settings(self) -> Strict | None:
        """The chosen method's block; None for methods without one (flow_matching, meanflow)."""
        return getattr(self, self.name, None)


#: Each method's own paper defaults for shared `meanflow.*` keys, used where the config does not set
#: them (the `meanflow` block's defaults are MeanFlow's): plain L2 for Flow Matching (Lipman et al.)
#: and consistency training (sCT's squared norm); iMF's official c = 0.01 and 50% r ≠ t; α-Flow's
#: B/2 runs' 50% r ≠ t. Shortcut models read no weighting (plain L2, METHOD_KEYS).
METHOD_DEFAULTS: dict[str, dict[str, object]] = {
    "flow_matching": {"weight_power": 0.0},
    "consistency": {"weight_power": 0.0},
    "imf": {"weight_eps": 0.01, "frac_r_neq_t": 0.5},
    "alphaflow": {"frac_r_neq_t": 0.5},
}


#: method → the `meanflow.*` keys it reads (a key set for a method that does not read it is an
#: error, not silently ignored), and whether it takes guidance (meanflow.cfg.omega / kappa).
_SHARED = {"time_sampler", "weight_power", "weight_eps", "cfg"}
METHOD_KEYS: dict[str, tuple[set[str], bool]] = {
    "meanflow": (_SHARED | {"frac_r_neq_t", "tangent", "u_from"}, True),
    "flow_matching": (_SHARED, False),
    "imf": (_SHARED | {"frac_r_neq_t"}, False),  # own tangent (method.imf.tangent_velocity); no guidance
    "alphaflow": (_SHARED | {"frac_r_neq_t", "u_from"}, True),  # tangent fixed to (v, 0, 1)
    "shortcut": ({"time_sampler", "cfg", "frac_r_neq_t"}, False),  # plain L2 (no adaptive weight); no guidance
    "consistency": (_SHARED | {"tangent", "u_from"}, False),
}


def method_errors(cfg: TrialConfig) -> list[tuple[str, str]]:
    """Settings that do not apply to ``method.name``, each at its dotted path."""
    name = cfg.method.name
    errors = [(f"method.{block}", f"settings for method {block!r}, but method.name is {name!r}")
              for block in ("imf", "alphaflow", "shortcut", "consistency")
              if block != name and getattr(cfg.method, block) is not None]
    keys, guided = METHOD_KEYS[name]
    errors += [(f"meanflow.{key}", f"does not apply to method {name!r} (it reads meanflow.{', meanflow.'.join(sorted(keys))})")
               for key in sorted(cfg.meanflow.model_fields_set - keys)]
    g = cfg.meanflow.cfg
    if not guided and (g.omega != 1.0 or g.kappa != 0.0):
        errors.append(("meanflow.cfg", f"method {name!r} does not take guidance (omega ≠ 1 or kappa ≠ 0); "
                                       "class dropout alone is allowed"))
    return errors


class TrainConfig(Strict):
    steps: int = Field(3000, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float | None = Field(1.0, gt=0, description="max grad norm; null disables")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(50, ge=1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null leaves torch's default")
    # bf16: the network runs under bf16 autocast; the target, the JVP tangents and the loss stay fp32
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = Field(False, description="torch.compile the loss call (network and JVP), once per trial, static shapes")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"unknown device {v!r}; valid: auto, cpu, cuda, cuda:N, mps")


class EvalConfig(Strict):
    nfe: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1)
    grid: str = "linspace"
    # Which velocity the sampler asks for: "average" u(z, r, t) jumps, "instantaneous" r = t (Euler),
    # "origin" u(z, 0, t) (consistency models), or "auto": the method's own (instantaneous for Flow
    # Matching and MeanFlow with frac_r_neq_t = 0, average for MeanFlow, ...).
    velocity: Literal["auto", "average", "instantaneous", "origin"] = "auto"
    num_samples: int = Field(2000, ge=2, description="samples for the final evaluation")
    every_steps: int = Field(0, ge=0, description="cheap evaluation period during training; 0 = end only")
    num_samples_during: int = Field(500, ge=2, description="samples for the cheap periodic evaluation")
    metrics: list[str] | None = None  # None: the dataset's default metrics
    seed: int = 0  # evaluation noise seed: the same noise for every NFE and every trial
    batch_size: int = Field(1000, ge=1)
    # FID / KID against precomputed statistics (an ADM-style .npz with mu, sigma, e.g.
    # VIRTUAL_imagenet256_labeled.npz) instead of the dataset's own images
    reference_stats: str | None = None

    _grid = field_validator("grid")(lambda v: TIME_GRIDS.check(v))

    @field_validator("nfe")
    @classmethod
    def _nfe(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v) or len(set(v)) != len(v):
            raise ValueError(f"nfe must be distinct positive integers, got {v}")
        return sorted(v)


class TrialConfig(Strict):
    name: str = "trial"
    seed: int = 0  # training seed: init, batches, noise, (t, r)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    meanflow: MeanFlowConfig = Field(default_factory=MeanFlowConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, raw):
        """Fill the chosen method's defaults for shared keys the config leaves out (METHOD_DEFAULTS)."""
        method = raw.get("method") if isinstance(raw, dict) else None
        name = method.get("name") if isinstance(method, dict) else None
        shared = raw.get("meanflow", {}) if isinstance(raw, dict) else None
        if name in METHOD_DEFAULTS and isinstance(shared, dict):
            raw = {**raw, "meanflow": {**METHOD_DEFAULTS[name], **shared}}
        return raw

    @model_validator(mode="after")
    def _cross_field(self):
        cfg = self.meanflow.cfg
        if (cfg.omega != 1.0 or cfg.kappa != 0.0) and not self.data.conditional:
            raise ValueError("meanflow.cfg: guidance (omega ≠ 1 or kappa ≠ 0) needs data.conditional: true")
        if self.meanflow.u_from == "forward" and self.model.dropout > 0:
            raise ValueError("meanflow.u_from: 'forward' needs model.dropout: 0 (the JVP and the forward pass "
                             "would draw different dropout masks); use 'jvp'")
        if self.train.compile and self.method.name == "alphaflow":
            raise ValueError("train.compile: method 'alphaflow' changes its α every step, which would recompile "
                             "the loss at every step; use train.compile: false")
        if self.model.backbone in IMAGE_BACKBONES and self.data.name in TOYS:
            raise ValueError(f"model.backbone: {self.model.backbone} needs image data, but data.name "
                             f"{self.data.name!r} is 2-D vectors")
        return self


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def validation_errors(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        path = _dotted(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("extra_forbidden", "missing", "value_error") and "input" in err and not isinstance(err["input"], dict):
            got = repr(err["input"])
            msg += f" (got {got if len(got) <= 80 else got[:70] + ' …'})"
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append((prefix + path if path else prefix.rstrip("."), msg))
    return out


def load_trial_config(raw: dict[str, Any], prefix: str = "", source: str = "config",
                      check_fraction: bool = True) -> TrialConfig:
    """Validate a plain dict. Raises ConfigError listing every problem with its dotted path.
    ``check_fraction=False`` only for a searched trial, whose range was checked at validation."""
    if not isinstance(raw, dict):
        raise ConfigError([(prefix.rstrip("."), f"expected a mapping, got {type(raw).__name__}")], source)
    try:
        cfg = TrialConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_errors(exc, prefix), source) from None
    if errors := method_errors(cfg) + (realised_fraction_errors(cfg) if check_fraction else []):
        raise ConfigError([(prefix + path, msg) for path, msg in errors], source)
    return cfg


#: How far the realised share of r ≠ t rows, round(frac_r_neq_t · B) / B, may be from the requested
#: ``meanflow.frac_r_neq_t`` (absolute). round(f·B)/B is never further than 1/(2B) from f, so this
#: only bites for batches below 10 rows, where e.g. 0.25 of 3 rows would really be 1/3.
FRAC_TOLERANCE = 0.05


def realised_r_neq_t(batch_size: int, frac_r_neq_t: float) -> int:
    """The number of r ≠ t rows per batch, exactly as the losses take it
    (``mfsweep.methods.timesteps.num_r_neq_t``: Python's round, halves to even)."""
    return int(round(frac_r_neq_t * batch_size))


def realised_fraction_errors(cfg: TrialConfig, workers: int = 1) -> list[tuple[str, str]]:
    """``meanflow.frac_r_neq_t`` that the batch cannot realise: a non-zero fraction that rounds to no
    r ≠ t row (the run would be plain Flow Matching, yet sampled and reported as MeanFlow), or a
    realised share off by more than FRAC_TOLERANCE. Only for methods that read the fraction. With
    data-parallel ``workers``, each rank's loss takes its own ``batch_size / workers`` rows."""
    if "frac_r_neq_t" not in METHOD_KEYS[cfg.method.name][0]:
        return []
    frac, b = cfg.meanflow.frac_r_neq_t, max(1, cfg.train.batch_size // max(1, workers))
    rows = (f"train.batch_size {b}" if workers <= 1
            else f"the {b} rows per worker (train.batch_size {cfg.train.batch_size} over {workers} workers)")
    n = realised_r_neq_t(b, frac)
    if frac > 0 and n == 0:
        return [("meanflow.frac_r_neq_t", f"{frac:g} of {rows} rounds to 0 rows with r ≠ t: the run "
                                          f"would be plain Flow Matching sampled as {cfg.method.name}; use "
                                          f"frac_r_neq_t: 0 for Flow Matching, or at least {1 / b:.3g} "
                                          "(or a larger train.batch_size)")]
    if abs(n / b - frac) > FRAC_TOLERANCE + 1e-12:
        return [("meanflow.frac_r_neq_t", f"{frac:g} of {rows} is realised as {n} of {b} rows with "
                                          f"r ≠ t = {n / b:.3g} (off by more than {FRAC_TOLERANCE}); pick a fraction "
                                          f"that is a multiple of 1/{b} or a larger train.batch_size")]
    return []


def parse_override(item: str) -> tuple[str, Any]:
    """'train.steps=500' → ('train.steps', 500); the value is parsed as a YAML scalar or list."""
    if "=" not in item:
        raise ConfigError([(item, "expected key=value, e.g. train.steps=500")], "--set")
    key, value = item.split("=", 1)
    return key.strip(), parse_yaml(value, f"--set {key.strip()}")


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` merged into ``base``: mappings recursively, anything else replaced (copied)."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for k, v in override.items():
            out[k] = deep_merge(out.get(k), v) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(override)


def set_dotted(raw: dict, key: str, value: Any, merge: bool = False, source: str = "--set") -> None:
    """Set raw['a']['b'] = value for key 'a.b', creating mappings on the way (a null becomes one).

    With ``merge``, a mapping value is merged into the mapping already at the key (how a study's
    axis value ``{name: logit_normal, mu: -0.4}`` lands in the base config); else it replaces it.
    """
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):
            raise ConfigError([(key, f"{part!r} is not a mapping")], source)
        node = node[part]
    leaf = parts[-1]
    node[leaf] = deep_merge(node.get(leaf), value) if merge and isinstance(node.get(leaf), dict) else copy.deepcopy(value)


def get_dotted(cfg: BaseModel | dict, key: str) -> Any:
    """cfg.a.b (or cfg['a']['b']) for key 'a.b'."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


# ---- reading YAML files ------------------------------------------------------------------------
# A config or study file is small, hand-written, plain YAML. Anything else is refused with one line
# naming the file (and, where there is one, the dotted path and line) before it is parsed further:
# files over MAX_YAML_BYTES, bytes that are not UTF-8, duplicate keys (YAML would keep the last one
# silently), tags other than the plain YAML types (``!!python/object...``: the loader stays a safe
# loader), more than MAX_YAML_ALIASES aliases, more than MAX_YAML_NODES values, written out or
# once aliases are expanded (alias bombs), and nesting deeper than MAX_YAML_DEPTH. Each limit stops
# the reader early: a hostile file costs seconds at most, never a hang or the machine's memory.

MAX_YAML_BYTES = 1_000_000
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 50_000
MAX_YAML_DEPTH = 50
#: PyYAML's scanner is quadratic in the nesting of flow collections (``[[[[...``): deeper than this
#: is refused by a linear pre-scan, before the scanner sees it.
MAX_YAML_FLOW_DEPTH = 200
_FLOW_TOKENS = re.compile(r"""[\[\]{}'"#\n]""")
_DOUBLE_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_SAFE_TAGS = frozenset(tag for tag in yaml.SafeLoader.yaml_constructors if tag) | {"tag:yaml.org,2002:merge"}


class _Refused(Exception):
    def __init__(self, path: str, msg: str):
        super().__init__(msg)
        self.path, self.msg = path, msg


def _line(node) -> str:
    return f"line {node.start_mark.line + 1}"


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


class _StudyLoader(yaml.SafeLoader):
    """SafeLoader that counts aliases and nesting while composing (so a bomb or a deep document stops
    early, not in a RecursionError or out of memory)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._nodes = 0
        self._depth = 0
        self._path: list[str] = []  # where the composer is: keys and [index]es

    def _where(self) -> str:
        path = "".join(part if part.startswith("[") or i == 0 else "." + part for i, part in enumerate(self._path))
        return path if len(path) <= 100 else path[:60] + "…" + path[-30:]

    def compose_node(self, parent, index):
        # index: the key node (a mapping's value), an int (a list item) or None (a key, the root)
        part = (index.value if isinstance(index, yaml.ScalarNode) else f"[{index}]" if isinstance(index, int)
                else "?" if isinstance(index, yaml.Node) else None)
        line = self.peek_event().start_mark.line + 1
        if part is not None:
            self._path.append(str(part))
        self._depth += 1
        try:
            if self.check_event(yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > MAX_YAML_ALIASES:
                    raise _Refused(self._where(), f"more than {MAX_YAML_ALIASES} YAML aliases (*name) in one file "
                                                  f"(line {line}); write the values out")
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(self._where(), f"nested deeper than {MAX_YAML_DEPTH} levels (line {line})")
            self._nodes += 1
            if self._nodes > MAX_YAML_NODES:
                raise _Refused(self._where(), f"more than {MAX_YAML_NODES:,} values in one file (line {line})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if part is not None:
                self._path.pop()


def _check_nodes(root) -> None:
    """Tags, duplicate keys and the expanded size of a composed document (aliases share nodes: each
    node is checked once, its expanded size memoised)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def walk(node, path: str) -> int:
        if id(node) in open_nodes:
            raise _Refused(path, f"a YAML alias refers to a value that contains it ({_line(node)})")
        if id(node) in sizes:  # an alias of a node already seen
            return sizes[id(node)]
        open_nodes.add(id(node))
        if node.tag not in _SAFE_TAGS:
            raise _Refused(path, f"YAML tag {_short_tag(node.tag)} is not allowed ({_line(node)}); only plain "
                                 "mappings, lists, strings, numbers, booleans and null are read")
        size = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                size += walk(key_node, path) if not isinstance(key_node, yaml.ScalarNode) else 1
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                child = f"{path}.{key}" if path and key is not None else (str(key) if key is not None else path)
                if key is not None and key_node.tag != "tag:yaml.org,2002:merge":
                    ident = (key_node.tag, key)
                    if ident in seen:
                        raise _Refused(child, f"duplicate key {key!r} at {_line(key_node)} (first at line "
                                              f"{seen[ident]}); YAML would silently keep only the last one")
                    seen[ident] = key_node.start_mark.line + 1
                size += walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                size += walk(item, f"{path}[{i}]")
        if size > MAX_YAML_NODES:
            raise _Refused(path, f"with its YAML aliases expanded, the document holds more than {MAX_YAML_NODES:,} "
                                 "values (aliases repeated inside each other?)")
        sizes[id(node)] = size
        open_nodes.discard(id(node))
        return size

    walk(root, "")


def _flow_depth_line(text: str) -> int | None:
    """The line where ``[`` / ``{`` nesting first exceeds MAX_YAML_FLOW_DEPTH (quoted scalars and
    comments skipped), or None."""
    depth, line, pos = 0, 1, 0
    while (m := _FLOW_TOKENS.search(text, pos)) is not None:
        c, at = m.group(), m.start()
        pos = at + 1
        if c == "\n":
            line += 1
        elif c in "[{":
            depth += 1
            if depth > MAX_YAML_FLOW_DEPTH:
                return line
        elif c in "]}":
            depth = max(0, depth - 1)
        elif at and text[at - 1] not in " \t\n[{,:?-":
            continue  # a quote or # inside a plain scalar (it's, a#b)
        elif c == "#":
            pos = text.find("\n", at)
            if pos < 0:
                return None
        elif c == '"':
            q = _DOUBLE_QUOTED.match(text, at)
            end = q.end() if q else len(text)
            line, pos = line + text.count("\n", at, end), end
        else:  # a single-quoted scalar; '' is a quote inside it
            end = at + 1
            while (end := text.find("'", end)) >= 0 and text.startswith("''", end):
                end += 2
            end = len(text) if end < 0 else end + 1
            line, pos = line + text.count("\n", at, end), end
    return None


def _one_line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return "not valid YAML: " + " ".join(str(exc).split())


def read_text(path: str | Path, what: str = "config") -> str:
    """A small UTF-8 text file, or a ConfigError naming the file (missing, a folder, too big, not UTF-8)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError([("", f"{p} is a folder; give the {what} YAML file")], what)
    if not p.is_file():
        raise ConfigError([("", f"file not found: {p}")], what)
    try:
        size = p.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError([("", f"{size:,} bytes; a {what} file may have at most {MAX_YAML_BYTES:,}")], f"{what} {p}")
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError([("", f"cannot read: {exc.strerror or exc}")], f"{what} {p}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([("", f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                                "save the file as UTF-8")], f"{what} {p}") from None


def parse_yaml(text: str, source: str = "config") -> Any:
    """Plain YAML → Python, refusing duplicate keys, unsafe tags, alias bombs and deep nesting."""
    if (line := _flow_depth_line(text)) is not None:
        raise ConfigError([("", f"[ ] or {{ }} nested deeper than {MAX_YAML_FLOW_DEPTH} levels (line {line})")], source)
    loader = None
    try:
        loader = _StudyLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        try:
            return loader.construct_document(node)
        except (ValueError, TypeError, ArithmeticError, AttributeError) as exc:  # e.g. `!!int abc`
            raise ConfigError([("", f"a value does not match its YAML type: {' '.join(str(exc).split())}")],
                              source) from None
    except _Refused as exc:
        raise ConfigError([(exc.path, exc.msg)], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([("", _one_line(exc))], source) from None
    except RecursionError:  # belt and braces: the depth limit should stop it first
        raise ConfigError([("", f"nested too deeply (more than {MAX_YAML_DEPTH} levels)")], source) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path, what: str = "config") -> dict:
    raw = parse_yaml(read_text(path, what), f"{what} {path}")
    return raw if raw is not None else {}


def load_config_file(path: str | Path, overrides: list[str] = ()) -> TrialConfig:
    """Read a YAML trial config, apply ``--set key=value`` overrides, validate."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError([("", f"expected a mapping of config keys, got {type(raw).__name__}")], f"config {path}")
    for item in overrides:
        set_dotted(raw, *parse_override(item))
    return load_trial_config(raw, source=f"config {path}")


def flatten(cfg: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """Nested config → {'meanflow.frac_r_neq_t': 0.25, ...}; lists become strings."""
    d = cfg.model_dump() if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v) if isinstance(v, (list, tuple)) else v
    return out


def dump_yaml(cfg: TrialConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)
