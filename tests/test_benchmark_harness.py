"""The benchmark harness runs end to end in --quick mode and writes well-formed results (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "benchmarks" / "harness.py"


def _harness(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HARNESS), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def _writer(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """benchmarks/ is not a package: the harness imports its writer from the script's folder, as here."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import harness_report

    return harness_report


def test_committed_results_render_to_the_committed_markdown(monkeypatch: pytest.MonkeyPatch) -> None:
    writer = _writer(monkeypatch)
    results = json.loads((ROOT / "benchmarks" / "results" / "harness.json").read_text())
    assert writer.render(results) == (ROOT / "benchmarks" / "results" / "harness.md").read_text()


def test_describe_adds_the_presentation_and_leaves_the_writer_only_facts_out(monkeypatch: pytest.MonkeyPatch) -> None:
    writer = _writer(monkeypatch)
    skipped = {"status": "skipped", "reason": "skipped: no GPU (torch.cuda.is_available() is False)"}
    assert writer.describe("gpu", dict(skipped)) == skipped
    raw = [{"runs": 1000, "sqlite_s": 2.0, "server_s": 3.0}, {"runs": 4000, "sqlite_s": 6.5, "server_s": 4.0}]
    facts = {"epochs": 5, "growth_per_1000": {"sqlite_s": 1.5, "server_s": 0.1}}
    section = writer.describe("scale", {"raw": raw, writer.FACTS: facts})
    assert set(section) == {"raw", "setup", "rows", "targets"}
    assert section["rows"][1] == {"runs": 4000, "tunetl best, SQLite (s)": "6.50", "tunetl best, mlflow server (s)": "4.00"}
    assert "through 1000, 4000 child runs (5 epochs" in section["setup"]["note"]
    met = {t["name"]: t["met"] for t in section["targets"]}
    assert met == {"scale.best_sqlite": False, "scale.growth_sqlite": False, "scale.best_server": True,
                   "scale.growth_server": True}


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


def test_anytime_keeps_finished_searches_and_counts_the_configurations_near_the_grids_best(tmp_path: Path) -> None:
    """A re-run with the same --workdir searches nothing already searched and re-draws the summary."""
    work, out = tmp_path / "work", tmp_path / "results"
    work.mkdir()
    grid = {"seed": 0, "wall_s": 9.0, "trials": 8, "curves": {"5": [[k, 0.1 * k] for k in range(1, 7)]},
            "trial_bests": {"5": [0.6, 0.595, 0.585, 0.3]}}
    fast = {"seed": 0, "wall_s": 2.0, "trials": 2, "curves": {"5": [[1, 0.2], [2, 0.595]]},
            "trial_bests": {"5": [0.595, 0.2]}}
    slow = {"seed": 0, "wall_s": 2.0, "trials": 2, "curves": {"5": [[1, 0.2], [2, 0.3], [3, 0.4]]},
            "trial_bests": {"5": [0.4, 0.2]}}
    labels = ["random", "ASHA", "HyperBand", "Optuna+ASHA", "PBT", "BOHB"]
    raw = {"grid": [grid]} | {label: [fast if label == "ASHA" else slow] for label in labels}
    (work / "anytime_raw.json").write_text(json.dumps(raw))
    done = _harness("--quick", "--only", "anytime", "--out", str(out), "--workdir", str(work), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "anytime: grid seed" not in done.stdout + done.stderr, "a finished search was run again"
    section = json.loads((out / "harness_quick.json").read_text())["sections"]["anytime"]
    assert section["needles"] == {"5": {"1 pt": 2, "2 pt": 3, "of": 4}}
    rows = {r["method"]: r for r in section["rows"]}
    assert rows["ASHA"]["@5: epochs to grid best -1pt"] == "33%"
    assert rows["random"]["@5: epochs to grid best -1pt"] == "never"
    (target,) = section["targets"]
    assert target["met"] is False, "2 of the grid's 6 epochs is over the 30% goal"
    assert target["shown"] == "ASHA: 33%"
    assert (out / "anytime_quick.png").stat().st_size > 0
    assert "(7 kept from an earlier run" in section["setup"]["note"]
