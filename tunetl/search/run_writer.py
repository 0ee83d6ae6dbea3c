"""Each trial's MLflow run, written on the driver from the trial's Tune reports.

Workers never import mlflow (about 2 s and 120 MB per worker) nor wait on the store: every result passes
through the driver anyway, so this Tune callback creates the child run from a trial's first report,
logs each epoch's metrics and closes the run when Tune says the trial ended. The writes run on one
background thread in the order Tune delivered them, so a slow or unreachable store never stalls Tune's
loop (training goes on through an outage); `drain` waits for them before anything reads the runs.

What a driver killed with writes still queued did not write, its restarted successor fills in: a
restored attempt's first report carries the epochs of the checkpoint it continues from, and the epochs
after it are reported again. Tune keeps this callback in its experiment state (it is pickled with the
Tuner), so it holds only picklable settings; the thread and queue are made again where it is unpickled.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ray import tune

from tunetl.params import SEARCH_PARAMS
from tunetl.records import (
    DIVERGED_KEY,
    DONOR_KEY,
    ERROR_TAG,
    HISTORY_KEY,
    MAX_TAG_CHARS,
    PBT_DONOR_TAG,
    RECORD_KEY,
    RESTORED_EPOCH_TAG,
    RESTORED_KEY,
    RUN_ID_KEY,
    TRACKED_KEY,
    TRIAL_ID_TAG,
)
from tunetl.search.ledger import TrialLedger, trial_error_text
from tunetl.search.space import SearchSpace
from tunetl.search.tune_space import trial_params, trial_seed


class TrialRecorder(Protocol):
    """What the writer needs from the tracking layer (implemented by `tunetl.tracking.TrialLogger`); none
    of these raises for the store: an unreachable one is said on stderr and its records are kept."""

    def start(self, params: dict[str, Any], tags: dict[str, str] | None = None) -> str | None: ...
    def find_run(self, trial_id: str) -> str | None: ...
    def log_epoch(self, run_id: str, epoch: int, metrics: dict[str, float], send: bool = True) -> None: ...
    def flush(self, wait_s: float = 0.0) -> bool: ...
    def set_tags(self, run_id: str, tags: dict[str, str]) -> None: ...
    def reopen(self, run_id: str, tags: dict[str, str]) -> int: ...
    def last_epoch(self, run_id: str) -> int: ...
    def finish(
        self,
        run_id: str,
        *,
        status: str,
        best_val_acc: float | None,
        stopped_early: bool = False,
        error: str | None = None,
        diverged: bool = False,
    ) -> None: ...


@dataclass(frozen=True)
class EarlyFailure:
    """What the driver knows of a trial that failed before its first report (no record reached it)."""

    space: SearchSpace
    backbone: str
    seeds: list[int]
    source: str
    epochs: int

    def params(self, config: dict[str, Any]) -> dict[str, Any]:
        try:
            raw = {k: v for k, v in trial_params(self.space, config).items() if k in SEARCH_PARAMS}
        except Exception:  # noqa: BLE001 - the parameters themselves may be what failed
            raw = {}
        return {**raw, "backbone": raw.get("backbone") or self.backbone, "seed": trial_seed(config, self.seeds),
                "source": self.source, "epochs": self.epochs}


#: The writers of this process's searches (a search's callback may be one Tune unpickled on resume).
_WRITERS: weakref.WeakSet[RunWriter] = weakref.WeakSet()
_RUNTIME = ("_jobs", "_thread", "_lock", "_held_since")
#: Epochs are held at most this long and then sent, each run's in one write: with many trials, one
#: store round trip per run and second instead of one per epoch.
HOLD_S = 1.0


@dataclass
class _Trial:
    """One trial's run as the writer knows it."""

    run_id: str | None = None
    #: The last epoch its run has metrics for (epochs reported again after a restore are not logged twice).
    logged: int = 0


