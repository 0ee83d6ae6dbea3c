"""The benchmark harness runs end to end in --quick mode and writes well-formed results (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "benchmarks" / "harness.py"


def _harness(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HARNESS), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def test_unknown_section_is_refused_naming_the_choices(tmp_path: Path) -> None:
    done = _harness("--only", "plain,bogus", "--out", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "bogus" in done.stderr and "overhead" in done.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_quick_cache_and_gpu_sections_write_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = _harness("--quick", "--only", "cache,gpu", "--out", str(out), "--workdir", str(tmp_path / "work"),
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "harness_quick.json").read_text())
    assert results["quick"] is True and results["repeats"] == 1
    machine = results["machine"]
    assert {"cpu", "cores", "ram_gb", "torch", "ray", "mlflow", "gpu"} <= set(machine)
    assert machine["cores"] >= 1 and machine["ram_gb"] > 0

    cache = results["sections"]["cache"]
    assert cache["status"] == "ok" and cache["modes"] == ["off", "trial", "node"]
    rows = cache["results"]
    assert {(r["backbone"], r["frozen_depth"]) for r in rows} >= {("smallcnn", 0), ("resnet18", 5)}
    for row in rows:
        for key in ("off_epoch", "trial_epoch", "node_epoch", "off_setup", "node_build", "node_hit"):
            assert row["stats"][key]["median"] > 0
        assert row["epoch_speedup"] > 0 and row["trial_speedup_node_hit"] > 0 and row["trial_speedup_node_shared"] > 0
    deepest = max((r for r in rows if r["backbone"] == "resnet18"), key=lambda r: r["frozen_depth"])
    # The node cache really was built by the first trial and read by the second.
    assert deepest["feature_source"]["node first trial"] == {"train": "node-computed", "val": "node-computed"}
    assert deepest["feature_source"]["node second trial"] == {"train": "node-hit", "val": "node-hit"}
    (cache_target,) = cache["targets"]
    assert cache_target["name"] == "cache.deepest" and cache_target["value"] > 0
    assert isinstance(cache_target["met"], bool)
    assert [t["name"] for t in results["targets"]] == ["cache.deepest"]

    gpu = results["sections"]["gpu"]
    if not machine["gpu"]:
        assert gpu["status"] == "skipped" and "no GPU" in gpu["reason"]

    markdown = (out / "harness_quick.md").read_text()
    assert "## cache:" in markdown and "## Targets" in markdown and "cache.deepest" in markdown

    # A later run of one section keeps the others' numbers.
    again = _harness("--quick", "--only", "gpu", "--out", str(out), "--workdir", str(tmp_path / "work2"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    merged = json.loads((out / "harness_quick.json").read_text())
    assert merged["sections"]["cache"]["results"] == rows
    assert "gpu" in merged["sections"]
