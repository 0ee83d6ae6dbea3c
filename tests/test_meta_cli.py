"""Issue 4 end to end: a recorded multi-task IL/LL search -> report -> fit-regressor -> predict,
through the real CLI, against SQLite and a real MLflow server; plus the one-shot evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tunetl import api
from tunetl.cli import main
from tunetl.meta.evaluate import one_shot_evaluation

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("tasks=[{dataset: {builtin: digits, classes: [5, 6, 7]}, source: {train_on: {builtin: digits, classes: [0, 1, 2, 3, 4]}, epochs: 2}},"
         " {dataset: {builtin: digits, classes: [0, 1, 2]}, source: {train_on: {builtin: digits, classes: [5, 6, 7, 8, 9]}, epochs: 2}},"
         " {dataset: {builtin: digits, classes: [3, 8]}, source: {train_on: {builtin: digits, classes: [0, 1, 2, 4, 5, 6, 7, 9]}, epochs: 2}}]")
OVERRIDES = [TASKS, "training.epochs=2", "scheduler.type=none",
             "search_space={frozen_depth: 0, inner_lr: {grid: [0.0, 0.01]}, last_lr: {grid: [0.01, 0.1]}, images_per_label: {grid: [3, 10]}}"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> str:
    import ray

    tmp = tmp_path_factory.mktemp("meta")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        exp = {"name": "illl", "search_space": {}, **_base()}
        summary = api.run(exp, overrides=OVERRIDES, tracking_uri=uri, storage=tmp / "runs")
    finally:
        ray.shutdown()
    assert summary.num_trials == 24 and summary.num_failed == 0
    return uri


def _base() -> dict:
    return {"backbone": "smallcnn", "training": {"batch_size": 16}}


def test_predict_without_a_registered_model_says_what_to_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    code = main(["predict", "--dataset", "builtin:digits[1,2]", "--tracking-uri", uri])
    assert code == 1
    assert "tunetl fit-regressor --experiment" in capsys.readouterr().err


def test_report_fit_and_predict_on_sqlite(recorded: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", "--experiment", "illl", "--tracking-uri", recorded, "--out", str(tmp_path / "rep")]) == 0
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert "accuracy_vs_inner_lr.png" in pngs and "learning_curves.png" in pngs
    for png in (tmp_path / "rep").glob("*.png"):
        with Image.open(png) as im:
            assert im.size[0] >= 600 and len(set(im.convert("L").getdata())) > 20
    assert "accuracy_vs_inner_lr.png" in (tmp_path / "rep" / "index.html").read_text()

    assert main(["fit-regressor", "--experiment", "illl", "--tracking-uri", recorded, "--register", "m"]) == 0
    out = capsys.readouterr().out
    assert "registered as m version 1" in out and "6 task(s)" in out
    code = main(["predict", "--dataset", "builtin:digits[4,9]", "--source", "builtin:digits[0,1,2,3,5,6,7,8]",
                 "--images-per-label", "5", "--model", "m@1", "--tracking-uri", recorded, "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"]["name"] == "m" and result["model"]["version"] == "1"
    assert result["recommendation"]["inner_lr"] in (0.0,) or 0 < result["recommendation"]["inner_lr"] <= 0.1
    assert 0.01 <= result["recommendation"]["last_lr"] <= 0.1
    assert len(result["nearest_tasks"]) == 3


def test_one_shot_evaluation_on_recorded_grid(recorded: str) -> None:
    table, summary = one_shot_evaluation(api.trials("illl", recorded))
    assert summary["n_tasks"] == 6
    assert (table["oracle"] >= table[["default", "best_fixed", "predicted"]].max(axis=1) - 1e-9).all()
    assert 0 <= summary["default"] <= summary["oracle"] <= 100


def test_fit_and_predict_against_a_real_server(recorded: str, mlflow_server: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    from tunetl.meta.dataset import meta_dataset
    from tunetl.meta.loto import fit_with_loto
    from tunetl.tracking.registry import load_meta_model, log_meta_model

    model = fit_with_loto(meta_dataset(api.trials("illl", recorded)))
    _, version = log_meta_model(model, mlflow_server, register="served")
    loaded, name, got = load_meta_model(f"served@{version}", mlflow_server)
    assert (name, got) == ("served", version)
    capsys.readouterr()  # MLflow's own "View run at ..." lines from log_meta_model
    code = main(["predict", "--dataset", "builtin:digits[4,9]", "--source", "builtin:digits[0,1,2,3,5,6,7,8]",
                 "--model", "served", "--tracking-uri", mlflow_server, "--json", "--storage", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("{"), out[:300]
    assert json.loads(out)["model"]["name"] == "served"


def _recorded_sources(uri: str) -> list[dict]:
    from tunetl.features.source_match import records_from_tags
    from tunetl.tracking.query import run_tags

    parents = sorted(set(api.trials("illl", uri)["parent_run_id"]))
    return [r for tags in run_tags(parents, uri).values() for r in records_from_tags(tags)]


def test_predict_uses_the_source_the_search_used(recorded: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """Issue 18: `predict` after `fit-regressor` computes the features with the search's own cached source
    (the same weights hash), never retrains or writes to the working directory, and refuses another one."""
    from tunetl.models.weights import load_state_file
    from tunetl.source import state_sha256

    records = {r["source"]: r for r in _recorded_sources(recorded)}
    assert set(records) == {"digits[0,1,2,3,4]", "digits[5,6,7,8,9]", "digits[0,1,2,4,5,6,7,9]"}
    searched = records["digits[0,1,2,3,4]"]
    assert searched["recipe"]["epochs"] == 2 and searched["recipe"]["training"]["batch_size"] == 16
    cached = Path(searched["storage"]) / searched["file"]
    assert state_sha256(load_state_file(cached)) == searched["sha256"]
    before = cached.stat().st_mtime_ns

    assert main(["fit-regressor", "--experiment", "illl", "--tracking-uri", recorded, "--register", "src"]) == 0
    capsys.readouterr()
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["predict", "--dataset", "builtin:digits[5,6,8]", "--source", "builtin:digits[0,1,2,3,4]",
            "--model", "src", "--tracking-uri", recorded]
    assert main([*args, "--json"]) == 0
    used = json.loads(capsys.readouterr().out)["source"]
    assert used["sha256"] == searched["sha256"] and used["match"] == "recorded" and not used["trained"]
    assert Path(used["path"]) == cached and cached.stat().st_mtime_ns == before
    assert main(["features", "--dataset", "builtin:digits[5,6,8]", "--source", "builtin:digits[0,1,2,3,4]",
                 "--model", "src", "--tracking-uri", recorded, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["feature.logme"] is not None
    assert main(args) == 0
    assert f"weights sha256 {searched['sha256'][:12]}; the source its searches used" in capsys.readouterr().out

    for extra, says in ((["--backbone", "resnet18"], "came from smallcnn sources"),
                        (["--storage", str(tmp_path / "elsewhere")], "is not under"),
                        (["--source", "imagenet"], "ImageNet weights differs from the meta-model's sources")):
        assert main([*args, *extra]) == 2
        assert says in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == []
