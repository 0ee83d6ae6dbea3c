"""Worker side: one child MLflow run per trial, written from wherever Ray runs the trial.

`TrialLogger` carries only strings and a number so that it pickles into any Ray worker; the MLflow client is made
(and cached) in the process that uses it. Everything goes through `MlflowClient` with explicit ids, never
the fluent API, whose global state (`MLFLOW_EXPERIMENT_ID`) leaks between searches.

A store outage never fails a trial (`tracking.retry`): records the store did not take are kept in this
process (`_PENDING`) and re-sent, oldest first, by the next call that reaches it; whatever is still missing
when the search ends is restored from Ray's results by `tunetl sync`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetl.records import (
    BEST_METRIC,
    DIVERGED_TAG,
    EPOCHS_RUN,
    ERROR_TAG,
    MAX_TAG_CHARS,
    ORPHAN_TAG,
    PARENT_TAG,
    RETRIED_ERROR_TAG,
    STOPPED_EARLY_TAG,
    TRIAL_ID_TAG,
)
from tunetl.tracking.retry import StoreRefused, StoreUnavailable, call, configured_wait_s, store_down, warn
from tunetl.tracking.uri import redact, sqlite_file

if TYPE_CHECKING:
    from mlflow import MlflowClient

_MAX_PARAM_CHARS = 6000
_MAX_PARAMS_PER_BATCH = 100
_MAX_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 900
_STATUSES = ("FINISHED", "FAILED", "KILLED")


def _init_lock_path(tracking_uri: str) -> Path | None:
    """The lock that serialises creating a SQLite store's tables, or None for other stores."""
    db = sqlite_file(tracking_uri)
    if db is None:
        return None
    digest = hashlib.sha256(str(db.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"tunetl-sqlite-init-{digest}.lock"


@lru_cache(maxsize=16)
def client_for(tracking_uri: str) -> MlflowClient:
    """One client per URI and process (a SQLite store sets up its engine once).

    MLflow creates a new SQLite file's tables on first use without a lock, so two `tunetl run`s
    starting on one new file crashed with "table ... already exists"; the first client of each
    process is made under a file lock (beside MLflow's own in the temp folder: one machine).
    """
    from filelock import FileLock
    from mlflow import MlflowClient

    # MLflow prints "View run NAME at: URL" for every run it ends: one line per trial, and the URL keeps any
    # `user:password@` of the tracking URI. Off in tunetl's processes unless the user set it.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    lock = _init_lock_path(tracking_uri)
    if lock is None:
        return MlflowClient(tracking_uri=tracking_uri)
    with FileLock(str(lock), timeout=300):
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


def log_entities(client: MlflowClient, run_id: str, *, params: Sequence[Any] = (), metrics: Sequence[Any] = ()) -> None:
    """MLflow `Param`s and `Metric`s in as few `log_batch` calls as its per-call limits allow."""
    for start in range(0, len(params), _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[start : start + _MAX_PARAMS_PER_BATCH])
    for start in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + _MAX_METRICS_PER_BATCH])


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """All params in one `log_batch` call (more only beyond MLflow's 100-per-batch limit)."""
    from mlflow.entities import Param

    log_entities(client, run_id, params=[Param(str(k), encode_param(v)) for k, v in params.items()])


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


@dataclass
class _Pending:
    """What the store has not taken yet for one run: params, metrics, tags, then the end of the run."""

    params: list[Any] = field(default_factory=list)
    metrics: list[Any] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    status: str | None = None

    def empty(self) -> bool:
        return not (self.params or self.metrics or self.tags or self.status)


#: (tracking URI, run id) -> records kept through an outage, in this process, oldest run first.
_PENDING: dict[tuple[str, str], _Pending] = {}


