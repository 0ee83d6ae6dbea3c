"""Recorder + TrialLogger -> MLflow -> trials frame, against SQLite and a real MLflow server."""

from __future__ import annotations

import math
import multiprocessing
import pickle
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tunetl.tracking import (
    SearchRecorder,
    TrackingError,
    TrialLogger,
    best_configs,
    export_parquet,
    load_trials,
)

LONG_ERROR = "Traceback: " + "x" * 6000

#: Three trials: one finished, one stopped early by the scheduler, one failed.
TRIALS: list[dict[str, Any]] = [
    {
        "params": {
            "condition": "FTall",
            "transfer_depth": 4,
            "frozen_depth": 0,
            "images_per_label": "all",
            "inner_lr": 0.01,
            "last_lr": None,
            "stage_multipliers": [0.0, 1.0, 2.0, 4.0],
            "augment": False,
            "backbone": "smallcnn",
            "dataset": "digits[5,6,7,8,9]",
            "seed": 0,
            "epochs": 3,
            "feature.images_per_label": 125,
            "feature.num_classes": 5,
            "feature.similarity": 0.25,
        },
        "val_acc": [0.5, 0.7, 0.6],
        "status": "FINISHED",
        "stopped_early": False,
    },
    {
        "params": {
            "condition": "S2T",
            "transfer_depth": None,
            "frozen_depth": 2,
            "images_per_label": 5,
            "inner_lr": 0.1,
            "last_lr": None,
            "stage_multipliers": (1, 1, 1, 1),
            "augment": True,
            "backbone": "smallcnn",
            "dataset": "digits[5,6,7,8,9]",
            "seed": 1,
            "epochs": 3,
            "feature.images_per_label": 5,
            "feature.num_classes": 5,
            "feature.similarity": 0.25,
        },
        "val_acc": [0.4],
        "status": "FINISHED",
        "stopped_early": True,
    },
    {
        "params": {
            "condition": "base",
            "transfer_depth": 0,
            "frozen_depth": 0,
            "images_per_label": 5,
            "inner_lr": 0.5,
            "last_lr": None,
            "stage_multipliers": None,
            "augment": False,
            "backbone": "smallcnn",
            "dataset": "digits[5,6,7,8,9]",
            "seed": 0,
            "epochs": 3,
            "feature.images_per_label": 5,
            "feature.num_classes": 5,
            "feature.similarity": 0.25,
        },
        "val_acc": [0.3, 0.2],
        "status": "FAILED",
        "stopped_early": False,
    },
]


def log_trial(logger: TrialLogger, trial: dict[str, Any]) -> str:
    """What the trainable does: start, one log per epoch, finish."""
    run_id = logger.start(trial["params"], tags={"tunetl.node": "node-a"})
    for epoch, acc in enumerate(trial["val_acc"], start=1):
        logger.log_epoch(
            run_id, epoch, {"val_acc": acc, "val_loss": 1 - acc, "train_acc": acc + 0.1, "train_loss": 0.5}
        )
    failed = trial["status"] == "FAILED"
    logger.finish(
        run_id,
        status=trial["status"],
        best_val_acc=None if failed else max(trial["val_acc"]),
        stopped_early=trial["stopped_early"],
        error=LONG_ERROR if failed else None,
    )
    return run_id


def log_trial_from_pickle(blob: bytes, trial: dict[str, Any]) -> str:
    """Runs in a spawned process: the logger arrives pickled, as it does in a driver that resumes a search
    (Tune keeps it, in the run writer, in its saved state)."""
    return log_trial(pickle.loads(blob), trial)


def record_search(
    uri: str, name: str, trials: list[dict[str, Any]], spawn: bool = False
) -> tuple[str, list[str]]:
    recorder = SearchRecorder(uri, name)
    parent = recorder.start_parent({"searcher": "grid", "seeds": [0, 1]}, {"mlflow.runName": name})
    logger = recorder.trial_logger()
    if spawn:
        blob = pickle.dumps(logger)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            run_ids = pool.starmap(log_trial_from_pickle, [(blob, t) for t in trials])
    else:
        run_ids = [log_trial(logger, t) for t in trials]
    recorder.end_parent("FINISHED", {"trials_finished": 2.0})
    return parent, run_ids


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def tracking_uri(request: pytest.FixtureRequest, sqlite_uri: str) -> str:
    return sqlite_uri if request.param == "sqlite" else str(request.getfixturevalue("mlflow_server"))


