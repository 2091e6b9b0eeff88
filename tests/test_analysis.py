"""analysis/: loading a study from MLflow, tables, paper numbers, plots, report files.

The study is fabricated in MLflow by tests/fake_runs.py (sqlite store in a tmp dir). Means and
standard deviations are recomputed here with numpy from the values that were logged; std uses
ddof=1 (the sample standard deviation, pandas' default), as analysis.tables documents.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_runs as fr  # noqa: E402

from analysis import load, paper, plots, tables  # noqa: E402
from analysis.report import main as report_main  # noqa: E402
from analysis.ui import ui_args  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return fr.cached_fake_study(tmp_path_factory)


@pytest.fixture(scope="module")
def study(fake):
    return load.load_study(fr.STUDY, fake.tracking_uri, fr.EXPERIMENT)


@pytest.fixture(scope="module")
def table(study):
    df = load.tidy(study)
    return tables.metric_table(df, "swd", study.row_axes, "final", study.paper_table)


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", cell.split("(")[0])]


def _rounded_to(shown: float, exact: float, digits: int) -> bool:
    """`shown` is `exact` rounded to `digits` significant digits (half a unit in the last)."""
    unit = 10.0 ** (np.floor(np.log10(abs(exact))) - digits + 1)
    return abs(shown - exact) <= 0.5 * unit * (1 + 1e-9)


def test_load_study_picks_latest_parent_and_children(fake, study):
    assert study.parent.info.run_id == fake.parent_run_id != fake.old_parent_run_id
    assert study.axes == [fr.AXIS, "seed"] and study.row_axes == [fr.AXIS]
    assert study.paper_table == "1d" and study.experiment_name == fr.EXPERIMENT
    assert sorted(c.data.tags["mfsweep.trial_id"] for c in study.children) == sorted(
        fake.run_names.values())
    with pytest.raises(load.StudyNotFound):
        load.load_study("no_such_study", fake.tracking_uri)


def test_tidy_one_row_per_trial_nfe_metric_and_keeps_failed(fake, study):
    df = load.tidy(study)
    final = df[df["phase"] == "final"]
    assert len(final) == 5 * len(fr.NFES)  # 4 finished + 1 failed trial, none dropped
    for (value, seed), finals in fake.finals.items():
        for k, v in finals.items():
            row = final[(final[fr.AXIS] == value) & (final["seed"] == seed) & (final["nfe"] == k)]
            assert len(row) == 1 and row["value"].iloc[0] == pytest.approx(v, rel=1e-12)
            assert row["num_samples"].iloc[0] == 512
    failed = final[final["run_id"] == fake.failed_run_id]
    assert len(failed) == len(fr.NFES) and failed["value"].isna().all()
    assert set(failed["status"]) == {"failed"} and set(failed["error"]) == {fr.FAILED_ERROR}
    assert set(df["phase"]) == {"final", "eval"}


def test_history_matches_logged_eval_metrics(fake, study):
    hist = load.history(study)
    client = MlflowClient(tracking_uri=fake.tracking_uri)
    rid = study.children[0].info.run_id
    logged = {(m.step, m.value) for m in client.get_metric_history(rid, "eval/swd/nfe_2")}
    got = hist[(hist["run_id"] == rid) & (hist["key"] == "eval/swd/nfe_2")]
    assert set(zip(got["step"], got["value"])) == logged and len(logged) == 2
    assert set(hist[hist["metric"] == "loss"]["step"]) == set(range(0, 101, 20))


def test_table_values_equal_logged_metrics(fake, table):
    for value in fr.VALUES:
        for k in fr.NFES:
            logged = np.array([fake.finals[(value, s)][k] for s in fr.SEEDS])
            st = table.stats((value,), k)
            assert st["mean"] == pytest.approx(logged.mean(), rel=1e-12)
            assert st["std"] == pytest.approx(logged.std(ddof=1), rel=1e-12)
            assert st["n"] == len(fr.SEEDS)
            mean, std = _numbers(table.cell((value,), k))
            assert _rounded_to(mean, logged.mean(), 4)  # means: 4 significant digits
            assert _rounded_to(std, logged.std(ddof=1), 2)  # stds: 2 significant digits
            assert f"(n={len(fr.SEEDS)}" in table.cell((value,), k)


def test_best_cell_per_nfe_is_bold(fake, table):
    md = table.to_markdown()
    for k in fr.NFES:
        means = {v: np.mean([fake.finals[(v, s)][k] for s in fr.SEEDS]) for v in fr.VALUES}
        best = min(means, key=means.get)
        assert table.is_best((best,), k)
        assert f"**{tables.md_escape(table.cell((best,), k))}**" in md
        other = next(v for v in fr.VALUES if v != best)
        assert f"**{tables.md_escape(table.cell((other,), k))}**" not in md
    assert md.count("**") == 2 * len(fr.NFES)


def test_failed_trial_is_shown(table, study):
    for k in fr.NFES:
        assert "failed 1/3" in table.cell((fr.FAILED_VALUE,), k)
        assert "failed" not in table.cell(("logit_normal",), k)
    assert table.seeds_ok((fr.FAILED_VALUE,)) == "2/3"
    for text in (table.to_markdown(), table.to_html(), table.to_latex()):
        assert "failed 1/3" in text
    # all seeds of a variant failed: the row says so instead of vanishing
    df = load.tidy(study)
    df.loc[df[fr.AXIS] == "logit_normal", "status"] = "diverged"
    t = tables.metric_table(df, "swd", study.row_axes)
    assert t.seeds_ok(("logit_normal",)) == "0/2 (all failed)"
    assert t.cell(("logit_normal",), 1) == "diverged 2/2"
    assert "logit\\_normal | 0/2 (all failed) | — | diverged 2/2" in t.to_markdown()  # no finished seed: no time
    # the train-time column is the mean of the finished seeds' logged time/train_s
    assert t.header()[2] == "train s" and t.train_s[(fr.FAILED_VALUE,)] == 3.5
    assert f"| {fr.FAILED_VALUE.replace('_', chr(92) + '_')} | 2/3 | 4 |" in t.to_markdown()


def test_latex_table_structure_and_escaping(table):
    tex = table.to_latex()
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env
    assert not stack
    pos = [tex.index(r) for r in (r"\toprule", r"\midrule", r"\bottomrule")]
    assert pos == sorted(pos)
    assert r"50\%\_mix" in tex and r"logit\_normal" in tex and r"time\_sampler" in tex
    assert not re.search(r"(?<!\\)[%_#]", tex), "unescaped special character"
    assert tex.count(r"\textbf{") == len(fr.NFES) and r"$\pm$" in tex
    body = tex[tex.index(r"\midrule"):tex.index(r"\bottomrule")]
    assert all(line.count("&") == len(table.header()) - 1 for line in body.splitlines()[1:])
    assert tables.latex_escape(r"a_b%c&d#e$f{g}h~i^j\k") == (
        r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k")


def _paper_value(table_name, axis_values):
    found = paper.paper_lookup(table_name, axis_values)
    return None if found is None else found[0]


def test_paper_values_and_column(table):
    assert _paper_value("1a", {"meanflow.frac_r_neq_t": "0.25"}) == 61.06
    assert _paper_value("1a", {"meanflow.frac_r_neq_t": "0"}) == 328.91
    assert _paper_value("1b", {"meanflow.tangent": "v10"}) == 329.22
    assert _paper_value("1c", {"model.time_embedding": "tr"}) == 63.13
    assert _paper_value("1e", {"meanflow.weight_power": "0.5"}) == 63.98
    assert _paper_value("1f", {"meanflow.cfg.omega": "3"}) == 15.53
    assert _paper_value("5", {"meanflow.cfg.kappa": "0.5"}) == 19.15
    assert _paper_value("1a", {"meanflow.frac_r_neq_t": "0.3"}) is None
    assert _paper_value(None, {"meanflow.frac_r_neq_t": "0.25"}) is None
    # a 1a study that also sweeps the sampler: rows off the Table 1 baseline have no number,
    # the uniform-sampler row at 25% is Table 1d's
    both = {"meanflow.frac_r_neq_t": "0.5", "meanflow.time_sampler.name": "uniform"}
    assert _paper_value("1a", both) is None
    both["meanflow.frac_r_neq_t"] = "0.25"
    assert paper.paper_lookup("1a", both) == (65.90, "1d")
    assert paper.paper_lookup("5", {"meanflow.cfg.kappa": "0"}) == (20.15, "5")
    head = table.header()[-1]
    assert head == "paper (1-NFE FID)"  # which data and table: in the caption's citation
    assert "| 61.06 |" in table.to_markdown() and "arXiv 2505.13447" in table.caption()
    assert "ImageNet 256" in table.caption()
    assert "not comparable" in table.caption()
    csv = table.to_csv()
    assert csv.splitlines()[0].startswith(f"{fr.AXIS},nfe,mean,std,n") and "61.06" in csv


def test_plots_write_pngs(study, tmp_path):
    df, hist = load.tidy(study), load.history(study)
    out = [plots.plot_metric_vs_nfe(df, "swd", study.row_axes, tmp_path / "nfe.png"),
           plots.plot_metric_vs_step(hist, "swd", study.row_axes, tmp_path / "step.png"),
           plots.plot_samples_2d(study, tmp_path / "s2d.png"),
           plots.plot_image_grids(study, tmp_path / "grid.png")]
    for p in out:
        assert p is not None and p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 5000
    assert plots.plot_metric_vs_nfe(df, "fid", study.row_axes, tmp_path / "none.png") is None


def test_report_files_and_mlflow_artifacts(tmp_path_factory):
    fake, files = fr.cached_report(tmp_path_factory)
    html, md = files["html"].read_text(), files["markdown"].read_text()
    for text in (html, md):
        for needle in (fr.EXPERIMENT, "50%", "failed 1/3", "frac_r_neq_t: 0.25", "mlflow",
                       "seaborn", "Geng et al. 2025"):
            assert needle in text.replace("\\", ""), needle
    assert fr.FAILED_ERROR in html and fr.FAILED_ERROR.replace("_", "\\_") in md
    assert html.count("data:image/png;base64,") >= 4
    assert not re.search(r"""(src|href)=["'](?!data:)""", html), "external asset in HTML"
    for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (files["dir"] / rel).is_file()
    assert files["table_swd_tex"].read_text().startswith(r"\begin{table}")
    assert "<td>swd</td><td>num_samples</td><td>512</td>" in html  # metric.swd.* tags
    client = MlflowClient(tracking_uri=fake.tracking_uri)
    logged = {f.path for f in client.list_artifacts(fake.parent_run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/plots",
            "report/tables"} <= logged


def test_cli_and_ui_args(fake, capsys):
    assert report_main(["no_such_study", "--tracking-uri", fake.tracking_uri, "--no-log"]) == 2
    assert "no parent run" in capsys.readouterr().err
    args = ui_args("sqlite:///x.db", "0.0.0.0", 5001)
    assert args[1:] == ["-m", "mlflow", "ui", "--backend-store-uri", "sqlite:///x.db",
                        "--host", "0.0.0.0", "--port", "5001"]


def test_report_metric_and_nfe_choose_the_comparisons_and_bad_ones_exit_2(fake, tmp_path, capsys):
    """`--metric` / `--nfe` pick where Δ-vs-baseline columns appear; one not in the study is bad
    input (exit 2, the available ones named)."""
    out = tmp_path / "rep"
    assert report_main([fr.STUDY, "--tracking-uri", fake.tracking_uri, "--experiment", fr.EXPERIMENT,
                        "--out", str(out), "--no-log", "--metric", "swd", "--nfe", "2"]) == 0
    md = (out / "report.md").read_text()
    assert "(NFE 2)" in md and "(NFE 1)" not in md and "(NFE 4)" not in md
    assert (out / "tables" / "swd_differences.csv").is_file()
    assert report_main([fr.STUDY, "--tracking-uri", fake.tracking_uri, "--experiment", fr.EXPERIMENT,
                        "--out", str(tmp_path / "bad"), "--no-log", "--metric", "fid"]) == 2
    assert "swd" in capsys.readouterr().err
