"""End-to-end searches: a real local Ray (2 CPUs), real MLflow stores, the real CLI.

Each search is tiny (digits, smallcnn, 2-3 epochs) so that the whole file runs in about a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tunetl import api
from tunetl.cli import main
from tunetl.tracking import load_trials

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "experiments" / "quickstart.yaml")
CONTRACT_PARAMS = {"transfer_depth", "frozen_depth", "images_per_label", "inner_lr", "last_lr",
                   "stage_multipliers", "lr_scale", "condition", "backbone", "dataset", "seed", "epochs",
                   "feature.images_per_label", "feature.num_classes", "feature.num_train", "feature.similarity"}


@pytest.fixture(scope="module", autouse=True)
def ray_local():  # type: ignore[no-untyped-def]
    """Ray's workers inherit `TUNETL_FAULT` from the driver at `ray.init`: every trial of this module fails
    if its process imported mlflow (runs are written on the driver), which the searches below would show
    as failed trials."""
    import ray

    from tunetl.search.faults import ENV

    with pytest.MonkeyPatch.context() as env:
        env.setenv(ENV, json.dumps([{"forbid_module": "mlflow"}]))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _small(*extra: str) -> list[str]:
    return ["training.epochs=2", "source.epochs=3", "scheduler.type=none", "seeds=[0]", *extra]


def test_grid_search_records_every_trial_once(tmp_path: Path, sqlite_uri: str) -> None:
    space = "search_space={conditions: {grid: [{name: base, transfer_depth: 0, frozen_depth: 0}, {name: S2T, transfer_depth: 2, frozen_depth: 2}]}, images_per_label: {grid: [5, 20]}}"
    summary = api.run(QUICK, overrides=_small(space), tracking_uri=sqlite_uri, storage=tmp_path / "runs")
    assert summary.num_trials == 4 and summary.num_failed == 0, "a trial failed (its worker imported mlflow?)"
    frame = load_trials("quickstart", sqlite_uri)
    assert len(frame) == 4
    assert (frame["status"] == "FINISHED").all()
    assert not frame["stopped_early"].any()
    assert CONTRACT_PARAMS <= set(frame.columns)
    combos = {(c, i) for c, i in zip(frame["condition"], frame["images_per_label"], strict=True)}
    assert combos == {("base", 5), ("base", 20), ("S2T", 5), ("S2T", 20)}
    assert set(frame["feature.images_per_label"]) == {5.0, 20.0}
    assert (frame["epochs_run"] == 2).all()
    assert frame["node"].str.len().gt(0).all()
    # per-epoch metrics with step = epoch
    from mlflow import MlflowClient

    history = MlflowClient(sqlite_uri).get_metric_history(frame["run_id"].iloc[0], "val_acc")
    assert [m.step for m in history] == [1, 2]
    # checkpoints landed in the storage path
    assert list((tmp_path / "runs").glob("quickstart_*/*/checkpoint_*/trial.pt"))
    best = api.best("quickstart", sqlite_uri, group_by=["images_per_label"], top=1)
    assert sorted(best["images_per_label"]) == [5, 20]


def test_asha_stops_some_trials_and_tags_them(tmp_path: Path, sqlite_uri: str) -> None:
    """One trial at a time (2 CPUs each), best learning rate first: ASHA's cuts depend on the order trials
    reach a rung, so this order makes them the same on every run (two at once stopped none, once)."""
    over = ["training.epochs=6", "source.epochs=3", "seeds=[0]", "resources.cpu=2",
            "scheduler={type: asha, grace_period: 1, reduction_factor: 3}",
            "search_space={frozen_depth: 0, transfer_depth: 0, base_lr: {grid: [0.05, 0.01, 0.003, 0.001, 0.0003, 0.0001]}, images_per_label: 50}"]
    summary = api.run(QUICK, overrides=over, tracking_uri=sqlite_uri, storage=tmp_path / "runs")
    frame = load_trials("quickstart", sqlite_uri)
    assert summary.num_trials == 6 and len(frame) == 6
    assert (frame["status"] == "FINISHED").all()
    stopped = frame[frame["stopped_early"]]
    assert 1 <= len(stopped) < 6
    assert (stopped["epochs_run"] < 6).all()
    assert (frame.loc[~frame["stopped_early"], "epochs_run"] == 6).all()


def test_optuna_runs_the_requested_samples_per_seed(tmp_path: Path, sqlite_uri: str) -> None:
    over = _small("searcher={type: optuna, num_samples: 3, seed: 1}", "seeds=[0, 1]",
                  "search_space={transfer_depth: 4, frozen_depth: {randint: [0, 3]}, lr_scale: {loguniform: [0.1, 3.0]}, images_per_label: 5}")
    summary = api.run(QUICK, overrides=over, tracking_uri=sqlite_uri, storage=tmp_path / "runs")
    frame = load_trials("quickstart", sqlite_uri)
    assert summary.num_trials == 6 and len(frame) == 6
    assert sorted(frame["seed"].tolist()) == [0, 0, 0, 1, 1, 1]
    assert frame["frozen_depth"].between(0, 3).all()
    assert frame["lr_scale"].between(0.1, 3.0).all()
    # each configuration ran once per seed
    assert frame.groupby(["frozen_depth", "lr_scale"]).size().eq(2).all()


def test_cli_run_with_set_and_then_best_json(tmp_path: Path, sqlite_uri: str, capsys: pytest.CaptureFixture) -> None:
    args = ["run", QUICK, "--tracking-uri", sqlite_uri, "--storage", str(tmp_path / "runs"), "--name", "cli"]
    for item in _small("training.batch_size=16", "search_space={transfer_depth: 2, frozen_depth: 1, images_per_label: 5}"):
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Best configurations" in out
    frame = load_trials("cli", sqlite_uri)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert (row["transfer_depth"], row["frozen_depth"], row["images_per_label"], row["epochs"]) == (2, 1, 5, 2)
    assert main(["best", "--experiment", "cli", "--tracking-uri", sqlite_uri, "--json", "--group-by",
                 "images_per_label"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records[0]["images_per_label"] == 5 and 0 <= records[0]["best_val_acc_mean"] <= 1
    out_file = tmp_path / "trials.parquet"
    assert main(["export", "--experiment", "cli", "--tracking-uri", sqlite_uri, "--out", str(out_file)]) == 0
    back = pd.read_parquet(out_file)
    assert len(back) == 1 and back["frozen_depth"].iloc[0] == 1


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("search_space={frozen_depht: 1}", "frozen_depht: unknown key"),
        ("search_space={lr_scale: {uniform: [3, 1]}}", "low (3) > high (1)"),
        ("search_space={inner_lr: {loguniform: [0, 1]}}", "bounds must be > 0"),
        ("search_space={images_per_label: {grid: []}}", "needs a non-empty list"),
        ("search_space={transfer_depth: 1, frozen_depth: 2}", "frozen_depth (2) > transfer_depth (1)"),
        ("search_space={stage_multipliers: [0, 1, 2, 4, 8]}", "has 5 values but the backbone has 4 stages"),
        ("search_space={images_per_label: 1000}", "images_per_label: 1000 >"),
        ("backbone=resnet1000", "backbone: unknown backbone 'resnet1000'"),
        ("dataset={builtin: cifar1000}", "dataset:"),
    ],
)
def test_invalid_input_exits_non_zero_naming_the_key_and_creates_no_run(
    tmp_path: Path, sqlite_uri: str, capsys: pytest.CaptureFixture, override: str, needle: str
) -> None:
    code = main(["run", QUICK, "--tracking-uri", sqlite_uri, "--storage", str(tmp_path / "r"), "--set", override])
    assert code == 2
    assert needle in capsys.readouterr().err
    db = Path(sqlite_uri.removeprefix("sqlite:///"))
    if db.exists():
        from mlflow import MlflowClient

        exps = MlflowClient(sqlite_uri).search_experiments()
        assert all(not MlflowClient(sqlite_uri).search_runs([e.experiment_id]) for e in exps)
    assert not (tmp_path / "r").exists()


def test_gpu_request_on_a_cpu_cluster_fails_before_any_trial(
    tmp_path: Path, sqlite_uri: str, capsys: pytest.CaptureFixture
) -> None:
    code = main(["run", QUICK, "--tracking-uri", sqlite_uri, "--storage", str(tmp_path / "r"),
                 "--set", "resources.gpu=1"])
    assert code == 2
    assert "resources.gpu: each trial asks for 1 GPU(s) but no node of the Ray cluster has more than 0" in \
        capsys.readouterr().err
    from mlflow import MlflowClient

    client = MlflowClient(sqlite_uri)
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_diverged_trial_stops_at_once_is_tagged_and_never_ranks(tmp_path: Path, sqlite_uri: str) -> None:
    over = _small("training.epochs=4", "search_space={transfer_depth: 0, base_lr: {grid: [1.0e+6, 0.01]}, images_per_label: 10}")
    summary = api.run(QUICK, overrides=over, name="nan", tracking_uri=sqlite_uri, storage=tmp_path / "r")
    assert summary.num_failed == 0
    frame = load_trials("nan", sqlite_uri).set_index("base_lr")
    assert bool(frame.loc[1.0e6, "diverged"]) and not bool(frame.loc[0.01, "diverged"])
    # it stopped at the first epoch whose loss was not finite, instead of training on
    assert frame.loc[1.0e6, "epochs_run"] < 4 and frame.loc[0.01, "epochs_run"] == 4
    assert frame.loc[1.0e6, "status"] == "FINISHED"
    best = api.best("nan", sqlite_uri, top=5)
    assert best["base_lr"].tolist() == [0.01]


def test_two_searches_do_not_leak(tmp_path: Path, sqlite_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    one = "search_space={transfer_depth: 0, images_per_label: 5}"
    api.run(QUICK, overrides=_small(one), name="first", tracking_uri=sqlite_uri, storage=tmp_path / "r")
    # A stale experiment id in the environment (as mlflow.set_experiment leaves behind) must not redirect.
    from mlflow import MlflowClient

    first_id = MlflowClient(sqlite_uri).get_experiment_by_name("first").experiment_id
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", first_id)
    two = "search_space={transfer_depth: 0, images_per_label: {grid: [5, 10]}}"
    api.run(QUICK, overrides=_small(two), name="second", tracking_uri=sqlite_uri, storage=tmp_path / "r")
    assert len(load_trials("first", sqlite_uri)) == 1
    assert len(load_trials("second", sqlite_uri)) == 2


def test_search_logs_to_a_real_mlflow_server(tmp_path: Path, mlflow_server: str) -> None:
    over = _small("search_space={transfer_depth: 2, frozen_depth: {grid: [0, 2]}, images_per_label: 5}")
    summary = api.run(QUICK, overrides=over, name="remote", tracking_uri=mlflow_server, storage=tmp_path / "r")
    assert summary.num_trials == 2
    frame = load_trials("remote", mlflow_server)
    assert len(frame) == 2 and (frame["status"] == "FINISHED").all()
    assert sorted(frame["frozen_depth"]) == [0, 2]


def test_credentials_reach_no_record_file_or_output(
    tmp_path: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Credentials in the URI and in MLflow's variables authenticate, and are written nowhere: not in
    params or tags, not in Ray's storage (state file, results, checkpoints, Tune's pickles), not in the
    command's output. (The test server has no auth, so it accepts any credentials.)"""
    from mlflow import MlflowClient

    secrets = ["uriSecret41", "envSecret42", "tokSecret43"]
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secrets[2])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secrets[1])
    uri = mlflow_server.replace("http://", f"http://alice:{secrets[0]}@")
    storage = tmp_path / "runs"
    argv = ["run", QUICK, "--name", "creds", "--tracking-uri", uri, "--storage", str(storage)]
    for s in _small("search_space={transfer_depth: 0, images_per_label: 5}"):
        argv += ["--set", s]
    assert main(argv) == 0
    out = capsys.readouterr()
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("creds")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2  # parent and the one trial
    written = [json.dumps([r.data.params, r.data.tags]) for r in runs] + [out.out, out.err]
    files = [f for f in storage.rglob("*") if f.is_file()]
    assert any(f.name == "tunetl_search.json" for f in files) and any(f.name.endswith(".pkl") for f in files)
    blobs = [f.read_bytes() for f in files]
    for secret in secrets:
        assert not [text[max(0, text.find(secret) - 200):text.find(secret) + 50] for text in written if secret in text]
        assert not any(secret.encode() in blob for blob in blobs), secret
    state = json.loads(next(storage.glob("creds_*/tunetl_search.json")).read_text())
    assert state["tracking_uri"] == mlflow_server


