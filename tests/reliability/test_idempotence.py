"""Idempotence: `export`, `report`, `fit-regressor` and `sync` run twice give the same results, and a
search's results can be exported from Ray's storage alone, with the MLflow database gone.

One small recorded IL/LL search (2 target tasks x 2 sizes x 4 learning-rate pairs, 2 epochs) serves
every test, through the real CLI.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import _free_port
from tunetl import api
from tunetl.cli import main

pytestmark = pytest.mark.slow

NAME = "idem"
TASKS = ("tasks=[{dataset: {builtin: digits, classes: [5, 6, 7]}, source: {train_on: {builtin: digits, classes: [0, 1, 2, 3, 4]}, epochs: 2}},"
         " {dataset: {builtin: digits, classes: [0, 1, 2]}, source: {train_on: {builtin: digits, classes: [5, 6, 7, 8, 9]}, epochs: 2}}]")
OVERRIDES = [TASKS, "training.epochs=2", "scheduler.type=none",
             "search_space={frozen_depth: 0, inner_lr: {grid: [0.0, 0.01]}, last_lr: {grid: [0.01, 0.1]}, images_per_label: {grid: [3, 10]}}"]
TRIALS = 16


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(tracking URI, storage) of one finished search."""
    import ray

    tmp = tmp_path_factory.mktemp("idem")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        exp = {"name": NAME, "search_space": {}, "backbone": "smallcnn", "training": {"batch_size": 16}}
        summary = api.run(exp, overrides=OVERRIDES, tracking_uri=uri, storage=tmp / "runs")
    finally:
        ray.shutdown()
    assert summary.num_trials == TRIALS and summary.num_failed == 0
    return uri, tmp / "runs"


def test_export_twice_gives_the_same_frame(recorded: tuple[str, Path], tmp_path: Path) -> None:
    uri, _ = recorded
    for out in ("a.parquet", "b.parquet"):
        assert main(["export", "--experiment", NAME, "--tracking-uri", uri, "--out", str(tmp_path / out)]) == 0
    first, second = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    assert len(first) == TRIALS
    pd.testing.assert_frame_equal(first, second)


def test_report_twice_gives_the_same_files_and_tables(recorded: tuple[str, Path], tmp_path: Path) -> None:
    uri, _ = recorded
    outs = [tmp_path / "one", tmp_path / "two"]
    for out in (*outs, outs[0]):  # the second run into `one` must not add or change anything either
        assert main(["report", "--experiment", NAME, "--tracking-uri", uri, "--out", str(out)]) == 0
    files = [sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) for out in outs]
    assert files[0] == files[1]
    assert [f for f in files[0] if f.endswith(".png")] and [f for f in files[0] if f.endswith(".csv")]
    for name in files[0]:
        if name.endswith((".csv", ".md")):
            assert (outs[0] / name).read_text() == (outs[1] / name).read_text(), name
        else:
            assert (outs[0] / name).stat().st_size > 0, name


def test_fit_regressor_twice_gives_two_versions_that_predict_alike(
    recorded: tuple[str, Path], capsys: pytest.CaptureFixture
) -> None:
    from tunetl.meta.dataset import meta_dataset
    from tunetl.tracking.registry import load_meta_model

    uri, _ = recorded
    for _ in range(2):
        assert main(["fit-regressor", "--experiment", NAME, "--tracking-uri", uri, "--register", "idem-model"]) == 0
    out = capsys.readouterr().out
    assert "registered as idem-model version 1" in out and "registered as idem-model version 2" in out
    one, _, v1 = load_meta_model("idem-model@1", uri)
    two, _, v2 = load_meta_model("idem-model@2", uri)
    assert (v1, v2) == (1, 2)
    features = meta_dataset(api.trials(NAME, uri)).filter(like="feature.")
    pd.testing.assert_frame_equal(one.predict(features), two.predict(features))
    assert one.loto == two.loto


def test_sync_of_a_complete_search_changes_nothing(recorded: tuple[str, Path], capsys: pytest.CaptureFixture) -> None:
    uri, storage = recorded
    before = api.trials(NAME, uri)
    for _ in range(2):
        assert main(["sync", "--storage", str(storage)]) == 0
        assert "nothing to add" in capsys.readouterr().out
    pd.testing.assert_frame_equal(before, api.trials(NAME, uri))


def test_export_from_storage_needs_no_mlflow_and_matches_the_mlflow_export(
    recorded: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, storage = recorded
    assert main(["export", "--experiment", NAME, "--tracking-uri", uri, "--out", str(tmp_path / "mlflow.parquet")]) == 0
    db = Path(uri.removeprefix("sqlite:///"))
    hidden = db.with_suffix(".gone")
    db.rename(hidden)  # the database is gone ...
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")  # ... and no server answers
    try:
        for out in ("ray1.parquet", "ray2.parquet"):
            assert main(["export", "--from-storage", str(storage), "--out", str(tmp_path / out)]) == 0
        assert not db.exists()
    finally:
        hidden.rename(db)
    from_ray = pd.read_parquet(tmp_path / "ray1.parquet")
    pd.testing.assert_frame_equal(from_ray, pd.read_parquet(tmp_path / "ray2.parquet"))
    from_mlflow = pd.read_parquet(tmp_path / "mlflow.parquet")
    assert len(from_ray) == TRIALS and set(from_ray["trial_id"]) and from_ray["run_id"].notna().all()
    assert list(from_mlflow.columns) == [c for c in from_ray.columns if c not in ("trial_id", "search")]
    pd.testing.assert_frame_equal(
        from_ray[from_mlflow.columns].sort_values("run_id").reset_index(drop=True),
        from_mlflow.sort_values("run_id").reset_index(drop=True),
    )
