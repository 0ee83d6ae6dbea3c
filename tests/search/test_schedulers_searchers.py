"""Schedulers (HyperBand, median stopping, PBT, PB2, BOHB), searchers (random, multi-objective Optuna),
budgets, `--more` and `warm_start: history` end to end: a real local Ray (2 CPUs), real MLflow (SQLite).

Every search trains from scratch (transfer_depth 0: no source model) on 5 images per label of digits
5-9 for a few epochs, so that each one takes seconds; one module-level Ray serves them all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunetl import api
from tunetl.cli import main
from tunetl.config import ConfigError
from tunetl.tracking import load_trials

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "experiments" / "quickstart.yaml")
SPACE = "search_space={transfer_depth: 0, frozen_depth: 0, images_per_label: {grid: [5, 10]}, lr_scale: {loguniform: [0.3, 3.0]}}"


@pytest.fixture(scope="module", autouse=True)
def ray_local():  # type: ignore[no-untyped-def]
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _over(*extra: str, epochs: int = 3) -> list[str]:
    return [f"training.epochs={epochs}", "training.batch_size=16", "seeds=[0]", SPACE, *extra]


def _parent(uri: str, run_id: str):  # type: ignore[no-untyped-def]
    from mlflow import MlflowClient

    return MlflowClient(uri).get_run(run_id)


def test_optuna_two_objectives_under_hyperband_then_more_then_pareto(
    tmp_path: Path, sqlite_uri: str, capsys: pytest.CaptureFixture
) -> None:
    """HyperBand per images-per-label group, a two-objective Optuna search with budgets; `--more` tells
    the searcher the finished trials and adds trials to the same parent without touching the earlier ones."""
    from mlflow import MlflowClient

    storage = tmp_path / "runs"
    over = _over("scheduler={type: hyperband, reduction_factor: 3}",
                 "searcher={type: optuna, num_samples: 2, seed: 0, objectives: [val_acc, train_seconds]}",
                 "run={max_concurrent_trials: 2, time_budget_s: 900}", epochs=2)
    first = api.run(QUICK, overrides=over, tracking_uri=sqlite_uri, storage=storage)
    assert first.num_trials == 2 and first.num_failed == 0
    params = _parent(sqlite_uri, first.parent_run_id).data.params
    assert params["scheduler"] == "hyperband" and params["searcher"] == "optuna"
    assert params["run.max_concurrent_trials"] == "2" and params["run.time_budget_s"] == "900.0"
    assert json.loads(params["objectives"].replace("'", '"')) == ["val_acc", "train_seconds"]
    before = load_trials("quickstart", sqlite_uri)
    assert before["train_seconds"].gt(0).all()
    client = MlflowClient(sqlite_uri)
    histories = {r: [(m.step, m.value) for m in client.get_metric_history(r, "val_acc")] for r in before["run_id"]}

    # What --more tells the searcher: every finished configuration with its two objectives.
    from tunetl.history import continuation
    from tunetl.search.preflight import open_storage
    from tunetl.search.searchers import build_searcher

    p = api.plan(QUICK, [*over, "searcher.num_samples=1"])
    cont = continuation(open_storage(storage), p.experiment, p.space, sqlite_uri, ["digits"])
    assert cont.parent_run_id == first.parent_run_id and len(cont.told) == 2
    by_scale = {round(s.point["lr_scale"], 9): s.values for s in cont.told}
    for _, row in before.iterrows():
        assert by_scale[round(row["lr_scale"], 9)] == pytest.approx([row["best_val_acc"], row["train_seconds"]])
    study = build_searcher(p.experiment, p.space, 1, cont.told).study
    assert len(study.trials) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert sorted(t.values[0] for t in study.trials) == pytest.approx(sorted(before["best_val_acc"]))

    more = api.run(QUICK, overrides=over, tracking_uri=sqlite_uri, storage=storage, more=1)
    assert more.parent_run_id == first.parent_run_id and more.num_trials == 1
    after = load_trials("quickstart", sqlite_uri)
    assert len(after) == 3 and set(before["run_id"]) < set(after["run_id"])
    for run_id, history in histories.items():
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_acc")] == history
    (more_tag,) = [json.loads(v) for k, v in _parent(sqlite_uri, first.parent_run_id).data.tags.items()
                   if k.startswith("tunetl.more.")]
    assert more_tag["trials"] == 1 and more_tag["told"] == 2 and more_tag["after"] == cont.run_dir

    # A changed space is refused, naming the key.
    changed = [*over[:-1], "search_space.images_per_label={grid: [5, 20]}"]
    with pytest.raises(ConfigError, match=r"search_space\.images_per_label"):
        api.run(QUICK, overrides=changed, tracking_uri=sqlite_uri, storage=storage, more=1)

    capsys.readouterr()
    assert main(["best", "--experiment", "quickstart", "--tracking-uri", sqlite_uri, "--pareto", "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert 1 <= len(front) <= 3 and {"best_val_acc", "train_seconds"} <= set(front[0])
    index = api.report("quickstart", tmp_path / "report", sqlite_uri, curves=0)
    assert (index.parent / "pareto_front.png").is_file() and "Pareto front" in index.read_text()

    # warm_start: history tells a new search every configuration finished before, under median stopping.
    hist = _over("scheduler={type: median, grace_period: 1, min_samples_required: 2}",
                 "searcher={type: optuna, num_samples: 1, seed: 3, warm_start: history}", epochs=2)
    from tunetl.history import history_seeds

    p2 = api.plan(QUICK, hist)
    seeds = history_seeds(p2.experiment, p2.space, sqlite_uri, ["digits"])
    assert len(seeds) == 3
    assert sorted(s.values[0] for s in seeds) == pytest.approx(sorted(after["best_val_acc"]))
    third = api.run(QUICK, overrides=hist, tracking_uri=sqlite_uri, storage=storage, new=True)
    assert third.num_trials == 1 and third.parent_run_id != first.parent_run_id
    tags = _parent(sqlite_uri, third.parent_run_id).data.tags
    assert tags["tunetl.warm_start.history.count"] == "3"
    assert len(json.loads(tags["tunetl.warm_start.history.points"])) == 3


def test_pbt_perturbs_learning_rates_mid_run_and_mlflow_shows_it(tmp_path: Path, sqlite_uri: str) -> None:
    """Two trials, PBT after epoch 1 in lockstep: the worse one takes the better one's checkpoint and a
    perturbed lr_scale (x0.8 or x1.2), and its run's lr.lr_scale history changes value."""

    over = _over("search_space.images_per_label=5", "searcher={type: random, num_samples: 2, seed: 0}",
                 "scheduler={type: pbt, perturbation_interval: 1, synch: true, resample_probability: 0, quantile_fraction: 0.5}",
                 epochs=2)
    summary = api.run(QUICK, overrides=over, tracking_uri=sqlite_uri, storage=tmp_path / "runs")
    assert summary.num_trials == 2 and summary.num_failed == 0
    _assert_a_learning_rate_changed_mid_run(sqlite_uri)


