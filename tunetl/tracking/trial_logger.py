"""Worker side: one child MLflow run per trial, written from wherever Ray runs the trial.

`TrialLogger` carries only strings so that it pickles into any Ray worker; the MLflow client is made
(and cached) in the process that uses it. Everything goes through `MlflowClient` with explicit ids, never
the fluent API, whose global state (`MLFLOW_EXPERIMENT_ID`) leaks between searches.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

PARENT_TAG = "mlflow.parentRunId"
STOPPED_EARLY_TAG = "tunetl.stopped_early"
ERROR_TAG = "tunetl.error"
NODE_TAG = "tunetl.node"
TRIAL_ID_TAG = "tunetl.trial_id"
DIVERGED_TAG = "tunetl.diverged"
MAX_ERROR_CHARS = 5000
_MAX_PARAM_CHARS = 6000
_MAX_PARAMS_PER_BATCH = 100
_STATUSES = ("FINISHED", "FAILED", "KILLED")


@lru_cache(maxsize=16)
def client_for(tracking_uri: str) -> MlflowClient:
    """One client per URI and process (a SQLite store sets up its engine once)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def encode_param(value: Any) -> str:
    """Param text that `query.restore_value` reads back: lists/tuples as JSON, None as "None"."""
    if isinstance(value, (list, tuple)):
        text = json.dumps(list(value))
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return text[:_MAX_PARAM_CHARS]


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """All params in one `log_batch` call (more only beyond MLflow's 100-per-batch limit)."""
    from mlflow.entities import Param

    items = [Param(str(k), encode_param(v)) for k, v in params.items()]
    for start in range(0, len(items), _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[start : start + _MAX_PARAMS_PER_BATCH])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float | None], step: int) -> None:
    """Metrics at one step in one `log_batch` call; None values are skipped."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if v is not None]
    if items:
        client.log_batch(run_id, metrics=items)


def check_status(status: str) -> str:
    """An MLflow terminal status, or ValueError naming the allowed ones."""
    if status not in _STATUSES:
        raise ValueError(f"run status {status!r} is not one of {', '.join(_STATUSES)}")
    return status


@dataclass(frozen=True)
class TrialLogger:
    """Writes one trial's child run under the search's parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    def _client(self) -> MlflowClient:
        return client_for(self.tracking_uri)

    def start(self, params: dict[str, Any], tags: dict[str, str] | None = None) -> str:
        """Create the child run (tagged with its parent), log its params; return its run id."""
        all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        all_tags[PARENT_TAG] = self.parent_run_id
        run = self._client().create_run(
            self.experiment_id, tags=all_tags, run_name=all_tags.get("mlflow.runName")
        )
        run_id: str = run.info.run_id
        if params:
            log_params(self._client(), run_id, params)
        return run_id

    def find_run(self, trial_id: str) -> str | None:
        """The child run a Tune trial already has (after a retry or a resume), so it is never duplicated."""
        runs = self._client().search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._client().log_batch(run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])

    def log_epoch(self, run_id: str, epoch: int, metrics: dict[str, float]) -> None:
        """One epoch's metrics (val_acc, val_loss, train_acc, train_loss) at step=epoch."""
        log_metrics(self._client(), run_id, metrics, step=epoch)

    def finish(
        self,
        run_id: str,
        *,
        status: str,
        best_val_acc: float | None,
        stopped_early: bool = False,
        error: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Record the outcome (best_val_acc, stopped-early flag, error text) and end the run."""
        from mlflow.entities import Metric, RunTag

        check_status(status)
        client = self._client()
        run_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        run_tags[STOPPED_EARLY_TAG] = "true" if stopped_early else "false"
        if status == "FAILED":
            known = client.get_run(run_id).data.tags.get(ERROR_TAG)
            run_tags[ERROR_TAG] = (error or known or "unknown error")[:MAX_ERROR_CHARS]
        metrics = []
        if best_val_acc is not None and math.isfinite(best_val_acc):
            metrics.append(Metric("best_val_acc", float(best_val_acc), int(time.time() * 1000), 0))
        client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in run_tags.items()])
        client.set_terminated(run_id, status=status)
