"""Reports of search studies (random / Optuna search): analysis.search, analysis.search_plots and
the search branch of analysis.report.

- end to end: a small Optuna (TPE) + ASHA study (`mfsweep run` as a subprocess, 2 CPUs, moons, a
  tiny MLP), its report, and the leaderboard checked against the child runs' `final/swd/nfe_k`
  read here from MLflow: order, values, parameters, 4 significant digits, ASHA-stopped trials
  shown as stopped (not failed), the figures, the best config (a valid study base), and the Optuna
  journal artifact on the parent run (loaded back with Optuna);
- hand-built MLflow stores (no Ray): too few trials → the "not enough trials" note (and
  distributions inferred when the parent has no study.yaml); one parameter driving the metric →
  it gets the larger fANOVA importance;
- headless Chromium renders the HTML report with the search sections (skipped without chromium).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from analysis import load, search
from analysis.report import write_report

ROOT = Path(__file__).resolve().parents[1]
METRIC = "swd/nfe_1"
LR, FRAC = "train.lr", "meanflow.frac_r_neq_t"
SEARCH_HEADINGS = ["What was searched", "Leaderboard", "Best trial's config", "Parameter effects",
                   "Parameter importance", "Search history", "Optuna study"]
# lr from 1e-5: the low-lr trials are clearly worse at step 50, so ASHA (grace 50) stops some
STUDY = {
    "name": "srch_e2e",
    "base": {"data": {"name": "moons", "num_train": 2000, "num_test": 500},
             "model": {"backbone": "mlp", "hidden_dim": 32, "depth": 1},
             "train": {"steps": 200, "batch_size": 64, "checkpoint_every": 100, "log_every": 25,
                       "warmup_steps": 10}},
    "axes": {LR: {"loguniform": [1.0e-5, 3.0e-2]}, FRAC: {"uniform": [0.0, 1.0]}},
    "seeds": [0],
    "search": {"algorithm": "optuna", "num_samples": 6, "metric": METRIC},
    "scheduler": {"name": "asha", "grace_period": 50, "reduction_factor": 2},
    "eval": {"nfe": [1, 2], "num_samples": 200, "every_steps": 50, "num_samples_during": 100},
}


# ---- helpers ------------------------------------------------------------------------------------
def md_section(md: str, heading: str) -> str:
    """The text of `## heading` up to the next `## ` heading."""
    start = md.index(f"## {heading}\n")
    end = md.find("\n## ", start + 3)
    return md[start:] if end < 0 else md[start:end]


def md_table(text: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """The Markdown table whose header starts with `first_header` (cells unescaped)."""
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for ln in lines[i + 2:]:
        if not ln.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", ln.strip()[1:-1])
        rows.append([re.sub(r"\\(.)", r"\1", c.strip()) for c in cells])
    return header, rows


NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?", re.I)


def significant_digits(token: str) -> int:
    mantissa = token.lower().split("e")[0]
    if "." in mantissa:
        return len(mantissa.replace(".", "").lstrip("0"))
    return len(mantissa.lstrip("0").rstrip("0"))  # an integer: trailing zeros are not precision


def assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert path.stat().st_size > 5000, f"{path} looks empty"


def child_runs(client: MlflowClient, parent_id: str, exp_id: str) -> list:
    return client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


# ---- the end-to-end study (module fixture: run once, report once) ------------------------------
@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search_e2e")
    study = tmp / "srch_e2e.yaml"
    study.write_text(yaml.safe_dump({**STUDY, "storage": str(tmp / "ray")}, sort_keys=False))
    uri = f"sqlite:///{tmp}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mfsweep.cli", "run", str(study), "--num-cpus", "2",
                           "--tracking-uri", uri], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = write_report(STUDY["name"], uri, tmp / "report")
    print(f"e2e search study + report: {time.perf_counter() - t0:.0f} s")
    return uri, files, tmp


@pytest.mark.slow
def test_search_report_end_to_end(e2e):
    uri, files, tmp = e2e
    md = files["markdown"].read_text()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(STUDY["name"])
    parent = client.search_runs([exp.experiment_id], "tags.`mfsweep.role` = 'study'")[0]
    kids = child_runs(client, parent.info.run_id, exp.experiment_id)
    assert len(kids) == STUDY["search"]["num_samples"]
    by_trial = {r.data.tags["mfsweep.trial_id"].split("-", 1)[0]: r for r in kids}

    # the search sections replace the per-variant tables
    for heading in SEARCH_HEADINGS:
        assert f"## {heading}" in md or f"### {heading}" in md, heading
    assert "## What was swept" not in md and "versus NFE" not in md

    # leaderboard: independently from MLflow
    header, rows = md_table(md_section(md, "Leaderboard"), "rank")
    assert header[:6] == ["rank", "trial", "lr", "frac_r_neq_t", "status", "train time"]
    assert header[6:] == ["swd/nfe_1 (final)", "swd/nfe_2 (final)", "swd/nfe_1 (last periodic eval)"]
    assert sorted(r[1] for r in rows) == sorted(by_trial)
    done = sorted((r for r in kids if r.data.tags["mfsweep.status"] == "finished"),
                  key=lambda r: r.data.metrics[f"final/{METRIC}"])
    assert [r[1] for r in rows[:len(done)]] == [r.data.tags["mfsweep.trial_id"][:4] for r in done]
    for rank, row in enumerate(rows, 1):
        run = by_trial[row[1]]
        assert math.isclose(float(row[2]), float(run.data.params[LR]), rel_tol=1e-3)
        assert math.isclose(float(row[3]), float(run.data.params[FRAC]), rel_tol=1e-3, abs_tol=1e-4)
        if run.data.tags["mfsweep.status"] == "finished":
            assert row[0] == str(rank) and row[4] == "finished"
            for k, cell in zip((1, 2), row[6:8]):
                assert cell == f"{run.data.metrics[f'final/swd/nfe_{k}']:.4g}"
            assert row[5] == f"{run.data.metrics['time/train_s']:.3g} s"
        for token in NUMBER.findall(" ".join(row)):  # rounding: never more than 4 digits
            assert significant_digits(token) <= 4, (token, row)

    # ASHA stopped trials are stopped, not failed
    stopped = [r for r in kids if r.data.tags["mfsweep.status"] == "stopped"]
    assert stopped, "ASHA stopped no trial: the low-lr region no longer loses at step 50"
    status = {r[1]: r[4] for r in rows}
    for run in stopped:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, f"eval/{METRIC}")]
        assert status[run.data.tags["mfsweep.trial_id"][:4]] == f"stopped at step {max(steps)} by ASHA"
    assert not any("failed" in s for s in status.values())
    assert "None: every trial finished or was stopped early by ASHA" in md_section(
        md, "Failed, diverged or unfinished trials")

    # figures
    for key in ("search_effects", "search_parallel", "search_history", "search_asha"):
        assert_png(files[f"plot_{key}"])
        assert f"plots/{key}.png" in md

    # importance: fANOVA when enough trials finished, else the note
    need = search.min_trials_for_importance(2)
    imp_text = md_section(md, "Parameter importance")
    if len(done) < need:
        assert f"not enough trials for parameter importance (n = {len(done)}, need {need}" in imp_text
    else:
        assert "plots/search_importance.png" in imp_text

    # the best config pastes into a new study's base (validated by mfsweep itself)
    from mfsweep.sweep.plan import make_plan
    from mfsweep.sweep.study import parse_study

    cfg_text = re.search(r"```yaml\n(#.*?)```", md_section(md, "Leaderboard"), re.S).group(1)
    base = yaml.safe_load(cfg_text)["base"]
    assert base["train"]["lr"] == pytest.approx(float(done[0].data.params[LR]), rel=1e-12)
    assert "seed" not in base and "name" not in base
    plan = make_plan(parse_study({"name": "next", "base": base, "axes": {FRAC: [0.25, 0.5]}}))
    assert len(plan.trials) == 2

    # the Optuna journal: on the parent run and in the report folder, opens with Optuna
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    assert search.JOURNAL_ARTIFACT in {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    local = client.download_artifacts(parent.info.run_id, search.JOURNAL_ARTIFACT, str(tmp / "dl"))
    assert Path(local).read_bytes() == files["optuna_journal"].read_bytes()
    loaded = optuna.load_study(study_name=STUDY["name"],
                               storage=JournalStorage(JournalFileBackend(local)))
    states = [t.state for t in loaded.trials]
    assert len(states) == len(kids)
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(done)
    assert states.count(optuna.trial.TrialState.PRUNED) == len(stopped)
    assert loaded.best_value == pytest.approx(done[0].data.metrics[f"final/{METRIC}"])
    assert loaded.best_trial.user_attrs["mlflow_run_id"] == done[0].info.run_id
    assert isinstance(loaded.best_trial.distributions[LR], optuna.distributions.FloatDistribution)
    assert loaded.best_trial.distributions[LR].log, "train.lr is log-uniform in the study file"


# ---- hand-built stores --------------------------------------------------------------------------
def fake_search(root: Path, name: str, n: int, *, study_yaml: bool, failed: int = 0,
                seed: int = 0) -> tuple[str, list[dict]]:
    """A random-search study written straight into MLflow: lr (log-uniform 1e-4 … 1e-1) drives
    final swd (a bowl around 10^-2.5, small noise), frac_r_neq_t does nothing. Returns (uri,
    trials as logged)."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment(name, artifact_location=(root / "artifacts").as_uri())
    tags = {"mfsweep.role": "study", "mfsweep.study": name, "mfsweep.axes": json.dumps([LR, FRAC, "seed"]),
            "mfsweep.search": "random", "mfsweep.metric": METRIC, "mfsweep.description": "fake search"}
    parent = client.create_run(exp, tags=tags, run_name=name).info.run_id
    scratch = root / "scratch"
    scratch.mkdir(exist_ok=True)
    texts = {"base_config.yaml": "data:\n  name: moons\n"}
    if study_yaml:
        texts["study.yaml"] = yaml.safe_dump({
            "name": name, "axes": {LR: {"loguniform": [1e-4, 1e-1]}, FRAC: {"uniform": [0.0, 1.0]}},
            "search": {"algorithm": "random", "num_samples": n, "metric": METRIC}})
    for fname, text in texts.items():
        (scratch / fname).write_text(text)
        client.log_artifact(parent, str(scratch / fname))
    rng = np.random.default_rng(seed)
    logged = []
    for i in range(n + failed):
        lr, frac = float(10 ** rng.uniform(-4, -1)), float(rng.uniform())
        status = "finished" if i < n else "failed"
        tid = f"t{i:03d}-lr={lr:.6g}-frac_r_neq_t={frac:.6g}-seed=0"
        ctags = {"mlflow.parentRunId": parent, "mfsweep.role": "trial", "mfsweep.study": name,
                 "mfsweep.trial_id": tid, "mfsweep.status": status, f"axis.{LR}": repr(lr),
                 f"axis.{FRAC}": repr(frac), "axis.seed": "0"}
        if status == "failed":
            ctags["mfsweep.error"] = "RuntimeError: boom"
        rid = client.create_run(exp, tags=ctags, run_name=tid,
                                start_time=int(time.time() * 1000) + i).info.run_id
        value = 0.1 + 0.3 * (math.log10(lr) + 2.5) ** 2 / 2.25 + 0.005 * rng.normal()
        ts = int(time.time() * 1000)
        metrics = [Metric(f"eval/{METRIC}", value + 0.2 / s, ts, s) for s in (50, 100)]
        if status == "finished":
            metrics += [Metric(f"final/{METRIC}", value, ts, 100), Metric("final/swd/nfe_2", value * 0.9, ts, 100),
                        Metric("time/train_s", 1.5 + i, ts, 100)]
        params = [Param(LR, repr(lr)), Param(FRAC, repr(frac)), Param("seed", "0"), Param("train.steps", "100")]
        client.log_batch(rid, metrics=metrics, params=params)
        client.set_terminated(rid, "FINISHED" if status == "finished" else "FAILED")
        logged.append({"run_id": rid, "lr": lr, "frac": frac, "value": value, "status": status})
    client.set_terminated(parent, "FINISHED")
    return uri, logged


