"""A search's trials read back from Ray's storage, with no MLflow at all.

Ray keeps every result a trial reported (`result.json` in the trial's folder, one JSON line per epoch,
and its config in `params.json`) in the search folder `<storage>/<name>_<timestamp>/`, beside tunetl's
own `tunetl_search.json` (experiment, parent run, tracking URI, configuration) and `tunetl_trials.json`
(how each trial ended, `tunetl.search.ledger`). Only these JSON files are read: Ray's own experiment
state and `*.pkl` files are pickles, and a storage folder someone else wrote must not run code here.
The first result of each trial attempt also carries the params and tags of its MLflow run (`RECORD_KEY`).
Together that is a complete record of a search that no tracking server can lose: `tunetl export
--from-storage` reads it, and `tunetl sync` writes into MLflow whatever an outage kept from it. Storage in
an object store (`s3://...`) is read by copying these small files (never the checkpoints) to a temporary
folder first.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetl.params import as_tuples
from tunetl.records import (
    DIVERGED_KEY,
    EPOCH_METRICS,
    LEDGER_FILE,
    MAX_TAG_CHARS,
    NODE_TAG,
    RECORD_KEY,
    RUN_ID_KEY,
    STATE_FILE,
    TRIAL_ID_TAG,
)
from tunetl.search.state import SearchState
from tunetl.search.storage import Storage, StorageError

if TYPE_CHECKING:
    import pandas as pd

#: Ray Tune trial status -> MLflow run status; any other (PENDING, RUNNING, PAUSED) is an unfinished trial.
_STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}
_TRIAL_ID = re.compile(r"_([0-9a-f]{5}_\d{5})(?:_|$)")


@dataclass
class StoredTrial:
    """One trial as Ray recorded it."""

    trial_id: str
    #: FINISHED (completed or stopped by the scheduler), FAILED, or RUNNING (the search did not finish).
    status: str
    #: The MLflow run the trial logged to, if it had one.
    run_id: str | None
    params: dict[str, Any]
    tags: dict[str, str]
    #: One dict per epoch, ascending: `epoch`, `timestamp` (s) and the metrics present in `EPOCH_METRICS`.
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best_val_acc: float | None = None
    diverged: bool = False
    stopped_early: bool = False
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("FINISHED", "FAILED")


@dataclass
class StoredSearch:
    """One `tunetl run` (a search folder) as Ray recorded it."""

    #: The search folder: a local path, or a URI in an object store.
    path: str
    experiment: str
    parent_run_id: str | None
    tracking_uri: str | None
    trials: list[StoredTrial]

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def finished(self) -> bool:
        return all(t.finished for t in self.trials)


def search_names(store: Storage, run: str | None = None) -> list[str]:
    """The search folders in `store`, oldest first ("" when `store` is one search folder itself).

    `run` picks one by folder name (`quickstart_20260101-120000`) or every search of an experiment name.
    """
    state = STATE_FILE
    if store.exists(state):
        found = [""]
    else:
        found = [name for name, _ in store.subfolders_with("", state)]
        if run is not None:
            found = [n for n in found if n == run or n.rsplit("_", 1)[0] == run]
    if not found:
        which = f" named {run!r}" if run else ""
        raise StorageError(
            f"--storage {store.display()}: no tunetl search folder{which} (a folder holding {state}); give the "
            "--storage that `tunetl run` wrote to" + (", or leave out --run" if run else "")
        )
    return found


#: The files of a search folder this module reads: small ones, never checkpoints.
_TOP_FILES = re.compile(rf"^({re.escape(STATE_FILE)}|{re.escape(LEDGER_FILE)})$")
_TRIAL_FILES = frozenset({"result.json", "params.json", "error.txt"})


def _fetch(store: Storage, name: str, local: Path) -> None:
    """Copy the result and state files (not the checkpoints) of an object-store search into `local`."""
    import pyarrow.fs as pafs

    root = store.path(name) if name else store.path()
    for info in store.fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = info.path[len(root):].lstrip("/")
        parts = rel.split("/")
        wanted = (len(parts) == 1 and _TOP_FILES.match(parts[0])) or (len(parts) == 2 and parts[1] in _TRIAL_FILES)
        if info.type == pafs.FileType.File and wanted:
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            with store.fs.open_input_stream(info.path) as f:
                (local / rel).write_bytes(bytes(f.read()))


def read_ledger(folder: Path) -> dict[str, dict[str, Any]]:
    """trial id -> {"status": FINISHED | FAILED, "error": text or None, "run_id": its MLflow run}; {} when
    there is no ledger."""
    try:
        body = json.loads((folder / LEDGER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): v for k, v in body.items() if isinstance(v, dict)} if isinstance(body, dict) else {}


def read_result_lines(path: Path) -> list[dict[str, Any]]:
    """The results Ray wrote, one JSON object per line; a line cut off by a killed process is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _stored_trials(path: Path) -> dict[str, tuple[str, dict[str, Any], Path, str | None, str | None, str | None]]:
    """trial id -> (Tune-like status, config, trial folder, error file name, error text, run id), found by the
    trial folders; the status from tunetl's ledger, else error.txt (ERROR), a last result marked done
    (TERMINATED), or RUNNING (unfinished)."""
    ledger = read_ledger(path)
    out = {}
    for params_file in sorted(path.glob("*/params.json")):
        folder = params_file.parent
        lines = read_result_lines(folder / "result.json")
        trial_id = lines[-1].get("trial_id") if lines else None
        match = _TRIAL_ID.search(folder.name)
        trial_id = str(trial_id or (match.group(1) if match else folder.name))
        error = "error.txt" if (folder / "error.txt").is_file() else None
        ended = ledger.get(trial_id, {})
        if ended.get("status") in ("FINISHED", "FAILED"):
            status = "TERMINATED" if ended["status"] == "FINISHED" else "ERROR"
        elif error:
            status = "ERROR"
        else:
            status = "TERMINATED" if lines and lines[-1].get("done") else "RUNNING"
        try:
            config = json.loads(params_file.read_text())
        except ValueError:
            config = {}
        out[trial_id] = (status, config if isinstance(config, dict) else {}, folder, error, ended.get("error"),
                         ended.get("run_id"))
    return out


