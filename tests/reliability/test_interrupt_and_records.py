"""Ctrl-C of a real `tunetl run` process, and what a search records of trials that fail early, diverge, or
whose storage folder holds planted pickles.

- Ctrl-C (SIGINT to the driver, as a terminal sends it) must end like SIGTERM: exit 130, the parent run
  KILLED, the state file unfinished, the unfinished trials counted, and the same command resumes it.
- A trial that fails before its first report has a FAILED MLflow run with its error at once (no `tunetl
  sync` needed); a trial whose loss explodes (lr 1e9) is marked diverged; `export --from-storage` and
  `sync` read tunetl's JSON only: a `*.pkl` planted in the storage folder is never unpickled.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
from pathlib import Path

import pytest

from tests.reliability.cli import QUICK
from tests.reliability.test_driver_and_trials import (
    NAME,
    _children,
    _env,
    _finish,
    _parents,
    _signal_mid_search,
)

pytestmark = pytest.mark.slow


def _argv(uri: str, storage: Path, space: str, *sets: str, epochs: int) -> list[str]:
    argv = [sys.executable, "-m", "tunetl.cli", "run", QUICK, "--name", NAME, "--tracking-uri", uri,
            "--storage", str(storage), "--num-cpus", "2"]
    for item in (f"training.epochs={epochs}", "scheduler.type=none", "seeds=[0]",
                 "training.checkpoint_interval_s=0", *sets, f"search_space={space}"):
        argv += ["--set", item]
    return argv


def test_ctrl_c_stops_the_search_resumably_and_the_same_command_finishes_it(tmp_path: Path, sqlite_uri: str) -> None:
    storage = tmp_path / "runs"
    argv = _argv(sqlite_uri, storage, "{transfer_depth: 0, images_per_label: {grid: [5, 10, 20]}}", epochs=4)
    # Two trials run at a time; the third waits for a slot and is slow (~11 s), so the signal, sent once a
    # trial is past epoch 2, always finds unfinished work however loaded the machine is.
    env, log = _env([{"sleep_s": 0.7}, {"match": "ipl=20 ", "sleep_s": 2.0}]), tmp_path / "first.log"
    rc = _signal_mid_search(argv, env, log, sqlite_uri, signal.SIGINT)
    text = log.read_text(errors="replace")
    assert rc == 130, text[-3000:]
    assert "--resume" in text and "with 0 trial(s) unfinished" not in text, text[-2000:]
    assert [p.info.status for p in _parents(sqlite_uri)] == ["KILLED"]
    assert "RUNNING" not in {r.info.status for r in _children(sqlite_uri)}
    state = json.loads(next(storage.glob(f"{NAME}_*/tunetl_search.json")).read_text())
    assert state["finished"] is False

    again = _finish(argv, env, tmp_path / "second.log")
    assert again.returncode == 0, again.stdout[-3000:]
    assert "did not finish" in again.stdout
    assert [p.info.status for p in _parents(sqlite_uri)] == ["FINISHED"]
    runs = _children(sqlite_uri)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}


class _Payload:
    """Unpickling this touches `marker`: proof that something read a planted pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_early_failures_and_divergence_are_recorded_and_storage_pickles_are_never_read(
    tmp_path: Path, sqlite_uri: str
) -> None:
    from tunetl import cli

    storage = tmp_path / "runs"
    space = ("{transfer_depth: 0, images_per_label: 5, conditions: {grid: [{name: ok}, "
             "{name: zero, lr_scale: 0}, {name: huge, base_lr: 1.0e+9}]}}")
    result = _finish(_argv(sqlite_uri, storage, space, epochs=3), _env([]), tmp_path / "run.log")
    assert result.returncode == 3, result.stdout[-3000:]
    assert "3 trial(s), 1 failed" in result.stdout
    assert "FAILED trial, MLflow run" in result.stdout and "every learning rate is 0" in result.stdout
    runs = {r.data.tags["mlflow.runName"].split()[0] if "mlflow.runName" in r.data.tags else "?": r
            for r in _children(sqlite_uri)}
    zero = [r for r in _children(sqlite_uri) if r.info.status == "FAILED"]
    assert len(zero) == 1 and "every learning rate is 0" in zero[0].data.tags["tunetl.error"]
    assert runs["huge"].data.tags.get("tunetl.diverged") == "true", runs["huge"].data.tags
    assert runs["ok"].info.status == "FINISHED" and "tunetl.diverged" not in runs["ok"].data.tags

    marker = tmp_path / "unpickled"
    planted = 0
    for folder in [next(storage.glob(f"{NAME}_*")), *next(storage.glob(f"{NAME}_*")).glob("*/")]:
        for name in ("tuner.pkl", "params.pkl", "error.pkl", "trainable.pkl"):
            (folder / name).write_bytes(pickle.dumps(_Payload(marker)))
            planted += 1
    assert planted > 4
    out = tmp_path / "trials.parquet"
    assert cli.main(["export", "--from-storage", str(storage), "--out", str(out)]) == 0
    assert cli.main(["sync", "--storage", str(storage), "--tracking-uri", sqlite_uri]) == 0
    assert not marker.exists(), "a pickle planted in the storage folder was unpickled"
    import pandas as pd

    frame = pd.read_parquet(out).set_index("condition")
    assert frame.loc["zero", "status"] == "FAILED" and "every learning rate is 0" in frame.loc["zero", "error"]
    assert frame.loc["ok", "status"] == "FINISHED" and frame.loc["huge", "diverged"]
    assert len(_children(sqlite_uri)) == 3, "sync made a second run for a trial"
