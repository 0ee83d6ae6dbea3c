"""Run a validated experiment on Ray Tune: scheduler, searcher, resources, storage and resume.

The driver loads the target data and the source weights once and hands them to every trial through
`tune.with_parameters` (Ray's object store), so a search moves its data to each node once, not once
per trial. Each trial's MLflow run is written on the driver from the trial's reports
(`run_writer.RunWriter`), which also closes the runs of trials that ASHA stops: they never run code
after their last report.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from tunetl.config import ExperimentConfig
from tunetl.records import RUN_ID_KEY
from tunetl.search.budget import keep_checkpoints, num_groups
from tunetl.search.ledger import LIVE, TrialLedger
from tunetl.search.preflight import SearchError
from tunetl.search.run_writer import EarlyFailure, RunWriter, TrialRecorder, WrittenRuns, drain_writers
from tunetl.search.space import SearchSpace
from tunetl.search.storage import Storage
from tunetl.search.trainable import CHECKPOINT_FILE, TaskBundle, label_of, run_trial
from tunetl.search.tune_space import (
    SEED,
    TRIAL_INDEX,
    GroupKey,
    trial_params,
    trial_seed,
)


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
    #: Per MLflow run id: the trial's latest checkpoint (it carries the best epoch's weights; None if it
    #: saved none) and its Tune config.
    checkpoints: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)

    @property
    def interrupted(self) -> bool:
        return self.num_incomplete > 0 or self.signal is not None


#: The names searches saved by earlier versions pickled in Tune's experiment state; their resume unpickles them.
RunCloser = MlflowFinalizer = RunWriter


def trial_dirname(trial: Any) -> str:
    """A trial's folder is named by its Tune id (`trial_<id>`), not by its display label: the label has
    spaces and `#`, and readers of the storage (`export --from-storage`, `sync`) find the id in the name."""
    return f"trial_{trial.trial_id}"


class TrialNamer:
    """Names each trial by its label (condition, images per label, backbone, seed) in Tune's progress table
    instead of `run_trial_<id>` beside internal config columns (`_point`); picklable for Tune's state."""

    def __init__(self, space: SearchSpace, experiment: ExperimentConfig) -> None:
        self.space, self.backbone, self.seeds = space, experiment.backbone, list(experiment.seeds)

    def __call__(self, trial: Any) -> str:
        config = trial.config
        try:
            label = label_of(trial_params(self.space, config), trial_seed(config, self.seeds), self.backbone)
        except (KeyError, IndexError, ValueError, TypeError):
            label = "trial"
        return f"{label} #{str(trial.trial_id)[-5:]}"


def _reporter(param_space: dict[str, Any], search_alg: Any) -> Any:
    """Tune's progress table. An empty parameter_columns makes Tune show every config key (`_point`, ...):
    show the seed only (the trial's name holds it too), by the key this searcher really sets; Tune raises
    on a column missing from a trial's config, so with neither key every column is shown."""
    from ray import tune
    from ray.tune.search import Repeater

    if SEED in param_space:
        shown: dict[str, str] | None = {SEED: "seed"}
    elif isinstance(search_alg, Repeater):
        shown = {TRIAL_INDEX: "repeat"}
    else:
        shown = None
    return tune.CLIReporter(
        metric_columns={"epoch": "epoch", "val_acc": "val_acc", "best_val_acc": "best"},
        parameter_columns=shown,
        max_report_frequency=15,
        max_column_length=40,
        sort_by_metric=True,
    )


