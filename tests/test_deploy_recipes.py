"""The container image and the cluster recipes in deploy/, linted: nothing here can build an image or
run Kubernetes, so every YAML document is parsed and its required keys are checked, the study in
the RayJob's ConfigMap is validated by mfsweep itself, and the Dockerfile's instructions are read.
The image's entrypoint script is run with a stand-in `mfsweep` to check how it dispatches."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _docs(name: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs), name
    return docs


def _kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


# ---- Dockerfile ------------------------------------------------------------------------------------
def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_builds_cuda_by_default_and_cpu_with_build_args():
    ins = _instructions()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] if "=" in a else None for k, a in ins if k == "ARG"}
    assert {"BASE", "TORCH_INDEX", "TORCH_VERSION"} <= set(args)
    assert "cuda" in args["BASE"] and re.search(r"/whl/cu\d+$", args["TORCH_INDEX"])
    assert ins.index(("FROM", "${BASE}")) == [k for k, _ in ins].index("FROM")  # the base is the build arg
    runs = " ".join(a for k, a in ins if k == "RUN")
    assert '--index-url "${TORCH_INDEX}"' in runs and "torch${TORCH_VERSION" in runs
    assert re.search(r"pip install -c \S+ \. ", runs), "the project itself is pip-installed, torch pinned"
    assert "ray[default]" in runs  # the head's dashboard / job server (ray job submit, KubeRay)
    header = (ROOT / "Dockerfile").read_text()
    assert "--build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu" in header  # the CPU recipe


def test_dockerfile_runs_as_a_non_root_user_with_the_mfsweep_entrypoint():
    ins = _instructions()
    users = [a for k, a in ins if k == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert [k for k, _ in ins].index("USER") > max(i for i, (k, a) in enumerate(ins) if k == "RUN")
    entry = [a for k, a in ins if k == "ENTRYPOINT"]
    assert entry == ['["docker-entrypoint"]']
    copies = [a for k, a in ins if k == "COPY"]
    assert "deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint" in copies
    for needed in ("pyproject.toml", "mfsweep", "analysis"):
        assert any(needed in c.split() for c in copies), needed


@pytest.mark.parametrize(("argv", "ran"), [
    (["run", "s.yaml", "--address", "auto"], "mfsweep run s.yaml --address auto"),
    (["--help"], "mfsweep --help"),
    ([], "mfsweep"),
    (["validate", "s.yaml"], "mfsweep validate s.yaml"),
    (["ray", "start", "--head", "--block"], "ray start --head --block"),
    (["bash", "-c", "echo hi"], "bash -c echo hi"),
])
def test_entrypoint_runs_mfsweep_subcommands_and_any_other_command_as_given(tmp_path, argv, ran):
    for tool in ("mfsweep", "ray", "bash"):  # stand-ins that print how they were called
        stub = tmp_path / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*"\n')
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    out = subprocess.run(["sh", str(DEPLOY / "docker-entrypoint.sh"), *argv], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ran


# ---- Ray cluster launcher ----------------------------------------------------------------------------
def test_ray_cluster_launcher_has_a_gpu_worker_type_and_installs_mfsweep():
    (cfg,) = _docs("ray-cluster-aws.yaml")
    assert cfg["cluster_name"] and cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types[cfg["head_node_type"]]["resources"].get("CPU") == 0  # the head runs no trials
    gpu = {name: t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu and all(t["node_config"]["InstanceType"].startswith(("g5", "g6", "p4d", "p5")) for t in gpu.values())
    assert all(t["max_workers"] <= cfg["max_workers"] for t in gpu.values())
    assert "mfsweep" in cfg["docker"]["image"]
    assert any("mfsweep" in c and "pip install" in c for c in cfg["setup_commands"])
    assert any(src == "." for src in cfg["file_mounts"].values())  # the checkout the setup installs
    assert any("-v /shared:/shared" in o for o in cfg["docker"]["run_options"])  # shared storage
    assert any("--num-cpus=0" in c and "--head" in c for c in cfg["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in cfg["worker_start_ray_commands"])


# ---- KubeRay RayJob --------------------------------------------------------------------------------
def test_kuberay_rayjob_runs_mfsweep_on_a_gpu_cluster_with_shared_storage():
    docs = _docs("kuberay-rayjob.yaml")
    (job,) = _kind(docs, "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    entry = shlex.split(spec["entrypoint"])
    assert entry[:2] == ["mfsweep", "run"] and entry[2].startswith("/studies/")
    assert entry[entry.index("--tracking-uri") + 1].startswith("http://")
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # KubeRay wants strings
    (claim,) = _kind(docs, "PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]

    def mounts(pod: dict) -> dict[str, str]:
        vols = {v["name"]: v for v in pod["spec"]["volumes"]}
        out = {}
        for c in pod["spec"]["containers"]:
            for m in c.get("volumeMounts", []):
                v = vols[m["name"]]
                out[m["mountPath"]] = (v.get("persistentVolumeClaim") or {}).get("claimName") or \
                    (v.get("configMap") or {}).get("name")
        return out

    (cm,) = _kind(docs, "ConfigMap")
    head_mounts = mounts(head["template"])
    assert head_mounts["/shared"] == claim["metadata"]["name"]
    assert head_mounts["/studies"] == cm["metadata"]["name"]
    assert Path(entry[2]).name in cm["data"]
    workers = cluster["workerGroupSpecs"]
    assert workers
    for group in workers:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert mounts(group["template"])["/shared"] == claim["metadata"]["name"]
        for c in group["template"]["spec"]["containers"]:
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"]


def test_the_study_in_the_rayjob_configmap_is_valid_and_uses_the_shared_volume(tmp_path):
    from mfsweep.sweep.plan import make_plan
    from mfsweep.sweep.study import load_study

    docs = _docs("kuberay-rayjob.yaml")
    (cm,) = _kind(docs, "ConfigMap")
    for name, text in cm["data"].items():
        path = tmp_path / name
        path.write_text(text)
        study, _ = load_study(path)
        plan = make_plan(study, name)
        assert len(plan.trials) >= 2
        assert study.storage.shared and study.storage.path.startswith("/shared/")
        assert study.max_failures >= 1 and study.resources.gpu > 0


# ---- MLflow server ---------------------------------------------------------------------------------
def test_mlflow_server_uses_postgres_an_artifact_store_and_secrets():
    docs = _docs("mlflow-server.yaml")
    deployments = {d["metadata"]["name"]: d for d in _kind(docs, "Deployment")}
    services = {d["metadata"]["name"]: d for d in _kind(docs, "Service")}
    (server,) = [c for d in deployments.values() for c in d["spec"]["template"]["spec"]["containers"]
                 if "mlflow server" in " ".join(c.get("command", []) + c.get("args", []))]
    argv = shlex.split(" ".join(server["command"][2:] + server["args"]) if server["command"][:2] == ["sh", "-c"]
                       else " ".join(server.get("args", [])))
    argv = argv[argv.index("mlflow"):]
    uri = argv[argv.index("--backend-store-uri") + 1]
    assert uri.startswith("postgresql://")
    dest = argv[argv.index("--artifacts-destination") + 1]
    mounted = [m["mountPath"] for m in server.get("volumeMounts", [])]
    assert dest.startswith(("s3://", "gs://")) or dest in mounted
    assert "--serve-artifacts" in argv and argv[argv.index("--host") + 1] == "0.0.0.0"
    # credentials only from the Secret, never inline
    secrets = {d["metadata"]["name"] for d in _kind(docs, "Secret")}
    env = {e["name"]: e for e in server["env"]}
    for var in ("POSTGRES_USER", "POSTGRES_PASSWORD"):
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] in secrets
        assert "${%s}" % var in uri
    # the database: a Postgres Deployment + Service the URI points at
    host = env["POSTGRES_HOST"]["value"]
    assert host in services and host in deployments
    assert deployments[host]["spec"]["template"]["spec"]["containers"][0]["image"].startswith("postgres:")
    port = argv[argv.index("--port") + 1]
    assert any(str(p["port"]) == port for s in services.values() for p in s["spec"]["ports"]
               if s["spec"]["selector"] == deployments["mlflow"]["spec"]["selector"]["matchLabels"])
    for d in deployments.values():  # each Deployment's selector matches its pods
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
