"""A search's life outside Tune: which folder it runs in (new, resumed or continued by `--more`), the driver
lock on that folder, its MLflow parent run and its state file.

`api.run` composes a `SearchSession` with planning and the Tuner; everything that decides "resume or start
over" and "who may run this folder" lives here, so resume, `--more` and the read tools agree. The parent
run is written through a recorder passed in (`tracking.SearchRecorder`), so this module imports no MLflow.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tunetl.config import ConfigError, ExperimentConfig, check_name
from tunetl.records import STATE_FILE
from tunetl.search.preflight import SearchError
from tunetl.search.state import SearchState, read_state, write_state
from tunetl.search.storage import Storage

if TYPE_CHECKING:
    from tunetl.search.run_writer import TrialRecorder


class ParentRun(Protocol):
    """What a search needs of the tracking layer (`tracking.SearchRecorder`): the parent run's life, closing
    stray child runs, and the picklable logger its trials write their own runs with."""

    experiment_id: str

    def trial_logger(self) -> TrialRecorder: ...

    def start_parent(self, params: dict[str, Any], tags: dict[str, str]) -> str: ...

    def reopen_parent(self, run_id: str) -> None: ...

    def set_parent_tags(self, tags: dict[str, str]) -> None: ...

    def close_open_children(self, status: str, reason: str) -> int: ...

    def end_parent(self, status: str = "FINISHED", summary: dict[str, float] | None = None) -> None: ...


class DriverLock:
    """Held by the driver of a search for as long as it runs (the kernel drops it if the driver is killed),
    so that a second `tunetl run` never resumes a search another driver is still running. On object
    stores, which have no locks, it guards against drivers on the same machine only."""

    NAME = ".driver.lock"

    def __init__(self, storage: Storage, run: str) -> None:
        self.path = storage.lock_file(run, self.NAME)
        self._fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_STAMP = re.compile(r"_\d{8}-\d{6}$")


def new_run_name(experiment_name: str) -> str:
    """The one place an experiment name becomes a path: the search folder `<name>_<YYYYmmdd-HHMMSS>`.

    The name was checked as one safe folder name (`tunetl.config.check_name`) when the experiment loaded.
    """
    check_name(experiment_name)
    return f"{experiment_name}_{time.strftime('%Y%m%d-%H%M%S')}"


def _searches_of(storage: Storage, experiment_name: str) -> list[str]:
    """This experiment's search folders, oldest first: `name_<stamp>` exactly (not `name_other_<stamp>`)."""
    runs = storage.subfolders_with(f"{experiment_name}_", STATE_FILE)
    return [r for r, _ in runs if _STAMP.search(r) and _STAMP.sub("", r) == experiment_name]


def latest_run_dir(storage: Storage, experiment_name: str) -> str | None:
    """The newest search of this experiment in `storage`, finished or not (its folder name)."""
    runs = _searches_of(storage, experiment_name)
    return runs[-1] if runs else None


def finished_run_dir(storage: Storage, experiment_name: str) -> tuple[str, SearchState] | None:
    """The newest finished search of this experiment (folder name, state), or None."""
    for run in reversed(_searches_of(storage, experiment_name)):
        try:
            state = read_state(storage, run)
        except (OSError, ValueError):
            continue
        if state.finished:
            return run, state
    return None


def unfinished_run_dir(storage: Storage, experiment_name: str) -> tuple[str | None, str | None]:
    """(newest unfinished search of this experiment no driver holds, newest one that a driver holds)."""
    busy = None
    for run in reversed(_searches_of(storage, experiment_name)):
        try:
            if read_state(storage, run).finished:
                continue
        except (OSError, ValueError):
            continue
        lock = DriverLock(storage, run)
        if lock.acquire():
            lock.release()
            return run, busy
        busy = busy or run
    return None, busy


