"""Reports for *search* studies (`search.algorithm: random | optuna`): the data behind them.

A grid study answers "how does the metric change along each axis" (analysis.tables). A search
study samples points of a continuous space, mostly one seed each, and asks other questions: which
trial is best and what was its config, how does the metric depend on each parameter, which
parameters matter, how did the search progress. Everything here is read from MLflow only
(docs/architecture.md, "MLflow schema"); the figures are in analysis.search_plots.

- `search_info(study)`: the search as it was run: algorithm, metric, mode, scheduler (ASHA), and
  each searched parameter's distribution, from the `study_resolved.yaml` (after `--set`) or
  `study.yaml` artifact of the parent run. A parameter missing there gets a distribution inferred
  from its values (numbers spanning ≥ 100× and all > 0: log-uniform), and the report says so.
- `trial_frame(study, info)`: one row per trial with its parameters as numbers, the final metric
  at every NFE, the last periodic-eval value, the step a stopped trial reached, training time and a
  status text: "finished", "stopped at step N by ASHA" (early stopping is not failure),
  "failed", "diverged".
- `leaderboard(frame, info)`: the frame sorted by the search metric (search.mode; finished trials
  first, then trials stopped early by their last periodic eval, then failed ones), and
  `leaderboard_rows` with every number to 4 significant digits.
- `best_config_yaml(study, run_id)`: the best trial's resolved config (its `config.yaml` artifact)
  without `name` and `seed`, under a `base:` key, ready to paste into a new study.
- `optuna_study(frame, info, hist)`: the search rebuilt as an Optuna study (COMPLETE / PRUNED /
  FAIL trials with the axes' distributions, the periodic eval as intermediate values) and
  `write_journal` to save it as an Optuna JournalStorage file (`optuna-dashboard FILE` opens it).
- `importance(frame, info)`: parameter importance with Optuna's fANOVA evaluator (see
  `IMPORTANCE_NOTE` for the method and `min_trials_for_importance` for the threshold).

Optuna is imported inside the functions that need it, so `import analysis.report` stays light.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analysis import load
from mfsweep.schema import HIGHER_IS_BETTER, short_axis_name

SEARCH_ALGORITHMS = ("random", "optuna")
FINISHED, STOPPED = "finished", "stopped"
FAILED_STATUSES = ("failed", "diverged")
DIGITS = 4  # significant digits of every number in the leaderboard
JOURNAL_ARTIFACT = "optuna/journal.log"  # in the report folder and on the parent run
DEFAULT_SCHEDULER = {"grace_period": 100, "reduction_factor": 2.0}  # mfsweep.sweep.study defaults

IMPORTANCE_NOTE = (
    "Importance: Optuna's fANOVA evaluator (optuna.importance.FanovaImportanceEvaluator, 64 trees, "
    "seed 0) on the finished trials' final {metric}: the share of the metric's variance (under a "
    "random-forest fit) that each parameter explains on its own. Log-uniform parameters enter as "
    "log10(value), because Optuna's fANOVA integrates its marginals in the raw value space, where "
    "nearly all of a log-uniform range's width sits at its top decade. Trials stopped early or "
    "failed have no final value and are left out.")


# ---- the search as it was run -------------------------------------------------------------------
@dataclass
class Param:
    """One searched (reported) parameter: a dotted key and its distribution."""

    key: str
    kind: str  # float | int | categorical
    log: bool = False
    low: float | None = None
    high: float | None = None
    choices: list[str] = field(default_factory=list)  # categorical: values as tag strings
    source: str = "study"  # study (the study file's axes) | inferred (from the values)

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")

    def describe(self) -> tuple[str, str]:
        """(distribution, range) as the report's "What was searched" table shows them."""
        if self.kind == "categorical":
            return "choice", ", ".join(self.choices)
        name = "loguniform" if self.log else ("int" if self.kind == "int" else "uniform")
        return name, f"[{fmt(self.low)}, {fmt(self.high)}]"


