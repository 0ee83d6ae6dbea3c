"""Static checks of docker/: no Docker engine or cluster runs in tests, so the files are checked as text.

Why: an image on another Ray version than the pinned one, a GPU worker that asks for no GPU, or a
root container would only show up on a real cluster, long after the change.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = ["Dockerfile.gpu", "Dockerfile.cpu"]


def _pinned_ray_version() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        match = re.fullmatch(r"ray(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml pins no ray version with ==: {deps}")


def _manifest(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((DOCKER / name).read_text()) if d is not None]
    assert len(docs) == 1, f"{name}: expected one YAML document, got {len(docs)}"
    return docs[0]


def _gpu_limit(worker_group: dict) -> str | None:
    container = worker_group["template"]["spec"]["containers"][0]
    return container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")


def test_every_yaml_file_parses() -> None:
    files = sorted(DOCKER.glob("*.yaml")) + sorted(DOCKER.glob("*.yml"))
    assert {f.name for f in files} >= {
        "cluster.yaml",
        "compose.yaml",
        "kuberay-raycluster.yaml",
        "kuberay-rayjob.yaml",
    }
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), f"{path.name}: no mapping document"


def test_raycluster_has_a_gpu_worker_group() -> None:
    doc = _manifest("kuberay-raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert doc["spec"]["rayVersion"] == _pinned_ray_version()
    groups = {g["groupName"]: g for g in doc["spec"]["workerGroupSpecs"]}
    assert float(_gpu_limit(groups["gpu"])) >= 1


def test_rayjob_runs_tunetl_on_a_gpu_worker_group() -> None:
    doc = _manifest("kuberay-rayjob.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    entrypoint = doc["spec"]["entrypoint"].split()
    assert entrypoint[:3] == ["tunetl", "run", "experiments/quickstart.yaml"]
    assert (ROOT / entrypoint[2]).is_file()
    assert "--storage" in entrypoint and "--tracking-uri" in entrypoint
    cluster = doc["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == _pinned_ray_version()
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert float(_gpu_limit(groups["gpu"])) >= 1


def test_cluster_launcher_turns_on_ray_token_auth_on_every_node() -> None:
    config = _manifest("cluster.yaml")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_uses_pinned_ray_image_and_a_non_root_user(name: str) -> None:
    lines = [ln.strip() for ln in (DOCKER / name).read_text().splitlines()]
    instructions = [ln for ln in lines if ln and not ln.startswith("#")]
    froms = [ln.split()[1] for ln in instructions if ln.upper().startswith("FROM ")]
    assert froms, f"{name}: no FROM"
    image, _, tag = froms[0].partition(":")
    assert image == "rayproject/ray", f"{name}: FROM {froms[0]}"
    assert tag.split("-")[0] == _pinned_ray_version(), f"{name}: FROM {froms[0]} vs pyproject.toml"
    users = [ln.split()[1] for ln in instructions if ln.upper().startswith("USER ")]
    assert users, f"{name}: no USER instruction"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{name}: last USER is {users[-1]}"
    assert not any(
        re.search(r"(PASSWORD|TOKEN|SECRET)\s*=", ln) for ln in instructions if ln.startswith(("ENV", "ARG"))
    )