class RunWriter(tune.Callback):
    """Creates, logs and closes each trial's child run from the driver (see the module docstring)."""

    def __init__(
        self, recorder: TrialRecorder, epochs: int, ledger: TrialLedger | None = None,
        early: EarlyFailure | None = None,
    ) -> None:
        self.recorder, self.epochs, self.ledger, self.early = recorder, epochs, ledger, early
        self._trials: dict[str, _Trial] = {}
        self._runtime()

    def _runtime(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: When the oldest epoch not yet sent was logged (None: nothing held).
        self._held_since: float | None = None
        _WRITERS.add(self)  # also one that writes nothing: a resumed search whose trials all ended

    def __getstate__(self) -> dict[str, Any]:
        # The trial -> run map travels through `get_state`, Tune's channel for a callback's state.
        return {k: v for k, v in self.__dict__.items() if k not in (*_RUNTIME, "_trials")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A `RunCloser` pickled by an earlier tunetl holds only `recorder` and `epochs`.
        self.__dict__.update({"ledger": None, "early": None, "_trials": {}, **state})
        self._runtime()

    def get_state(self) -> dict[str, Any] | None:
        """Trial id -> run id, saved in Tune's experiment state, so a resumed driver knows the runs."""
        with self._lock:
            return {"runs": {k: t.run_id for k, t in self._trials.items() if t.run_id}}

    def set_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            for trial_id, run_id in state.get("runs", {}).items():
                self._trials.setdefault(str(trial_id), _Trial(str(run_id)))

    # Tune's callbacks (the driver's loop): queue the write and return.

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        text = result.get(RECORD_KEY)
        if text:
            self._submit(self._open, trial.trial_id, json.loads(text))
        tracked = result.get(TRACKED_KEY)
        if tracked:
            self._submit(self._log, trial.trial_id, int(result["epoch"]), dict(tracked))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        res = trial.last_result or {}
        diverged = bool(res.get(DIVERGED_KEY, False))
        stopped = int(res.get("epoch", 0)) < self.epochs and not diverged
        self._submit(self._finish, trial.trial_id, res.get(RUN_ID_KEY), res.get("best_val_acc"), stopped, diverged)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Kept as `tunetl.error` until the retry reopens the run, which moves it to `tunetl.retried_error`.
        self._submit(self._tag_error, trial.trial_id, trial_error_text(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        res = trial.last_result or {}
        error, config = trial_error_text(trial), dict(trial.config or {})
        self._submit(self._failed, trial.trial_id, res.get(RUN_ID_KEY), res.get("best_val_acc"), error, config)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.drain()

    # The writer thread.

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="tunetl-run-writer", daemon=True)
                self._thread.start()
        self._jobs.put((fn, args))

    def _work(self) -> None:
        while True:
            held = self._held_since
            try:
                fn, args = self._jobs.get(timeout=None if held is None else max(0.0, held + HOLD_S - time.monotonic()))
            except queue.Empty:
                self._send_held()
                continue
            try:
                fn(*args)
                if self._held_since is not None and time.monotonic() - self._held_since >= HOLD_S:
                    self._send_held()
            except Exception as err:  # noqa: BLE001 - one bad write must not stop the others
                print(f"[tunetl] warning: a trial's MLflow record was not written ({type(err).__name__}: {err}); "
                      "`tunetl sync --storage DIR` writes it from Ray's results", file=sys.stderr, flush=True)
            finally:
                self._jobs.task_done()

    def _send_held(self) -> None:
        self._held_since = None
        self.recorder.flush()

    def drain(self) -> None:
        """Wait until every write queued so far is done and sent (each is bounded by the store's wait)."""
        if self._thread is not None:
            self._jobs.put((self._send_held, ()))
            self._jobs.join()

    def known_run(self, trial_id: str) -> str | None:
        """The run this writer wrote the trial to (or Tune's saved state says it did)."""
        with self._lock:
            known = self._trials.get(trial_id)
        return known.run_id if known is not None else None

    def run_of(self, trial_id: str) -> str | None:
        """The trial's run id: the one this writer knows, else the one MLflow has for it."""
        return self.known_run(trial_id) or self.recorder.find_run(trial_id)

    def _trial(self, trial_id: str) -> _Trial:
        with self._lock:
            return self._trials.setdefault(trial_id, _Trial())

    def _open(self, trial_id: str, record: dict[str, Any]) -> None:
        """A trial attempt's first report: create its run, or reopen the one it has (a retry, a resume)."""
        t = self._trial(trial_id)
        run_id = t.run_id or self.recorder.find_run(trial_id)
        restored = int(record.get(RESTORED_KEY) or 0)
        donor = record.get(DONOR_KEY)
        if run_id is None:
            run_id = self.recorder.start(record["params"], tags=record["tags"])
            logged = 0
        elif restored >= self.epochs and not donor:
            # Restored from its last epoch: nothing trains again, and a run closed already stays as it is.
            logged = self._fill(run_id, record, self.recorder.last_epoch(run_id))
        else:
            tags = {RESTORED_EPOCH_TAG: str(restored)}
            if donor:
                tags[PBT_DONOR_TAG] = f"{donor}@{restored}"
            logged = self.recorder.reopen(run_id, tags)
            # After PBT's exploit the epochs past the donor's checkpoint are this trial's own from here on.
            logged = restored if donor else self._fill(run_id, record, logged)
        with self._lock:
            t.run_id, t.logged = run_id, logged
        if run_id and self.ledger is not None:
            self.ledger.note_run(trial_id, run_id)

    def _fill(self, run_id: str, record: dict[str, Any], logged: int) -> int:
        """Log the restored checkpoint's epochs that the run lacks; return the last epoch it now has."""
        for entry in record.get(HISTORY_KEY) or []:
            epoch = int(entry["epoch"])
            if epoch > logged:
                self.recorder.log_epoch(run_id, epoch, {k: float(v) for k, v in entry.items() if k != "epoch"})
                logged = epoch
        return logged

    def _log(self, trial_id: str, epoch: int, metrics: dict[str, float]) -> None:
        t = self._trial(trial_id)
        if t.run_id is None or epoch <= t.logged:
            return
        self.recorder.log_epoch(t.run_id, epoch, metrics, send=False)
        t.logged = epoch
        if self._held_since is None:
            self._held_since = time.monotonic()

    def _finish(self, trial_id: str, old_run: str | None, best: float | None, stopped: bool, diverged: bool) -> None:
        run_id = old_run or self.run_of(trial_id)
        if run_id:
            self.recorder.finish(run_id, status="FINISHED", best_val_acc=best, stopped_early=stopped,
                                 diverged=diverged)

    def _tag_error(self, trial_id: str, error: str) -> None:
        run_id = self.run_of(trial_id)
        if run_id:
            self.recorder.set_tags(run_id, {ERROR_TAG: error[-MAX_TAG_CHARS:]})

    def _failed(
        self, trial_id: str, old_run: str | None, best: float | None, error: str, config: dict[str, Any],
    ) -> None:
        run_id = old_run or self.run_of(trial_id)
        if run_id is None and self.early is not None:
            # Failed before its first report: without this the trial would have no MLflow run at all.
            run_id = self.recorder.start(self.early.params(config), tags={TRIAL_ID_TAG: trial_id, ERROR_TAG: error})
            if run_id and self.ledger is not None:
                self.ledger.note_run(trial_id, run_id)
        if run_id:
            self.recorder.finish(run_id, status="FAILED", best_val_acc=best, error=error)


@dataclass
class WrittenRuns:
    """The runs this process's searches wrote, once every queued write is done."""

    writers: list[RunWriter] = field(default_factory=list)

    def run_of(self, trial_id: str) -> str | None:
        """The trial's run id, asked of MLflow only when no writer knows it."""
        for writer in self.writers:
            run_id = writer.known_run(trial_id)
            if run_id:
                return run_id
        return self.writers[-1].recorder.find_run(trial_id) if self.writers else None


def drain_writers() -> WrittenRuns:
    """Wait for the writes of every writer of this process, and forget the writers (their search ended)."""
    writers = list(_WRITERS)
    for writer in writers:
        writer.drain()
    _WRITERS.clear()
    return WrittenRuns(writers)