@dataclass
class SearchInfo:
    """The search settings of a study, from the parent run's study file artifact and tags."""

    algorithm: str
    metric: str  # '{metric}/nfe_{k}' (the parent's mfsweep.metric tag)
    mode: str  # min | max, as the search ran
    sampler: str | None = None
    num_samples: int | None = None
    seeds: list[int] = field(default_factory=list)
    scheduler: dict[str, Any] | None = None  # ASHA settings (metric, mode, grace_period, ...) or None
    params: list[Param] = field(default_factory=list)
    source: str = ""  # which artifact the distributions came from ("" when none)
    notes: list[str] = field(default_factory=list)

    @property
    def metric_name(self) -> str:
        return self.metric.split("/", 1)[0]

    @property
    def asha(self) -> bool:
        return self.scheduler is not None

    @property
    def asha_metric(self) -> str:
        return (self.scheduler or {}).get("metric") or self.metric

    @property
    def lower_is_better(self) -> bool:
        return self.mode == "min"

    @property
    def direction_text(self) -> str:
        return "lower is better" if self.lower_is_better else "higher is better"

    def short(self, key: str) -> str:
        return short_axis_name(key, [p.key for p in self.params])

    def rungs(self, max_step: float | None = None) -> list[int]:
        """ASHA's milestones: grace_period · reduction_factor^k below max_t."""
        if not self.asha:
            return []
        g = float(self.scheduler.get("grace_period") or DEFAULT_SCHEDULER["grace_period"])
        rf = float(self.scheduler.get("reduction_factor") or DEFAULT_SCHEDULER["reduction_factor"])
        top = self.scheduler.get("max_t") or max_step or g
        out, m = [], g
        while m < top and len(out) < 50:
            out.append(int(round(m)))
            m *= rf
        return out


def is_search(study: load.StudyRuns) -> bool:
    """Random or Optuna search (the parent's `mfsweep.search` tag)."""
    return study.tag("mfsweep.search") in SEARCH_ALGORITHMS


def _study_file(study: load.StudyRuns) -> tuple[dict | None, str]:
    """The study as run: `study_resolved.yaml` (after --set) else `study.yaml`, parsed."""
    from analysis.plots import fetch_artifact

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("study_resolved.yaml", "study.yaml"):
            f = fetch_artifact(study, study.parent.info.run_id, name, tmp)
            if f is None:
                continue
            try:
                raw = yaml.safe_load(f.read_text())
            except yaml.YAMLError:
                continue
            if isinstance(raw, dict):
                return raw, name
    return None, ""


def _axis_spec(axes: dict, leaf: str) -> Any:
    """The study axis spec that reports `leaf` (the axis itself, or a mapping axis above it)."""
    if leaf in axes:
        return axes[leaf]
    above = [k for k in axes if leaf.startswith(k + ".")]
    return axes[max(above, key=len)] if above else None


