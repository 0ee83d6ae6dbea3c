"""The Tune function trainable: one `TrialRunner`, one `tune.report` per epoch, a checkpoint every
`training.checkpoint_interval_s` seconds and after the last epoch.

MLflow is reached only through the `TrialRecorder` object handed in (built by `tunetl.tracking`), so this
module imports no mlflow. The child run is found again by the Tune trial id after a restart, so a
retried or resumed trial keeps one MLflow run.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from tunetl.config import ExperimentConfig
from tunetl.data import TaskData
from tunetl.params import SEARCH_PARAMS, ResolvedParams, TrialParams
from tunetl.records import (
    DIVERGED_KEY,
    ERROR_TAG,
    HOST_TAG,
    MAX_TAG_CHARS,
    NODE_TAG,
    PBT_DONOR_TAG,
    PID_TAG,
    RECORD_KEY,
    RESTORED_EPOCH_TAG,
    RUN_ID_KEY,
    TRIAL_ID_TAG,
)
from tunetl.search.faults import maybe_fail
from tunetl.search.schedulers import PAUSING
from tunetl.search.space import SearchSpace
from tunetl.search.tune_space import TASK, trial_params, trial_seed
from tunetl.trial import EpochMetrics, TrialRunner, has_diverged, pick_device, trial_threads

CHECKPOINT_FILE = "trial.pt"


@dataclass
class TaskBundle:
    """What trials of one target task share: loaded once on the driver, sent once through Ray."""

    experiment: ExperimentConfig
    task: TaskData
    source_state: dict[str, torch.Tensor] | None
    source: str
    features: dict[str, float]
    #: backbone -> its bundle when the search space varies the backbone (source weights and features
    #: are per backbone); empty otherwise.
    others: dict[str, TaskBundle] = field(default_factory=dict)

    def for_backbone(self, backbone: str | None) -> TaskBundle:
        """The bundle of a trial's backbone (None: the experiment's own)."""
        if backbone is None or backbone == self.experiment.backbone:
            return self
        if backbone not in self.others:
            raise ValueError(f"backbone {backbone!r} was not prepared for this search ({sorted(self.others)})")
        return self.others[backbone]


class TrialRecorder(Protocol):
    """What a trial needs from the tracking layer (implemented by `tunetl.tracking.TrialLogger`)."""

    def start(self, params: dict[str, Any], tags: dict[str, str] | None = None) -> str | None: ...
    def find_run(self, trial_id: str) -> str | None: ...
    def log_epoch(self, run_id: str, epoch: int, metrics: dict[str, float]) -> None: ...
    def set_tags(self, run_id: str, tags: dict[str, str]) -> None: ...
    def reopen(self, run_id: str, tags: dict[str, str]) -> int: ...
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


def logged_params(
    resolved: ResolvedParams, experiment: ExperimentConfig, task: TaskData, seed: int, source: str
) -> dict[str, Any]:
    """The child run's params: every search parameter by YAML name, plus the contract's extras."""
    values = resolved.model_dump()
    out: dict[str, Any] = {k: values[k] for k in SEARCH_PARAMS}
    out.update(
        backbone=experiment.backbone,
        dataset=task.name,
        source=source,
        seed=seed,
        epochs=experiment.training.epochs,
        batch_size=experiment.training.batch_size,
    )
    return out


def run_trial(
    config: dict[str, Any],
    *,
    space: SearchSpace,
    bundles: list[TaskBundle],
    recorder: TrialRecorder | None,
) -> None:
    from ray import tune

    bundle = bundles[int(config.get(TASK, 0))]
    experiment, source = bundle.experiment, bundle.source
    trial_id = tune.get_context().get_trial_id() or "local"
    torch.set_num_threads(trial_threads(experiment))
    seed = trial_seed(config, experiment.seeds)
    try:
        params = TrialParams.model_validate(trial_params(space, config))
        bundle = bundle.for_backbone(params.backbone)
        experiment, task, source_state = bundle.experiment, bundle.task, bundle.source_state
        source, features = bundle.source, bundle.features
        runner = TrialRunner(
            params,
            experiment,
            seed=seed,
            task=task,
            source_state=source_state,
            device=pick_device(experiment.resources.gpu),
        )
    except Exception:
        # Failed before its first report: without this the trial would have no MLflow run at all.
        if recorder is not None and recorder.find_run(trial_id) is None:
            _record_early_failure(recorder, space, config, experiment, seed, source, trial_id)
        raise
    run_id: str | None = None
    logged = 0
    checkpoint = tune.get_checkpoint()
    donor: str | None = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, map_location=runner.device, weights_only=True)
        # PBT's exploit: another trial's checkpoint, continued at this trial's (perturbed) learning rates.
        runner.load_state_dict(state)
        if state.get("trial_id") in (None, "", trial_id):
            run_id = state.get("run_id") or None
        else:
            donor = str(state["trial_id"])
    if recorder is not None and run_id is None:
        run_id = recorder.find_run(trial_id)
    if recorder is not None and run_id is not None and runner.epoch >= experiment.training.epochs:
        # Restored from its last epoch's checkpoint (the driver died before Tune saved it as done): nothing is
        # left to train or log, and a run already closed FINISHED stays as it is (`finish` leaves it).
        logged = runner.epoch
    elif recorder is not None and run_id is not None:
        # A retried or resumed trial: its run may have been closed (KILLED) when the driver stopped.
        tags = {RESTORED_EPOCH_TAG: str(runner.epoch)}
        if donor is not None:
            tags[PBT_DONOR_TAG] = f"{donor}@{runner.epoch}"
        logged = recorder.reopen(run_id, tags)
        if donor is not None:
            logged = runner.epoch  # the epochs after the donor's are this trial's from here on
    run_params = logged_params(runner.params, experiment, task, seed, source)
    run_params.update(_trial_features(runner, features))
    label = trial_label(runner)
    run_tags = {**_node_tags(trial_id), "mlflow.runName": label}
    if recorder is not None and run_id is None:
        run_id = recorder.start(run_params, tags=run_tags)
    # The run's params and tags also go into Ray's results (first report of this attempt), so that
    # `tunetl sync` / `export --from-storage` can rebuild the run when MLflow missed it.
    record: str | None = json.dumps({"params": run_params, "tags": run_tags})
    epochs = experiment.training.epochs
    # Schedulers that pause trials continue them from their last checkpoint: save one every epoch.
    interval = 0.0 if experiment.scheduler.type in PAUSING else experiment.training.checkpoint_interval_s
    decisions = decision_epochs(experiment)
    last_checkpoint = time.monotonic()
    saved_best = runner.best_epoch
    diverged = False
    try:
        while runner.epoch < epochs:
            m = runner.run_epoch()
            diverged = has_diverged(m.train_loss)
            # An epoch redone after a restart is the same computation (resume is bit for bit): log it once.
            if recorder is not None and run_id is not None and m.epoch > logged:
                recorder.log_epoch(run_id, m.epoch, {**_epoch_metrics(m, diverged), **_tracked_extras(runner)})
            # Every checkpoint carries the best epoch's weights; one is also written where ASHA may stop the
            # trial after this report, if the best epoch is not saved yet, so the delivered weights exist.
            unsaved_best = runner.best_epoch > saved_best
            save = (diverged or m.epoch == epochs or time.monotonic() - last_checkpoint >= interval
                    or (unsaved_best and m.epoch in decisions))
            _report(runner, m, run_id, diverged, save, label, record, trial_id)
            record = None
            if save:
                last_checkpoint = time.monotonic()
                saved_best = runner.best_epoch
            maybe_fail(trial_id, label, m.epoch)
            if diverged:
                break
        # The driver's RunCloser closes this run too (it must: ASHA-stopped trials never get
        # here). Closing it here as well keeps runs of resumed searches closed, where Tune may not
        # carry the callback over; finishing twice is idempotent.
        if recorder is not None and run_id is not None:
            recorder.finish(run_id, status="FINISHED", best_val_acc=_best(runner), diverged=diverged)
    except Exception:
        if recorder is not None and run_id is not None:
            recorder.set_tags(run_id, {ERROR_TAG: traceback.format_exc()[-MAX_TAG_CHARS:]})
        raise


def _record_early_failure(
    recorder: TrialRecorder, space: SearchSpace, config: dict[str, Any], experiment: ExperimentConfig,
    seed: int, source: str, trial_id: str,
) -> None:
    """A FAILED MLflow run, with the trial's parameters and traceback, for a trial that never started."""
    error = traceback.format_exc()[-MAX_TAG_CHARS:]
    try:
        raw = {k: v for k, v in trial_params(space, config).items() if k in SEARCH_PARAMS}
    except Exception:  # noqa: BLE001 - the parameters themselves may be what failed
        raw = {}
    params = {**raw, "backbone": experiment.backbone, "seed": seed, "source": source,
              "epochs": experiment.training.epochs}
    run_id = recorder.start(params, tags={**_node_tags(trial_id), ERROR_TAG: error})
    if run_id is not None:
        recorder.finish(run_id, status="FAILED", best_val_acc=None, error=error)


