"""The package's shape: imports only go down the layers, no circle, Ray / MLflow / Optuna only in the
sweep wing, a light start-up, one registry helper, and an MLflow schema doc that names every tag,
metric and artifact the code writes."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mfsweep.registry import Registry, lazy

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mfsweep"

# Higher imports lower, never the other way; peers (data / models / methods) import none of each other.
LAYERS = {"cli": 6, "sweep": 5, "training": 4, "config": 3, "evaluation": 2, "methods": 1, "models": 1, "data": 1,
          "registry": 0, "schema": 0, "fileio": 0, "": 0}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path) -> set[str]:
    """mfsweep modules (and third-party top-level packages) imported anywhere in the file, lazily
    or not; ``if TYPE_CHECKING:`` blocks are skipped (never executed)."""
    out: set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:  # `from mfsweep.sweep import checks` imports the module mfsweep.sweep.checks
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


GRAPH = {mod: {d for d in _imports(path) if d in MODULES and d != mod} for mod, path in MODULES.items()}


def _wing(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_is_in_a_layer():
    assert {_wing(m) for m in MODULES} <= set(LAYERS), sorted({_wing(m) for m in MODULES} - set(LAYERS))


def test_imports_only_go_down():
    bad = [f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps
           if _wing(a) != _wing(b) and not LAYERS[_wing(a)] > LAYERS[_wing(b)]]
    assert not bad, "imports that go up or sideways:\n" + "\n".join(sorted(bad))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def dfs(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_no_import_circle():
    assert _cycle(GRAPH) is None, " -> ".join(_cycle(GRAPH))
    # the check itself finds a circle when there is one
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_ray_mlflow_optuna_only_in_the_sweep_wing():
    edge = {"ray", "mlflow", "optuna"}
    bad = sorted(f"{mod}: {sorted(tops)}" for mod, path in MODULES.items()
                 if _wing(mod) != "sweep" and (tops := {d.split(".")[0] for d in _imports(path)} & edge))
    assert not bad, bad
    analysis = {p.name: {d.split(".")[0] for d in _imports(p)} for p in (ROOT / "analysis").glob("*.py")}
    assert not any(({"ray", "torch"} & deps) for deps in analysis.values()), analysis
    # Optuna rebuilds a search study for its importance and journal: analysis/search.py only
    assert sorted(name for name, deps in analysis.items() if "optuna" in deps) in ([], ["search.py"])
    # analysis/ reads MLflow only: from mfsweep, nothing but the key formats
    assert {d for p in (ROOT / "analysis").glob("*.py") for d in _imports(p) if d.startswith("mfsweep")} <= {
        "mfsweep.schema"}


def _loaded_after(code: str) -> set[str]:
    heavy = ("torch", "ray", "mlflow", "optuna", "sklearn", "pandas", "matplotlib")
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint('LOADED', *(m for m in {heavy!r} "
                          "if m in sys.modules))"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    last = out.stdout.splitlines()[-1].split()
    assert last[0] == "LOADED", out.stdout
    return set(last[1:])


def test_start_up_is_light():
    """`mfsweep --help` loads nothing heavy; validating a study needs neither torch nor Ray / MLflow."""
    assert _loaded_after("import mfsweep, mfsweep.cli; mfsweep.cli.build_parser()") == set()
    assert _loaded_after("from mfsweep.cli import main\nmain(['validate', 'studies/rt_sampling.yaml'])") == set()
    assert not {"torch", "ray", "optuna"} & _loaded_after("import analysis.load")  # MLflow is its source
    # and the lazy names still resolve
    assert "torch" in _loaded_after("import mfsweep; mfsweep.meanflow_target")


# ---- the registry helper -------------------------------------------------------------------------

def test_registry_is_lazy_and_has_one_error_format():
    reg = Registry("widget", {"b": lazy("json:dumps"), "a": 1, "c": lazy("os.path:join")})
    assert list(reg) == ["b", "a", "c"] and len(reg) == 3 and "b" in reg and "z" not in reg
    assert isinstance(reg._entries["b"], lazy)  # not imported by iterating or membership
    import json

    assert reg.lookup("b") is json.dumps and reg["a"] == 1
    with pytest.raises(ValueError, match=r"^unknown widget 'z'; valid: a, b, c$"):
        reg.lookup("z")
    assert reg.check("c") == "c"

    class Mine(ValueError):
        pass

    with pytest.raises(Mine, match="unknown widget 3"):
        Registry("widget", {"x": 0}, Mine).check(3)


@pytest.mark.parametrize("name", ["mfsweep.methods:METHODS", "mfsweep.methods:TIME_SAMPLERS", "mfsweep.methods:TANGENTS",
                                  "mfsweep.methods:TIME_GRIDS", "mfsweep.models:TIME_EMBEDDINGS",
                                  "mfsweep.models:BACKBONES", "mfsweep.data:DATASETS",
                                  "mfsweep.evaluation.metrics:METRICS"])
def test_every_registry_resolves_every_entry(name):
    reg = lazy(name).resolve()
    assert isinstance(reg, Registry) and len(reg) >= 1
    for key in reg:
        assert reg.lookup(key) is not None
    with pytest.raises(ValueError, match=rf"^unknown {reg.kind} 'nope'; valid: {', '.join(sorted(reg))}$"):
        reg.lookup("nope")


# ---- docs/architecture.md names everything the tracking code writes ------------------------------

WRITERS = [PKG / "sweep" / "tracking.py", PKG / "sweep" / "tune.py", PKG / "training" / "train.py"]
NAME = re.compile(r"(?<![\w.`])(?:(?:mfsweep|mlflow)\.[A-Za-z_]+|(?:train|eval|final|time)/[a-z_{}]+|"
                  r"(?:axis|metric)\.\{\}(?:\.[a-z_]+)?|[a-z_]+\.(?:yaml|csv|json|txt))(?![\w.])")


def _strings(path: Path) -> list[str]:
    """String literals of a module (f-string fields as {}), docstrings left out."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            out.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            out.append(node.value)
    return out


def written_names() -> set[str]:
    return {m for path in WRITERS for s in _strings(path) for m in NAME.findall(s)}


def test_architecture_doc_names_every_tag_metric_and_artifact():
    names = written_names()
    # the scan finds what it should (if the code stops writing these, update the doc and this line)
    assert {"mfsweep.execution_id", "mfsweep.search", "mfsweep.metric", "mfsweep.resumed_from", "train/lr",
            "study_resolved.yaml", "error.txt", "metric.{}.extractor", "time/train_s"} <= names, names
    spans = re.findall(r"`([^`]+)`", (ROOT / "docs" / "architecture.md").read_text())
    missing = []
    for name in sorted(names):
        pattern = re.compile(".+?".join(re.escape(p) for p in name.split("{}")))  # {} stands for any field
        if not any(pattern.search(span) for span in spans):
            missing.append(name)
    assert not missing, f"written by the code but not in docs/architecture.md: {missing}"
