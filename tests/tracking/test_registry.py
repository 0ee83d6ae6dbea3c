"""Meta-models through the MLflow registry: log, register twice, load by name / version / alias,
against SQLite and a real MLflow server."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from tunetl.meta.dataset import meta_dataset
from tunetl.meta.loto import fit_with_loto
from tunetl.meta.regressor import MetaModel, fit_meta_model
from tunetl.tracking import SearchRecorder, TrackingError, load_trials
from tunetl.tracking.registry import (
    TABLE_ARTIFACT,
    load_meta_model,
    log_meta_model,
    parse_model_ref,
)

#: (images/label, similarity, alpha at LL 0.01, at LL 0.1, best LL, best lr_scale, best frozen depth)
TASKS = [
    (2.0, 0.9, 0.0, 0.0, 0.01, 0.25, 2.0),
    (4.0, 0.8, 0.0, 1e-4, 0.01, 0.5, 2.0),
    (8.0, 0.7, 1e-4, 1e-3, 0.01, 1.0, 1.0),
    (30.0, 0.5, 1e-3, 1e-2, 0.1, 2.0, 1.0),
    (60.0, 0.4, 1e-2, 1e-2, 0.1, 4.0, 0.0),
    (100.0, 0.3, 1e-2, 1e-1, 0.1, 5.0, 0.0),
]
PROBES = [
    {"feature.images_per_label": 3.0, "feature.similarity": 0.85},
    {"feature.images_per_label": 50.0, "feature.similarity": 0.45},
    {"feature.images_per_label": 500.0, "feature.similarity": 0.2},
]


@pytest.fixture(scope="module")
def model() -> MetaModel:
    """A forest meta-model (the default kind, so skops must rebuild sklearn trees) on every target."""
    rows = [
        {
            "task": f"t{i}",
            "dataset": f"t{i}",
            "images_per_label": int(ipl),
            "last_lr": ll,
            "alpha": alpha,
            "best_last_lr": best_ll,
            "best_lr_scale": scale,
            "best_frozen_depth": depth,
            "experiments": "grid-a,grid-b",
            "feature.images_per_label": ipl,
            "feature.similarity": sim,
        }
        for i, (ipl, sim, a1, a2, best_ll, scale, depth) in enumerate(TASKS)
        for ll, alpha in ((0.01, a1), (0.1, a2))
    ]
    return fit_with_loto(pd.DataFrame(rows))


def _same_predictions(a: MetaModel, b: MetaModel) -> None:
    for probe in PROBES:
        assert a.predict(probe) == b.predict(probe)


def test_round_trip_sqlite(
    model: MetaModel, sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the SQLite store puts artifacts under ./mlruns
    run1, v1 = log_meta_model(model, sqlite_uri, "meta", register="lr-model")
    run2, v2 = log_meta_model(
        model, sqlite_uri, "meta", register="lr-model", description="second fit"
    )
    assert (v1, v2) == (1, 2)
    assert run1 != run2
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ

    latest, name, version = load_meta_model("lr-model", sqlite_uri)
    assert (name, version) == ("lr-model", 2)
    first, _, version = load_meta_model("lr-model@1", sqlite_uri)
    assert version == 1
    _same_predictions(latest, model)
    _same_predictions(first, model)
    assert latest.loto == model.loto
    pd.testing.assert_frame_equal(latest.table, model.table, check_dtype=False)

    client = MlflowClient(sqlite_uri)
    client.set_registered_model_alias("lr-model", "champion", "1")
    assert load_meta_model("lr-model@champion", sqlite_uri)[2] == 1
    assert load_meta_model("models:/lr-model/2", sqlite_uri)[2] == 2
    assert load_meta_model("lr-model", sqlite_uri, version=1)[2] == 1

    run = client.get_run(run1)
    assert run.info.status == "FINISHED"
    assert run.data.params["targets"] == "inner_lr,last_lr,lr_scale,frozen_depth"
    assert run.data.params["n_rows"] == "12" and run.data.params["n_tasks"] == "6"
    assert run.data.params["experiments"] == "grid-a,grid-b"
    assert run.data.metrics["loto.alpha_n"] == 12
    assert math.isfinite(run.data.metrics["loto.lr_scale_log10_mae"])
    assert TABLE_ARTIFACT in [f.path for f in client.list_artifacts(run1)]
    assert client.get_model_version("lr-model", "2").description == "second fit"


def test_log_without_register(
    model: MetaModel, sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run_id, version = log_meta_model(model, sqlite_uri, "meta")
    assert version is None
    assert MlflowClient(sqlite_uri).search_registered_models() == []
    assert MlflowClient(sqlite_uri).get_run(run_id).info.status == "FINISHED"


def test_nothing_registered_says_what_to_run(
    sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        TrackingError,
        match=r"no registered model lr-model at .*tunetl fit-regressor --experiment \.\.\. --register lr-model",
    ):
        load_meta_model("lr-model", sqlite_uri)


def test_missing_version_and_alias(
    model: MetaModel, sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    log_meta_model(model, sqlite_uri, "meta", register="lr-model")
    with pytest.raises(TrackingError, match="no version 7; versions: 1"):
        load_meta_model("lr-model@7", sqlite_uri)
    with pytest.raises(TrackingError, match="no alias 'prod'"):
        load_meta_model("lr-model@prod", sqlite_uri)


def test_bad_register_name(model: MetaModel, sqlite_uri: str) -> None:
    with pytest.raises(ValueError, match="'a@b'"):
        log_meta_model(model, sqlite_uri, "meta", register="a@b")


@pytest.mark.parametrize(
    ("text", "version", "expected"),
    [
        ("m", None, ("m", None)),
        ("m@3", None, ("m", "3")),
        ("m@champion", None, ("m", "champion")),
        ("m@latest", None, ("m", None)),
        ("models:/m/2", None, ("m", "2")),
        ("models:/m@prod", None, ("m", "prod")),
        ("m", 4, ("m", "4")),
    ],
)
def test_parse_model_ref(text: str, version: int | None, expected: tuple[str, str | None]) -> None:
    assert parse_model_ref(text, version) == expected


def test_parse_model_ref_conflict() -> None:
    with pytest.raises(ValueError, match="version 3"):
        parse_model_ref("m@3", 4)


def test_from_mlflow_records_to_a_loaded_recommendation(
    sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What fit-regressor then predict do: child runs -> trials frame -> meta-dataset -> registered
    model -> recommendation. Small tasks score best with IL = 0, big ones with IL = 1e-2."""
    monkeypatch.chdir(tmp_path)
    recorder = SearchRecorder(sqlite_uri, "il-ll")
    recorder.start_parent({"searcher": "grid"}, {"mlflow.runName": "il-ll"})
    logger = recorder.trial_logger()
    tasks = [("a", 2, 2.0, 0.9), ("b", 3, 3.0, 0.8), ("c", 40, 40.0, 0.5), ("d", "all", 90.0, 0.4)]
    for dataset, ipl, real, sim in tasks:
        best_il = 0.0 if real < 10 else 1e-2
        for ll in (0.01, 0.1):
            for il in (0.0, 1e-3, 1e-2):
                params = {
                    "dataset": dataset,
                    "images_per_label": ipl,
                    "inner_lr": il,
                    "last_lr": ll,
                    "seed": 0,
                    "feature.images_per_label": real,
                    "feature.similarity": sim,
                }
                run_id = logger.start(params)
                acc = 0.8 if il == best_il else 0.5
                logger.finish(
                    run_id, status="FINISHED", best_val_acc=acc + (0.05 if ll == 0.1 else 0)
                )
    recorder.end_parent("FINISHED")

    meta = meta_dataset(load_trials("il-ll", sqlite_uri))
    assert len(meta) == 8 and (meta.loc[meta["dataset"] == "d", "images_per_label"] == -1).all()
    _, version = log_meta_model(
        fit_with_loto(meta, kind="knn"), sqlite_uri, "meta", register="il-ll-model"
    )
    loaded, _, loaded_version = load_meta_model("il-ll-model", sqlite_uri)
    assert loaded_version == version == 1
    small = loaded.predict({"feature.images_per_label": 2.5, "feature.similarity": 0.85})
    big = loaded.predict({"feature.images_per_label": 60.0, "feature.similarity": 0.45})
    assert (small.inner_lr, small.last_lr) == (0.0, pytest.approx(0.1))
    assert big.inner_lr == pytest.approx(1e-2) and big.extrapolation == []