def json_results_only() -> None:
    """Keep Tune from adding its CSV and TensorBoard loggers (about a second of driver time per search;
    tunetl reads only `result.json`). `TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0` in the environment keeps them."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def result_loggers() -> list[Any]:
    """The one result logger a new Tuner gets (a restored one keeps it in its saved callbacks)."""
    from ray.tune.logger import JsonLoggerCallback

    json_results_only()
    return [JsonLoggerCallback()]


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
    trainable = tune.with_parameters(run_trial, space=space, bundles=bundles)
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
    ledger = TrialLedger(storage, run_name)
    callbacks: list[Any] = [ledger, *result_loggers()]
    if recorder is not None:
        early = EarlyFailure(space, experiment.backbone, list(experiment.seeds), bundles[0].source, epochs)
        callbacks.append(RunWriter(recorder, epochs, ledger, early))
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
            trial_name_creator=TrialNamer(space, experiment),
            trial_dirname_creator=trial_dirname,
            max_concurrent_trials=limits.max_concurrent_trials,
            time_budget_s=limits.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage.path(),
            storage_filesystem=storage.fs,
            failure_config=tune.FailureConfig(max_failures=experiment.max_failures),
            # Scored by the best epoch's val_acc: every checkpoint holds the best weights so far, the latest
            # is always kept (resume), and the best one is what the search delivers.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=keep_checkpoints(experiment), checkpoint_score_attribute="best_val_acc",
                checkpoint_score_order="max",
            ),
            stop=stopper(experiment, GroupKey(space, keys), num_groups(space, keys, len(bundles))),
            progress_reporter=_reporter(param_space, searcher),
            callbacks=callbacks,
            verbose=1,
        ),
    )


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _forward_to_tune(received: list[int]) -> Any:
    """A Ctrl-C / SIGTERM handler that records the signal and asks Tune to stop (Tune's SIGUSR1 handler:
    it saves its state and returns); a second signal stops at once."""

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        tune_handler = signal.getsignal(signal.SIGUSR1)
        if len(received) == 1 and callable(tune_handler):
            print(f"\n[tunetl] {signal.Signals(signum).name}: saving the search's state; send it again to stop "
                  "at once", flush=True)
            tune_handler(signum, frame)
        else:
            raise KeyboardInterrupt

    return handler


def fit(tuner: Any, started: float, path: Path | str) -> SearchOutcome:
    """Run the Tuner; Ctrl-C and SIGTERM (e.g. a scheduler preempting the driver) stop it gracefully.

    tunetl catches both itself (Tune's own SIGINT handler is switched off): Tune marks every trial
    TERMINATED while it cleans up, so only the recorded signal, and the trials the ledger saw unfinished
    at the last step, tell an interrupted search from a finished one.
    """
    received: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    previous: dict[int, Any] = {}
    if main:
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        previous = {s: signal.signal(s, _forward_to_tune(received)) for s in _STOP_SIGNALS}
    LIVE["unfinished"] = 0
    try:
        results = tuner.fit()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        # Every run write Tune's callbacks queued is done before the caller closes or reads the runs.
        written = drain_writers()
    incomplete = len(results) - results.num_terminated - results.num_errors
    if received:
        incomplete = max(incomplete, LIVE["unfinished"])
    return SearchOutcome(
        path=path,
        num_trials=len(results),
        num_errors=results.num_errors,
        seconds=time.perf_counter() - started,
        num_incomplete=incomplete,
        signal=received[0] if received else None,
        checkpoints=_checkpoints(results, written),
    )


def _checkpoints(results: Any, written: WrittenRuns) -> dict[str, tuple[Any, dict[str, Any]]]:
    out = {}
    for result in results:
        metrics = result.metrics or {}
        run_id = metrics.get(RUN_ID_KEY) or (written.run_of(str(metrics["trial_id"])) if metrics.get("trial_id")
                                             else None)
        if run_id:
            out[str(run_id)] = (result.checkpoint, dict(result.config or {}))
    return out


def load_checkpoint(checkpoint: Any) -> dict[str, Any]:
    """A trial's saved state (`TrialRunner.state_dict` plus its `trial_id`), from any storage Tune wrote it to."""
    import torch

    with checkpoint.as_directory() as d:
        return dict(torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True))


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
    json_results_only()
    return tune.Tuner.restore(storage.path(run), trainable=trainable, resume_errored=True,
                              storage_filesystem=storage.fs)
