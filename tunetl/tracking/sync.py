"""`tunetl sync`: write into MLflow whatever a search's Ray results hold and MLflow lacks.

After a tracking outage a trial may have no run (its `start` never reached the store), a run may lack
epochs, params or its `best_val_acc`, or still be RUNNING. Ray's results (`tunetl.search.results`) hold
all of it, so this module compares the two and only adds: a child run per trial that has none (under the
search's parent run, found by `tunetl.trial_id`), the params and epochs a run is missing, and the end of
runs whose trial ended. It never changes a value MLflow already has, so a second sync changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunetl.records import (
    DIVERGED_TAG,
    EPOCH_METRICS,
    EPOCHS_RUN,
    ERROR_TAG,
    MAX_TAG_CHARS,
    PARENT_TAG,
    STOPPED_EARLY_TAG,
    STORAGE_TAG,
    SYNCED_FROM_TAG,
    TRIAL_ID_TAG,
)
from tunetl.tracking.recorder import get_or_create_experiment
from tunetl.tracking.trial_logger import client_for, encode_param, log_entities

if TYPE_CHECKING:
    from tunetl.search.results import StoredSearch, StoredTrial

_PAGE = 1000


@dataclass
class SyncReport:
    """What one sync of one search wrote (all zeros: MLflow already had everything)."""

    search: str
    experiment: str
    parent_run_id: str
    trials: int = 0
    runs_created: int = 0
    params_logged: int = 0
    metrics_logged: int = 0
    runs_closed: int = 0
    parent_created: bool = False
    parent_closed: bool = False
    #: Trials with more than one child run (left as they are; the first is kept in sync).
    duplicates: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.runs_created or self.params_logged or self.metrics_logged or self.runs_closed
                    or self.parent_created or self.parent_closed)


def _parent(client: Any, experiment_id: str, search: StoredSearch) -> tuple[str, bool]:
    """The search's parent run (and whether it was made now): a stand-in, tagged with the original id,
    when the store never had it."""
    from mlflow.exceptions import MlflowException

    original = search.parent_run_id
    if original:
        try:
            run = client.get_run(original)
            if run.info.experiment_id == experiment_id:
                return original, False
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    marker = original or str(search.path)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{SYNCED_FROM_TAG}` = '{marker}'", max_results=1)
    if found:
        return str(found[0].info.run_id), False
    run = client.create_run(
        experiment_id,
        tags={SYNCED_FROM_TAG: marker, STORAGE_TAG: str(search.path), "mlflow.runName": search.name},
        run_name=search.name,
    )
    return str(run.info.run_id), True


def _children(client: Any, experiment_id: str, parent: str) -> dict[str, list[Any]]:
    """trial id -> the parent's child runs tagged with it, oldest first."""
    out: dict[str, list[Any]] = {}
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'", max_results=_PAGE,
            page_token=token, order_by=["attributes.start_time ASC"],
        )
        for run in page:
            trial_id = run.data.tags.get(TRIAL_ID_TAG)
            if trial_id:
                out.setdefault(trial_id, []).append(run)
        token = page.token
        if not token:
            return out


def _outcome_tags(trial: StoredTrial) -> dict[str, str]:
    if not trial.finished:
        return {}
    tags = {STOPPED_EARLY_TAG: "true" if trial.stopped_early else "false"}
    if trial.diverged:
        tags[DIVERGED_TAG] = "true"
    if trial.status == "FAILED":
        tags[ERROR_TAG] = (trial.error or "unknown error")[:MAX_TAG_CHARS]
    return tags


def _missing_metrics(client: Any, run: Any, trial: StoredTrial) -> list[Any]:
    """The epochs' metrics (and `best_val_acc`) Ray has and the run lacks, at their original step and time."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    out = []
    for name in EPOCH_METRICS:
        epochs = [e for e in trial.epochs if name in e]
        if not epochs:
            continue
        have = {m.step for m in client.get_metric_history(run.info.run_id, name)} if name in run.data.metrics else set()
        for e in epochs:
            if e["epoch"] not in have:
                stamp = int(float(e["timestamp"]) * 1000) if e.get("timestamp") is not None else now
                out.append(Metric(name, float(e[name]), stamp, int(e["epoch"])))
                if name == "val_acc":
                    out.append(Metric(EPOCHS_RUN, float(e["epoch"]), stamp, int(e["epoch"])))
    if trial.finished and trial.best_val_acc is not None and "best_val_acc" not in run.data.metrics:
        out.append(Metric("best_val_acc", float(trial.best_val_acc), now, 0))
    return out


def _sync_trial(client: Any, experiment_id: str, parent: str, trial: StoredTrial, runs: list[Any],
                report: SyncReport) -> None:
    from mlflow.entities import Param, RunTag

    if len(runs) > 1:
        report.duplicates += 1
    if runs:
        run = runs[0]
    else:
        tags = {**trial.tags, PARENT_TAG: parent, TRIAL_ID_TAG: trial.trial_id}
        run = client.create_run(experiment_id, tags=tags, run_name=tags.get("mlflow.runName"))
        report.runs_created += 1
    run_id = run.info.run_id
    params = [Param(str(k), encode_param(v)) for k, v in trial.params.items() if str(k) not in run.data.params]
    metrics = _missing_metrics(client, run, trial)
    log_entities(client, run_id, params=params, metrics=metrics)
    report.params_logged += len(params)
    report.metrics_logged += len(metrics)
    if trial.finished and run.info.status != trial.status:
        tags = [RunTag(k, v) for k, v in _outcome_tags(trial).items() if run.data.tags.get(k) != v]
        if tags:
            client.log_batch(run_id, tags=tags)
        client.set_terminated(run_id, status=trial.status)
        report.runs_closed += 1


def sync_search(search: StoredSearch, tracking_uri: str) -> SyncReport:
    """Bring MLflow at `tracking_uri` up to Ray's record of `search`; idempotent."""
    client = client_for(tracking_uri)
    experiment_id = get_or_create_experiment(tracking_uri, search.experiment)
    parent, created = _parent(client, experiment_id, search)
    report = SyncReport(search.name, search.experiment, parent, trials=len(search.trials), parent_created=created)
    children = _children(client, experiment_id, parent)
    for trial in search.trials:
        _sync_trial(client, experiment_id, parent, trial, children.get(trial.trial_id, []), report)
    if search.finished and search.trials and client.get_run(parent).info.status == "RUNNING":
        ok = any(t.status == "FINISHED" for t in search.trials)
        client.set_terminated(parent, status="FINISHED" if ok else "FAILED")
        report.parent_closed = True
    return report
