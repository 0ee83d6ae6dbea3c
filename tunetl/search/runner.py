"""Run a validated experiment on Ray Tune: scheduler, searcher, resources, storage and resume.

The driver loads the target data and the source weights once and hands them to every trial through
`tune.with_parameters` (Ray's object store), so a search moves its data to each node once, not once
per trial. A Tune callback closes each trial's MLflow run on the driver, because a trial that ASHA
stops never runs code after its last report.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from tunetl.config import ExperimentConfig
from tunetl.search.space import SearchSpace
from tunetl.search.trainable import TaskBundle, TrialRecorder, run_trial
from tunetl.search.tune_space import GroupKey, OptunaSpace, grid_param_space

STATE_FILE = "tunetl_search.json"


class SearchError(RuntimeError):
    """A search that cannot start or resume; the message says what to do."""


@dataclass
class SearchOutcome:
    path: Path
    num_trials: int
    num_errors: int
    seconds: float


def default_storage() -> Path:
    return (Path.cwd() / "tunetl_runs").resolve()


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


def _can_write(path: str) -> str | None:
    """None when `path` is a writable folder here (created if missing), else why not."""
    import tempfile

    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".tunetl-probe-"):
            pass
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


def check_storage(storage: Path) -> None:
    """Every node must be able to write the storage path (checkpoints, source cache) before trials start."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    local = _can_write(str(storage))
    if local is not None:
        raise SearchError(f"--storage {storage}: cannot write there from this machine ({local})")
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    if len(nodes) < 2:
        return
    probe = ray.remote(num_cpus=0)(_can_write)
    refs = {
        n["NodeID"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(str(storage))
        for n in nodes
    }
    failed = {node: why for node, why in zip(refs, ray.get(list(refs.values()), timeout=120)) if why}
    if failed:
        detail = "; ".join(f"node {node[:12]}: {why}" for node, why in failed.items())
        raise SearchError(
            f"--storage {storage}: not writable from every Ray node ({detail}); give a path all nodes "
            "mount (e.g. NFS at the same path)"
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
    storage: Path,
    run_name: str,
    warm_start: list[dict[str, Any]] | None = None,
) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    from tunetl.search.schedulers import GroupedASHA

    trainable = tune.with_parameters(run_trial, space=space, bundles=bundles, recorder=recorder)
    res = experiment.resources
    trainable = tune.with_resources(trainable, {"cpu": res.cpu, "gpu": res.gpu})
    epochs = experiment.training.epochs
    if experiment.scheduler.type == "asha":
        asha = dict(
            time_attr="epoch",
            max_t=epochs,
            grace_period=min(experiment.scheduler.grace_period, epochs),
            reduction_factor=experiment.scheduler.reduction_factor,
        )
        keys = experiment.scheduler.group_by
        if keys:
            scheduler: Any = GroupedASHA(GroupKey(space, keys), **asha)
        else:
            scheduler = ASHAScheduler(**asha)
    else:
        scheduler = FIFOScheduler()
    seeds = experiment.seeds
    if experiment.searcher.type == "optuna":
        import optuna

        searcher: Any = OptunaSearch(
            space=OptunaSpace(space, len(bundles)),
            points_to_evaluate=warm_start or None,
            sampler=optuna.samplers.TPESampler(seed=experiment.searcher.seed),
            metric="best_val_acc",
            mode="max",
        )
        if len(seeds) > 1:
            searcher = Repeater(searcher, repeat=len(seeds), set_index=True)
        param_space: dict[str, Any] = {}
        num_samples = experiment.searcher.num_samples * len(seeds)
    else:
        searcher = None
        param_space = grid_param_space(space, seeds, len(bundles))
        num_samples = experiment.searcher.num_samples
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
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=experiment.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            progress_reporter=_reporter(),
            callbacks=callbacks,
            verbose=1,
        ),
    )


def write_state(path: Path, body: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / STATE_FILE).write_text(json.dumps(body, indent=2))


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())


def latest_run_dir(storage: Path, experiment_name: str) -> Path | None:
    """The newest search folder of this experiment under `storage` (for `--resume`)."""
    runs = sorted(storage.glob(f"{experiment_name}_*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None


def fit(tuner: Any, started: float, path: Path) -> SearchOutcome:
    results = tuner.fit()
    errors = sum(1 for r in results if r.error is not None)
    return SearchOutcome(
        path=path,
        num_trials=len(results),
        num_errors=errors,
        seconds=time.perf_counter() - started,
    )


def restore_tuner(path: Path, experiment: ExperimentConfig, **kwargs: Any) -> Any:
    trainable = tune.with_parameters(run_trial, **kwargs)
    res = experiment.resources
    trainable = tune.with_resources(trainable, {"cpu": res.cpu, "gpu": res.gpu})
    if not tune.Tuner.can_restore(str(path)):
        raise SearchError(f"{path} holds no resumable Tune state; run without --resume to start a new search")
    return tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