def test_resume_keeps_one_run_per_trial_and_refuses_an_edited_space(tmp_path: Path, sqlite_uri: str) -> None:
    from tunetl.config import ConfigError

    over = _small("search_space={transfer_depth: 0, images_per_label: {grid: [5, 10]}}")
    first = api.run(QUICK, overrides=over, name="res", tracking_uri=sqlite_uri, storage=tmp_path / "r")
    again = api.run(QUICK, overrides=over, name="res", tracking_uri=sqlite_uri, storage=tmp_path / "r", resume=True)
    assert again.parent_run_id == first.parent_run_id and again.num_trials == 2
    frame = load_trials("res", sqlite_uri)
    assert len(frame) == 2 and (frame["status"] == "FINISHED").all()
    edited = _small("search_space={transfer_depth: 0, images_per_label: {grid: [5, 20]}}")
    with pytest.raises(ConfigError, match="changed since"):
        api.run(QUICK, overrides=edited, name="res", tracking_uri=sqlite_uri, storage=tmp_path / "r", resume=True)


def test_fine_tuning_knobs_are_searched_and_recorded(tmp_path: Path, sqlite_uri: str) -> None:
    from mlflow import MlflowClient

    space = ("search_space={transfer_depth: 4, frozen_depth: 2, images_per_label: 10, lr_schedule: {grid: [constant, "
             "cosine]}, warmup_epochs: 1, mixup: 0.2, label_smoothing: 0.1, layer_decay: 0.5, augment: trivial}")
    summary = api.run(QUICK, overrides=_small(space), name="knobs", tracking_uri=sqlite_uri, storage=tmp_path / "r")
    assert summary.num_trials == 2 and summary.num_failed == 0
    frame = load_trials("knobs", sqlite_uri).sort_values("lr_schedule")
    assert list(frame["lr_schedule"]) == ["constant", "cosine"]
    assert (frame["augment"] == "trivial").all() and (frame["mixup"] == 0.2).all()
    assert (frame["layer_decay"] == 0.5).all() and (frame["warmup_epochs"] == 1).all()
    assert (frame["label_smoothing"] == 0.1).all() and (frame["grad_clip"] == 0.0).all()
    assert frame["stage_multipliers"].iloc[0] == (0.125, 0.25, 0.5, 1.0)
    history = MlflowClient(sqlite_uri).get_metric_history(frame["run_id"].iloc[1], "lr_factor")
    # epochs=2, warmup 1: half the rate in epoch 1; cosine over the one epoch left starts at the full rate
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 1.0)]
