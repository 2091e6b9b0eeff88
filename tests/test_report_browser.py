"""The HTML report and the MLflow UI, rendered by headless Chromium.

Skipped only when /usr/bin/chromium is missing (Debian: `apt-get install -y chromium`).
The rendered DOM is reduced to text and searched for the experiment name, the axis values and a
table cell formatted here from the logged values (mean to 4, std to 2 significant digits,
ddof=1); screenshots are written to the test's tmp dir and checked to be non-blank PNGs.
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

from analysis.ui import start_ui, stop_ui  # noqa: E402

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


def test_mlflow_ui_shows_experiment_and_runs(tmp_path_factory, tmp_path):
    fake = fr.cached_fake_study(tmp_path_factory)
    proc, url = start_ui(fake.tracking_uri, cwd=tmp_path, log_path=tmp_path / "ui.log")
    try:
        # MLflow 3 opens an experiment on its GenAI overview; the runs table lives at /runs
        page = f"{url}/#/experiments/{fake.experiment_id}/runs"
        text = chromium(page, tmp_path, 15000, tmp_path / "mlflow_ui.png")
    finally:
        stop_ui(proc)
    assert proc.poll() is not None
    assert_group_gone(proc.pid)
    assert fr.EXPERIMENT in text, (tmp_path / "ui.log").read_text()[-2000:]
    assert fr.STUDY in text  # the parent run's name in the runs table
    assert_nonblank_png(tmp_path / "mlflow_ui.png")