def _as_tag(value: Any) -> str:
    """How mfsweep writes an axis value in an `axis.*` tag (scalars; booleans lower-case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _number(text: Any) -> float | None:
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _param_from_spec(key: str, spec: Any, values: list[str]) -> Param | None:
    if isinstance(spec, dict) and len(spec) == 1:
        kind, arg = next(iter(spec.items()))
        if kind in ("uniform", "loguniform", "int") and isinstance(arg, (list, tuple)) and len(arg) == 2:
            lo, hi = float(arg[0]), float(arg[1])
            return Param(key, "int" if kind == "int" else "float", kind == "loguniform", lo, hi)
        if kind == "choice" and isinstance(arg, list):
            scalars = [_as_tag(v) for v in arg if isinstance(v, (str, int, float, bool))]
            return Param(key, "categorical", choices=list(dict.fromkeys(scalars + values)))
    if isinstance(spec, (list, dict)):  # a list of values, or labelled values: a choice
        labels = list(spec) if isinstance(spec, dict) else [v for v in spec if not isinstance(v, (dict, list))]
        return Param(key, "categorical", choices=list(dict.fromkeys([_as_tag(v) for v in labels] + values)))
    return None


def infer_param(key: str, values: list[str]) -> Param:
    """A distribution guessed from the values alone: numbers → uniform (int when all are
    integers), log-uniform when all are > 0 and span at least a factor 100; else a choice."""
    nums = [_number(v) for v in values]
    if values and all(n is not None for n in nums):
        lo, hi = min(nums), max(nums)
        if all(float(n).is_integer() for n in nums) and not any("." in v or "e" in v.lower() for v in values):
            return Param(key, "int", False, lo, hi, source="inferred")
        return Param(key, "float", lo > 0 and hi / lo >= 100, lo, hi, source="inferred")
    return Param(key, "categorical", choices=list(dict.fromkeys(values)), source="inferred")


def search_info(study: load.StudyRuns) -> SearchInfo:
    """The search settings and each searched parameter's distribution (see the module doc)."""
    raw, source = _study_file(study)
    raw = raw or {}
    search = raw.get("search") if isinstance(raw.get("search"), dict) else {}
    sched = raw.get("scheduler") if isinstance(raw.get("scheduler"), dict) else {}
    axes = raw.get("axes") if isinstance(raw.get("axes"), dict) else {}
    metric = study.tag("mfsweep.metric") or search.get("metric") or ""
    mode = search.get("mode") or "min"
    info = SearchInfo(algorithm=study.tag("mfsweep.search") or search.get("algorithm", "?"),
                      metric=metric, mode=mode, sampler=search.get("sampler"),
                      num_samples=search.get("num_samples"), seeds=list(raw.get("seeds") or []),
                      source=source)
    if (sched.get("name") or "none") == "asha":
        info.scheduler = {**DEFAULT_SCHEDULER, **{k: v for k, v in sched.items() if v is not None}}
        if not info.scheduler.get("max_t"):  # mfsweep's default: the trials' train.steps
            steps = [_number(r.data.params.get("train.steps")) for r in study.children]
            info.scheduler["max_t"] = max((s for s in steps if s), default=None)
    if not source:
        info.notes.append("The parent run has no study.yaml artifact: the search mode is taken as "
                          "min and every distribution is inferred from the values.")
    name = info.metric_name
    if ("mode" not in search and name in HIGHER_IS_BETTER) or (
            search.get("mode") == "min" and name in HIGHER_IS_BETTER) or (
            search.get("mode") == "max" and name not in HIGHER_IS_BETTER):
        better = "higher" if name in HIGHER_IS_BETTER else "lower"
        info.notes.append(f"Note: the search {'maximised' if mode == 'max' else 'minimised'} "
                          f"{metric}, for which {better} is better; the leaderboard follows the "
                          f"search (search.mode = {mode}).")
    values = {a: [r.data.tags.get(f"axis.{a}", "") for r in study.children] for a in study.row_axes}
    for key in study.row_axes:
        seen = [v for v in dict.fromkeys(values[key]) if v != ""]
        p = _param_from_spec(key, _axis_spec(axes, key), seen) if axes else None
        if p is None:
            p = infer_param(key, seen)
        if p.numeric:  # the recorded values always fit (rounded draws may touch a bound)
            nums = [n for n in (_number(v) for v in seen) if n is not None]
            if nums:
                p.low, p.high = min([p.low, *nums]), max([p.high, *nums])
        info.params.append(p)
    inferred = [p.key for p in info.params if p.source == "inferred"]
    if inferred and source:
        info.notes.append(f"No distribution recorded for {', '.join(inferred)} in {source}: "
                          "inferred from the values (log scale when all > 0 and spanning ≥ 100×).")
    return info


# ---- formatting ---------------------------------------------------------------------------------
def fmt(x: Any, digits: int = DIGITS) -> str:
    """A number to `digits` significant digits ("—" for missing / NaN); text unchanged."""
    if x is None or isinstance(x, str):
        return "—" if x in (None, "") else x
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "—"
    if v.is_integer() and abs(v) < 10 ** digits:
        return str(int(v))
    return f"{v:.{digits}g}"