def test_round_trip_gives_one_typed_row_per_trial(tracking_uri: str) -> None:
    spawn = tracking_uri.startswith("http")
    name = f"roundtrip-{'server' if spawn else 'sqlite'}"
    parent, run_ids = record_search(tracking_uri, name, TRIALS, spawn=spawn)
    frame = load_trials(name, tracking_uri).set_index("run_id").loc[run_ids]

    assert len(frame) == 3 and parent not in frame.index
    assert (frame["parent_run_id"] == parent).all()
    assert (frame["experiment"] == name).all() and (frame["node"] == "node-a").all()
    assert frame["status"].tolist() == ["FINISHED", "FINISHED", "FAILED"]
    assert frame["stopped_early"].tolist() == [False, True, False]
    assert frame["error"].iloc[:2].isna().all()
    assert frame["error"].iloc[2] == LONG_ERROR[:5000]

    assert frame["images_per_label"].tolist() == [-1, 5, 5]
    assert frame["seed"].dtype == "int64" and frame["frozen_depth"].tolist() == [0, 2, 0]
    assert frame["transfer_depth"].iloc[0] == 4 and frame["transfer_depth"].isna().tolist() == [
        False,
        True,
        False,
    ]
    assert frame["inner_lr"].dtype == "float64" and frame["inner_lr"].tolist() == [0.01, 0.1, 0.5]
    assert frame["augment"].tolist() == [False, True, False]
    assert frame["last_lr"].isna().all()
    assert frame["stage_multipliers"].iloc[0] == (0.0, 1.0, 2.0, 4.0)
    assert frame["stage_multipliers"].iloc[1] == (1, 1, 1, 1)
    assert frame["stage_multipliers"].iloc[2] is None
    assert frame["condition"].tolist() == ["FTall", "S2T", "base"]
    assert frame["feature.images_per_label"].dtype == "float64"
    assert frame["feature.images_per_label"].tolist() == [125.0, 5.0, 5.0]

    assert frame["val_acc"].tolist() == [0.6, 0.4, 0.2]
    assert frame["val_loss"].tolist() == pytest.approx([0.4, 0.6, 0.8])
    assert frame["best_val_acc"].iloc[:2].tolist() == [0.7, 0.4] and math.isnan(frame["best_val_acc"].iloc[2])
    assert frame["epochs_run"].tolist() == [3, 1, 2]

    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(run_ids[0], "val_acc")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.7), (3, 0.6)]
    assert MlflowClient(tracking_uri).get_run(parent).info.status == "FINISHED"


def _ranking_trials() -> list[dict[str, Any]]:
    """Config A (2 seeds), B (2 seeds) at images_per_label all; C at 5; a failed run that scored high."""

    def trial(cond: str, ipl: int | str, seed: int, acc: float, status: str = "FINISHED") -> dict[str, Any]:
        params = {
            "condition": cond,
            "images_per_label": ipl,
            "stage_multipliers": [1, 2],
            "transfer_depth": None,
            "backbone": "smallcnn",
            "dataset": "d",
            "seed": seed,
        }
        return {"params": params, "val_acc": [acc], "status": status, "stopped_early": False}

    return [
        trial("A", "all", 0, 0.8),
        trial("A", "all", 1, 0.9),
        trial("B", "all", 0, 0.7),
        trial("B", "all", 1, 0.75),
        trial("C", 5, 0, 0.6),
        trial("C", 5, 1, 0.99, status="FAILED"),
    ]


