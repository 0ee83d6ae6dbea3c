"""Driver side: the experiment and the parent run of one `tunetl run`."""

from __future__ import annotations

import math
from typing import Any

from tunetl.records import MAX_TAG_CHARS, ORPHAN_TAG, PARENT_TAG
from tunetl.tracking.retry import StoreRefused, StoreUnavailable, call, configured_wait_s
from tunetl.tracking.trial_logger import (
    TrialLogger,
    check_status,
    client_for,
    log_metrics,
    log_params,
)
from tunetl.tracking.uri import TrackingError, TrackingUnavailable, redact, sqlite_file


def _artifact_root(tracking_uri: str, name: str) -> str | None:
    """Artifacts of a SQLite store live beside the database (`<db dir>/mlartifacts/<name>`), not in
    `./mlruns` of whatever folder the first run happened to start in."""
    db = sqlite_file(tracking_uri)
    if db is None:
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return (db.parent / "mlartifacts" / safe).resolve().as_uri()


def get_or_create_experiment(tracking_uri: str, name: str) -> str:
    """Id of the active experiment `name`, created if missing (a concurrent creator is tolerated)."""
    from mlflow.exceptions import MlflowException

    client = client_for(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return str(client.create_experiment(name, artifact_location=_artifact_root(tracking_uri, name)))
        except MlflowException:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} at {redact(tracking_uri)} is deleted; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` or choose another "
            "--name"
        )
    return str(experiment.experiment_id)


class SearchRecorder:
    """One per search: owns the experiment id and the parent run, hands out `TrialLogger`s."""

    def __init__(self, tracking_uri: str, experiment_name: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.experiment_id: str = get_or_create_experiment(tracking_uri, experiment_name)
        self.parent_run_id: str | None = None

    def start_parent(self, params: dict[str, Any], tags: dict[str, str]) -> str:
        """Create the parent run for this search; return its id."""
        client = client_for(self.tracking_uri)
        str_tags = {str(k): str(v) for k, v in tags.items()}
        run = client.create_run(self.experiment_id, tags=str_tags, run_name=str_tags.get("mlflow.runName"))
        self.parent_run_id = run.info.run_id
        if params:
            log_params(client, self.parent_run_id, params)
        return self.parent_run_id

    def reopen_parent(self, run_id: str) -> None:
        """Continue an earlier search's parent run (resume): it is RUNNING again until `end_parent`."""
        client = client_for(self.tracking_uri)
        run = client.get_run(run_id)
        if run.info.experiment_id != self.experiment_id:
            raise TrackingError(f"run {run_id} belongs to another MLflow experiment than {self.experiment_name!r}")
        client.update_run(run_id, status="RUNNING")
        self.parent_run_id = run_id

    def set_parent_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        client_for(self.tracking_uri).log_batch(
            self._require_parent(), tags=[RunTag(str(k), str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()]
        )

    def end_parent(self, status: str = "FINISHED", summary: dict[str, float] | None = None) -> None:
        """Log the search summary (e.g. trial counts, best accuracy) and end the parent run.

        Re-sends first what the driver kept through an outage (child runs its Tune callback closed);
        a store still down after `TUNETL_TRACKING_WAIT_S` (60 s) raises TrackingUnavailable naming
        `tunetl sync`.
        """
        run_id = self._require_parent()
        check_status(status)
        client = client_for(self.tracking_uri)
        finite = {k: v for k, v in (summary or {}).items() if v is not None and math.isfinite(v)}

        def end() -> None:
            log_metrics(client, run_id, finite, step=0)
            client.set_terminated(run_id, status=status)

        self.trial_logger().flush(configured_wait_s())
        self._at_the_end(end, "the end of the search's parent run")

    def close_open_children(self, status: str, reason: str) -> int:
        """End this search's child runs still RUNNING, tagged `tunetl.orphan` with `reason`; return how many.

        After an interrupt they are the trials that were in flight (a resume reopens them); after a
        finished search they are runs of a killed driver that no restored trial took over.
        """
        from mlflow.entities import RunTag

        check_status(status)
        client = client_for(self.tracking_uri)
        flt = f"tags.`{PARENT_TAG}` = '{self._require_parent()}' and attributes.status = 'RUNNING'"

        def close() -> int:
            runs = client.search_runs([self.experiment_id], filter_string=flt, max_results=5000)
            for run in runs:
                client.log_batch(run.info.run_id, tags=[RunTag(ORPHAN_TAG, reason)])
                client.set_terminated(run.info.run_id, status=status)
            return len(runs)

        return int(self._at_the_end(close, "the closing of runs left open"))

    def _at_the_end(self, fn: Any, what: str) -> Any:
        """A driver call at the end of a search, through the same bounded wait as the trials' calls; a store
        still down after it is an error that names `tunetl sync` (Ray's storage holds the results)."""
        try:
            return call(fn, what=what, where=redact(self.tracking_uri), wait_s=configured_wait_s())
        except StoreUnavailable as err:
            raise TrackingUnavailable(
                f"{err}; the search's results are in Ray's storage: run `tunetl sync --storage DIR` "
                "once MLflow is back"
            ) from None
        except StoreRefused as err:
            raise TrackingError(str(err)) from None

    def trial_logger(self) -> TrialLogger:
        """A picklable logger that writes child runs under this search's parent run."""
        return TrialLogger(self.tracking_uri, self.experiment_id, self._require_parent())

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("SearchRecorder: call start_parent() before trial_logger()/end_parent()")
        return self.parent_run_id
