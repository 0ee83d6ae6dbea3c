"""MLflow outages, for real: a tracking server that is not there, and one stopped (killpg) mid-search and
started again on the same port and database.

A trial never fails for tracking: what the store does not take is kept in the worker and re-sent
(`tunetl.tracking.retry`, `TrialLogger`), and `tunetl sync` writes what is still missing from Ray's
results. Searches run as real `tunetl run` processes in their own session, killed by group afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import _free_port, _group_alive, _stop_group, start_mlflow_server
from tests.reliability.cli import QUICK, run_argv
from tunetl.cli import main
from tunetl.records import EPOCH_METRICS

NAME = "outage"
EPOCHS = 10
SIZES = [5, 10, 15, 20, 25, 30]
#: Every epoch sleeps 0.6 s; the last trial (ipl=30) 3 s, so that the search is still running when the
#: server is back, however long a loaded machine takes to restart it (the end of a search needs MLflow).
SLOW = [{"sleep_s": 0.6}, {"match": "ipl=30 ", "sleep_s": 2.4}]


def _argv(uri: str, storage: Path) -> list[str]:
    return run_argv(uri, storage, name=NAME, sizes=SIZES, epochs=EPOCHS, num_cpus=2)


def _env(ray_tmp: Path) -> dict[str, str]:
    """Slow trials (`TUNETL_FAULT` sleep after each epoch, inherited by Ray's workers), no MLflow settings,
    and a Ray temp folder of its own: `ray.init()` would join any other local cluster (another test's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env.update(TUNETL_FAULT=json.dumps(SLOW), PYTHONUNBUFFERED="1", RAY_TMPDIR=str(ray_tmp))
    return env


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short Ray temp folder (Ray's socket paths must stay under 108 characters)."""
    path = Path(tempfile.mkdtemp(prefix="tunetl-ray-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _crash_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server's process group and wait until none of it is left (a graceful stop keeps
    answering for seconds)."""
    _kill_group(proc.pid)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _children(uri: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(NAME)
    if exp is None:
        return []
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000) if "mlflow.parentRunId" in r.data.tags]


def _steps(uri: str, run_id: str, metric: str = "val_acc") -> list[int]:
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, metric))


def _reported_epochs(storage: Path) -> int:
    """Epoch results Ray has written so far, over all trials (training progress without MLflow)."""
    return sum(len(f.read_text().splitlines()) for f in storage.glob("*/*/result.json"))


def test_unreachable_server_at_start_fails_at_once_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.monotonic()
    code = main(["run", QUICK, "--tracking-uri", uri, "--storage", str(tmp_path / "runs"), "--set", "seeds=[0]"])
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1  # the CLI's "service unreachable" status
    assert f"MLflow tracking server at {uri} did not answer" in err and "mlflow server" in err
    assert not (tmp_path / "runs").exists()  # no Ray trial folder, no state file
    import ray

    assert not ray.is_initialized()  # failed before Ray started: no trial can exist
    print(f"failed after {seconds:.1f} s")


@pytest.mark.slow
def test_trial_logger_keeps_records_through_a_server_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buffer itself, against a real server stopped and started again: no call raises or hangs while it
    is down, and after the restart the run has every epoch, its best_val_acc, and is FINISHED."""
    from mlflow import MlflowClient

    from tunetl.tracking import SearchRecorder, TrackingUnavailable
    from tunetl.tracking.retry import HTTP_LIMITS

    root = tmp_path / "server"
    root.mkdir()
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(root, port)
    try:
        recorder = SearchRecorder(uri, NAME)
        recorder.start_parent({}, {})
        logger = replace(recorder.trial_logger(), wait_s=1.0)
        run_id = logger.start({"images_per_label": 5}, tags={"tunetl.trial_id": "t1"})
        assert run_id is not None
        logger.log_epoch(run_id, 1, {"val_acc": 0.5})
        _stop_group(server)
        for epoch in (2, 3, 4):
            logger.log_epoch(run_id, epoch, {"val_acc": epoch / 10})  # kept, never raises
        logger.finish(run_id, status="FINISHED", best_val_acc=0.5)  # waits 1 s, then keeps the end too
        assert logger.find_run("t1") is None and logger.start({}, tags={"tunetl.trial_id": "t2"}) is None
        assert not any(k in os.environ for k in HTTP_LIMITS)  # the short HTTP limits were scoped to the calls
        err = capsys.readouterr().err
        assert f"MLflow at {uri} did not take" in err and "is not closed in MLflow yet" in err
        # The driver's end of the search waits as long (1 s here), then says what to run; it never sits
        # through MLflow's own minutes of HTTP retries.
        monkeypatch.setenv("TUNETL_TRACKING_WAIT_S", "1")
        for end in (lambda: recorder.close_open_children("KILLED", "interrupted"), recorder.end_parent):
            with pytest.raises(TrackingUnavailable, match="tunetl sync --storage"):
                end()
        server = start_mlflow_server(root, port)
        assert logger.flush(wait_s=30)
        assert f"MLflow at {uri} answers again" in capsys.readouterr().err
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["best_val_acc"] == 0.5
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_acc")] == [
            (1, 0.5), (2, 0.2), (3, 0.3), (4, 0.4)]
    finally:
        _stop_group(server)


def test_a_refused_write_is_dropped_and_the_rest_still_arrives(sqlite_uri: str, capsys: pytest.CaptureFixture) -> None:
    from mlflow import MlflowClient

    from tunetl.tracking import SearchRecorder

    recorder = SearchRecorder(sqlite_uri, NAME)
    recorder.start_parent({}, {})
    logger = recorder.trial_logger()
    run_id = logger.start({"images_per_label": 5})
    assert run_id is not None
    logger.set_tags(run_id, {"k" * 300: "a tag key longer than MLflow allows"})  # refused, never raised
    logger.log_epoch(run_id, 1, {"val_acc": 0.5})
    logger.finish(run_id, status="FINISHED", best_val_acc=0.5)
    assert "refused a trial's tags" in capsys.readouterr().err
    run = MlflowClient(sqlite_uri).get_run(run_id)
    assert run.data.params["images_per_label"] == "5" and run.data.metrics["val_acc"] == 0.5
    assert run.info.status == "FINISHED" and run.data.tags["tunetl.stopped_early"] == "false"


def _search_through_an_outage(tmp_path: Path, ray_tmp: Path, wait_s: float | None) -> tuple[str, Path, Any]:
    """A search whose tracking server is killed (killpg) in the middle of a trial, kept down for
    8 s plus its restart (~12 s) on the same port and database, while trials train on. Returns
    (URI, storage, the restarted server process) once the search has exited 0."""
    root, storage = tmp_path / "server", tmp_path / "runs"
    root.mkdir()
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(root, port)
    env = _env(ray_tmp)
    if wait_s is not None:
        env["TUNETL_TRACKING_WAIT_S"] = str(wait_s)
    log = tmp_path / "search.log"
    with log.open("wb") as out:
        search = subprocess.Popen(_argv(uri, storage), env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        # Mid-trial (epoch 2-5 of 10): a trial then trains for seconds without the server. Stopped between
        # two trials, every running trial would be waiting to start or end its run, training nothing.
        while not any(r.info.status == "RUNNING" and 2 <= len(_steps(uri, r.info.run_id)) <= EPOCHS // 2
                      for r in _children(uri)):
            assert search.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        _crash_group(server)  # SIGKILL to the server's whole process group: down at once
        at_stop = _reported_epochs(storage)
        time.sleep(8)
        server = start_mlflow_server(root, port)  # same port, same database
        at_restart = _reported_epochs(storage)
        assert search.poll() is None, "the search ended while the server was down: make trials slower"
        assert at_restart > at_stop, "training stopped while the tracking server was down"
        assert search.wait(timeout=400) == 0, log.read_text()[-3000:]
        print(f"epochs reported while the server was down: {at_restart - at_stop}")
    except BaseException:
        _stop_group(server)
        raise
    finally:
        _kill_group(search.pid)
    return uri, storage, server


def _assert_complete(uri: str) -> None:
    """Exactly one FINISHED child run per trial, with every epoch, its params and `best_val_acc`."""
    runs = _children(uri)
    per_trial = Counter(r.data.tags["tunetl.trial_id"] for r in runs)
    assert len(per_trial) == len(SIZES) and set(per_trial.values()) == {1}, per_trial
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_id, r.info.status) for r in runs]
    for r in runs:
        for metric in ("val_acc", "val_loss", "train_acc", "train_loss"):
            assert _steps(uri, r.info.run_id, metric) == list(range(1, EPOCHS + 1)), (r.info.run_id, metric)
        assert 0 <= r.data.metrics["best_val_acc"] <= 1
        assert {"images_per_label", "seed", "feature.similarity"} <= set(r.data.params)
        assert r.data.tags["tunetl.stopped_early"] == "false"


def _sync(storage: Path, ray_tmp: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "tunetl.cli", "sync", "--storage", str(storage)],
                            capture_output=True, text=True, env=_env(ray_tmp), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_server_restarted_mid_search_loses_no_record(tmp_path: Path, ray_tmp: Path) -> None:
    """A restart within the wait (60 s by default): the trials' buffers re-send everything themselves."""
    uri, storage, server = _search_through_an_outage(tmp_path, ray_tmp, wait_s=None)
    try:
        _assert_complete(uri)
        assert "nothing to add" in _sync(storage, ray_tmp)  # nothing was left for a re-sync
    finally:
        _stop_group(server)


@pytest.mark.slow
def test_outage_longer_than_the_wait_is_filled_in_by_sync(tmp_path: Path, ray_tmp: Path) -> None:
    """With a 1 s wait, trials that start or end during the outage go on without MLflow (runs missing or
    left RUNNING); `tunetl sync` then writes exactly what is missing from Ray's results."""
    uri, storage, server = _search_through_an_outage(tmp_path, ray_tmp, wait_s=1)
    try:
        assert len(_children(uri)) < len(SIZES) or any(r.info.status == "RUNNING" for r in _children(uri))
        out = _sync(storage, ray_tmp)
        print(out)
        assert "run(s) created" in out, out
        _assert_complete(uri)
        assert "nothing to add" in _sync(storage, ray_tmp), "a second sync changed something"
    finally:
        _stop_group(server)


@pytest.mark.slow
def test_sync_restores_a_search_into_a_store_that_lost_it(tmp_path: Path) -> None:
    """The worst case of an outage: MLflow kept nothing (a new database). `sync` rebuilds the search from
    Ray's results (parent, one child per trial, params, every epoch, ends), and a second sync adds nothing."""
    import ray

    from tunetl import api
    from tunetl.tracking import load_trials

    first = f"sqlite:///{tmp_path / 'first.db'}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        space = "search_space={transfer_depth: 0, images_per_label: {grid: [5, 10]}}"
        summary = api.run(QUICK, overrides=["training.epochs=3", "scheduler.type=none", "seeds=[0]", space],
                          name=NAME, tracking_uri=first, storage=tmp_path / "runs")
    finally:
        ray.shutdown()
    assert summary.num_trials == 2
    lost = f"sqlite:///{tmp_path / 'new.db'}"
    reports = api.sync(tmp_path / "runs", tracking_uri=lost)
    assert len(reports) == 1 and reports[0].parent_created and reports[0].runs_created == 2
    # Per run: every epoch metric and epochs_run at 3 epochs, plus best_val_acc.
    assert reports[0].metrics_logged == 2 * (3 * (len(EPOCH_METRICS) + 1) + 1) and reports[0].runs_closed == 2
    again = api.sync(tmp_path / "runs", tracking_uri=lost)
    assert not again[0].changed and again[0].parent_run_id == reports[0].parent_run_id

    cols = ["images_per_label", "seed", "feature.similarity", "val_acc", "val_loss", "best_val_acc", "epochs_run",
            "status", "stopped_early"]
    original = load_trials(NAME, first).sort_values("images_per_label")[cols].reset_index(drop=True)
    restored = load_trials(NAME, lost).sort_values("images_per_label")[cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(original, restored)
    assert set(load_trials(NAME, lost)["parent_run_id"]) == {reports[0].parent_run_id}