@pytest.fixture(scope="module")
def ranking_frame(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    uri = f"sqlite:///{tmp_path_factory.mktemp('ranking') / 'mlflow.db'}"
    record_search(uri, "ranking", _ranking_trials())
    return load_trials("ranking", uri)


def test_best_configs_averages_seeds_and_ranks(ranking_frame: pd.DataFrame) -> None:
    best = best_configs(ranking_frame, top=5)
    assert best["condition"].tolist() == ["A", "B", "C"]
    assert best["n_seeds"].tolist() == [2, 2, 1]
    assert best["val_acc_mean"].tolist() == pytest.approx([0.85, 0.725, 0.6])
    assert best["val_acc_std"].iloc[0] == pytest.approx(pd.Series([0.8, 0.9]).std())
    assert math.isnan(best["val_acc_std"].iloc[2])
    assert "seed" not in best.columns and best["stage_multipliers"].iloc[0] == (1, 2)
    assert best_configs(ranking_frame, top=1)["condition"].tolist() == ["A"]


def test_best_configs_per_group(ranking_frame: pd.DataFrame) -> None:
    best = best_configs(ranking_frame, top=1, group_by=["images_per_label"])
    assert best["images_per_label"].tolist() == [-1, 5]
    assert best["condition"].tolist() == ["A", "C"]
    assert best.columns[0] == "images_per_label"


def test_export_parquet_round_trip(ranking_frame: pd.DataFrame, tmp_path: Path) -> None:
    path = export_parquet(ranking_frame, tmp_path / "out" / "trials.parquet")
    back = pd.read_parquet(path)
    assert back["run_id"].tolist() == ranking_frame["run_id"].tolist()
    assert [list(v) for v in back["stage_multipliers"]] == [[1, 2]] * len(ranking_frame)
    assert back["images_per_label"].tolist() == ranking_frame["images_per_label"].tolist()
    assert back["transfer_depth"].isna().all()
    assert back["val_acc"].tolist() == ranking_frame["val_acc"].tolist()


def test_two_searches_never_mix(sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = record_search(sqlite_uri, "first", TRIALS[:1])
    first_id = SearchRecorder(sqlite_uri, "first").experiment_id
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", first_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    second, _ = record_search(sqlite_uri, "second", TRIALS[1:])

    assert SearchRecorder(sqlite_uri, "second").experiment_id != first_id
    one = load_trials("first", sqlite_uri)
    two = load_trials("second", sqlite_uri)
    assert len(one) == 1 and set(one["parent_run_id"]) == {first}
    assert len(two) == 2 and set(two["parent_run_id"]) == {second}
    both = load_trials(["first", "second"], sqlite_uri)
    assert sorted(both["experiment"]) == ["first", "second", "second"]
    again, _ = record_search(sqlite_uri, "second", TRIALS[:1])  # a later search in the same experiment
    assert len(load_trials("second", sqlite_uri)) == 3
    only = load_trials("second", sqlite_uri, parent_run_id=again)
    assert len(only) == 1 and set(only["parent_run_id"]) == {again}
    assert only.drop(columns=["run_id", "parent_run_id", "experiment"]).reset_index(drop=True).equals(
        one.drop(columns=["run_id", "parent_run_id", "experiment"]).reset_index(drop=True))
    assert not (tmp_path / "elsewhere.db").exists()


def test_unknown_experiment_says_what_to_do(sqlite_uri: str) -> None:
    SearchRecorder(sqlite_uri, "exists")
    with pytest.raises(TrackingError, match="no MLflow experiment named missing.*tunetl run"):
        load_trials(["exists", "missing"], sqlite_uri)


@pytest.mark.slow
def test_password_in_uri_is_not_in_query_errors(mlflow_server: str) -> None:
    uri = mlflow_server.replace("http://", "http://bob:pw123456@")
    with pytest.raises(TrackingError) as info:
        load_trials("never-recorded", uri)
    message = str(info.value)
    assert "never-recorded" in message
    assert "pw123456" not in message and "bob" not in message


def test_trial_logger_pickles_and_a_search_without_trials_is_empty(sqlite_uri: str) -> None:
    recorder = SearchRecorder(sqlite_uri, "pickle")
    with pytest.raises(RuntimeError, match="start_parent"):
        recorder.trial_logger()
    recorder.start_parent({}, {})
    logger = recorder.trial_logger()
    assert pickle.loads(pickle.dumps(logger)) == logger
    assert all(isinstance(v, (str, float)) for v in vars(logger).values())  # plain values only

    empty = load_trials("pickle", sqlite_uri)
    assert empty.empty and {"run_id", "status", "val_acc", "best_val_acc", "epochs_run"} <= set(empty.columns)
    assert best_configs(empty).empty