def folder_to_resume(storage: Storage, exp: ExperimentConfig, *, resume: bool, new: bool) -> str | None:
    """The search folder to continue: asked for (`resume`) or found unfinished with the same inputs.

    Decided before Ray starts or any MLflow run exists, so a refusal (ConfigError, exit 2) costs nothing.
    """
    if new:
        if resume:
            raise ConfigError("--resume and --new exclude each other: resume the last search or start a new one")
        return None
    run_dir, busy = unfinished_run_dir(storage, exp.name)
    if run_dir is None and resume:
        run_dir = latest_run_dir(storage, exp.name)
        if run_dir == busy:
            run_dir = None
    if run_dir is None:
        if resume:
            running = f" ({busy} is being run by another tunetl process)" if busy else ""
            raise ConfigError(f"--resume: no earlier search of {exp.name!r} under {storage.display()}{running}")
        return None
    if read_state(storage, run_dir).fingerprint != exp.fingerprint():
        if resume:
            raise ConfigError(
                f"--resume: the experiment or its search space changed since {run_dir} started; "
                "resume needs the same inputs (run without --resume to start a new search)"
            )
        return None
    if not resume:
        print(f"[tunetl] {run_dir} did not finish (same experiment and search space): resuming it; "
              "pass --new to start a fresh search instead", file=sys.stderr, flush=True)
    return run_dir


class Continued(Protocol):
    """`--more`: the finished search whose parent run the new trials join (`tunetl.history.Continuation`)."""

    run_dir: str
    parent_run_id: str
    told: list[Any]


@dataclass
class SearchSession:
    """One search's folder, lock, parent run and state file, for as long as its driver runs it."""

    storage: Storage
    experiment: ExperimentConfig
    recorder: ParentRun
    tracking_uri: str
    #: The search folder; a new `<name>_<stamp>` unless resuming.
    run_name: str
    parent_run_id: str = ""

    @property
    def path(self) -> Path | str:
        """The search folder as the user sees it: a local path, or a URI for object-store storage."""
        if self.storage.is_local:
            return Path(self.storage.path(self.run_name))
        return self.storage.display(self.run_name)

    @contextmanager
    def held(self) -> Iterator[SearchSession]:
        """The driver lock on the folder for the block; SearchError if another driver holds it."""
        lock = DriverLock(self.storage, self.run_name)
        if not lock.acquire():
            raise SearchError(f"{self.path} is being run by another tunetl process; wait for it or pass --new")
        try:
            yield self
        finally:
            lock.release()

    def open_parent(self, params: dict[str, Any], tags: dict[str, str], more: Continued | None = None) -> str:
        """Start the parent run, reopen it (resume, `--more`), and write the state file that says so.
        With `more`, the experiment's `searcher.num_samples` is the number of trials added."""
        exp = self.experiment
        config = exp.model_dump(mode="json")
        if more is not None:
            self.parent_run_id = more.parent_run_id
            self.recorder.reopen_parent(self.parent_run_id)
            self.recorder.set_parent_tags({f"tunetl.more.{self.run_name}": json.dumps(
                {"trials": exp.searcher.num_samples, "told": len(more.told), "after": more.run_dir})})
            state = SearchState(exp.fingerprint(), self.parent_run_id, exp.name, self.tracking_uri,
                                config=config, more_of=more.run_dir)
        elif self.storage.exists(self.run_name, STATE_FILE):
            state = read_state(self.storage, self.run_name).but(finished=False)
            self.parent_run_id = str(state.parent_run_id)
            self.recorder.reopen_parent(self.parent_run_id)
        else:
            self.parent_run_id = self.recorder.start_parent(params, tags=tags)
            state = SearchState(exp.fingerprint(), self.parent_run_id, exp.name, self.tracking_uri, config=config)
        write_state(self.storage, self.run_name, state)
        return self.parent_run_id

    @contextmanager
    def killed_on_stop(self) -> Iterator[None]:
        """Any stop inside the block (Ctrl-C while Tune loads, an error) closes the search's open runs as
        KILLED; the state file stays unfinished, so the same command resumes it."""
        try:
            yield
        except BaseException:
            self.close_killed()
            raise

    def close_killed(self) -> None:
        self.recorder.close_open_children("KILLED", "interrupted")
        self.recorder.end_parent("KILLED")

    def mark_finished(self) -> None:
        write_state(self.storage, self.run_name, read_state(self.storage, self.run_name).but(finished=True))