def test_too_few_trials_shows_the_note(tmp_path):
    uri, logged = fake_search(tmp_path, "few", 3, study_yaml=False, failed=1)
    files = write_report("few", uri, tmp_path / "report", log_to_mlflow=False)
    md = files["markdown"].read_text()
    assert "not enough trials for parameter importance (n = 3, need 6" in md
    assert "plot_search_importance" not in files
    # no study.yaml: distributions inferred from the values, and the report says so
    searched = md_section(md, "What was searched")
    assert "inferred from the values" in searched and "no study.yaml artifact" in searched
    info = search.search_info(load.load_study("few", uri))
    assert [p.log for p in info.params] == [True, False], "lr spans > 100×: log; frac: linear"
    # the failed trial is last and listed as failed, with its error
    _, rows = md_table(md_section(md, "Leaderboard"), "rank")
    assert [r[0] for r in rows] == ["1", "2", "3", "—"] and rows[-1][4] == "failed"
    assert "RuntimeError: boom" in md_section(md, "Failed, diverged or unfinished trials")
    values = [float(r[6]) for r in rows[:3]]
    assert values == sorted(values)
    assert files["optuna_journal"].is_file()


def test_importance_ranks_the_driving_parameter_first(tmp_path):
    uri, logged = fake_search(tmp_path, "driver", 14, study_yaml=True)
    study = load.load_study("driver", uri)
    info = search.search_info(study)
    assert [(p.key, p.kind, p.log, p.source) for p in info.params] == [
        (LR, "float", True, "study"), (FRAC, "float", False, "study")]
    frame = search.trial_frame(study, info)
    imp = search.importance(frame, info)
    assert imp.values is not None and imp.n == 14 and imp.need == 6
    assert imp.values[LR] > imp.values[FRAC], imp.values
    assert imp.values[LR] > 0.6, imp.values
    assert sum(imp.values.values()) == pytest.approx(1.0)
    files = write_report("driver", uri, tmp_path / "report", log_to_mlflow=False)
    assert_png(files["plot_search_importance"])
    _, rows = md_table(md_section(files["markdown"].read_text(), "Parameter importance"), "parameter")
    assert rows[0][0] == LR
    # the leaderboard is sorted by the logged values
    board = search.leaderboard(frame, info)
    assert list(board["objective"]) == sorted(t["value"] for t in logged)