def _fallback_params(state: SearchState, config: dict[str, Any]) -> dict[str, Any]:
    """Search parameters rebuilt from the Tune config when no result carried the run's params."""
    from tunetl.config import ExperimentConfig
    from tunetl.search.space import parse_space
    from tunetl.search.tune_space import trial_params, trial_seed

    if not state.config:
        return {}
    exp = ExperimentConfig.model_validate(state.config)
    params = trial_params(parse_space(exp.search_space), config)
    backbone = params.get("backbone") or exp.backbone
    return {**params, "backbone": backbone, "seed": trial_seed(config, exp.seeds), "epochs": exp.training.epochs}


def _epochs(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per epoch; a restored trial that reported an epoch twice keeps its later report."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in lines:
        if "epoch" not in line:
            continue
        entry = {"epoch": int(line["epoch"]), "timestamp": line.get("timestamp")}
        entry.update({m: float(line[m]) for m in EPOCH_METRICS if isinstance(line.get(m), (int, float))})
        by_epoch[entry["epoch"]] = entry
    return [by_epoch[e] for e in sorted(by_epoch)]


def _trial(
    trial_id: str, status: str, config: dict[str, Any], folder: Path, error_file: str | None,
    error_text: str | None, run_id: str | None, state: SearchState,
) -> StoredTrial | None:
    lines = read_result_lines(folder / "result.json")
    record = next((json.loads(line[RECORD_KEY]) for line in lines if line.get(RECORD_KEY)), None)
    if not lines and status not in _STATUS:
        return None  # never started: no run exists for it anywhere
    params = record["params"] if record else _fallback_params(state, config)
    tags = {str(k): str(v) for k, v in (record["tags"] if record else {TRIAL_ID_TAG: trial_id}).items()}
    # Searches made before runs were written on the driver carry the run id in their results.
    run_ids = [str(line[RUN_ID_KEY]) for line in lines if line.get(RUN_ID_KEY)] or ([run_id] if run_id else [])
    last = lines[-1] if lines else {}
    epochs = _epochs(lines)
    diverged = bool(last.get(DIVERGED_KEY, False))
    best = last.get("best_val_acc")
    mapped = _STATUS.get(status, "RUNNING")
    planned = params.get("epochs") or state.config.get("training", {}).get("epochs")
    ran = epochs[-1]["epoch"] if epochs else 0
    error = None
    if mapped == "FAILED":
        file = folder / error_file if error_file else None
        text = file.read_text(errors="replace") if file is not None and file.is_file() else ""
        error = (text or error_text or "the trial failed without an error message")[-MAX_TAG_CHARS:]
    return StoredTrial(
        trial_id=trial_id,
        status=mapped,
        run_id=run_ids[-1] if run_ids else None,
        params=params,
        tags=tags,
        epochs=epochs,
        best_val_acc=float(best) if isinstance(best, (int, float)) and math.isfinite(best) else None,
        diverged=diverged,
        stopped_early=mapped == "FINISHED" and planned is not None and ran < int(planned) and not diverged,
        error=error,
    )


def read_search(path: Path, shown: str | None = None) -> StoredSearch:
    """Read one local search folder (`<storage>/<name>_<timestamp>`) written by `tunetl run`."""
    path = path.resolve()
    state_path = path / STATE_FILE
    try:
        state = SearchState.from_json(state_path.read_text())
    except (OSError, ValueError, TypeError) as err:
        raise StorageError(f"{shown or state_path}: cannot read tunetl's search state ({err})") from None
    found = _stored_trials(path)
    trials = [t for tid, info in sorted(found.items()) if (t := _trial(tid, *info, state)) is not None]
    return StoredSearch(
        path=shown or str(path),
        experiment=state.experiment or path.name.rsplit("_", 1)[0],
        parent_run_id=state.parent_run_id,
        tracking_uri=state.tracking_uri,
        trials=trials,
    )


def load_searches(storage: str | Path, run: str | None = None) -> list[StoredSearch]:
    """Every search in `storage` (a local folder or an object-store URI), or those `run` names."""
    import tempfile

    store = Storage(storage)
    names = search_names(store, run)
    if store.is_local:
        return [read_search(store.local_path / n if n else store.local_path) for n in names]
    out = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix="tunetl-results-") as tmp:
            local = Path(tmp) / (name or "search")
            local.mkdir()
            _fetch(store, name, local)
            out.append(read_search(local, shown=store.display(name) if name else store.display()))
    return out


