"""The driver's run writer on a real SQLite store, fed the reports a trial makes (no Ray needed): a driver
killed with writes still queued, and the search resumed by a new driver from Tune's pickled state."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from tunetl.records import HISTORY_KEY, RECORD_KEY, RESTORED_KEY, TRACKED_KEY, TRIAL_ID_TAG
from tunetl.search.faults import ENV, InjectedFault, maybe_fail
from tunetl.search.ledger import TrialLedger
from tunetl.search.run_writer import RunWriter
from tunetl.search.storage import Storage
from tunetl.tracking import SearchRecorder

EPOCHS = 6


def _metrics(epoch: int) -> dict[str, float]:
    return {"val_acc": epoch / 10, "val_loss": 1 - epoch / 10, "train_acc": 0.5, "train_loss": 0.5, "lr_factor": 1.0}


def _result(epoch: int, record: dict | None = None) -> dict:
    out = {"epoch": epoch, "best_val_acc": epoch / 10, TRACKED_KEY: _metrics(epoch)}
    if record is not None:
        out[RECORD_KEY] = json.dumps(record)
    return out


def _record(restored: int | None = None) -> dict:
    record = {"params": {"images_per_label": 5, "seed": 0}, "tags": {TRIAL_ID_TAG: "t1", "mlflow.runName": "t1"}}
    if restored is not None:
        record |= {RESTORED_KEY: restored, HISTORY_KEY: [{"epoch": e, **_metrics(e)} for e in range(1, restored + 1)]}
    return record


def test_a_resumed_writer_fills_in_the_epochs_a_killed_driver_never_wrote(sqlite_uri: str, tmp_path: Path) -> None:
    recorder = SearchRecorder(sqlite_uri, "writer")
    recorder.start_parent({}, {})
    ledger = TrialLedger(Storage(tmp_path), "search")
    first = RunWriter(recorder.trial_logger(), EPOCHS, ledger)
    trial = SimpleNamespace(trial_id="t1", last_result=None, config={})
    first.on_trial_result(0, [], trial, _result(1, _record()))
    first.on_trial_result(0, [], trial, _result(2))
    first.drain()
    # Tune's state, saved after epoch 4's checkpoint (the callback pickled, its map through get_state);
    # epochs 3-4 were never written.
    saved = pickle.dumps(first)
    state = first.get_state()
    run_id = first.run_of("t1")
    assert run_id and state == {"runs": {"t1": run_id}}

    second = pickle.loads(saved)  # a new driver resumes the search: the attempt restarts from epoch 4
    assert second.known_run("t1") is None
    second.set_state(state)
    assert second.known_run("t1") == run_id
    for epoch in range(5, EPOCHS + 1):
        second.on_trial_result(0, [], trial, _result(epoch, _record(restored=4) if epoch == 5 else None))
    trial.last_result = _result(EPOCHS)
    second.on_trial_complete(0, [], trial)
    second.drain()

    client = MlflowClient(sqlite_uri)
    runs = client.search_runs([recorder.experiment_id], filter_string=f"tags.`{TRIAL_ID_TAG}` = 't1'")
    assert [r.info.run_id for r in runs] == [run_id], "the resumed trial got a second run"
    steps = [m.step for m in client.get_metric_history(run_id, "val_acc")]
    assert steps == list(range(1, EPOCHS + 1))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["tunetl.restored_epoch"] == "4"
    assert run.data.params["images_per_label"] == "5" and run.data.metrics["best_val_acc"] == EPOCHS / 10
    assert json.loads((tmp_path / "search" / "tunetl_trials.json").read_text())["t1"]["run_id"] == run_id


def test_a_writer_pickled_by_an_earlier_version_still_closes_runs(sqlite_uri: str) -> None:
    recorder = SearchRecorder(sqlite_uri, "old")
    recorder.start_parent({}, {})
    logger = recorder.trial_logger()
    run_id = logger.start({"seed": 0}, tags={TRIAL_ID_TAG: "t9"})
    old = RunWriter.__new__(RunWriter)
    old.__setstate__({"recorder": logger, "epochs": 3})  # all that `RunCloser` held
    old.on_trial_complete(0, [], SimpleNamespace(trial_id="t9", last_result={"epoch": 2, "best_val_acc": 0.5},
                                                 config={}))
    old.drain()
    run = MlflowClient(sqlite_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["tunetl.stopped_early"] == "true"


def test_the_module_a_trial_must_not_import_is_an_injected_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, json.dumps([{"forbid_module": "pickle"}]))
    with pytest.raises(InjectedFault, match="imported pickle"):
        maybe_fail("t1", "label", 1)
    monkeypatch.setenv(ENV, json.dumps([{"forbid_module": "tunetl_no_such_module"}]))
    maybe_fail("t1", "label", 1)
