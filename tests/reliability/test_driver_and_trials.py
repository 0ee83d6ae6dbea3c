"""Faults of the driver and of trials, injected for real: `tunetl run` processes killed or stopped by PID,
trial workers killed by PID, trials that raise (through `TUNETL_FAULT`, inherited by Ray's workers).

Each search runs in its own `tunetl run` process (own session, so every Ray process it starts is killed
with its group afterwards) on 4 tiny trials; `sleep_s` slows the trials down so the test can act
while they run. `TUNE_GLOBAL_CHECKPOINT_S=1` makes Tune snapshot its state every second instead of
every 10 s, so that a driver killed after a few seconds has a snapshot to resume from.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.cli import run_argv

pytestmark = pytest.mark.slow

EPOCHS = 6
SIZES = [5, 10, 20, 30]
NAME = "faults"


def _argv(uri: str, storage: Path, *extra: str, sizes: list[int] = SIZES) -> list[str]:
    sets = ("max_failures=1", "training.checkpoint_interval_s=0")
    return [*run_argv(uri, storage, name=NAME, sizes=sizes, epochs=EPOCHS, num_cpus=2, sets=sets), *extra]


def _env(faults: list[dict[str, Any]]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env.update(TUNETL_FAULT=json.dumps(faults), TUNE_GLOBAL_CHECKPOINT_S="1", PYTHONUNBUFFERED="1")
    return env


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=log.parent)


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of a search's process group (its local Ray cluster included)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    time.sleep(1.0)


def _finish(argv: list[str], env: dict[str, str], log: Path) -> subprocess.CompletedProcess[str]:
    proc = _start(argv, env, log)
    try:
        proc.wait(timeout=480)
    finally:
        _kill_group(proc.pid)
    return subprocess.CompletedProcess(argv, proc.returncode, log.read_text(errors="replace"), "")


def _children(uri: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(NAME)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _parents(uri: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def _steps(uri: str, run_id: str) -> list[int]:
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "val_acc"))


def _signal_mid_search(argv: list[str], env: dict[str, str], log: Path, uri: str, sig: int) -> int:
    """Start `tunetl run`, send `sig` once a trial is past epoch 2, and return the driver's exit code."""
    proc = _start(argv, env, log)
    try:
        _wait_for(lambda: bool(_running_past_epoch(uri, 2)), proc, log)
        proc.send_signal(sig)
        return proc.wait(timeout=120)
    finally:
        _kill_group(proc.pid)


def _wait_for(cond: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"search ended (rc {proc.returncode}) before the fault:\n{log.read_text()[-3000:]}")
        try:
            if cond():
                return
        except Exception:  # the store may be created or locked while we look
            pass
        time.sleep(0.5)
    raise AssertionError(f"condition not reached in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _running_past_epoch(uri: str, epoch: int) -> list[Any]:
    return [r for r in _children(uri)
            if r.info.status == "RUNNING" and r.data.metrics.get("val_acc") is not None
            and len(_steps(uri, r.info.run_id)) >= epoch]


def _assert_one_finished_run_per_trial(uri: str, trials: int = len(SIZES)) -> list[Any]:
    runs = _children(uri)
    per_trial = Counter(r.data.tags["tunetl.trial_id"] for r in runs)
    assert len(per_trial) == trials and set(per_trial.values()) == {1}, per_trial
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_id, r.info.status) for r in runs]
    for r in runs:
        assert _steps(uri, r.info.run_id) == list(range(1, EPOCHS + 1)), r.data.tags.get("mlflow.runName")
        assert "best_val_acc" in r.data.metrics
    return runs


