"""Metric-versus-NFE tables (e.g. FID versus NFE) from a tidy study frame (`analysis.load.tidy`),
with the statistics that say which differences the seeds resolve (`analysis.stats`).

Rows are the study's variants (every axis except seed), columns are NFEs. A cell is
"mean ± std (n=k), 95% CI [low, high]" over the seeds that finished: mean to 4, std to 2
significant digits, the interval to the std's last digit. std uses ddof=1 (pandas' default, the
sample standard deviation) and is left out when n = 1, as is the interval ("n=1, no interval").
The interval is Student's t-interval of the mean over seeds, mean ± t(0.975, n − 1) · std / √n:
with 2–5 seeds a bootstrap interval is far too narrow (n = 3 has 10 distinct resamples), the
t-interval is exact for normal seed noise (see `analysis.stats`).

The best mean of each column is marked (bold) when there are at least two variants: the lowest, or
the highest for metrics in `mfsweep.schema.HIGHER_IS_BETTER` (precision, recall, inception_score).

Differences from a baseline ("Δ" columns, one per compared NFE and swept axis). For each axis with
two or more values a baseline value is chosen (`resolve_baselines`): a value given by the caller;
else the study's parent-run tag `mfsweep.baseline` (JSON {axis key: value string}); else the base
config's value at that dotted key, when it is one of the swept values; else the first value of the
axis in the table's order. The caption says which one and why. Every other row is compared with the
row that differs from it in that axis only (same values of the other axes: in a multi-axis grid
each slice of the other axes is compared on its own), seed by seed, over the seeds that finished in
both rows: the cell is the mean paired difference row − baseline with its 95% t-interval, marked
"resolved" (the interval excludes 0; with "better" or "worse" by the metric's direction) or
"within noise" (it contains 0). Each comparison stands on its own (no multiple-comparison
correction). Below the table, one line per axis and compared NFE says how many seeds a paired
comparison would need (two-sided α = 0.05, power 0.8, n ≈ ((z(0.975) + z(0.8)) · s_d / X)²) for
X = the closest pair of the axis's values (any two values in the same slice) and for X = 5% of the
baseline mean, with s_d the spread of paired differences pooled over all those pairs.

Trials that did not finish are never dropped silently: a cell says e.g. "(n=1; failed 1/2)" and
the "seeds ok" column says "0/2 (all failed)" when no seed of a variant finished. A trial the ASHA
scheduler stopped early (status "stopped") is "stopped by ASHA" in the notes: it is not a failure,
and like any unfinished trial it is not in the mean.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from analysis import stats
from analysis.paper import COLUMN as PAPER_COLUMN
from analysis.paper import NOTE as PAPER_NOTE
from analysis.paper import METHOD_AXIS, METHOD_COLUMN, METHOD_NUMBERS, method_note, paper_axes, paper_lookup, table_citation
from mfsweep.schema import HIGHER_IS_BETTER, short_axis_name

FINISHED = "finished"
STOPPED = "stopped"
FAILED_STATUSES = ("failed", "diverged")
STATUS_LABELS = {STOPPED: "stopped by ASHA"}  # how a status is named in notes
DDOF = 1
CONFIDENCE = stats.CONFIDENCE
BASELINE_TAG = "mfsweep.baseline"
FRACTION = 0.05  # the stated fraction of the baseline mean in the seeds-needed lines
MAX_SEEDS_SHOWN = 10_000


def direction(metric: str) -> str:
    """'higher is better' for metrics in `HIGHER_IS_BETTER`, else 'lower is better'."""
    return "higher is better" if metric in HIGHER_IS_BETTER else "lower is better"


def format_number(x: float, digits: int = 4) -> str:
    """`digits` significant digits (means use 4: 61.06, 0.1235, 328.9; stds use 2)."""
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def format_at(x: float, scale: float, sign: bool = False) -> str:
    """`x` to the decimal place of `scale`'s second significant digit (an interval bound shown as
    precisely as the std beside it); 4 significant digits when `scale` is 0 or unknown."""
    if x is None or not math.isfinite(x):
        return "nan"
    if scale is None or not math.isfinite(scale) or scale <= 1e-9 * abs(x):  # 0 up to rounding
        return f"{x:+.4g}" if sign else format_number(x)
    d = max(0, 1 - math.floor(math.log10(scale)))
    x = 0.0 if round(x, d) == 0 else x  # no "-0.000"
    return f"{x:+.{d}f}" if sign else f"{x:.{d}f}"


def status_label(status: str) -> str:
    return STATUS_LABELS.get(status, status)


# -- baselines -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    """The value of an axis every other value is compared with, and why it was chosen."""

    value: str
    why: str


_MISSING = object()


def _same_value(a: str, b: str) -> bool:
    """Axis value strings are equal, numbers numerically ("1" and "1.0")."""
    if str(a).strip() == str(b).strip():
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _tag_text(value) -> str:
    """A config value written as an `axis.*` tag writes it (bools lower case, mappings k=v,...)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return ",".join(f"{k}={_tag_text(v)}" for k, v in value.items())
    return str(value)