def fmt_seconds(s: float | None, approx: bool = False) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    return ("≈" if approx else "") + f"{s:.3g} s"


def status_text(status: str, step: float | None, info: SearchInfo, parent_status: str) -> str:
    """finished | stopped at step N by ASHA | failed | diverged | interrupted at step N | ...

    A trial with status "stopped" was stopped by ASHA when the study used ASHA and its parent run
    finished; after an interrupted execution (parent KILLED) it may also have been cut short by the
    interruption, and without ASHA it can only have been interrupted."""
    at = f" at step {int(step)}" if step is not None and math.isfinite(step) else ""
    if status == STOPPED:
        if info.asha and parent_status == "FINISHED":
            return f"stopped{at} by ASHA"
        if info.asha:
            return f"stopped{at} (ASHA, or the study was interrupted)"
        return f"interrupted{at}"
    if status == "running":
        return f"unfinished{at}"
    return status


# ---- one row per trial --------------------------------------------------------------------------
def _last_step(study: load.StudyRuns, run, key: str, hist: pd.DataFrame | None) -> float | None:
    if key not in run.data.metrics:
        key = "train/loss" if "train/loss" in run.data.metrics else key
        if key not in run.data.metrics:
            return None
    if hist is not None and len(hist):
        steps = hist[(hist["run_id"] == run.info.run_id) & (hist["key"] == key)]["step"]
        if len(steps):
            return float(steps.max())
    points = study.client.get_metric_history(run.info.run_id, key)
    return float(max(p.step for p in points)) if points else None


def nfe_columns(study: load.StudyRuns, info: SearchInfo) -> list[str]:
    """`{metric}/nfe_{k}` for every NFE at which any trial logged the search metric's final value."""
    pat = re.compile(rf"^final/{re.escape(info.metric_name)}/nfe_(\d+)$")
    nfes = sorted({int(m.group(1)) for r in study.children for k in r.data.metrics
                   if (m := pat.match(k))})
    return [f"{info.metric_name}/nfe_{k}" for k in nfes]


def _param_value(p: Param, text: str) -> Any:
    if p.numeric:
        v = _number(text)
        return (int(v) if p.kind == "int" and v is not None else v) if v is not None else math.nan
    return text


