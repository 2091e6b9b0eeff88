"""The HTML report and the MLflow UI, rendered by headless Chromium.

Skipped only when /usr/bin/chromium is missing (Debian: `apt-get install -y chromium`).
The rendered DOM is reduced to text. The report's is searched for the experiment name, the axis
values and a table cell formatted here from the logged values (mean to 4, std to 2 significant
digits, ddof=1); the MLflow UI's, opened at the URL `mfsweep ui` prints, for the parent run, every
trial and the model-training view (no GenAI tabs or overview). Screenshots are written to the
test's tmp dir and checked to be non-blank PNGs.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_runs as fr  # noqa: E402

from analysis.ui import stop_ui  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="headless browser test needs /usr/bin/chromium "
                              "(Debian: apt-get install -y chromium)"),
]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(url: str, tmp: Path, budget_ms: int, screenshot: Path | None = None) -> str:
    """Rendered DOM of `url` as visible-ish text; also a screenshot when asked."""
    base = [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}",
            f"--virtual-time-budget={budget_ms}"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True,
                         timeout=180, check=True).stdout
    if screenshot is not None:
        subprocess.run([*base, f"--screenshot={screenshot}", "--window-size=1280,1600", url],
                       capture_output=True, timeout=180, check=True)
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


def assert_nonblank_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000 and float(img[..., :3].std()) > 0.02


def assert_group_gone(pgid: int, timeout: float = 15.0) -> None:
    """Every process of the server's group (uvicorn workers included) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes of group {pgid} still running after stop_ui")


def test_html_report_renders_in_chromium(tmp_path_factory, tmp_path):
    fake, files = fr.cached_report(tmp_path_factory)
    shot = tmp_path / "report.png"
    text = chromium(files["html"].resolve().as_uri(), tmp_path, 3000, shot)
    assert fr.EXPERIMENT in text and fr.STUDY in text
    assert "logit_normal" in text and "50%_mix" in text
    logged = np.array([fake.finals[("logit_normal", s)][1] for s in fr.SEEDS])
    cell = f"{logged.mean():.4g} ± {logged.std(ddof=1):.2g} (n={len(fr.SEEDS)})"
    assert cell in text, cell
    assert "failed 1/3" in text and fr.FAILED_ERROR in text
    assert "paper (1-NFE FID)" in text
    assert_nonblank_png(shot)


# What MLflow 3.17's GenAI view shows and its model-training view does not: the sidebar's GenAI
# tabs and the experiment Overview's usage charts.
GENAI_MARKERS = ("Overview", "Sessions", "Judges", "Agent versions", "Token Usage", "Cost Breakdown")


def _printed_url(proc: subprocess.Popen, log: Path, timeout: float = 150.0) -> str:
    """The study runs URL that `mfsweep ui` prints once the server answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"^study runs: (\S+)$", log.read_text(errors="replace"), re.M)
        if found:
            return found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"mfsweep ui printed no study runs URL (exit {proc.poll()}):\n"
                         + log.read_text(errors="replace")[-3000:])


def test_mlflow_ui_opens_on_the_study_runs(tmp_path_factory, tmp_path):
    """`mfsweep ui STUDY --no-browser` prints the study's runs page; headless Chromium opened there
    shows, on its first screen, the model-training view with the parent run and every trial of it
    (not the GenAI overview, and not the trials folded under a collapsed parent)."""
    from analysis.ui import free_port

    fake = fr.cached_fake_study(tmp_path_factory)
    study = tmp_path / "study.yaml"
    study.write_text(f"name: {fr.STUDY}\ntracking: {{uri: '{fake.tracking_uri}', experiment: {fr.EXPERIMENT}}}\n")
    log = tmp_path / "ui.log"
    cmd = [sys.executable, "-m", "mfsweep.cli", "ui", str(study), "--no-browser", "--workers", "1",
           "--port", str(free_port())]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with open(log, "wb") as out:  # own session: stop_ui ends the CLI, the server and its workers
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    try:
        url = _printed_url(proc, log)
        text = chromium(url, tmp_path, 15000, tmp_path / "mlflow_ui.png")
    finally:
        stop_ui(proc)
    assert proc.poll() is not None
    assert_group_gone(proc.pid)
    assert f"/#/experiments/{fake.experiment_id}/runs?" in url and "workflowType=machine_learning" in url, url
    context = f"{url}\n{text[:3000]}\n{log.read_text(errors='replace')[-2000:]}"
    assert fr.EXPERIMENT in text, context
    assert fr.STUDY in text, context  # the parent run's name in the runs table
    missing = [name for name in fake.run_names.values() if name not in text]
    assert not missing, f"trials not on the first screen: {missing}\n{context}"
    assert "Model registry" in text, context  # the model-training sidebar
    shown = [m for m in GENAI_MARKERS if m in text]
    assert not shown, f"GenAI view markers on the page: {shown}\n{context}"
    assert_nonblank_png(tmp_path / "mlflow_ui.png")
