"""The Tune function trainable: one `TrialRunner`, one `tune.report` per epoch, a checkpoint every
`training.checkpoint_interval_s` seconds and after the last epoch.

A trial writes no MLflow record itself: its reports carry what its run needs (the run's params and tags
in each attempt's first report, the epoch's metrics in every one) and the driver's `RunWriter` writes
them, so workers never import mlflow or open a store.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunetl.config import ExperimentConfig
from tunetl.data import TaskData
from tunetl.params import SEARCH_PARAMS, ResolvedParams, TrialParams
from tunetl.records import (
    DIVERGED_KEY,
    DONOR_KEY,
    HISTORY_KEY,
    HOST_TAG,
    NODE_TAG,
    PID_TAG,
    RECORD_KEY,
    RESTORED_KEY,
    TRACKED_KEY,
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


def run_trial(config: dict[str, Any], *, space: SearchSpace, bundles: list[TaskBundle]) -> None:
    """Train one trial, one `tune.report` per epoch. Its MLflow run is written on the driver
    (`run_writer.RunWriter`) from these reports, so a worker imports no mlflow."""
    from ray import tune

    bundle = bundles[int(config.get(TASK, 0))]
    trial_id = tune.get_context().get_trial_id() or "local"
    torch.set_num_threads(trial_threads(bundle.experiment))
    seed = trial_seed(config, bundle.experiment.seeds)
    # A failure before the first report reaches the driver as the trial's error: it records a FAILED run.
    params = TrialParams.model_validate(trial_params(space, config))
    bundle = bundle.for_backbone(params.backbone)
    experiment, task = bundle.experiment, bundle.task
    runner = TrialRunner(params, experiment, seed=seed, task=task, source_state=bundle.source_state,
                         device=pick_device(experiment.resources.gpu))
    run_params = logged_params(runner.params, experiment, task, seed, bundle.source)
    run_params.update(_trial_features(runner, bundle.features))
    label = trial_label(runner)
    # The first report of each attempt carries the run's params and tags: the driver creates (or reopens)
    # the run from it, and `tunetl sync` / `export --from-storage` rebuild the run from Ray's results.
    record: dict[str, Any] = {"params": run_params, "tags": {**_node_tags(trial_id), "mlflow.runName": label}}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / CHECKPOINT_FILE, map_location=runner.device, weights_only=True)
        # PBT's exploit: another trial's checkpoint, continued at this trial's (perturbed) learning rates.
        runner.load_state_dict(state)
        record[RESTORED_KEY] = runner.epoch
        if state.get("trial_id") not in (None, "", trial_id):
            record[DONOR_KEY] = str(state["trial_id"])
        else:
            # The epochs the checkpoint holds, for the driver to fill in any its MLflow run lacks (a driver
            # killed with records still queued).
            record[HISTORY_KEY] = [{"epoch": m.epoch, **_epoch_metrics(m, False)} for m in runner.history]
    epochs = experiment.training.epochs
    if runner.epoch >= epochs:
        # Restored from its last epoch's checkpoint (the driver died before Tune saved the trial as done):
        # nothing is left to train; one report hands the driver the record to close the run with.
        last = runner.history[-1]
        _report(runner, last, has_diverged(last.train_loss), False, label, json.dumps(record), trial_id, {})
        return
    # Schedulers that pause trials continue them from their last checkpoint: save one every epoch.
    interval = 0.0 if experiment.scheduler.type in PAUSING else experiment.training.checkpoint_interval_s
    decisions = decision_epochs(experiment)
    last_checkpoint = time.monotonic()
    saved_best = runner.best_epoch
    text: str | None = json.dumps(record)
    while runner.epoch < epochs:
        m = runner.run_epoch()
        diverged = has_diverged(m.train_loss)
        # Every checkpoint carries the best epoch's weights; one is also written where ASHA may stop the
        # trial after this report, if the best epoch is not saved yet, so the delivered weights exist.
        unsaved_best = runner.best_epoch > saved_best
        save = (diverged or m.epoch == epochs or time.monotonic() - last_checkpoint >= interval
                or (unsaved_best and m.epoch in decisions))
        tracked = {**_epoch_metrics(m, diverged), **_tracked_extras(runner)}
        _report(runner, m, diverged, save, label, text, trial_id, tracked)
        text = None
        if save:
            last_checkpoint = time.monotonic()
            saved_best = runner.best_epoch
        maybe_fail(trial_id, label, m.epoch)
        if diverged:
            break


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
    runner: TrialRunner, m: EpochMetrics, diverged: bool, save: bool, label: str, record: str | None,
    trial_id: str, tracked: dict[str, float],
) -> None:
    """One `tune.report` per epoch; with a checkpoint only when `save` (they cost a state snapshot).
    `tracked`: the epoch's MLflow metrics, which the driver logs (empty: log nothing)."""
    from ray import tune

    metrics: dict[str, Any] = {
        **_epoch_metrics(m, diverged),
        "epoch": m.epoch,
        "best_val_acc": _best(runner) or 0.0,
        "best_epoch": runner.best_epoch,
        "epoch_seconds": m.seconds,
        DIVERGED_KEY: diverged,
        "trial": label,
        # Only a multi-objective searcher reads these (they are summed over the history every epoch).
        **(objective_metrics(runner) if runner.experiment.searcher.objectives else {}),
    }
    if tracked:
        metrics[TRACKED_KEY] = tracked
    if record is not None:
        metrics[RECORD_KEY] = record
    if not save:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save({**runner.state_dict(), "trial_id": trial_id}, Path(d) / CHECKPOINT_FILE)
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
