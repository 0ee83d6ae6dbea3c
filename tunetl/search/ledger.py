"""tunetl's own record of how each trial of a search ended (`tunetl_trials.json`), written on the driver.

Ray keeps trial statuses in its experiment state, whose trials are cloudpickled: reading it runs code from
whoever wrote the storage folder. `tunetl export --from-storage` and `tunetl sync` present themselves as
read tools for shared folders, so they read this JSON file, `result.json` and `params.json` instead, and
never unpickle anything. The callback also counts the trials still unfinished at each step of the
driver's loop, because Tune marks every trial TERMINATED when it cleans up after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from ray import tune

from tunetl.records import LEDGER_FILE, MAX_TAG_CHARS
from tunetl.search.storage import Storage

_ENDED = ("TERMINATED", "ERROR")
#: Trials not yet ended at the driver's last step (read by `runner.fit` after Tune returns).
LIVE: dict[str, int] = {"unfinished": 0}


def trial_error_text(trial: Any) -> str:
    """The error Tune recorded for a failed trial (its error.txt), else what Tune holds in memory."""
    candidates = [getattr(trial, "error_file", None)]  # the driver's copy, written before callbacks run
    if getattr(trial, "path", None):
        candidates.append(str(Path(trial.path) / "error.txt"))
    for candidate in candidates:
        file = Path(candidate) if candidate else None
        if file is not None and file.is_file():
            text = file.read_text(errors="replace").strip()
            if text:
                return text[-MAX_TAG_CHARS:]
    try:
        error = trial.get_error()
    except Exception:  # noqa: BLE001 - the text is a courtesy; a missing one must not break the driver
        error = None
    if error is not None and str(error).strip():
        return str(error)[-MAX_TAG_CHARS:]
    return "the trial's worker process died (killed, or out of memory) before it could report an error"


class TrialLedger(tune.Callback):
    """Writes each trial's end into the search folder; holds only picklable state (Tune keeps callbacks)."""

    def __init__(self, storage: Storage, run: str) -> None:
        self.storage, self.run = storage, run
        #: The ledger as written; read from storage once (a restored search continues it), then kept here.
        self._body: dict[str, Any] | None = None
        self._lock = threading.Lock()  # the run writer's thread notes run ids beside Tune's loop

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state: a restored ledger re-reads the file, which
        # may hold trials that ended after that snapshot.
        return {k: v for k, v in {**self.__dict__, "_body": None}.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        LIVE["unfinished"] = sum(1 for t in trials if str(t.status) not in _ENDED)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial.trial_id, {"status": "FINISHED", "error": None})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._record(trial.trial_id, {"status": "FAILED", "error": trial_error_text(trial)})

    def note_run(self, trial_id: str, run_id: str) -> None:
        """The trial's MLflow run id (`export --from-storage` shows it; the run is written on the driver)."""
        self._record(trial_id, {"run_id": run_id})

    def _record(self, trial_id: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self._write(trial_id, entry)

    def _write(self, trial_id: str, entry: dict[str, Any]) -> None:
        if self._body is None:
            try:
                self._body = json.loads(self.storage.read_text(self.run, LEDGER_FILE)) if self.storage.exists(
                    self.run, LEDGER_FILE) else {}
            except (OSError, ValueError):
                self._body = {}
        self._body[str(trial_id)] = {**self._body.get(str(trial_id), {}), **entry}
        try:
            self.storage.write_text(json.dumps(self._body, indent=1), self.run, LEDGER_FILE)
        except OSError as err:
            print(f"[tunetl] warning: cannot write {LEDGER_FILE} ({err}); `tunetl sync` will see this "
                  "trial as unfinished", flush=True)