def _assert_a_learning_rate_changed_mid_run(sqlite_uri: str) -> None:
    """Some trial's `lr.lr_scale` history takes two values, and that run names the trial it copied."""
    from mlflow import MlflowClient

    frame = load_trials("quickstart", sqlite_uri)
    client = MlflowClient(sqlite_uri)
    changed = []
    for run_id in frame["run_id"]:
        values = [m.value for m in sorted(client.get_metric_history(run_id, "lr.lr_scale"), key=lambda m: m.step)]
        assert values, "every epoch records its learning rates"
        if len(set(values)) > 1:
            changed.append(run_id)
    assert changed, "the scheduler changed no trial's learning rate"
    for run_id in changed:
        assert "tunetl.pbt_donor" in client.get_run(run_id).data.tags
    assert (frame["epochs_run"] >= 2).all()


@pytest.mark.parametrize("scheduler", ["bohb", "pb2"])
def test_bohb_and_pb2_run_grouped(tmp_path: Path, sqlite_uri: str, scheduler: str) -> None:
    """BOHB's searcher proposes the configurations (distinct draws in the space); PB2, in lockstep after
    epoch 1, moves the worse trial to the better one's checkpoint at a GP-chosen learning rate."""
    sched = ("{type: bohb, reduction_factor: 2}" if scheduler == "bohb"
             else "{type: pb2, perturbation_interval: 1, quantile_fraction: 0.5, synch: true}")
    over = _over(f"scheduler={sched}", "searcher={type: random, num_samples: 2, seed: 0}", epochs=2)
    summary = api.run(QUICK, overrides=over, tracking_uri=sqlite_uri, storage=tmp_path / "runs")
    assert summary.num_trials == 2 and summary.num_failed == 0
    frame = load_trials("quickstart", sqlite_uri)
    assert frame["lr_scale"].between(0.3, 3.0).all()
    assert _parent(sqlite_uri, summary.parent_run_id).data.params["scheduler"] == scheduler
    if scheduler == "bohb":
        assert frame["lr_scale"].nunique() == 2
    else:
        _assert_a_learning_rate_changed_mid_run(sqlite_uri)


def test_random_search_stops_each_group_at_the_target(tmp_path: Path, sqlite_uri: str) -> None:
    """Random search of 2 samples per group; a target every trial reaches at epoch 1 stops them all there."""
    over = _over("scheduler.type=none", "searcher={type: random, num_samples: 2, seed: 1}",
                 "run={stop_at_val_acc: 0.01}", epochs=4)
    summary = api.run(QUICK, overrides=over, tracking_uri=sqlite_uri, storage=tmp_path / "runs")
    frame = load_trials("quickstart", sqlite_uri)
    assert summary.num_trials <= 2 and len(frame) == summary.num_trials
    assert (frame["epochs_run"] == 1).all()
    assert frame["lr_scale"].between(0.3, 3.0).all()
    assert _parent(sqlite_uri, summary.parent_run_id).data.params["run.stop_at_val_acc"] == "0.01"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("scheduler.type=pbt", "Ray's PBT works with searcher grid or random only"),
        ("searcher={type: grid, objectives: [val_acc, num_params]}", "several objectives need type: optuna"),
        ("searcher={type: random, warm_start: history}", "history seeds an Optuna study"),
    ],
)
def test_bad_combinations_exit_2_before_ray(tmp_path: Path, sqlite_uri: str, capsys: pytest.CaptureFixture,
                                            override: str, needle: str) -> None:
    code = main(["run", QUICK, "--tracking-uri", sqlite_uri, "--storage", str(tmp_path / "r"),
                 "--set", "searcher.type=optuna", "--set", override])
    assert code == 2
    assert needle in capsys.readouterr().err