def _dotted(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _find(values: Sequence[str], wanted) -> str | None:
    return next((v for v in values if _same_value(v, str(wanted))), None)


def axis_values(df: pd.DataFrame, axes: Sequence[str]) -> dict[str, list[str]]:
    """Each axis' values (strings) in the table's order (study order: by trial id)."""
    trials = df.drop_duplicates("run_id").sort_values("trial_id")
    return {a: list(dict.fromkeys(trials[a].astype(str))) for a in axes}


def resolve_baselines(values: Mapping[str, Sequence[str]], *, tag: str | Mapping | None = None,
                      base_config: str | Mapping | None = None,
                      given: Mapping[str, "str | Baseline"] | None = None) -> dict[str, Baseline]:
    """The baseline of every axis in `values` ({axis: its values in table order}).

    In order: `given[axis]` (a value string or a `Baseline`; ValueError when it is not a swept
    value); the parent-run tag `mfsweep.baseline` (`tag`: its JSON text or the parsed mapping
    {axis key: value string}); the base config's value at the axis' dotted key (`base_config`:
    the YAML text of the parent's `base_config.yaml`, or the parsed mapping) when it is one of the
    swept values; else the first value. A tag or base-config value that is not swept is skipped,
    and the reason is kept in `Baseline.why` (the caption shows it)."""
    given = dict(given or {})
    tag_map, tag_note = {}, f"no {BASELINE_TAG} tag"
    if isinstance(tag, Mapping):
        tag_map = dict(tag)
    elif tag:
        try:
            parsed = json.loads(tag)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            tag_map = parsed
        else:
            tag_note = f"the {BASELINE_TAG} tag is not a JSON object"
    if tag_map:
        tag_note = f"the {BASELINE_TAG} tag does not name this axis"
    cfg = base_config
    if isinstance(cfg, str):
        try:
            cfg = yaml.safe_load(cfg)
        except yaml.YAMLError:
            cfg = None
    cfg = cfg if isinstance(cfg, Mapping) else None
    out = {}
    for axis, vals in values.items():
        vals = [str(v) for v in vals]
        if not vals:
            continue
        if axis in given:
            g = given[axis]
            found = _find(vals, g.value if isinstance(g, Baseline) else g)
            if found is None:
                raise ValueError(f"baseline {getattr(g, 'value', g)!r} of axis {axis} is not one of "
                                 f"its values: {', '.join(vals)}")
            out[axis] = Baseline(found, g.why) if isinstance(g, Baseline) else Baseline(
                found, "chosen for this report")
            continue
        notes = []
        if axis in tag_map:
            found = _find(vals, tag_map[axis])
            if found is not None:
                out[axis] = Baseline(found, f"set by the study (parent-run tag {BASELINE_TAG})")
                continue
            notes.append(f"the {BASELINE_TAG} tag's value {tag_map[axis]} is not swept")
        else:
            notes.append(tag_note)
        if cfg is None:
            notes.append("no base config")
        else:
            value = _dotted(cfg, axis)
            if value is _MISSING:
                notes.append("the base config has no such key")
            else:
                found = _find(vals, _tag_text(value))
                if found is not None:
                    out[axis] = Baseline(found, "the base config's value")
                    continue
                notes.append(f"the base config's value {_tag_text(value)} is not swept")
        out[axis] = Baseline(vals[0], f"the first value in the table ({'; '.join(notes)})")
    return out


def study_baselines(df: pd.DataFrame, axes: Sequence[str], tag: str | Mapping | None = None,
                    base_config: str | Mapping | None = None,
                    given: Mapping[str, "str | Baseline"] | None = None) -> dict[str, Baseline]:
    """`resolve_baselines` for every axis of `df` with two or more values (see there)."""
    values = {a: v for a, v in axis_values(df, axes).items() if len(v) >= 2}
    return resolve_baselines(values, tag=tag, base_config=base_config, given=given)


# -- comparisons -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """One row against its baseline row (same other axes) at one NFE, paired by seed."""

    axis: str
    variant: tuple[str, ...]
    reference: tuple[str, ...]
    nfe: int
    diff: stats.PairedDifference | None  # None: no baseline row in this slice

    @property
    def verdict(self) -> str:
        return "no baseline row" if self.diff is None else stats.verdict(self.diff.interval)


@dataclass(frozen=True)
class SeedsNeeded:
    """How many seeds (per variant, paired) an axis' comparisons would need at one NFE."""

    axis: str
    nfe: int
    s_d: float  # paired-difference std pooled over all pairs of the axis' values
    dof: int
    pairs: int  # pairs of values (within slices) with two or more paired seeds
    closest: tuple[tuple[str, ...], tuple[str, ...]] | None  # the two rows of the closest pair
    closest_n: int
    delta: float  # |mean paired difference| of the closest pair
    baseline_mean: float
    fraction: float = FRACTION

    @property
    def n_closest(self) -> int | None:
        return stats.seeds_needed(self.s_d, self.delta)

    @property
    def fraction_delta(self) -> float:
        return self.fraction * abs(self.baseline_mean)

    @property
    def n_fraction(self) -> int | None:
        return stats.seeds_needed(self.s_d, self.fraction_delta)

    def text(self, axes: Sequence[str]) -> str:
        """The line under the table (`axes`: the table's axes, to name the closest pair)."""
        head = f"{self.axis}, NFE {self.nfe}: "
        if self.closest is None:
            return head + ("no two values share two finished seeds: no spread to estimate the "
                           "seeds needed.")
        i = list(axes).index(self.axis)
        a, b = self.closest
        others = [f"{x}={a[j]}" for j, x in enumerate(axes) if j != i]
        where = f" (at {', '.join(others)})" if others else ""
        s, x = self.s_d, self.delta
        return (f"{head}closest pair {a[i]} vs {b[i]}{where} differs by {format_at(x, s)} over "
                f"{self.closest_n} paired seeds; to resolve a difference of {format_at(x, s)} at this "
                f"spread (s_d = {format_number(s, 2)}, pooled over {self.pairs} "
                f"pair{'s' if self.pairs != 1 else ''}) you need about {_seeds(self.n_closest, x)}; "
                f"for {self.fraction:.0%} of the baseline mean ({format_at(self.fraction_delta, s)}) "
                f"about {_seeds(self.n_fraction, self.fraction_delta)}.")


def _seeds(n: int | None, delta: float) -> str:
    if n is None:
        return "no finite number of seeds (a difference of 0)" if delta == 0 else "(unknown) seeds"
    return f"more than {MAX_SEEDS_SHOWN} seeds" if n > MAX_SEEDS_SHOWN else f"{n} seeds"


@dataclass
class MetricTable:
    """One metric's table. `summary` is long (one row per variant × NFE) and numeric."""

    metric: str
    phase: str
    axes: list[str]
    nfes: list[int]
    summary: pd.DataFrame
    variants: list[tuple[str, ...]]
    paper: dict[tuple[str, ...], float | None] = field(default_factory=dict)
    paper_table: str | None = None
    paper_sources: list[str] = field(default_factory=list)  # paper tables the values came from
    train_s: dict[tuple[str, ...], float] = field(default_factory=dict)  # mean training seconds per variant
    method_paper: dict[tuple[str, ...], str] = field(default_factory=dict)  # method.name studies
    statuses: dict[tuple[str, ...], dict[str, int]] = field(default_factory=dict)  # trials per status
    baselines: dict[str, Baseline] = field(default_factory=dict)  # compared axes only
    compare_nfes: list[int] = field(default_factory=list)
    # (variant, axis, nfe) -> the variant against its baseline row
    comparisons: dict[tuple[tuple[str, ...], str, int], Comparison] = field(default_factory=dict)
    seeds_needed: list[SeedsNeeded] = field(default_factory=list)

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER

    @property
    def compared_axes(self) -> list[str]:
        return [a for a in self.axes if a in self.baselines] if self.compare_nfes else []

    # -- cells ---------------------------------------------------------------------------
    def stats(self, variant: tuple[str, ...], nfe: int) -> pd.Series:
        s = self.summary
        mask = s["nfe"] == nfe
        for axis, value in zip(self.axes, variant):
            mask &= s[axis] == value
        return s[mask].iloc[0]

    def cell(self, variant: tuple[str, ...], nfe: int, pm: str = " ± ", dash: str = "—") -> str:
        """Cell text: 'mean ± std (n=k[; failed j/N]), 95% CI [low, high]', 'mean (n=1, no
        interval[; ...])', or the status notes alone when no seed finished."""
        st = self.stats(variant, nfe)
        notes = [] if not st["notes"] else [st["notes"]]
        if st["n"] == 0:
            return "; ".join(notes) or dash
        text = format_number(st["mean"])
        if st["n"] > 1:
            text += pm + format_number(st["std"], 2)
            ci = (f"{CONFIDENCE:.0%} CI [{format_at(st['ci_low'], st['std'])}, "
                  f"{format_at(st['ci_high'], st['std'])}]")
            return f"{text} ({'; '.join([f'n={int(st.n)}', *notes])}), {ci}"
        return f"{text} ({'; '.join(['n=1, no interval', *notes])})"

    def delta_cell(self, variant: tuple[str, ...], axis: str, nfe: int, dash: str = "—") -> str:
        """Δ cell: 'diff [low, high] resolved, better (n=k)', '... within noise (n=k)', 'baseline',
        'diff (n=1, no interval)', 'no paired seeds' or 'no baseline row'."""
        c = self.comparisons.get((variant, axis, nfe))
        if c is None:
            base = self.baselines.get(axis)
            i = self.axes.index(axis)
            return "baseline" if base is not None and variant[i] == base.value else dash
        if c.diff is None or c.diff.n == 0:
            return c.verdict
        iv = c.diff.interval
        d = format_at(iv.mean, iv.std, sign=True)
        if iv.n == 1:
            return f"{d} (n=1, no interval)"
        verdict = c.verdict
        if verdict == stats.RESOLVED:
            better = iv.mean > 0 if self.higher_is_better else iv.mean < 0
            verdict += ", better" if better else ", worse"
        return (f"{d} [{format_at(iv.low, iv.std, sign=True)}, {format_at(iv.high, iv.std, sign=True)}]"
                f" {verdict} (n={iv.n})")

    def seeds_ok(self, variant: tuple[str, ...]) -> str:
        st = self.stats(variant, self.nfes[0])
        ok, total = int(st["n_finished"]), int(st["n_total"])
        text = f"{ok}/{total}"
        if ok == 0 and total > 0:
            counts = self.statuses.get(variant) or {"failed": total}
            kinds = {"failed" if s in FAILED_STATUSES else status_label(s) for s in counts}
            text += f" (all {kinds.pop()})" if len(kinds) == 1 else " (none finished)"
        return text

    def is_best(self, variant: tuple[str, ...], nfe: int) -> bool:
        return bool(self.stats(variant, nfe)["best"])

    @property
    def has_paper(self) -> bool:
        return any(v is not None for v in self.paper.values())

    @property
    def has_train_time(self) -> bool:
        return any(math.isfinite(v) for v in self.train_s.values())

    @property
    def has_stopped(self) -> bool:
        return any(STOPPED in c for c in self.statuses.values())

    def delta_header(self, axis: str, nfe: int) -> str:
        base = self.baselines[axis].value
        if len(self.compared_axes) == 1:
            return f"Δ vs {base} (NFE {nfe})"
        return f"Δ {short_axis_name(axis, self.axes)} vs {base} (NFE {nfe})"

    def _columns(self) -> list[tuple]:
        """Result columns in order: ("nfe", k) and ("delta", axis, k)."""
        out = []
        for k in self.nfes:
            out.append(("nfe", k))
            if k in self.compare_nfes:
                out += [("delta", a, k) for a in self.compared_axes]
        return out

    def header(self) -> list[str]:
        cols = [*self.axes, "seeds ok", *(["train s"] if self.has_train_time else [])]
        cols += [f"NFE {c[1]}" if c[0] == "nfe" else self.delta_header(c[1], c[2])
                 for c in self._columns()]
        return cols + ([METHOD_COLUMN] if self.method_paper else []) + ([PAPER_COLUMN] if self.has_paper else [])

    def caption(self, seeds_lines: bool = True) -> str:
        """What the table shows and how to read it; with `seeds_lines`, the seeds-needed lines."""
        text = (f"{self.metric} ({self.phase}) versus NFE: mean ± std over seeds (ddof={DDOF}) and "
                f"the {CONFIDENCE:.0%} confidence interval (CI) of the mean, a Student t-interval over "
                f"seeds (mean ± t(0.975, n−1) · std / sqrt(n); with n = 1, no interval), n = finished "
                f"seeds; {direction(self.metric)}, best per NFE in bold (the best mean).")
        if self.has_stopped:
            text += (" stopped by ASHA: the scheduler ended the trial early; not a failure, and not "
                     "in the mean.")
        if self.compared_axes:
            better = "Δ > 0" if self.higher_is_better else "Δ < 0"
            text += (f" Δ columns: paired difference row − baseline row (the row with the axis at "
                     f"its baseline and the same values of the other axes), seed by seed over the "
                     f"seeds finished in both, mean [{CONFIDENCE:.0%} t-interval] (n = paired seeds); "
                     f"'resolved' when the interval excludes 0, 'within noise' when it contains 0 "
                     f"(each comparison on its own, no multiple-comparison correction); "
                     f"{direction(self.metric)}, so {better} is better. Baseline: "
                     + "; ".join(f"{a} = {b.value}, {b.why}" for a, b in self.baselines.items()
                                 if a in self.compared_axes) + ".")
        if self.has_train_time:
            text += " train s: mean training wall time of the finished seeds."
        if self.method_paper:
            text += " " + method_note([v[self.axes.index(METHOD_AXIS)] for v in self.variants])
        if self.has_paper:
            text += " " + PAPER_NOTE.format(cite=table_citation(self.paper_sources))
        if seeds_lines and self.seeds_needed:
            text += " " + " ".join([self.seeds_intro(), *self.seeds_lines()])
        return text

    def seeds_intro(self) -> str:
        return ("Seeds needed per variant for a paired comparison (two-sided alpha = 0.05, power "
                "0.8: n ≈ ((z(0.975) + z(0.8)) · s_d / X)² = (2.80 · s_d / X)², at least 2; s_d = "
                "std of the paired differences pooled over all pairs of the axis' values in the "
                f"same slice; X = the closest pair's difference, or {FRACTION:.0%} of the baseline "
                "mean):")

    def seeds_lines(self) -> list[str]:
        """One line per compared axis and NFE: 'to resolve a difference of X at this spread you
        need about N seeds'."""
        return [s.text(self.axes) for s in self.seeds_needed]

    def _rows(self, cell_fn, dash: str, esc, bold) -> list[list[str]]:
        """Body rows as strings; `cell_fn(variant, nfe)` renders an already escaped cell."""
        rows = []
        for v in self.variants:
            cells = [esc(x) for x in v] + [esc(self.seeds_ok(v))]
            if self.has_train_time:
                secs = self.train_s.get(v, math.nan)
                cells.append(f"{secs:.0f}" if math.isfinite(secs) else dash)
            for col in self._columns():
                if col[0] == "delta":
                    cells.append(esc(self.delta_cell(v, col[1], col[2], dash)))
                    continue
                c = cell_fn(v, col[1])
                cells.append(bold(c) if self.is_best(v, col[1]) else c)
            if self.method_paper:
                cells.append(esc(self.method_paper.get(v, dash)))
            if self.has_paper:
                p = self.paper.get(v)
                cells.append(dash if p is None else f"{p:.2f}")
            rows.append(cells)
        return rows

    def cell_latex(self, variant, nfe) -> str:
        """LaTeX cell: escape the plain parts, keep `$\\pm$` as math."""
        parts = self.cell(variant, nfe, pm="\0", dash="---").split("\0")
        return r" $\pm$ ".join(latex_escape(p) for p in parts)

    # -- renderers -----------------------------------------------------------------------
    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown table (best cells in **bold**) plus its caption and the
        seeds-needed lines (a list)."""
        rows = self._rows(lambda v, k: md_escape(self.cell(v, k)), "—", md_escape,
                          lambda c: f"**{c}**")
        head = [md_escape(h) for h in self.header()]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        out = "\n".join(lines) + "\n\n" + md_escape(self.caption(seeds_lines=False)) + "\n"
        if self.seeds_needed:
            out += "\n" + md_escape(self.seeds_intro()) + "\n\n"
            out += "".join(f"- {md_escape(line)}\n" for line in self.seeds_lines())
        return out

    def to_html(self) -> str:
        """An HTML <table> (best cells in <b>) with a <caption> (seeds-needed lines after <br>)."""
        rows = self._rows(lambda v, k: html.escape(self.cell(v, k)), "—", html.escape,
                          lambda c: f"<b>{c}</b>")
        cap = html.escape(self.caption(seeds_lines=False))
        if self.seeds_needed:
            cap += "<br>" + "<br>".join(html.escape(x) for x in [self.seeds_intro(), *self.seeds_lines()])
        kinds = ["axis"] * len(self.axes) + ["seeds"] + (["train"] if self.has_train_time else [])
        kinds += ["nfe" if c[0] == "nfe" else "delta" for c in self._columns()]
        out = [f'<table class="metric-table" data-metric="{html.escape(self.metric)}">',
               f"<caption>{cap}</caption>", "<thead><tr>"]
        out += [f"<th>{html.escape(h)}</th>" for h in self.header()]
        out.append("</tr></thead><tbody>")
        for r in rows:
            out.append("<tr>" + "".join(f'<td class="delta">{c}</td>' if i < len(kinds) and kinds[i] == "delta"
                                        else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>")
        out.append("</tbody></table>")
        return "\n".join(out) + "\n"

    def to_latex(self, label: str | None = None) -> str:
        """A booktabs table (\\toprule/\\midrule/\\bottomrule; needs \\usepackage{booktabs})."""
        rows = self._rows(self.cell_latex, "---", latex_escape, lambda c: rf"\textbf{{{c}}}")
        head = [latex_escape(h) for h in self.header()]
        spec = "l" * (len(self.axes) + 1) + "r" * (len(head) - len(self.axes) - 1)
        cap = latex_escape(self.caption())
        label = re.sub(r"[^A-Za-z0-9:-]+", "-", label or f"tab:{self.metric}-{self.phase}")
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{cap}}}", rf"\label{{{label}}}",
                 rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(head) + r" \\",
                 r"\midrule", *[" & ".join(r) + r" \\" for r in rows], r"\bottomrule",
                 r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | Path | None = None) -> str:
        """The numeric long summary as CSV (written to `path` when given)."""
        text = self.summary.to_csv(index=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @property
    def differences(self) -> pd.DataFrame:
        """The Δ comparisons, one row per (variant, axis, NFE): the row's axis values, the compared
        axis, its baseline, nfe, diff (mean row − baseline), std, n (paired seeds), ci_low,
        ci_high, p_value (two-sided paired t-test), verdict, seeds (the paired seeds)."""
        cols = [*self.axes, "axis", "baseline", "nfe", "diff", "std", "n", "ci_low", "ci_high",
                "p_value", "verdict", "seeds"]
        recs = []
        for (v, axis, k), c in self.comparisons.items():
            d = c.diff
            iv = d.interval if d is not None else stats.t_interval([])
            recs.append({**dict(zip(self.axes, v)), "axis": axis, "baseline": self.baselines[axis].value,
                         "nfe": k, "diff": iv.mean, "std": iv.std, "n": iv.n, "ci_low": iv.low,
                         "ci_high": iv.high, "p_value": d.p_value if d is not None else math.nan,
                         "verdict": c.verdict,
                         "seeds": " ".join(str(s) for s in d.seeds) if d is not None else ""})
        return pd.DataFrame(recs, columns=cols)

    def differences_csv(self, path: str | Path | None = None) -> str:
        """`differences` as CSV (written to `path` when given)."""
        text = self.differences.to_csv(index=False)
        if path is not None:
            Path(path).write_text(text)
        return text


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "—": "---", "−": "-", "±": r"$\pm$", "Δ": r"$\Delta$", "≈": r"$\approx$",
          "·": r"$\cdot$", "²": r"$^2$", "<": r"$<$", ">": r"$>$"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters: \\ & % $ # _ { } ~ ^ (and ± Δ ≈ · ² < > as math)."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def md_escape(text: str) -> str:
    """Escape characters that Markdown tables or emphasis would interpret."""
    return re.sub(r"([\\`*_|\[\]<>])", r"\\\1", str(text))


def _status_notes(statuses: pd.Series, total: int) -> str:
    counts = statuses[statuses != FINISHED].value_counts()
    return "; ".join(f"{status_label(s)} {c}/{total}" for s, c in sorted(counts.items()))


def _seed_values(rows: pd.DataFrame) -> dict:
    """{seed: value} of finished rows with a finite value (rows without a seed cannot be paired)."""
    out = {}
    for seed, value in zip(rows["seed"], rows["value"]):
        if seed is None or (isinstance(seed, float) and math.isnan(seed)) or seed == "":
            continue
        out.setdefault(seed, float(value))
    return out


def _compare(axes, variants, per, baselines, compare_nfes):
    """Comparisons of every row with its baseline row, and the seeds-needed figures."""
    vset, comparisons, needed = set(variants), {}, []
    for i, axis in enumerate(axes):
        if axis not in baselines:
            continue
        b = baselines[axis].value
        slices: dict[tuple, list] = {}
        for v in variants:
            slices.setdefault(v[:i] + v[i + 1:], []).append(v)
        for k in compare_nfes:
            for v in variants:
                if v[i] == b:
                    continue
                ref = v[:i] + (b,) + v[i + 1:]
                diff = stats.paired_difference(per[(v, k)], per[(ref, k)]) if ref in vset else None
                comparisons[(v, axis, k)] = Comparison(axis, v, ref, k, diff)
            groups, closest = [], None
            for members in slices.values():
                for v1, v2 in combinations(members, 2):
                    d = stats.paired_difference(per[(v1, k)], per[(v2, k)])
                    if d.n >= 2:
                        groups.append(d.diffs)
                        if closest is None or abs(d.mean) < abs(closest[1].mean):
                            closest = ((v1, v2), d)
            s_d, dof = stats.pooled_sd(groups)
            base_vals = [x for v in variants if v[i] == b for x in per[(v, k)].values()]
            base_mean = float(np.mean(base_vals)) if base_vals else math.nan
            needed.append(SeedsNeeded(axis, k, s_d, dof, len(groups),
                                      closest[0] if closest else None,
                                      closest[1].n if closest else 0,
                                      abs(closest[1].mean) if closest else math.nan, base_mean))
    return comparisons, needed


def metric_table(df: pd.DataFrame, metric: str, axes: list[str], phase: str = "final",
                 paper_table: str | None = None, *,
                 baseline: Mapping[str, "str | Baseline"] | None = None,
                 compare_nfes: Sequence[int] | None = None) -> MetricTable:
    """Summarize `df` (from `tidy`) for one metric and phase into a MetricTable.

    Trials with status other than "finished" (or with a non-finite value) do not enter mean/std
    but are counted in the cell's notes and the "seeds ok" column.

    `baseline`: {axis: value string or `Baseline`} (from `study_baselines`, which reads the
    `mfsweep.baseline` tag and the base config); axes left out use their first value.
    `compare_nfes`: the NFEs that get Δ columns and seeds-needed lines (None: every NFE of the
    table; []: no comparison at all).
    """
    # every trial of the study, so variants whose trials never logged this metric still show
    trials = df.drop_duplicates("run_id")
    sub = df[(df["metric"] == metric) & (df["phase"] == phase)]
    nfes = sorted(int(k) for k in sub["nfe"].unique())
    order = trials.sort_values("trial_id")  # study order: trial ids are t000, t001, ...
    variants = list(dict.fromkeys(tuple(str(r[a]) for a in axes) for _, r in order.iterrows()))
    recs, train_s, statuses, per = [], {}, {}, {}
    for v in variants:
        mask = np.ones(len(trials), bool)
        for a, x in zip(axes, v):
            mask &= (trials[a].astype(str) == x).to_numpy()
        vt = trials[mask]
        total, n_fin = len(vt), int((vt["status"] == FINISHED).sum())
        statuses[v] = {s: int(c) for s, c in vt["status"].value_counts().items() if s != FINISHED}
        if "train_s" in vt:
            done = vt.loc[vt["status"] == FINISHED, "train_s"].astype(float)
            train_s[v] = float(done.mean()) if done.notna().any() else math.nan
        for k in nfes:
            rows = sub[sub["run_id"].isin(vt["run_id"]) & (sub["nfe"] == k)]
            ok_rows = rows[(rows["status"] == FINISHED) & np.isfinite(rows["value"])]
            ok = ok_rows["value"]
            per[(v, k)] = _seed_values(ok_rows)
            notes = _status_notes(vt["status"], total)
            missing = n_fin - len(ok)
            if missing > 0:
                notes = "; ".join(x for x in [notes, f"no value {missing}/{total}"] if x)
            ci = stats.t_interval(ok, CONFIDENCE)
            recs.append({**dict(zip(axes, v)), "nfe": k, "mean": ok.mean() if len(ok) else math.nan,
                         "std": ok.std(ddof=DDOF) if len(ok) > 1 else math.nan, "n": len(ok),
                         "n_finished": n_fin, "n_total": total, "notes": notes,
                         "ci_low": ci.low, "ci_high": ci.high})
    summary = pd.DataFrame(recs, columns=[*axes, "nfe", "mean", "std", "n", "n_finished",
                                          "n_total", "notes", "ci_low", "ci_high"])
    best = summary.groupby("nfe")["mean"].transform("max" if metric in HIGHER_IS_BETTER else "min")
    # with a single variant there is nothing to compare: no bold
    summary["best"] = (summary["mean"] == best) & summary["n"].gt(0) & (len(variants) > 1)
    paper, sources = {}, []
    if paper_table and paper_axes(paper_table) & set(axes):
        for v in variants:
            found = paper_lookup(paper_table, dict(zip(axes, v)))
            paper[v] = None if found is None else found[0]
            if found is not None and found[1] not in sources:
                sources.append(found[1])
        summary["paper_fid_1nfe"] = [paper.get(tuple(str(r[a]) for a in axes))
                                     for _, r in summary.iterrows()]
    method_paper = {}
    if METHOD_AXIS in axes:
        i = list(axes).index(METHOD_AXIS)
        method_paper = {v: METHOD_NUMBERS[v[i]].cell() for v in variants if v[i] in METHOD_NUMBERS}
    cmp_nfes = list(nfes) if compare_nfes is None else [k for k in nfes if k in {int(x) for x in compare_nfes}]
    values = {a: list(dict.fromkeys(v[i] for v in variants)) for i, a in enumerate(axes)}
    values = {a: vals for a, vals in values.items() if len(vals) >= 2}
    baselines = resolve_baselines(values, given=baseline) if cmp_nfes and values else {}
    comparisons, needed = _compare(list(axes), variants, per, baselines, cmp_nfes)
    return MetricTable(metric, phase, list(axes), nfes, summary, variants, paper, paper_table,
                       sorted(sources), train_s, method_paper, statuses, baselines, cmp_nfes,
                       comparisons, needed)


def study_tables(df: pd.DataFrame, axes: list[str], phase: str = "final",
                 paper_table: str | None = None, *, metrics: str | Sequence[str] | None = None,
                 nfes: int | Sequence[int] | None = None,
                 baseline: Mapping[str, "str | Baseline"] | None = None) -> dict[str, MetricTable]:
    """One MetricTable per metric found in `df` for `phase` (e.g. {'swd': ..., 'energy': ...}).

    Keyword arguments (what `mfsweep report --metric M --nfe K` chooses); every table is returned,
    these only choose which tables get Δ columns and seeds-needed lines:
      metrics   metric names to compare (None: every metric; []: none). ValueError naming the
                available metrics when one is not in `df` for `phase`.
      nfes      NFEs to compare (None: every NFE of each compared metric). ValueError when one
                is logged for none of the compared metrics.
      baseline  {axis: value string or `Baseline`}: build it with `study_baselines(df, axes,
                tag=<parent tag mfsweep.baseline>, base_config=<base_config.yaml text>)` so the
                tag / base-config / first-value rule applies; a plain {axis: value} is used as
                given ("chosen for this report"); axes left out use their first value.
    """
    available = sorted(df.loc[df["phase"] == phase, "metric"].unique())
    compared = available if metrics is None else [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in compared if m not in available]
    if unknown:
        raise ValueError(f"no metric {', '.join(map(repr, unknown))} in phase {phase!r}; "
                         f"available: {', '.join(available) or 'none'}")
    if nfes is not None:
        nfes = [int(nfes)] if isinstance(nfes, (int, np.integer)) else [int(k) for k in nfes]
        sel = df[(df["phase"] == phase) & df["metric"].isin(compared)]
        logged = sorted({int(k) for k in sel["nfe"].unique()})
        missing = [k for k in nfes if k not in logged]
        if missing:
            raise ValueError(f"no NFE {', '.join(map(str, missing))} logged for "
                             f"{', '.join(compared) or 'the compared metrics'} in phase {phase!r}; "
                             f"available: {', '.join(map(str, logged)) or 'none'}")
    if baseline:  # check the given values once, against every trial's axis values
        values = {a: v for a, v in axis_values(df, axes).items() if len(v) >= 2}
        unknown_axes = [a for a in baseline if a not in axes]
        if unknown_axes:
            raise ValueError(f"baseline for unknown axis {', '.join(unknown_axes)}; axes: {', '.join(axes)}")
        baseline = resolve_baselines({a: values[a] for a in baseline if a in values}, given=baseline)
    return {m: metric_table(df, m, axes, phase, paper_table, baseline=baseline,
                            compare_nfes=nfes if m in compared else [])
            for m in available}
