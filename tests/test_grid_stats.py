"""Which differences the seeds resolve (analysis/stats.py, the Δ columns of analysis/tables.py).

The statistics are checked against closed forms and scipy computed here independently. The tables
are checked on a hand-built MLflow store whose answer is known: a 2 × 2 grid over
`meanflow.weight_power` (0.0 is worse than the baseline 1.0 by 0.1 on every seed, seed noise
0.005: "resolved") and `model.time_embedding` (t_r and t_tr have the same mean up to 0.002, seed
noise 0.02: "within noise"), three seeds, a lower-is-better metric (swd) and a higher-is-better one
(recall), plus a trial the ASHA scheduler stopped early.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from scipy import stats as st

from analysis import load, stats, tables

# -- the statistics ------------------------------------------------------------------------------


def test_t_interval_matches_scipy_and_the_closed_form():
    x = [1.0, 2.0, 3.0, 4.0]
    iv = stats.t_interval(x)
    sd = np.std(x, ddof=1)
    lo, hi = st.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sd / math.sqrt(len(x)))
    assert (iv.mean, iv.std, iv.n) == (2.5, pytest.approx(sd), 4)
    assert (iv.low, iv.high) == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
    # by hand: t(0.975, 3) = 3.182446, half width 3.182446 · 1.290994 / 2 = 2.054260
    assert iv.low == pytest.approx(2.5 - 2.054260, abs=1e-6) and iv.high == pytest.approx(4.554260, abs=1e-6)
    # another level, non-finite values dropped
    iv90 = stats.t_interval([1.0, math.nan, 2.0, 3.0, 4.0, math.inf], confidence=0.9)
    assert iv90.n == 4 and iv90.high - iv90.low == pytest.approx(
        np.diff(st.t.interval(0.9, 3, loc=2.5, scale=sd / 2))[0])


def test_t_interval_edge_cases():
    one = stats.t_interval([0.3])
    assert one.n == 1 and one.mean == 0.3 and math.isnan(one.std)
    assert math.isnan(one.low) and math.isnan(one.high) and not one.has_interval and not one.excludes(0)
    assert stats.verdict(one) == stats.NO_INTERVAL == "n = 1, no interval"
    for empty in ([], [math.nan, math.nan]):
        iv = stats.t_interval(empty)
        assert iv.n == 0 and all(math.isnan(v) for v in (iv.mean, iv.std, iv.low, iv.high))
        assert stats.verdict(iv) == stats.NO_PAIRS
    same = stats.t_interval([0.1, 0.1, 0.1])  # no spread: a zero-width interval at the mean
    assert same.low == pytest.approx(0.1) and same.high == pytest.approx(0.1)
    assert stats.verdict(same) == stats.RESOLVED
    assert stats.verdict(stats.t_interval([0.0, 0.0])) == stats.WITHIN_NOISE  # [0, 0] contains 0


def test_paired_difference_uses_only_seeds_finished_in_both():
    a = {0: 1.0, 1: 2.0, 2: 4.0, 3: math.nan, 5: 9.0}
    b = {0: 0.5, 1: 1.0, 2: 3.0, 3: 1.0, 4: 1.0}
    d = stats.paired_difference(a, b)
    assert d.seeds == (0, 1, 2) and d.diffs == (0.5, 1.0, 1.0) and d.n == 3
    # by hand: mean 5/6, sd 0.288675, t(0.975, 2) = 4.302653, half width 0.717109
    assert d.mean == pytest.approx(5 / 6) and d.interval.std == pytest.approx(0.288675, abs=1e-6)
    assert d.interval.low == pytest.approx(5 / 6 - 0.717109, abs=1e-6)
    assert d.interval.high == pytest.approx(5 / 6 + 0.717109, abs=1e-6)
    lo, hi = st.t.interval(0.95, 2, loc=5 / 6, scale=np.std([0.5, 1, 1], ddof=1) / math.sqrt(3))
    assert (d.interval.low, d.interval.high) == (pytest.approx(lo), pytest.approx(hi))
    assert stats.verdict(d.interval) == stats.RESOLVED == "resolved"
    assert d.p_value == pytest.approx(st.ttest_rel([1.0, 2.0, 4.0], [0.5, 1.0, 3.0]).pvalue)
    # a null effect: the interval contains 0
    null = stats.paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.1, 1: 1.9, 2: 3.05})
    assert null.interval.low < 0 < null.interval.high
    assert stats.verdict(null.interval) == stats.WITHIN_NOISE == "within noise"
    # one common seed, none
    assert stats.verdict(stats.paired_difference({0: 1.0, 1: 2.0}, {1: 1.5}).interval) == stats.NO_INTERVAL
    none = stats.paired_difference({0: 1.0}, {1: 1.0})
    assert none.n == 0 and none.seeds == () and math.isnan(none.p_value)


def test_pooled_sd():
    g1, g2 = [0.1, 0.2, 0.3], [1.0, 1.4]
    ss = sum((x - np.mean(g)) ** 2 for g in (g1, g2) for x in g)
    sd, dof = stats.pooled_sd([g1, g2, [5.0], [math.nan, 2.0]])  # groups with < 2 values: no weight
    assert dof == 3 and sd == pytest.approx(math.sqrt(ss / 3))
    assert stats.pooled_sd([[1.0], []]) == (pytest.approx(math.nan, nan_ok=True), 0)


def test_seeds_needed_by_hand():
    # z(0.975) = 1.959964, z(0.8) = 0.841621, sum 2.801585; s_d = 0.02, X = 0.01:
    # (2.801585 · 2)² = 31.3955 -> 32 seeds
    assert stats.seeds_needed_exact(0.02, 0.01) == pytest.approx(31.3955, abs=1e-3)
    assert stats.seeds_needed(0.02, 0.01) == 32
    assert stats.seeds_needed(0.02, -0.01) == 32  # the sign of the difference does not matter
    z = st.norm.ppf(0.995) + st.norm.ppf(0.9)  # other α and power
    assert stats.seeds_needed(0.03, 0.01, alpha=0.01, power=0.9) == math.ceil((z * 3) ** 2)
    assert stats.seeds_needed(0.001, 0.1) == stats.MIN_SEEDS == 2  # a paired interval needs two
    assert stats.seeds_needed(0.02, 0.0) is None and stats.seeds_needed_exact(0.02, 0.0) == math.inf
    assert stats.seeds_needed(math.nan, 0.01) is None and stats.seeds_needed(0.02, math.nan) is None


# -- baselines -----------------------------------------------------------------------------------


def test_baseline_rule_tag_then_base_config_then_first_value():
    values = {"meanflow.weight_power": ["0.0", "0.5", "1.0"], "model.time_embedding": ["t_r", "t_tr"]}
    cfg = "meanflow:\n  weight_power: 1\nmodel:\n  time_embedding: t_tr\n"
    b = tables.resolve_baselines(values, base_config=cfg)
    assert b["meanflow.weight_power"] == tables.Baseline("1.0", "the base config's value")  # 1 == 1.0
    assert b["model.time_embedding"].value == "t_tr"
    b = tables.resolve_baselines(values, tag=json.dumps({"model.time_embedding": "t_r"}), base_config=cfg)
    assert b["model.time_embedding"] == tables.Baseline("t_r", "set by the study (parent-run tag mfsweep.baseline)")
    assert b["meanflow.weight_power"].why == "the base config's value"
    b = tables.resolve_baselines(values, tag={"model.time_embedding": "nope"}, base_config="model: {}\n")
    assert b["model.time_embedding"].value == "t_r" and "tag's value nope is not swept" in b[
        "model.time_embedding"].why and "first value" in b["model.time_embedding"].why
    assert "base config has no such key" in b["meanflow.weight_power"].why
    b = tables.resolve_baselines(values, tag="not json", base_config="meanflow: {weight_power: 2.0}\n")
    assert b["meanflow.weight_power"].value == "0.0"
    assert "not a JSON object" in b["meanflow.weight_power"].why and "2.0 is not swept" in b[
        "meanflow.weight_power"].why
    b = tables.resolve_baselines(values)
    assert b["meanflow.weight_power"] == tables.Baseline(
        "0.0", "the first value in the table (no mfsweep.baseline tag; no base config)")
    assert tables.resolve_baselines(values, given={"meanflow.weight_power": "0.5"})[
        "meanflow.weight_power"] == tables.Baseline("0.5", "chosen for this report")
    with pytest.raises(ValueError, match="not one of its values: 0.0, 0.5, 1.0"):
        tables.resolve_baselines(values, given={"meanflow.weight_power": "3"})


# -- a hand-built study where the answer is known ------------------------------------------------

STUDY = "grid_stats"
A, B = "meanflow.weight_power", "model.time_embedding"
A_VALUES, B_VALUES = ["0.0", "1.0"], ["t_r", "t_tr"]  # table order; baselines 1.0 (config), t_tr (tag)
SEEDS = [0, 1, 2]
SEED_SHIFT = [0.0, 0.03, -0.02]  # shared by every variant: pairing removes it
A_EFFECT = [0.105, 0.095, 0.100]  # weight_power 0.0 − 1.0, every seed: mean 0.1, sd 0.005
B_OFFSET = [0.020, -0.015, 0.001]  # time_embedding t_r − t_tr: mean 0.002, sd 0.0175
BASE_CONFIG = "meanflow:\n  weight_power: 1.0\nmodel:\n  time_embedding: t_r\n"  # the tag wins for B
STOPPED_SEED = 3  # (1.0, t_tr) seed 3 was stopped by ASHA: eval metrics only


def swd(a, b, s, nfe=1):
    return (0.2 + SEED_SHIFT[s] + (A_EFFECT[s] if a == "0.0" else 0.0) + (B_OFFSET[s] if b == "t_r" else 0.0)
            - (0.05 if nfe == 2 else 0.0))


def recall(a, b, s):  # higher is better; weight_power 0.0 raises it by the same 0.1
    return 0.6 - SEED_SHIFT[s] + (A_EFFECT[s] if a == "0.0" else 0.0) + (B_OFFSET[s] if b == "t_r" else 0.0)


def build_grid_study(root: Path) -> str:
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(STUDY, artifact_location=(root / "artifacts").as_uri())
    tags = {"mfsweep.role": "study", "mfsweep.study": STUDY, "mfsweep.axes": json.dumps([A, B, "seed"]),
            "mfsweep.baseline": json.dumps({B: "t_tr"})}
    parent = client.create_run(exp, tags=tags, run_name=STUDY).info.run_id
    (root / "base_config.yaml").write_text(BASE_CONFIG)
    client.log_artifact(parent, str(root / "base_config.yaml"))
    trials = [(a, b, s, "finished") for a in A_VALUES for b in B_VALUES for s in SEEDS]
    trials.append(("1.0", "t_tr", STOPPED_SEED, "stopped"))
    ts = int(time.time() * 1000)
    for i, (a, b, s, status) in enumerate(trials):
        tid = f"t{i:03d}-weight_power={a}-time_embedding={b}-seed={s}"
        run = client.create_run(exp, run_name=tid, tags={
            "mlflow.parentRunId": parent, "mfsweep.role": "trial", "mfsweep.study": STUDY,
            "mfsweep.trial_id": tid, "mfsweep.status": status, f"axis.{A}": a, f"axis.{B}": b,
            "axis.seed": str(s)})
        k = min(s, 2)
        metrics = [Metric("eval/swd/nfe_1", swd(a, b, k) + 0.1, ts, 50)]
        if status == "finished":
            metrics += [Metric("final/swd/nfe_1", swd(a, b, s), ts, 100),
                        Metric("final/swd/nfe_2", swd(a, b, s, 2), ts, 100),
                        Metric("final/recall/nfe_1", recall(a, b, s), ts, 100),
                        Metric("time/train_s", 2.0, ts, 100)]
        client.log_batch(run.info.run_id, metrics=metrics)
        client.set_terminated(run.info.run_id, "FINISHED" if status == "finished" else "KILLED")
    client.set_terminated(parent, "FINISHED")
    return uri


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid_stats")
    uri = build_grid_study(root)
    study = load.load_study(STUDY, uri)
    base = MlflowClient(tracking_uri=uri).download_artifacts(study.parent.info.run_id, "base_config.yaml",
                                                             str(root / "dl"))
    df = load.tidy(study)
    baseline = tables.study_baselines(df, study.row_axes, study.tag("mfsweep.baseline") or None,
                                      Path(base).read_text())
    return study, df, baseline


@pytest.fixture(scope="module")
def tabs(grid):
    study, df, baseline = grid
    return tables.study_tables(df, study.row_axes, "final", study.paper_table, baseline=baseline)


def _md_row(md: str, *cells: str) -> list[str]:
    """The Markdown row whose first cells are `cells`, split into cells (escapes removed)."""
    for line in md.splitlines():
        parts = [c.strip().replace("\\", "") for c in line.strip().strip("|").split(" | ")]
        if parts[:len(cells)] == list(cells):
            return parts
    raise AssertionError(f"no row {cells} in\n{md}")


def _html_row(text: str, *cells: str) -> list[str]:
    for row in re.findall(r"<tr>(.*?)</tr>", text):
        parts = re.findall(r"<td[^>]*>(.*?)</td>", row)
        if parts[:len(cells)] == list(cells):
            return parts
    raise AssertionError(f"no row {cells}")


def test_baselines_from_tag_and_base_config(grid, tabs):
    study, _, baseline = grid
    assert study.row_axes == [A, B]
    assert baseline[A] == tables.Baseline("1.0", "the base config's value")  # not the first value 0.0
    assert baseline[B] == tables.Baseline("t_tr", "set by the study (parent-run tag mfsweep.baseline)")
    cap = tabs["swd"].caption()
    assert f"{A} = 1.0, the base config's value" in cap
    assert f"{B} = t_tr, set by the study (parent-run tag mfsweep.baseline)" in cap


def test_clear_effect_resolved_null_effect_within_noise(tabs):
    t = tabs["swd"]
    assert t.header() == [A, B, "seeds ok", "train s", "NFE 1", "Δ weight_power vs 1.0 (NFE 1)",
                          "Δ time_embedding vs t_tr (NFE 1)", "NFE 2", "Δ weight_power vs 1.0 (NFE 2)",
                          "Δ time_embedding vs t_tr (NFE 2)"]
    md, html = t.to_markdown(), t.to_html()
    # weight_power 0.0 vs 1.0 in the slice time_embedding = t_tr: +0.1 on every seed, sd 0.005
    lo, hi = st.t.interval(0.95, 2, loc=0.1, scale=0.005 / math.sqrt(3))
    want = f"+0.1000 [+{lo:.4f}, +{hi:.4f}] resolved, worse (n=3)"  # lower is better: worse
    row = _md_row(md, "0.0", "t_tr")
    assert row[5] == want and row[6] == "baseline" and row[8] == want
    assert _html_row(html, "0.0", "t_tr")[5] == want
    d = t.comparisons[(("0.0", "t_tr"), A, 1)].diff
    assert d.seeds == (0, 1, 2) and d.interval.low == pytest.approx(lo) and d.interval.high == pytest.approx(hi)
    # time_embedding t_r vs t_tr in both slices of weight_power: mean 0.002, sd 0.0175
    sd = np.std(B_OFFSET, ddof=1)
    lo, hi = st.t.interval(0.95, 2, loc=np.mean(B_OFFSET), scale=sd / math.sqrt(3))
    for a in A_VALUES:
        for text, row in ((md, _md_row(md, a, "t_r")), (html, _html_row(html, a, "t_r"))):
            assert row[6] == f"+0.002 [{lo:.3f}, +{hi:.3f}] within noise (n=3)"
            assert "resolved" not in row[6]
    assert _md_row(md, "1.0", "t_tr")[5:7] == ["baseline", "baseline"]
    assert _md_row(md, "1.0", "t_r")[5] == "baseline"
    assert "lower is better, so Δ < 0 is better" in t.caption()
    diffs = t.differences
    assert set(diffs["verdict"]) == {"resolved", "within noise"} and len(diffs) == 2 * 2 * 2
    assert (diffs.loc[diffs["axis"] == A, "verdict"] == "resolved").all()
    assert (diffs.loc[diffs["axis"] == B, "verdict"] == "within noise").all()


def test_mean_cells_carry_the_t_interval(tabs):
    t = tabs["swd"]
    vals = [swd("0.0", "t_r", s) for s in SEEDS]
    m, sd = np.mean(vals), np.std(vals, ddof=1)
    lo, hi = st.t.interval(0.95, 2, loc=m, scale=sd / math.sqrt(3))
    d = 1 - math.floor(math.log10(sd))  # bounds to the std's second significant digit
    cell = f"{m:.4g} ± {sd:.2g} (n=3), 95% CI [{lo:.{d}f}, {hi:.{d}f}]"
    assert t.cell(("0.0", "t_r"), 1) == cell
    assert _md_row(t.to_markdown(), "0.0", "t_r")[4] == cell
    assert "Student t-interval over seeds" in t.caption()
    row = t.summary[(t.summary[A] == "0.0") & (t.summary[B] == "t_r") & (t.summary["nfe"] == 1)].iloc[0]
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))


def test_seeds_needed_lines(tabs):
    t = tabs["swd"]
    z = st.norm.ppf(0.975) + st.norm.ppf(0.8)
    assert [(s.axis, s.nfe) for s in t.seeds_needed] == [(A, 1), (A, 2), (B, 1), (B, 2)]
    b1 = next(s for s in t.seeds_needed if (s.axis, s.nfe) == (B, 1))
    sd = np.std(B_OFFSET, ddof=1)  # the same differences in both slices: pooled sd = their sd
    assert b1.s_d == pytest.approx(sd) and b1.pairs == 2 and b1.dof == 4
    assert b1.delta == pytest.approx(0.002)
    n = math.ceil((z * sd / 0.002) ** 2)
    # by hand: sd = sqrt((0.018² + 0.017² + 0.001²) / 2) = 0.0175214; (2.801585 · 0.0175214 / 0.002)² = 602.3
    assert b1.n_closest == n == 603
    md = t.to_markdown().replace("\\", "")
    line = next(x for x in md.splitlines() if x.startswith(f"- {B}, NFE 1:"))
    assert "closest pair t_r vs t_tr (at meanflow.weight_power=0.0) differs by 0.002" in line
    assert f"to resolve a difference of 0.002 at this spread (s_d = {sd:.2g}, pooled over 2 pairs) " \
           f"you need about {n} seeds" in line
    base_mean = np.mean([swd(a, "t_tr", s) for a in A_VALUES for s in SEEDS])  # B's baseline rows
    assert f"about {math.ceil((z * sd / (0.05 * base_mean)) ** 2)} seeds." in line
    a1 = next(s for s in t.seeds_needed if (s.axis, s.nfe) == (A, 1))
    assert a1.s_d == pytest.approx(0.005) and a1.n_closest == 2  # resolved with 3 seeds already
    assert "alpha = 0.05, power 0.8" in md and "(2.80 · s_d / X)²" in md
    assert f"{B}, NFE 1: closest pair" in t.to_html() and f"you need about {n} seeds" in t.to_html()


def test_higher_is_better_metric_follows_its_direction(tabs):
    t = tabs["recall"]
    assert t.nfes == [1] and "higher is better" in t.caption() and "so Δ > 0 is better" in t.caption()
    md, html = t.to_markdown(), t.to_html()
    row = _md_row(md, "0.0", "t_tr")
    assert row[5].startswith("+0.1000 [") and row[5].endswith("] resolved, better (n=3)")  # the same +0.1
    assert _html_row(html, "0.0", "t_tr")[5].endswith("resolved, better (n=3)")
    assert _md_row(md, "0.0", "t_r")[6].endswith("within noise (n=3)")
    # bold: the highest recall (0.0, t_r); for swd the lowest (1.0, t_tr)
    assert _md_row(md, "0.0", "t_r")[4].startswith("**") and t.is_best(("0.0", "t_r"), 1)
    assert _html_row(html, "0.0", "t_r")[4].startswith("<b>") and html.count("<b>") == 1
    assert md.count("**") == 2
    assert tabs["swd"].is_best(("1.0", "t_tr"), 1) and not tabs["swd"].is_best(("0.0", "t_r"), 1)
    assert _md_row(tabs["swd"].to_markdown(), "1.0", "t_tr")[4].startswith("**")
    assert "resolved, worse" in tabs["swd"].to_markdown() and "resolved, better" not in tabs["swd"].to_markdown()


def test_asha_stopped_trial_is_stopped_not_failed(grid, tabs):
    t = tabs["swd"]
    cell = t.cell(("1.0", "t_tr"), 1)
    assert "(n=3; stopped by ASHA 1/4), 95% CI [" in cell and "failed" not in cell
    assert t.seeds_ok(("1.0", "t_tr")) == "3/4"
    for text in (t.to_markdown(), t.to_html(), t.to_latex()):
        assert "stopped by ASHA 1/4" in text.replace("\\", "") and "failed" not in text
    assert "stopped by ASHA: the scheduler ended the trial early; not a failure" in t.caption()
    # the stopped seed 3 has no partner: the comparisons stay on seeds 0, 1, 2
    assert t.comparisons[(("1.0", "t_r"), B, 1)].diff.seeds == (0, 1, 2)
    # every seed of a variant stopped: said so, never "(all failed)"
    study, df, baseline = grid
    df = df.copy()
    sel = (df[A] == "0.0") & (df[B] == "t_r")
    df.loc[sel, "status"] = "stopped"
    t2 = tables.metric_table(df, "swd", study.row_axes, baseline=baseline)
    assert t2.seeds_ok(("0.0", "t_r")) == "0/3 (all stopped by ASHA)"
    assert t2.cell(("0.0", "t_r"), 1) == "stopped by ASHA 3/3"
    assert t2.delta_cell(("0.0", "t_r"), A, 1) == "no paired seeds"
    md = t2.to_markdown()
    assert "0/3 (all stopped by ASHA)" in md and "all failed" not in md
    # mixed: one failed, two stopped
    df.loc[sel & (df["seed"] == 0), "status"] = "failed"
    assert tables.metric_table(df, "swd", study.row_axes).seeds_ok(("0.0", "t_r")) == "0/3 (none finished)"


def test_failed_seed_drops_out_of_the_pairing(grid):
    study, df, baseline = grid
    df = df.copy()
    df.loc[(df[A] == "0.0") & (df[B] == "t_tr") & (df["seed"] == 2), "status"] = "failed"
    t = tables.metric_table(df, "swd", study.row_axes, baseline=baseline)
    d = t.comparisons[(("0.0", "t_tr"), A, 1)].diff
    assert d.seeds == (0, 1) and d.diffs == (pytest.approx(0.105), pytest.approx(0.095))
    assert t.delta_cell(("0.0", "t_tr"), A, 1).endswith("(n=2)")
    assert "failed 1/3" in t.cell(("0.0", "t_tr"), 1)


def test_one_seed_means_no_interval(grid):
    study, df, baseline = grid
    df = df[df["seed"] == 0]
    t = tables.metric_table(df, "swd", study.row_axes, baseline=baseline)
    assert t.cell(("0.0", "t_r"), 1) == f"{swd('0.0', 't_r', 0):.4g} (n=1, no interval)"
    assert t.delta_cell(("0.0", "t_tr"), A, 1) == "+0.105 (n=1, no interval)"
    md = t.to_markdown()
    body = "\n".join(x for x in md.splitlines() if x.startswith("| "))
    assert "no interval" in body and "resolved" not in body and "within noise" not in body
    assert all(s.closest is None for s in t.seeds_needed)
    assert "no two values share two finished seeds" in md
    assert "with n = 1, no interval" in t.caption()


def test_metrics_and_nfes_select_what_is_compared(grid):
    study, df, baseline = grid
    axes = study.row_axes
    only = tables.study_tables(df, axes, metrics=["recall"], baseline=baseline)
    assert set(only) == {"recall", "swd"}  # every table is still there
    assert only["swd"].comparisons == {} and not any(h.startswith("Δ") for h in only["swd"].header())
    assert "Δ columns" not in only["swd"].caption() and only["swd"].seeds_needed == []
    assert {k for (_, _, k) in only["recall"].comparisons} == {1}
    nfe2 = tables.study_tables(df, axes, nfes=[2], baseline=baseline)
    assert {k for (_, _, k) in nfe2["swd"].comparisons} == {2} and nfe2["swd"].compare_nfes == [2]
    assert [h for h in nfe2["swd"].header() if h.startswith("Δ")] == [
        "Δ weight_power vs 1.0 (NFE 2)", "Δ time_embedding vs t_tr (NFE 2)"]
    assert nfe2["recall"].comparisons == {}  # recall has no NFE 2
    assert {(s.axis, s.nfe) for s in nfe2["swd"].seeds_needed} == {(A, 2), (B, 2)}
    one = tables.study_tables(df, axes, metrics="swd", nfes=1, baseline=baseline)
    assert {k for (_, _, k) in one["swd"].comparisons} == {1} and one["recall"].comparisons == {}
    none = tables.study_tables(df, axes, metrics=[])
    assert all(t.comparisons == {} for t in none.values())
    with pytest.raises(ValueError, match="no metric 'fid'.*available: recall, swd"):
        tables.study_tables(df, axes, metrics=["fid"])
    with pytest.raises(ValueError, match="no NFE 8 .*available: 1, 2"):
        tables.study_tables(df, axes, nfes=[8])
    with pytest.raises(ValueError, match="not one of its values"):
        tables.study_tables(df, axes, baseline={A: "0.7"})
    given = tables.study_tables(df, axes, baseline={A: "0.0"})["swd"]
    assert given.baselines[A] == tables.Baseline("0.0", "chosen for this report")
    assert given.delta_cell(("1.0", "t_tr"), A, 1).startswith("-0.1000 [") and "resolved, better" in \
        given.delta_cell(("1.0", "t_tr"), A, 1)


def test_existing_call_keeps_working(grid):
    """study_tables(df, axes, phase, paper_table) as before: every metric and NFE compared, baselines
    by the first value (nothing tells the table about the tag or the base config)."""
    study, df, _ = grid
    t = tables.study_tables(df, study.row_axes, "final", None)["swd"]
    assert t.baselines[A] == tables.Baseline("0.0", "the first value in the table (no mfsweep.baseline "
                                                    "tag; no base config)")
    assert t.compare_nfes == [1, 2]
    assert t.delta_cell(("1.0", "t_tr"), A, 1).endswith("resolved, better (n=3)")
    tex = t.to_latex()
    assert r"$\Delta$" in tex and "Δ" not in tex and "±" not in tex
    body = tex[tex.index(r"\midrule"):tex.index(r"\bottomrule")]
    assert all(line.count("&") == len(t.header()) - 1 for line in body.splitlines()[1:])
    csv = pd.read_csv(__import__("io").StringIO(t.differences_csv()))
    assert list(csv.columns[:3]) == [A, B, "axis"] and len(csv) == 8