def param_names(searches: list[StoredSearch]) -> list[str]:
    """Every parameter recorded for any trial of `searches`, in first-seen order."""
    names: dict[str, None] = {}
    for search in searches:
        for trial in search.trials:
            names.update(dict.fromkeys(trial.params))
    return list(names)


def trials_frame(searches: list[StoredSearch]) -> pd.DataFrame:
    """The trials frame (columns of `tunetl.tracking.load_trials`, plus `trial_id` and `search`) from Ray's
    records. Parameter values are as the trial had them (lists as tuples); `tunetl.tracking.typed_trials`
    gives them the exact types an MLflow round trip gives."""
    import pandas as pd

    names = param_names(searches)
    rows = []
    for search in searches:
        for t in search.trials:
            last = t.epochs[-1] if t.epochs else {}
            rows.append({
                "run_id": t.run_id,
                "experiment": search.experiment,
                "parent_run_id": search.parent_run_id,
                "status": t.status,
                "stopped_early": t.stopped_early,
                "diverged": t.diverged,
                "error": t.error,
                "node": t.tags.get(NODE_TAG),
                **{n: as_tuples(t.params.get(n)) for n in names},
                **{m: last.get(m, math.nan) for m in EPOCH_METRICS},
                "best_val_acc": math.nan if t.best_val_acc is None else t.best_val_acc,
                "epochs_run": len(t.epochs),
                "trial_id": t.trial_id,
                "search": search.name,
            })
    columns = ["run_id", "experiment", "parent_run_id", "status", "stopped_early", "diverged", "error", "node",
               *names, *EPOCH_METRICS, "best_val_acc", "epochs_run", "trial_id", "search"]
    frame = pd.DataFrame(rows, columns=columns)
    for col in (*EPOCH_METRICS, "best_val_acc"):
        frame[col] = frame[col].astype("float64")
    frame["epochs_run"] = frame["epochs_run"].astype("int64")
    return frame
