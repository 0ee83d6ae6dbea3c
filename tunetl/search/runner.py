"""Run a validated experiment on Ray Tune: scheduler, searcher, resources, storage and resume.

The driver loads the target data and the source weights once and hands them to every trial through
`tune.with_parameters` (Ray's object store), so a search moves its data to each node once, not once
per trial. A Tune callback closes each trial's MLflow run on the driver, because a trial that ASHA
stops never runs code after its last report.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from tunetl.config import ExperimentConfig
from tunetl.data import TaskData
from tunetl.search.budget import keep_checkpoints, num_groups
from tunetl.search.results import STATE_FILE
from tunetl.search.space import SearchSpace
from tunetl.search.storage import Storage, StorageError
from tunetl.search.trainable import TaskBundle, TrialRecorder, run_trial
from tunetl.search.tune_space import GroupKey


class SearchError(RuntimeError):
    """A search that cannot start or resume; the message says what to do."""


@dataclass
class SearchOutcome:
    path: Path | str
    num_trials: int
    num_errors: int
    seconds: float
    #: Trials neither finished nor failed: the search was stopped (Ctrl-C, SIGTERM) and can be resumed.
    num_incomplete: int = 0
    #: The signal that stopped the search, if one did.
    signal: int | None = None

    @property
    def interrupted(self) -> bool:
        return self.num_incomplete > 0 or self.signal is not None


def default_storage() -> Path:
    return (Path.cwd() / "tunetl_runs").resolve()


def open_storage(text: str | Path | None) -> Storage:
    """The search storage from `--storage` (default ./tunetl_runs); a bad URI is a SearchError naming it."""
    try:
        return Storage(text if text else default_storage())
    except StorageError as err:
        raise SearchError(str(err)) from None


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join `address` (or RAY_ADDRESS) when given; otherwise start Ray on this machine."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Each trial checkpoints every epoch by design (resume loses at most one epoch); Tune's warning
    # about the resulting state snapshots is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")


def check_resources(experiment: ExperimentConfig) -> None:
    """Fail before any trial when no node of the cluster can ever run one (it would stay PENDING)."""
    import ray

    res = experiment.resources
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    fits = [n for n in nodes if n.get("CPU", 0) >= res.cpu and n.get("GPU", 0) >= res.gpu]
    if fits:
        return
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if res.gpu > gpus:
        raise SearchError(
            f"resources.gpu: each trial asks for {res.gpu:g} GPU(s) but no node of the Ray cluster has more "
            f"than {gpus:g}; set resources.gpu: 0 (--set resources.gpu=0) or join a GPU cluster with --address"
        )
    raise SearchError(
        f"resources.cpu: each trial asks for {res.cpu:g} CPU(s) but no node of the Ray cluster has more than "
        f"{cpus:g}; lower resources.cpu (--set resources.cpu=1)"
    )


def _can_write(storage: Storage) -> str | None:
    """None when this process can write `storage`, else why not (run on each node)."""
    return storage.probe()


def _unreadable(paths: list[str]) -> str | None:
    """None when this process can read every file in `paths`, else the first that it cannot and why."""
    for path in paths:
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as err:
            return f"{path}: {err.strerror or err}"
    return None


def _fails_on_nodes(check: Any, *args: Any) -> dict[str, str]:
    """Run `check(*args)` once on every alive node that runs trials; {node id: why} where it failed.

    A single-node cluster is this machine, which the caller has already checked.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if len(nodes) < 2:
        return {}
    probe = ray.remote(num_cpus=0)(check)
    refs = {
        n["NodeID"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(*args)
        for n in nodes
    }
    return {node: why for node, why in zip(refs, ray.get(list(refs.values()), timeout=120)) if why}


def _per_node(failed: dict[str, str]) -> str:
    return "; ".join(f"node {node[:12]}: {why}" for node, why in failed.items())


def check_storage(storage: Storage) -> None:
    """Every node must be able to write the storage (checkpoints, source cache) before trials start."""
    local = storage.probe()
    if local is not None:
        raise SearchError(f"--storage {storage.display()}: cannot write there from this machine ({local})")
    failed = _fails_on_nodes(_can_write, storage)
    if failed:
        hint = ("give the nodes credentials for it (e.g. AWS_* variables in their environment)" if not storage.is_local
                else "give a path all nodes mount (e.g. NFS at the same path) or an s3:// or gs:// URI")
        raise SearchError(f"--storage {storage.display()}: not writable from every Ray node ({_per_node(failed)}); "
                          f"{hint}")


def streamed_samples(task: TaskData, per_split: int = 3) -> list[str]:
    """A few files (first, middle, last) of each split that trials read from disk; [] for data in memory,
    which reaches the trials through Ray's object store."""
    out: list[str] = []
    for split in (task.train, task.val):
        paths = getattr(split, "paths", None) or []
        if paths:
            picks = sorted({0, len(paths) // 2, len(paths) - 1})[:per_split]
            out += [paths[i] for i in picks]
    return out


def check_data(tasks: list[TaskData]) -> None:
    """A folder too large for memory is read by the trials from its path: every node must see it there."""
    for task in tasks:
        samples = streamed_samples(task)
        if not samples:
            continue
        local = _unreadable(samples)
        if local is not None:
            raise SearchError(f"dataset {task.name}: cannot read {local}; was the folder moved while loading?")
        failed = _fails_on_nodes(_unreadable, samples)
        if failed:
            raise SearchError(
                f"dataset {task.name}: too large for memory, so trials read its files where they run, and not "
                f"every Ray node can ({_per_node(failed)}); mount the folder at the same path on every node "
                "(e.g. NFS) or copy it there"
            )


class MlflowFinalizer(tune.Callback):
    """Closes child runs the trial itself could not close: stopped by ASHA, or failed.

    Tune keeps callbacks in its experiment state, so this is a module-level class holding only the
    picklable recorder.
    """

    def __init__(self, recorder: TrialRecorder, epochs: int) -> None:
        self.recorder, self.epochs = recorder, epochs

    def _run_id(self, trial: Any) -> str | None:
        res = trial.last_result or {}
        return res.get("mlflow_run_id") or self.recorder.find_run(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        res = trial.last_result or {}
        run_id = self._run_id(trial)
        if not run_id:
            return
        stopped = int(res.get("epoch", 0)) < self.epochs and not res.get("diverged", False)
        tags = {"tunetl.diverged": "true"} if res.get("diverged") else None
        self.recorder.finish(
            run_id, status="FINISHED", best_val_acc=res.get("best_val_acc"), stopped_early=stopped, tags=tags
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._run_id(trial)
        if run_id:
            best = (trial.last_result or {}).get("best_val_acc")
            self.recorder.finish(run_id, status="FAILED", best_val_acc=best, stopped_early=False)


def _reporter() -> Any:
    from ray import tune

    return tune.CLIReporter(
        metric_columns={"trial": "trial", "epoch": "epoch", "val_acc": "val_acc", "best_val_acc": "best"},
        parameter_columns=[],
        max_report_frequency=15,
        max_column_length=40,
        sort_by_metric=True,
    )


def build_tuner(
    experiment: ExperimentConfig,
    space: SearchSpace,
    *,
    bundles: list[TaskBundle],
    recorder: TrialRecorder | None,
    storage: Storage,
    run_name: str,
    warm_start: list[dict[str, Any]] | None = None,
    told: list[Any] | None = None,
    sampler_seed_offset: int = 0,
) -> Any:
    from ray import tune

    from tunetl.search.budget import stopper
    from tunetl.search.schedulers import build_scheduler
    from tunetl.search.searchers import Seed, build_searcher, trainable_space

    space = trainable_space(experiment, space)
    trainable = tune.with_parameters(run_trial, space=space, bundles=bundles, recorder=recorder)
    res = experiment.resources
    trainable = tune.with_resources(trainable, {"cpu": res.cpu, "gpu": res.gpu})
    epochs = experiment.training.epochs
    keys = experiment.scheduler.group_by
    group_of = GroupKey(space, keys) if keys else None
    scheduler = build_scheduler(experiment, space, group_of)
    seeds = [Seed(w, None, "meta-model") for w in warm_start or []] + list(told or [])
    plan = build_searcher(experiment, space, len(bundles), seeds, sampler_seed_offset=sampler_seed_offset)
    searcher, param_space, num_samples = plan.search_alg, plan.param_space, plan.num_samples
    limits = experiment.run
    callbacks = [MlflowFinalizer(recorder, epochs)] if recorder is not None else []
    # Ray's newer console output ignores the reporter's columns; tunetl's table names each trial.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="best_val_acc",
            mode="max",
            scheduler=scheduler,
            search_alg=searcher,
            num_samples=num_samples,
            reuse_actors=True,
            max_concurrent_trials=limits.max_concurrent_trials,
            time_budget_s=limits.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage.path(),
            storage_filesystem=storage.fs,
            failure_config=tune.FailureConfig(max_failures=experiment.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints(experiment)),
            stop=stopper(experiment, GroupKey(space, keys), num_groups(space, keys, len(bundles))),
            progress_reporter=_reporter(),
            callbacks=callbacks,
            verbose=1,
        ),
    )


def write_state(storage: Storage, run: str, body: dict[str, Any]) -> None:
    """Write a search's state file whole (a killed driver never leaves half a file)."""
    storage.write_text(json.dumps(body, indent=2), run, STATE_FILE)


def read_state(storage: Storage, run: str) -> dict[str, Any]:
    return dict(json.loads(storage.read_text(run, STATE_FILE)))


def mark_state(storage: Storage, run: str, **fields: Any) -> None:
    write_state(storage, run, {**read_state(storage, run), **fields})


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


def latest_run_dir(storage: Storage, experiment_name: str) -> str | None:
    """The newest search of this experiment in `storage`, finished or not (its folder name)."""
    runs = storage.subfolders_with(f"{experiment_name}_", STATE_FILE)
    return runs[-1][0] if runs else None


def unfinished_run_dir(storage: Storage, experiment_name: str) -> tuple[str | None, str | None]:
    """(newest unfinished search of this experiment no driver holds, newest one that a driver holds)."""
    busy = None
    for run, _ in reversed(storage.subfolders_with(f"{experiment_name}_", STATE_FILE)):
        try:
            if read_state(storage, run).get("finished"):
                continue
        except (OSError, ValueError):
            continue
        lock = DriverLock(storage, run)
        if lock.acquire():
            lock.release()
            return run, busy
        busy = busy or run
    return None, busy


def _forward_to_tune(received: list[int]) -> Any:
    """A SIGTERM handler that stops the search the way Ctrl-C does: Tune saves its state and returns."""

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        tune_handler = signal.getsignal(signal.SIGUSR1)
        if callable(tune_handler):
            tune_handler(signum, frame)
        else:
            raise KeyboardInterrupt

    return handler


def fit(tuner: Any, started: float, path: Path | str) -> SearchOutcome:
    """Run the Tuner; SIGTERM (e.g. a scheduler preempting the driver) stops it gracefully, like Ctrl-C."""
    received: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _forward_to_tune(received)) if main else None
    try:
        results = tuner.fit()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    return SearchOutcome(
        path=path,
        num_trials=len(results),
        num_errors=results.num_errors,
        seconds=time.perf_counter() - started,
        num_incomplete=len(results) - results.num_terminated - results.num_errors,
        signal=received[0] if received else None,
    )


def can_restore(storage: Storage, run: str) -> bool:
    return bool(tune.Tuner.can_restore(storage.path(run), storage_filesystem=storage.fs))


def restore_tuner(storage: Storage, run: str, experiment: ExperimentConfig, **kwargs: Any) -> Any:
    """Tune's state of an earlier search: finished trials are kept, failed and unfinished ones continue
    from their last checkpoint."""
    from tunetl.search.searchers import trainable_space

    kwargs["space"] = trainable_space(experiment, kwargs["space"])
    trainable = tune.with_parameters(run_trial, **kwargs)
    res = experiment.resources
    trainable = tune.with_resources(trainable, {"cpu": res.cpu, "gpu": res.gpu})
    if not can_restore(storage, run):
        raise SearchError(f"{storage.display(run)} holds no resumable Tune state; run with --new to start over")
    return tune.Tuner.restore(storage.path(run), trainable=trainable, resume_errored=True,
                              storage_filesystem=storage.fs)