def trial_frame(study: load.StudyRuns, info: SearchInfo,
                hist: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per trial, in start order (column `number`, from 0).

    Columns: run_id, trial_id, trial (its `tNNN` prefix), number, seed, status, status_text,
    error, stop_step (the last step of the periodic eval: where a stopped trial stopped),
    train_s (time/train_s; NaN when not logged), wall_s (MLflow run duration), start, end
    (datetimes, UTC), one column per parameter (numbers for numeric parameters), one per
    `{metric}/nfe_{k}` (final values), objective (the final search metric), last_eval (the last
    periodic-eval value of the search metric)."""
    base = load.trials(study).set_index("run_id")
    parent_status = study.parent.info.status
    nfe_cols = nfe_columns(study, info)
    rows = []
    for run in sorted(study.children, key=lambda r: (r.info.start_time or 0,
                                                     r.data.tags.get("mfsweep.trial_id", ""))):
        rid, m = run.info.run_id, run.data.metrics
        b = base.loc[rid]
        status = str(b["status"])
        step = _last_step(study, run, f"eval/{info.asha_metric}", hist) if status != FINISHED else None
        start = run.info.start_time
        end = run.info.end_time
        row = {"run_id": rid, "trial_id": b["trial_id"], "trial": str(b["trial_id"]).split("-", 1)[0],
               "seed": b["seed"], "status": status,
               "status_text": status_text(status, step, info, parent_status),
               "error": b["error"], "stop_step": step if step is not None else math.nan,
               "train_s": float(b["train_s"]),
               "wall_s": (end - start) / 1000 if start and end and end >= start else math.nan,
               "start": datetime.fromtimestamp(start / 1000, timezone.utc) if start else None,
               "end": datetime.fromtimestamp(end / 1000, timezone.utc) if end else None}
        for p in info.params:
            row[p.key] = _param_value(p, run.data.tags.get(f"axis.{p.key}", ""))
        for col in nfe_cols:
            row[col] = float(m.get(f"final/{col}", math.nan))
        row["objective"] = float(m.get(f"final/{info.metric}", math.nan))
        row["last_eval"] = float(m.get(f"eval/{info.metric}", math.nan))
        rows.append(row)
    cols = ["run_id", "trial_id", "trial", "number", "seed", "status", "status_text", "error",
            "stop_step", "train_s", "wall_s", "start", "end", *[p.key for p in info.params],
            *nfe_cols, "objective", "last_eval"]
    frame = pd.DataFrame(rows, columns=[c for c in cols if c != "number"])
    frame.insert(3, "number", range(len(frame)))
    return frame


def finished(frame: pd.DataFrame) -> pd.DataFrame:
    """Trials that finished with a finite final search metric."""
    return frame[(frame["status"] == FINISHED) & np.isfinite(frame["objective"].astype(float))]


# ---- the leaderboard ----------------------------------------------------------------------------
def leaderboard(frame: pd.DataFrame, info: SearchInfo) -> pd.DataFrame:
    """Trials best first by the search metric (search.mode): finished trials by their final value,
    then trials stopped early by their last periodic-eval value, then the rest (failed, diverged,
    unfinished). Column `rank` numbers the finished trials (NaN for the others)."""
    sign = 1.0 if info.lower_is_better else -1.0
    f = frame.copy()
    ok = (f["status"] == FINISHED) & np.isfinite(f["objective"].astype(float))
    stopped = ~ok & (f["status"] == STOPPED)
    f["_group"] = np.where(ok, 0, np.where(stopped, 1, 2))
    key = np.where(ok, f["objective"], np.where(stopped, f["last_eval"], np.nan)).astype(float)
    f["_key"] = np.where(np.isfinite(key), sign * key, np.inf)
    f = f.sort_values(["_group", "_key", "number"], kind="stable")
    f["rank"] = np.where(f["_group"] == 0, np.cumsum(f["_group"] == 0), np.nan)
    return f.drop(columns=["_group", "_key"]).reset_index(drop=True)


def leaderboard_rows(board: pd.DataFrame, info: SearchInfo) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the leaderboard as text: rank, trial, [seed], parameters, status, training
    time, the final metric at every NFE, the last periodic-eval value; numbers to 4 significant
    digits. A stopped trial's training time is its MLflow run duration (≈)."""
    nfe_cols = [c for c in board.columns if c.startswith(f"{info.metric_name}/nfe_")]
    show_seed = board["seed"].astype(str).nunique() > 1
    header = ["rank", "trial", *(["seed"] if show_seed else []), *[info.short(p.key) for p in info.params],
              "status", "train time", *[f"{c} (final)" for c in nfe_cols],
              f"{info.metric} (last periodic eval)"]
    rows = []
    for _, r in board.iterrows():
        t = r["train_s"]
        time = fmt_seconds(t) if math.isfinite(t) else fmt_seconds(r["wall_s"], approx=True)
        rows.append([fmt(r["rank"]), r["trial"], *([str(r["seed"])] if show_seed else []),
                     *[fmt(r[p.key]) for p in info.params], r["status_text"], time,
                     *[fmt(r[c]) for c in nfe_cols], fmt(r["last_eval"])])
    return header, rows


def best_trial(board: pd.DataFrame) -> pd.Series | None:
    """The leaderboard's first finished trial, or None."""
    ok = board[board["rank"] == 1]
    return ok.iloc[0] if len(ok) else None


def _nest(params: dict[str, str]) -> dict:
    out: dict = {}
    for key, text in params.items():
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = None if value == "None" else value
    return out


def best_config_yaml(study: load.StudyRuns, run_id: str, header: str = "") -> str:
    """The trial's resolved config (its `config.yaml` artifact; else rebuilt from its params) as a
    study `base:` block: `name` and `seed` dropped (a study sets them per trial)."""
    from analysis.plots import fetch_artifact

    with tempfile.TemporaryDirectory() as tmp:
        f = fetch_artifact(study, run_id, "config.yaml", tmp)
        cfg = yaml.safe_load(f.read_text()) if f is not None else None
    note = ""
    if not isinstance(cfg, dict):
        run = study.client.get_run(run_id)
        cfg = _nest(dict(run.data.params))
        note = "# rebuilt from the run's params (no config.yaml artifact): check the value types\n"
    for key in ("name", "seed", "resources"):  # resources.workers is a study param, not a trial config key
        cfg.pop(key, None)
    body = yaml.safe_dump({"base": cfg}, sort_keys=False, default_flow_style=False)
    return header + note + body


# ---- history ------------------------------------------------------------------------------------
def best_so_far(frame: pd.DataFrame, info: SearchInfo) -> pd.DataFrame:
    """Per trial in start order: number, trial, status, value (final search metric; NaN if none),
    best (the best final value among this and earlier trials)."""
    f = frame.sort_values("number")[["number", "trial", "status", "objective", "last_eval"]].copy()
    v = f["objective"].astype(float).where(f["status"] == FINISHED)
    f["value"] = v
    f["best"] = (v.cummin() if info.lower_is_better else v.cummax()).ffill()
    return f.reset_index(drop=True)


# ---- Optuna -------------------------------------------------------------------------------------
def _distribution(p: Param, log10: bool = False):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.kind == "categorical":
        return CategoricalDistribution(tuple(p.choices) or ("",))
    if p.kind == "int":
        return IntDistribution(int(math.floor(p.low)), int(math.ceil(p.high)), log=p.log and p.low >= 1)
    if p.log and log10:
        return FloatDistribution(math.log10(p.low), math.log10(p.high))
    return FloatDistribution(float(p.low), float(p.high), log=p.log and p.low > 0)


def _internal(p: Param, value: Any, log10: bool = False) -> Any:
    if p.kind == "categorical":
        return str(value)
    if p.kind == "int":
        return int(value)
    return math.log10(float(value)) if p.log and log10 else float(value)


def _when(stamp) -> datetime | None:
    """A UTC timestamp as the naive local datetime Optuna uses (`datetime.now()`)."""
    if stamp is None or pd.isna(stamp):
        return None
    return pd.Timestamp(stamp).to_pydatetime().astimezone().replace(tzinfo=None)


def optuna_study(frame: pd.DataFrame, info: SearchInfo, hist: pd.DataFrame | None = None, *,
                 study_name: str = "mfsweep", storage=None, log10: bool = False):
    """The trials as an Optuna study (`optuna.create_study` + `create_trial` + `add_trials`).

    finished with a final value → COMPLETE (value = the final search metric); stopped → PRUNED;
    failed / diverged / finished without the metric → FAIL; unfinished trials are left out.
    Parameters use the axes' distributions (`log10`: log-uniform ones as log10(value), uniform;
    for importance). The periodic eval of the search metric becomes the intermediate values
    (step → value); user attrs hold the MLflow run id, trial id, status and seed."""
    import optuna
    from optuna.trial import TrialState, create_trial

    dists = {p.key: _distribution(p, log10) for p in info.params}
    key = f"eval/{info.asha_metric}"
    trials = []
    for _, r in frame.sort_values("number").iterrows():
        if r["status"] == FINISHED and math.isfinite(r["objective"]):
            state, value = TrialState.COMPLETE, float(r["objective"])
        elif r["status"] == STOPPED:
            state, value = TrialState.PRUNED, None
        elif r["status"] in (*FAILED_STATUSES, FINISHED):
            state, value = TrialState.FAIL, None
        else:
            continue
        values = [r[p.key] for p in info.params]
        if any(p.numeric and not math.isfinite(float(v)) for p, v in zip(info.params, values)):
            continue
        inter = {}
        if hist is not None and len(hist):
            h = hist[(hist["run_id"] == r["run_id"]) & (hist["key"] == key)]
            inter = {int(s): float(v) for s, v in zip(h["step"], h["value"]) if math.isfinite(v)}
        attrs = {"mlflow_run_id": r["run_id"], "trial_id": r["trial_id"], "mfsweep_status": r["status"],
                 "status": r["status_text"], "seed": str(r["seed"])}
        if math.isfinite(r["train_s"]):
            attrs["train_s"] = float(r["train_s"])
        t = create_trial(state=state, value=value, intermediate_values=inter, user_attrs=attrs,
                         params={p.key: _internal(p, v, log10) for p, v in zip(info.params, values)},
                         distributions=dists)
        if _when(r["start"]) is not None:
            t.datetime_start = _when(r["start"])
        if _when(r["end"]) is not None:
            t.datetime_complete = _when(r["end"])
        trials.append(t)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name,
                                    direction="minimize" if info.lower_is_better else "maximize")
        study.set_user_attr("metric", info.metric)
        study.set_user_attr("source", "rebuilt from MLflow by analysis.search")
        study.add_trials(trials)
    finally:
        optuna.logging.set_verbosity(level)
    return study