@pytest.mark.slow
def test_round_trip_server(model: MetaModel, mlflow_server: str) -> None:
    _, v1 = log_meta_model(model, mlflow_server, "meta-srv", register="srv-model")
    _, v2 = log_meta_model(model, mlflow_server, "meta-srv", register="srv-model")
    assert (v1, v2) == (1, 2)
    loaded, name, version = load_meta_model("srv-model@1", mlflow_server)
    assert (name, version) == ("srv-model", 1)
    _same_predictions(loaded, model)
    with pytest.raises(TrackingError, match="no registered model absent-model"):
        load_meta_model("absent-model", mlflow_server)


def test_sources_survive_the_round_trip(sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The records of the sources the features came from (issue 18) are stored with the model."""
    monkeypatch.chdir(tmp_path)
    rows = [{"task": f"t{i}", "dataset": f"t{i}", "images_per_label": 3, "last_lr": 0.01, "alpha": a,
             "best_last_lr": math.nan, "best_lr_scale": math.nan, "best_frozen_depth": math.nan,
             "experiments": "g", "feature.images_per_label": 3.0, "feature.similarity": s}
            for i, (a, s) in enumerate([(0.0, 0.9), (0.01, 0.5), (0.1, 0.2)])]
    fitted = fit_meta_model(pd.DataFrame(rows))
    record = {"source": "digits[0,1]", "backbone": "smallcnn", "sha256": "ab" * 32, "key": "0123456789abcdef",
              "recipe": {"backbone": "smallcnn", "in_channels": 1, "epochs": 2, "seed": 0,
                         "training": {"batch_size": 16, "augment": False, "image_size": None, "base_lr": 0.01}},
              "storage": str(tmp_path), "file": "cache/sources/smallcnn-0123456789abcdef.pt"}
    fitted.sources = [record]
    log_meta_model(fitted, sqlite_uri, "meta", register="with-sources")
    loaded, _, _ = load_meta_model("with-sources", sqlite_uri)
    assert loaded.sources == [record]