def decision_epochs(experiment: ExperimentConfig) -> frozenset[int]:
    """Epochs after whose report ASHA may stop a trial (its rung milestones, as Ray computes them)."""
    sched, epochs = experiment.scheduler, experiment.training.epochs
    if sched.type != "asha":
        return frozenset()
    grace = min(sched.grace_period, epochs)
    rungs = int(math.log(epochs / grace) / math.log(sched.reduction_factor) + 1)
    return frozenset(math.ceil(grace * sched.reduction_factor**k) for k in range(rungs))


def trial_label(runner: TrialRunner) -> str:
    """A short readable name for MLflow run names (the progress table adds the backbone)."""
    p = runner.params
    name = p.condition or f"T{p.transfer_depth}F{p.frozen_depth}"
    if p.backbone:
        name = f"{p.backbone.removeprefix('timm/')} {name}"
    extra = f" lr{p.inner_lr:g}/{p.last_lr:g}" if p.inner_lr != p.last_lr else ""
    scale = f" x{p.lr_scale:g}" if p.lr_scale != 1 else ""
    return f"{name} ipl={p.images_per_label}{extra}{scale} seed={runner.seed}"


def label_of(params: dict[str, Any], seed: int, backbone: str) -> str:
    """A trial's name before it runs, from its search parameters: condition (or depths), images per
    label, backbone (its own where the space varies it, else `backbone`), seed; learning rates only
    where they were set."""
    name = params.get("condition") or f"T{params.get('transfer_depth', '-')}F{params.get('frozen_depth', 0)}"
    extra = "".join(f" {k}={params[k]:.3g}" for k in ("inner_lr", "last_lr", "lr_scale", "base_lr")
                    if isinstance(params.get(k), float))
    shown = params.get("backbone") or backbone
    return f"{name} ipl={params.get('images_per_label', 'all')}{extra} {shown} seed={seed}"