@dataclass(frozen=True)
class TrialLogger:
    """Writes one trial's child run under the search's parent run.

    `wait_s`: how long (from the start of an outage) creating, finding or ending a run waits for the
    store to come back before the trial goes on without it (read where the logger is made: the driver).
    """

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    wait_s: float = field(default_factory=configured_wait_s)

    def _client(self) -> MlflowClient:
        return client_for(self.tracking_uri)

    def _call(self, fn: Any, what: str, wait_s: float = 0.0) -> Any:
        return call(fn, what=what, where=redact(self.tracking_uri), wait_s=wait_s)

    def _pending(self, run_id: str) -> _Pending:
        return _PENDING.setdefault((self.tracking_uri, run_id), _Pending())

    def _deliver(self, fn: Any, what: str, run_id: str, wait_s: float) -> None:
        """One write; a write the store refuses is dropped with a warning, an unreachable store raises."""
        try:
            self._call(fn, what, wait_s)
        except StoreRefused as err:
            warn(f"{err}; dropped that write to run {run_id}")

    def _send(self, run_id: str, p: _Pending, wait_s: float) -> None:
        """Everything `p` holds, in order; what the store took leaves `p` at once (a retry re-sends the rest)."""
        from mlflow.entities import RunTag

        client = self._client()
        for kind, held, size in (("params", p.params, _MAX_PARAMS_PER_BATCH),
                                 ("metrics", p.metrics, _MAX_METRICS_PER_BATCH)):
            while held:
                batch = held[:size]
                self._deliver(lambda: client.log_batch(run_id, **{kind: batch}), f"a trial's {kind}", run_id, wait_s)
                del held[: len(batch)]
        while p.tags:  # apart from the metrics: a refused tag must not take an epoch with it
            tags = dict(list(p.tags.items())[:_MAX_TAGS_PER_BATCH])
            entities = [RunTag(k, v) for k, v in tags.items()]
            self._deliver(lambda: client.log_batch(run_id, tags=entities), "a trial's tags", run_id, wait_s)
            for key in tags:
                if p.tags.get(key) == tags[key]:
                    del p.tags[key]
        if p.status is not None:
            status = p.status
            self._deliver(lambda: client.set_terminated(run_id, status=status), "the end of a trial's run", run_id,
                          wait_s)
            p.status = None

    def flush(self, wait_s: float = 0.0) -> bool:
        """Re-send what this process holds for this store, oldest run first; True when nothing is left."""
        for key in [k for k in _PENDING if k[0] == self.tracking_uri]:
            try:
                self._send(key[1], _PENDING[key], wait_s)
            except StoreUnavailable:
                return False
            _PENDING.pop(key, None)
        return True

    def start(self, params: dict[str, Any], tags: dict[str, str] | None = None) -> str | None:
        """Create the child run (tagged with its parent), log its params; return its run id.

        None when the store stayed unreachable for `wait_s`: the trial trains on without a run and
        `tunetl sync` creates it later from Ray's results.
        """
        from mlflow.entities import Param

        all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        all_tags[PARENT_TAG] = self.parent_run_id
        trial_id = all_tags.get(TRIAL_ID_TAG)

        def create() -> str:
            # A create that failed in transit may still have landed: look before creating again.
            if trial_id and store_down(redact(self.tracking_uri)):
                found = self._find(trial_id)
                if found:
                    return found
            run = self._client().create_run(self.experiment_id, tags=all_tags, run_name=all_tags.get("mlflow.runName"))
            return str(run.info.run_id)

        try:
            run_id: str = self._call(create, "a new trial run", self.wait_s)
        except (StoreUnavailable, StoreRefused) as err:
            warn(f"{err}; the trial trains on without an MLflow run (`tunetl sync` creates it from Ray's results)")
            return None
        if params:
            self._pending(run_id).params.extend(Param(str(k), encode_param(v)) for k, v in params.items())
            if not self.flush(self.wait_s):
                warn(f"the params of run {run_id} are kept to re-send (`tunetl sync` also restores them)")
        return run_id

    def _find(self, trial_id: str) -> str | None:
        runs = self._client().search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`{TRIAL_ID_TAG}` = '{trial_id}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def find_run(self, trial_id: str) -> str | None:
        """The child run a Tune trial already has (after a retry or a resume), so it is never duplicated.

        None also when the store stayed unreachable for `wait_s` (said on stderr).
        """
        try:
            found: str | None = self._call(lambda: self._find(trial_id), "a lookup of a trial's run", self.wait_s)
        except (StoreUnavailable, StoreRefused) as err:
            warn(f"{err}; could not look up the run of trial {trial_id}")
            return None
        return found

    def reopen(self, run_id: str, tags: dict[str, str]) -> int:
        """Mark a retried or resumed trial's run RUNNING again (the driver may have closed it as KILLED);
        return the last epoch it has metrics for, so that epochs redone from an older checkpoint are
        not logged twice.

        The error of the failed attempt moves to `tunetl.retried_error`: `tunetl.error` is kept for runs
        that end FAILED.
        """
        # An end kept from an earlier attempt in this process must not close the run again.
        self._pending(run_id).status = None
        try:
            return int(self._call(lambda: self._reopen(run_id, tags), "the reopening of a trial's run", self.wait_s))
        except (StoreUnavailable, StoreRefused) as err:
            warn(f"{err}; run {run_id} keeps its earlier status until `tunetl sync`")
            return 0

    def _reopen(self, run_id: str, tags: dict[str, str]) -> int:
        client = self._client()
        known = client.get_run(run_id).data.tags
        error = known.get(ERROR_TAG)
        self.set_tags(run_id, {**tags, **({RETRIED_ERROR_TAG: error} if error else {})})
        for stale in (ERROR_TAG, ORPHAN_TAG):
            if stale in known:
                client.delete_tag(run_id, stale)
        client.update_run(run_id, status="RUNNING")
        return self._last_epoch(run_id)

    def _last_epoch(self, run_id: str) -> int:
        return max((m.step for m in self._client().get_metric_history(run_id, "val_acc")), default=0)

    def last_epoch(self, run_id: str) -> int:
        """The last epoch the run has metrics for; 0 when the store cannot say (said on stderr)."""
        try:
            return int(self._call(lambda: self._last_epoch(run_id), "a read of a trial's epochs", self.wait_s))
        except (StoreUnavailable, StoreRefused) as err:
            warn(f"{err}; could not read the epochs of run {run_id}")
            return 0

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Tags on the run; kept and re-sent if the store is down (never raises)."""
        self._pending(run_id).tags.update({str(k): str(v) for k, v in tags.items()})
        self.flush()

    def log_epoch(self, run_id: str, epoch: int, metrics: dict[str, float], send: bool = True) -> None:
        """One epoch's metrics (val_acc, val_loss, train_acc, train_loss) at step=epoch, and `epochs_run`
        = epoch, so a query reads how far a trial got from the run itself, not from a metric history.

        Never waits on a store that is down and never raises: the metrics are kept, with their
        original timestamps, and go with the next call that reaches the store. `send=False` only keeps
        them, for the caller's next `flush` (several epochs of a run then go in one `log_batch`).
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, int(epoch)) for k, v in metrics.items() if v is not None]
        items.append(Metric(EPOCHS_RUN, float(epoch), now, int(epoch)))
        self._pending(run_id).metrics.extend(items)
        if send:
            self.flush()

    def finish(
        self,
        run_id: str,
        *,
        status: str,
        best_val_acc: float | None,
        stopped_early: bool = False,
        error: str | None = None,
        diverged: bool = False,
    ) -> None:
        """Record the outcome (best_val_acc, stopped-early and diverged flags, error text) and end the run.

        Sends what the process still holds for the store first, waiting up to `wait_s` from the start
        of an outage; never raises for the store (what stays unsent is said on stderr).
        """
        from mlflow.entities import Metric

        check_status(status)
        pending = self._pending(run_id)
        if self._closed_as(run_id, status):
            # Closed already (by the trial, or before a resume): its end time and outcome stay as they are.
            pending.status = None
            if not self.flush(self.wait_s):
                warn(f"records of run {run_id} are kept to re-send (`tunetl sync` also restores them)")
            return
        run_tags = {STOPPED_EARLY_TAG: "true" if stopped_early else "false"}
        if diverged:
            run_tags[DIVERGED_TAG] = "true"
        if status == "FAILED":
            # The trial's own traceback (its tag) wins; `error` is what the driver knows (a killed worker).
            known = pending.tags.get(ERROR_TAG) or self._known_error(run_id) or error
            run_tags[ERROR_TAG] = (known or "unknown error")[:MAX_TAG_CHARS]
        if best_val_acc is not None and math.isfinite(best_val_acc):
            pending.metrics.append(Metric("best_val_acc", float(best_val_acc), int(time.time() * 1000), 0))
        pending.tags.update(run_tags)
        pending.status = status
        if not self.flush(self.wait_s):
            warn(f"run {run_id} is not closed in MLflow yet: its records are kept to re-send with this "
                 "process's next call, and `tunetl sync --storage DIR` restores them from Ray's results")

    def _closed_as(self, run_id: str, status: str) -> bool:
        """Whether the run already ended with `status` (a FINISHED one with its `best_val_acc`); False when
        the store cannot say."""
        try:
            run = self._call(lambda: self._client().get_run(run_id), "a read of a trial's run")
        except (StoreUnavailable, StoreRefused):
            return False
        if run.info.status != status or not run.info.end_time:
            return False
        return status != "FINISHED" or BEST_METRIC in run.data.metrics

    def _known_error(self, run_id: str) -> str | None:
        try:
            run = self._call(lambda: self._client().get_run(run_id), "a read of a trial's run")
        except (StoreUnavailable, StoreRefused):
            return None
        return run.data.tags.get(ERROR_TAG)  # type: ignore[no-any-return]
