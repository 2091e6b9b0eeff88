"""Security: hostile inputs never execute code, never escape the output folder, never reach a shell.

- study YAML is read with a safe loader: a ``!!python/object/apply:os.system`` tag is exit 2 and
  the command does not run;
- checkpoints are loaded with ``weights_only=True``: a pickled arbitrary object is refused (and
  its payload does not run);
- study names are a restricted pattern (no ``/``, ``..``, spaces, quotes, ``$()``): exit 2 naming
  ``name``; axis labels and values become file-name-safe trial ids whose folders stay inside the
  experiment folder;
- no ``shell=True`` / ``os.system`` anywhere in mfsweep/ or analysis/;
- ``mfsweep ui`` binds 127.0.0.1 unless ``--host`` says otherwise;
- a resumed study restores Ray's pickled experiment state from ``<storage.path>/<study>/...`` only
  (tests/test_sweep_units.py::test_run_plan_restores_only_from_its_own_storage).
"""

from __future__ import annotations

import re
import string
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfsweep.cli import build_parser, main
from mfsweep.config import ConfigError
from mfsweep.sweep.axes import id_label, trial_id
from mfsweep.sweep.plan import make_plan
from mfsweep.sweep.study import parse_study
from mfsweep.sweep.tune import out_dir
from mfsweep.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]
BASE = {"data": {"name": "moons", "num_train": 64, "num_test": 32}, "model": {"hidden_dim": 8, "depth": 1},
        "train": {"steps": 20, "batch_size": 16}, "eval": {"nfe": [1], "num_samples": 16}}
SAFE_ID = re.compile(r"^t\d{3,}(-[A-Za-z0-9._=,+-]+)?-seed=-?\d+$")


def _write_study(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- YAML --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["validate", "run"])
def test_yaml_python_tags_are_refused_and_never_run(tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    body = yaml.safe_dump({"base": BASE}, sort_keys=False)
    study = _write_study(tmp_path / "evil.yaml",
                         f"name: !!python/object/apply:os.system ['touch {marker}']\n{body}")
    args = [command, str(study)] + (["--dry-run"] if command == "run" else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "python/object/apply:os.system" in err and "name" in err, err
    assert not marker.exists(), "the YAML tag's command ran"
    # the same through a trial config (`mfsweep train`)
    cfg = _write_study(tmp_path / "evil_cfg.yaml", f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["train", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert not marker.exists() and not (tmp_path / "out").exists()


# ---- checkpoints -------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "checkpoint.pt"
    torch.save({"step": 3, "model": {}, "evil": _Payload(str(marker))}, bad)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global|weights_only"):
        ckpt.load(bad)
    assert not marker.exists(), "the pickled payload ran"
    good = tmp_path / "good.pt"
    ckpt.save_atomic({"step": 3, "model": {"w": torch.ones(2)}, "gen": torch.Generator().get_state()}, good)
    state = ckpt.load(good)
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))


def test_training_refuses_a_hostile_checkpoint_in_its_folder(tmp_path):
    from mfsweep.config import load_trial_config
    from mfsweep.training.train import train

    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"step": 1, "evil": _Payload(str(marker))}, out / ckpt.CHECKPOINT_NAME)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global|weights_only"):
        train(load_trial_config({**BASE, "train": {**BASE["train"], "device": "cpu"}}), out, progress=False)
    assert not marker.exists()