def _best(runner: TrialRunner) -> float | None:
    return runner.best_val_acc if math.isfinite(runner.best_val_acc) else None


def _epoch_metrics(m: EpochMetrics, diverged: bool) -> dict[str, float]:
    metrics = {"val_acc": m.val_acc, "val_loss": m.val_loss, "train_acc": m.train_acc, "train_loss": m.train_loss,
               "lr_factor": m.lr_factor}
    if diverged:
        # A diverged model predicts garbage; 0 accuracy keeps NaN out of schedulers and tables.
        metrics = {k: (0.0 if k.endswith("acc") else v) for k, v in metrics.items()}
    return {k: float(v) for k, v in metrics.items() if math.isfinite(v)}


def objective_metrics(runner: TrialRunner) -> dict[str, float]:
    """What multi-objective searches minimise besides accuracy: training seconds so far, trained weights."""
    trained = sum(p.numel() for p in runner.model.parameters() if p.requires_grad)
    return {"train_seconds": float(sum(m.seconds for m in runner.history)), "num_params": float(trained)}


def lr_metrics(runner: TrialRunner) -> dict[str, float]:
    """The learning rates a trial trains at this epoch (PBT changes them mid-run)."""
    p = runner.params
    return {f"lr.{k}": float(v) for k, v in (("inner_lr", p.inner_lr), ("last_lr", p.last_lr),
                                             ("lr_scale", p.lr_scale)) if v is not None}


def _tracked_extras(runner: TrialRunner) -> dict[str, float]:
    """Per-epoch MLflow metrics beyond the contract's, only where the search uses them."""
    experiment = runner.experiment
    out: dict[str, float] = {}
    if experiment.scheduler.type in ("pbt", "pb2"):
        out |= lr_metrics(runner)
    if experiment.searcher.objectives:
        out |= {k: v for k, v in objective_metrics(runner).items() if k in experiment.searcher.objectives}
    return out


def _report(
    runner: TrialRunner, m: EpochMetrics, run_id: str | None, diverged: bool, save: bool, label: str,
    record: str | None = None, trial_id: str = "",
) -> None:
    """One `tune.report` per epoch; with a checkpoint only when `save` (they cost a state snapshot)."""
    from ray import tune

    metrics: dict[str, Any] = {
        **_epoch_metrics(m, diverged),
        "epoch": m.epoch,
        "best_val_acc": _best(runner) or 0.0,
        "best_epoch": runner.best_epoch,
        "epoch_seconds": m.seconds,
        DIVERGED_KEY: diverged,
        RUN_ID_KEY: run_id or "",
        "trial": label,
        # Only a multi-objective searcher reads these (they are summed over the history every epoch).
        **(objective_metrics(runner) if runner.experiment.searcher.objectives else {}),
    }
    if record is not None:
        metrics[RECORD_KEY] = record
    if not save:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({**runner.state_dict(), "run_id": run_id or "", "trial_id": trial_id}, Path(d) / CHECKPOINT_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def _trial_features(runner: TrialRunner, features: dict[str, float]) -> dict[str, float]:
    """Dataset features as `feature.*` params: the subset's own counts plus the driver's task features."""
    labels = runner.task.train.labels[runner.train_idx]
    counts = [int((labels == c).sum()) for c in range(len(runner.task.class_names))]
    own = {
        "feature.images_per_label": float(min(counts)),
        "feature.num_classes": float(len(counts)),
        "feature.num_train": float(len(labels)),
    }
    return {**features, **own}


def _node_tags(trial_id: str) -> dict[str, str]:
    import ray

    return {
        NODE_TAG: ray.get_runtime_context().get_node_id(),
        HOST_TAG: os.uname().nodename,
        TRIAL_ID_TAG: trial_id,
        PID_TAG: str(os.getpid()),
    }