def test_leaderboard_respects_search_mode_and_formats(tmp_path):
    """mode max sorts descending; numbers keep 4 significant digits."""
    uri, logged = fake_search(tmp_path, "modes", 5, study_yaml=True, seed=3)
    study = load.load_study("modes", uri)
    info = search.search_info(study)
    info.mode = "max"
    board = search.leaderboard(search.trial_frame(study, info), info)
    assert list(board["objective"]) == sorted((t["value"] for t in logged), reverse=True)
    assert search.fmt(0.000123456) == "0.0001235" and search.fmt(12345.6) == "1.235e+04"
    assert search.fmt(float("nan")) == "—" and search.fmt(200.0) == "200"


# ---- the HTML in a browser ----------------------------------------------------------------------
CHROMIUM = shutil.which("chromium")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian: apt-get install -y chromium)")
def test_html_report_renders_the_search_sections(e2e, tmp_path):
    _, files, _ = e2e
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", files["html"].resolve().as_uri()],
                         capture_output=True, text=True, timeout=180, check=True).stdout
    headings = [html.unescape(h) for h in re.findall(r"<h[23]>(.*?)</h[23]>", dom, re.S)]
    for heading in SEARCH_HEADINGS:
        assert heading in headings, (heading, headings)
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    assert re.search(r"stopped at step \d+ by ASHA", text)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', dom)) >= 5