def write_journal(frame: pd.DataFrame, info: SearchInfo, path: str | Path, study_name: str,
                  hist: pd.DataFrame | None = None) -> Path:
    """Save the rebuilt study as an Optuna JournalStorage file (rewritten from scratch), which
    `optuna.load_study(storage=JournalStorage(JournalFileBackend(path)))` and
    `optuna-dashboard PATH` open."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".lock")):
        if stale.exists() or stale.is_symlink():
            stale.unlink()
    storage = JournalStorage(JournalFileBackend(str(path)))
    optuna_study(frame, info, hist, study_name=study_name, storage=storage)
    return path


# ---- importance ---------------------------------------------------------------------------------
def min_trials_for_importance(n_params: int) -> int:
    """Finished trials needed before importances are shown: 3 per searched parameter, at least 4.

    Measured on fabricated studies (a log-uniform lr that drives the metric through a bowl, plus
    noise of about half the signal's spread, and uniform parameters that do nothing; 30 studies per
    size): with 2 parameters fANOVA (log10 inputs) ranked the driver first in 63% of studies at
    n = 4, 80% at n = 6 and 97% at n = 8; with 3 parameters 57% at n = 6, 80% at n = 8 and 93%
    at n = 12. Below about 3 trials per parameter the ranking is wrong one time in four or more,
    which is noise presented as a finding."""
    return max(4, 3 * n_params)


@dataclass
class Importance:
    values: dict[str, float] | None  # parameter key → importance (sums to 1), None with a note
    n: int  # finished trials used
    need: int
    method: str
    note: str = ""


def importance(frame: pd.DataFrame, info: SearchInfo) -> Importance:
    """Parameter importance (Optuna's fANOVA, log-uniform parameters as log10), or a note saying
    why not: "not enough trials for parameter importance (n = …, need …)"."""
    ok = finished(frame)
    need = min_trials_for_importance(len(info.params))
    method = "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)"
    if not info.params:
        return Importance(None, len(ok), need, method, "no searched parameter: no importance")
    if len(ok) < need:
        return Importance(None, len(ok), need, method,
                          f"not enough trials for parameter importance (n = {len(ok)}, need {need}: "
                          "3 finished trials per searched parameter, at least 4)")
    import optuna

    study = optuna_study(ok, info, None, study_name="importance", log10=True)
    values = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    return Importance({k: float(v) for k, v in values.items()}, len(ok), need, method)