def test_killed_driver_is_resumed_by_running_the_same_command(tmp_path: Path, sqlite_uri: str) -> None:
    storage, argv, env = tmp_path / "runs", _argv(sqlite_uri, tmp_path / "runs"), _env([{"sleep_s": 0.7}])
    proc = _start(argv, env, tmp_path / "first.log")
    try:
        def one_done_one_checkpointed() -> bool:
            done = [r for r in _children(sqlite_uri) if r.info.status == "FINISHED"]
            return bool(done) and bool(_running_past_epoch(sqlite_uri, 2))

        _wait_for(one_done_one_checkpointed, proc, tmp_path / "first.log")
        time.sleep(2.0)  # let Tune's state snapshot (every second here) include them
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        _kill_group(proc.pid)
    before = {r.info.run_id: r for r in _children(sqlite_uri)}
    finished_before = {i: r.info.end_time for i, r in before.items() if r.info.status == "FINISHED"}
    assert finished_before and any(r.info.status == "RUNNING" for r in before.values())

    again = _finish(argv, env, tmp_path / "second.log")
    assert again.returncode == 0, again.stdout[-3000:]
    assert "did not finish" in again.stdout
    runs = _assert_one_finished_run_per_trial(sqlite_uri)
    after = {r.info.run_id: r for r in runs}
    for run_id, end_time in finished_before.items():
        assert after[run_id].info.end_time == end_time, "a finished trial ran again"
    assert set(before) == set(after), "a trial got a second MLflow run instead of its own"
    restored = [int(r.data.tags.get("tunetl.restored_epoch", 0)) for r in runs]
    assert max(restored) >= 2, "no in-flight trial continued from its checkpoint"
    parents = _parents(sqlite_uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert list(storage.glob("faults_*/*/checkpoint_*/trial.pt"))


def test_sigterm_stops_the_search_and_resume_finishes_it(tmp_path: Path, sqlite_uri: str) -> None:
    storage, argv, env = tmp_path / "runs", _argv(sqlite_uri, tmp_path / "runs"), _env([{"sleep_s": 0.7}])
    log = tmp_path / "first.log"
    rc = _signal_mid_search(argv, env, log, sqlite_uri, signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert "--resume" in log.read_text()
    runs = _children(sqlite_uri)
    assert "RUNNING" not in {r.info.status for r in runs}
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert killed and all(r.data.tags.get("tunetl.orphan") == "interrupted" for r in killed)
    assert [p.info.status for p in _parents(sqlite_uri)] == ["KILLED"]
    state = json.loads(next(storage.glob("faults_*/tunetl_search.json")).read_text())
    assert state["finished"] is False

    edited = _finish(_argv(sqlite_uri, storage, "--resume", sizes=[5, 10, 20, 40]), env, tmp_path / "edited.log")
    assert edited.returncode == 2 and "changed since" in edited.stdout

    resumed = _finish([*argv, "--resume"], env, tmp_path / "resumed.log")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    runs = _assert_one_finished_run_per_trial(sqlite_uri)
    assert not any("tunetl.orphan" in r.data.tags for r in runs)
    assert [p.info.status for p in _parents(sqlite_uri)] == ["FINISHED"]


def test_a_failing_trial_is_retried_from_its_checkpoint_and_one_that_always_fails_ends_failed(
    tmp_path: Path, sqlite_uri: str
) -> None:
    faults = [{"match": "ipl=5 ", "raise_from": 2, "once_dir": str(tmp_path / "once")},
              {"match": "ipl=10 ", "raise_from": 1}]
    result = _finish(_argv(sqlite_uri, tmp_path / "runs"), _env(faults), tmp_path / "run.log")
    assert result.returncode == 3, result.stdout[-3000:]
    assert "4 trial(s), 1 failed" in result.stdout and "InjectedFault" in result.stdout
    runs = {r.data.tags["mlflow.runName"].split()[1]: r for r in _children(sqlite_uri)}
    assert sorted(runs) == sorted(f"ipl={s}" for s in SIZES)
    failed = runs["ipl=10"]
    assert failed.info.status == "FAILED" and "InjectedFault" in failed.data.tags["tunetl.error"]
    retried = runs["ipl=5"]
    assert retried.info.status == "FINISHED" and "tunetl.error" not in retried.data.tags
    assert "InjectedFault" in retried.data.tags["tunetl.retried_error"]
    assert retried.data.tags["tunetl.restored_epoch"] == "2"
    assert _steps(sqlite_uri, retried.info.run_id) == list(range(1, EPOCHS + 1))
    for size in (20, 30):
        assert runs[f"ipl={size}"].info.status == "FINISHED"
    assert [p.info.status for p in _parents(sqlite_uri)] == ["FINISHED"]


def test_a_killed_trial_worker_is_rescheduled_from_its_checkpoint(tmp_path: Path, sqlite_uri: str) -> None:
    argv, env = _argv(sqlite_uri, tmp_path / "runs", sizes=[5, 10]), _env([{"sleep_s": 0.7}])
    log = tmp_path / "run.log"
    proc = _start(argv, env, log)
    try:
        _wait_for(lambda: bool(_running_past_epoch(sqlite_uri, 2)), proc, log)
        victim = _running_past_epoch(sqlite_uri, 2)[0]
        os.kill(int(victim.data.tags["tunetl.pid"]), signal.SIGKILL)
        proc.wait(timeout=480)
    finally:
        _kill_group(proc.pid)
    assert proc.returncode == 0, log.read_text()[-3000:]
    runs = {r.info.run_id: r for r in _assert_one_finished_run_per_trial(sqlite_uri, trials=2)}
    assert int(runs[victim.info.run_id].data.tags["tunetl.restored_epoch"]) >= 2