# ---- names, ids and folders --------------------------------------------------------------------------
HOSTILE_NAMES = ["../../x", "..", ".", "/abs/path", "a/b", "a\\b", "my study", "it's", 'say"hi"', "$(touch x)",
                 "`id`", "a;rm -rf ~", "-rf", "", "name\nnext", "\u00e9t\u00e9", "~root", "a|b", "*"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_study_names_are_refused(name):
    with pytest.raises(ConfigError) as err:
        parse_study({"name": name, "base": BASE})
    assert [path for path, _ in err.value.errors] == ["name"]


def test_hostile_study_name_through_the_cli(tmp_path, capsys):
    marker = tmp_path / "x"
    for name in ("../../x", f"$(touch {marker})", "/abs/path"):
        study = _write_study(tmp_path / "s.yaml", yaml.safe_dump({"name": name, "base": BASE,
                                                                  "storage": str(tmp_path / "ray")}))
        assert main(["run", str(study), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert re.search(r"(^|\s)name: ", err) and name in err, err
    assert not marker.exists() and not (tmp_path / "ray").exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "s.yaml"], "nothing written"


def test_ordinary_study_names_are_accepted():
    for name in ("rt_sampling", "Table1a", "abl-2.0", "x"):
        assert parse_study({"name": name, "base": BASE}).name == name


def _assert_inside(exp: Path, tid: str) -> None:
    assert SAFE_ID.match(tid), tid
    folder = out_dir(str(exp), tid)
    assert folder.resolve().is_relative_to(exp.resolve()), (tid, folder)
    assert folder.resolve().parent.parent == exp.resolve(), "one folder per trial, directly under the experiment"


def test_hostile_axis_labels_are_refused_by_name(tmp_path):
    hostile = ["../../evil", "/abs/path", "a/b", "$(touch pwned) `id`; rm -rf ~", "it's \"quoted\"", "a b"]
    labels = {label: {"hidden_dim": 8 + i} for i, label in enumerate(hostile)}
    with pytest.raises(ConfigError) as err:
        parse_study({"name": "evil", "base": BASE, "axes": {"model": {**labels, "ok": {"hidden_dim": 4}}}})
    assert sorted(path for path, _ in err.value.errors) == sorted(f"axes.model.{label}" for label in hostile)
    assert not (tmp_path / "pwned").exists()


def test_hostile_axis_values_stay_inside_the_experiment(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    np.save(data / "good.npy", np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    paths = [str(data / "sub" / ".." / "good.npy"), str(data / "good.npy"), "../" * 12 + str(data / "good.npy")[1:]]
    labels = {"..": {"hidden_dim": 8}, "...": {"hidden_dim": 9}, "-rf": {"hidden_dim": 10}, "+x": {"hidden_dim": 11}}
    plan = make_plan(parse_study({
        "name": "evil", "base": {**BASE, "data": {"name": "npy", "path": str(data / "good.npy")}},
        "axes": {"model": labels, "data.path": paths}, "seeds": [0, 1]}))
    assert len(plan.trials) == len(labels) * len(paths) * 2
    assert len({t.trial_id for t in plan.trials}) == len(plan.trials), "ids stay distinct after sanitising"
    exp = tmp_path / "storage" / "evil" / "exec-1"
    for spec in plan.trials:
        _assert_inside(exp, spec.trial_id)
        assert spec.config.name == spec.trial_id
    assert {t.tags["model"] for t in plan.trials} == set(labels), "labels are reported as given"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.one_of(st.text(min_size=0, max_size=40), st.floats(allow_nan=True),
                                 st.integers(), st.booleans(),
                                 st.dictionaries(st.sampled_from(["name", "x"]), st.text(max_size=20), max_size=2)),
                       min_size=1, max_size=4),
       index=st.integers(0, 10_000), seed=st.integers(-5, 10_000))
def test_any_axis_value_gives_a_safe_trial_id(values, index, seed):
    exp = Path("/srv/storage/study/exec")
    parts = [(f"axis{i}", v) for i, v in enumerate(values)]
    tid = trial_id(index, parts, seed)
    assert len(tid) <= 120 + len(str(seed))
    _assert_inside(exp, tid)
    for v in values:
        label = id_label(v)
        assert label and set(label) <= set(string.ascii_letters + string.digits + "._=,+-")
        assert "/" not in label and label not in (".", "..")


# ---- no shell ----------------------------------------------------------------------------------------
def test_no_shell_anywhere_in_the_package():
    pattern = re.compile(r"shell\s*=\s*True|os\.system\s*\(|os\.popen\s*\(|subprocess\.getoutput|"
                         r"subprocess\.getstatusoutput")
    files = sorted((ROOT / "mfsweep").rglob("*.py")) + sorted((ROOT / "analysis").rglob("*.py"))
    assert len(files) > 40, "scanned the sources"
    hits = [f"{f.relative_to(ROOT)}:{n}: {line.strip()}" for f in files
            for n, line in enumerate(f.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


# ---- mfsweep ui ------------------------------------------------------------------------------------
class _ExitedServer:
    """A Popen stand-in whose server exited at once (so ui_command returns without waiting)."""

    returncode = 7

    def poll(self):
        return 7

    def wait(self, timeout=None):
        return 7


@pytest.fixture
def launched(monkeypatch):
    import analysis.ui as ui

    seen = []

    def popen(args, **kw):
        assert kw.get("shell") in (None, False) and isinstance(args, list)
        seen.append(args)
        return _ExitedServer()
    fake = types.SimpleNamespace(**{k: getattr(subprocess, k) for k in dir(subprocess) if not k.startswith("_")})
    fake.Popen = popen
    monkeypatch.setattr(ui, "subprocess", fake)  # only analysis.ui's view of subprocess
    return seen


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_ui_binds_loopback_unless_asked(tmp_path, launched, capsys):
    assert build_parser().parse_args(["ui"]).host == "127.0.0.1"
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["ui", "--tracking-uri", uri, "--no-browser", "--port", "5123"]) == 7
    [args] = launched
    assert _flag(args, "--host") == "127.0.0.1" and _flag(args, "--port") == "5123"
    assert _flag(args, "--backend-store-uri") == uri and args.count("--host") == 1
    assert main(["ui", "--tracking-uri", uri, "--no-browser", "--host", "0.0.0.0"]) == 7
    assert _flag(launched[1], "--host") == "0.0.0.0"
    import analysis.ui as ui

    proc_args = ui.ui_args(uri)
    assert _flag(proc_args, "--host") == "127.0.0.1"
    assert ui.start_ui.__defaults__[0] == "127.0.0.1"


def test_subprocess_popen_is_only_called_with_argument_lists():
    """Static check: every subprocess call site in the package passes a list, never a shell string."""
    calls = re.compile(r"subprocess\.(run|Popen|call|check_call|check_output)\(\s*([^\s,)]+)")
    files = sorted((ROOT / "mfsweep").rglob("*.py")) + sorted((ROOT / "analysis").rglob("*.py"))
    found = []
    for f in files:
        for m in calls.finditer(f.read_text()):
            found.append((str(f.relative_to(ROOT)), m.group(2)))
    assert found, "the package does start processes (mfsweep ui)"
    assert all(not arg.startswith(("\"", "'", "f\"", "f'")) for _, arg in found), found
