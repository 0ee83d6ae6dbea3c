"""The Python API that the CLI mirrors: run a search, ask MLflow for the best configurations, export.

This is the one place where search (Ray), tracking (MLflow) and meta (dataset features) meet, so that
each of those layers stays independent of the others.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tunetl.config import ConfigError, ExperimentConfig, load_experiment
from tunetl.params import SEARCH_PARAMS


@dataclass
class RunSummary:
    experiment: str
    parent_run_id: str
    tracking_uri: str
    storage_path: Path
    num_trials: int
    num_failed: int
    seconds: float
    best: pd.DataFrame

    @property
    def ok(self) -> bool:
        return self.num_trials > self.num_failed


@dataclass
class Plan:
    """Everything checked before Ray starts or an MLflow run exists."""

    experiment: ExperimentConfig
    space: Any
    task: Any
    grid_points: int
    skipped: int


def plan(
    experiment: str | Path | dict[str, Any] | ExperimentConfig,
    overrides: list[str] | None = None,
    name: str | None = None,
) -> Plan:
    """Load and validate an experiment completely; raises ConfigError naming the key on bad input."""
    from tunetl.data import load_dataset
    from tunetl.models import list_backbones
    from tunetl.search.space import SpaceError, check_space, parse_space

    exp = experiment if isinstance(experiment, ExperimentConfig) else load_experiment(experiment, overrides, name)
    origin = exp.search_space_file if exp.search_space_file not in (None, "inline") else "search_space"
    backbones = list_backbones()
    if exp.backbone not in backbones:
        raise ConfigError(f"backbone: unknown backbone {exp.backbone!r}; available: {', '.join(backbones)}")
    try:
        task = load_dataset(exp.dataset)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise ConfigError(f"dataset: {err}") from None
    if exp.source.train_on is not None:
        try:
            load_dataset(exp.source.train_on)
        except (ValueError, FileNotFoundError, OSError) as err:
            raise ConfigError(f"source.train_on: {err}") from None
    labels = task.train.labels
    counts = [int((labels == c).sum()) for c in range(len(task.class_names))]
    smallest = min(range(len(counts)), key=counts.__getitem__)
    try:
        space = parse_space(exp.search_space, origin=origin)
        check_space(
            space,
            num_stages=len(backbones[exp.backbone]),
            min_class_count=counts[smallest],
            min_class_name=task.class_names[smallest],
            has_source=exp.source.kind != "none",
            searcher=exp.searcher.type,
        )
    except SpaceError as err:
        raise ConfigError(str(err)) from None
    points, skipped = space.grid_points()
    return Plan(experiment=exp, space=space, task=task, grid_points=len(points), skipped=skipped)


def _needs_source(p: Plan) -> bool:
    from tunetl.search.space import _values_of

    depths = _values_of(p.space, "transfer_depth")
    return p.experiment.source.kind != "none" and (not depths or any(d is None or d > 0 for d in depths))


def run(
    experiment: str | Path | dict[str, Any] | ExperimentConfig,
    *,
    overrides: list[str] | None = None,
    name: str | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage: str | Path | None = None,
    resume: bool = False,
    num_cpus: int | None = None,
) -> RunSummary:
    """Run (or resume) a search; every trial becomes an MLflow child run under one parent run."""
    from tunetl.meta.features import task_features
    from tunetl.search import runner as rn
    from tunetl.source import source_description, source_state_for
    from tunetl.tracking import SearchRecorder, check_tracking, resolve_tracking_uri

    p = plan(experiment, overrides, name)
    exp = p.experiment
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking(uri)
    storage_path = Path(storage).resolve() if storage else rn.default_storage()
    started = time.perf_counter()
    run_dir: Path | None = None
    if resume:
        run_dir = rn.latest_run_dir(storage_path, exp.name)
        if run_dir is None:
            raise ConfigError(f"--resume: no earlier search of {exp.name!r} under {storage_path}")
        state = rn.read_state(run_dir)
        if state["fingerprint"] != exp.fingerprint():
            raise ConfigError(
                f"--resume: the experiment or its search space changed since {run_dir.name} started; "
                "resume needs the same inputs (run without --resume to start a new search)"
            )
    print(f"[tunetl] {exp.name}: {p.task.name}, backbone {exp.backbone}, {p.grid_points} grid point(s)"
          + (f", {p.skipped} invalid combination(s) skipped" if p.skipped else "")
          + f" x {len(exp.seeds)} seed(s), searcher {exp.searcher.type}, scheduler {exp.scheduler.type}",
          flush=True)
    from tunetl.trial import model_in_channels

    channels = model_in_channels(exp, p.task)
    source_state = source_state_for(exp, storage_path / "cache", in_channels=channels) if _needs_source(p) else None
    features = task_features(exp, p.task, source_state)
    rn.init_ray(address, num_cpus=num_cpus)
    recorder = SearchRecorder(uri, exp.name)
    kwargs = dict(
        experiment=exp,
        space=p.space,
        task=p.task,
        source_state=source_state,
        source=source_description(exp),
        features=features,
    )
    if resume and run_dir is not None:
        parent = state["parent_run_id"]
        recorder.reopen_parent(parent)
        tuner = rn.restore_tuner(run_dir, recorder=recorder.trial_logger(), **kwargs)
    else:
        run_name = f"{exp.name}_{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = storage_path / run_name
        parent = recorder.start_parent(_parent_params(exp, p), tags={"tunetl.storage": str(run_dir)})
        rn.write_state(run_dir, {"fingerprint": exp.fingerprint(), "parent_run_id": parent,
                                 "experiment": exp.name, "tracking_uri": uri})
        tuner = rn.build_tuner(recorder=recorder.trial_logger(), storage=storage_path, run_name=run_name, **kwargs)
    try:
        outcome = rn.fit(tuner, started, run_dir)
    except BaseException:
        recorder.end_parent("KILLED")
        raise
    best = best_table(exp.name, uri, parent_run_id=parent)
    failed = outcome.num_errors
    recorder.end_parent(
        "FINISHED" if outcome.num_trials > failed else "FAILED",
        summary={"num_trials": outcome.num_trials, "num_failed": failed},
    )
    return RunSummary(exp.name, parent, uri, run_dir, outcome.num_trials, failed,
                      time.perf_counter() - started, best)


def _parent_params(exp: ExperimentConfig, p: Plan) -> dict[str, Any]:
    return {
        "backbone": exp.backbone,
        "dataset": p.task.name,
        "search_space": exp.search_space_file or "inline",
        "searcher": exp.searcher.type,
        "scheduler": exp.scheduler.type,
        "epochs": exp.training.epochs,
        "seeds": list(exp.seeds),
        "grid_points": p.grid_points,
        "fingerprint": exp.fingerprint(),
    }


def trials(experiment: str | list[str], tracking_uri: str | None = None) -> pd.DataFrame:
    """Every child run (trial) of the experiment(s) as the trials frame."""
    from tunetl.tracking import load_trials, resolve_tracking_uri

    return load_trials(experiment, resolve_tracking_uri(tracking_uri))


def varying_params(frame: pd.DataFrame) -> list[str]:
    """Search parameters that take more than one value in `frame` (what a table should show)."""
    cols = []
    for k in SEARCH_PARAMS:
        if k in frame.columns and frame[k].astype(str).nunique(dropna=False) > 1:
            cols.append(k)
    return cols


def best(
    experiment: str | list[str],
    tracking_uri: str | None = None,
    *,
    metric: str = "val_acc",
    top: int = 5,
    group_by: list[str] | None = None,
    parent_run_id: str | None = None,
) -> pd.DataFrame:
    """Top configurations by mean `metric` over seeds (per group when `group_by` is given)."""
    from tunetl.tracking import best_configs

    frame = trials(experiment, tracking_uri)
    if parent_run_id is not None:
        frame = frame[frame["parent_run_id"] == parent_run_id]
    for col in group_by or []:
        if col not in frame.columns:
            raise ConfigError(f"--group-by: no column {col!r}; available: {', '.join(map(str, frame.columns))}")
    if metric not in frame.columns:
        raise ConfigError(f"--metric: no metric {metric!r} in the runs")
    return best_configs(frame, metric=metric, top=top, group_by=group_by)


def best_table(experiment: str, tracking_uri: str, parent_run_id: str | None = None) -> pd.DataFrame:
    """The table `tunetl run` ends with: the best config per images-per-label when that was searched."""
    frame = trials(experiment, tracking_uri)
    if parent_run_id is not None:
        frame = frame[frame["parent_run_id"] == parent_run_id]
    if frame.empty:
        return frame
    group = ["images_per_label"] if frame["images_per_label"].astype(str).nunique() > 1 else None
    return best(experiment, tracking_uri, metric="best_val_acc", top=1 if group else 5, group_by=group,
                parent_run_id=parent_run_id)


def condition_summary(frame: pd.DataFrame) -> str | None:
    """Accuracy (%) per condition and images per label, mean over seeds; `*` marks trials cut by ASHA.

    None when the search did not vary the transfer condition.
    """
    from tunetl.meta.analysis import condition_names, condition_pivot, condition_table

    if frame.empty or not ({"condition", "transfer_depth", "frozen_depth"} & set(varying_params(frame))):
        return None
    finished = frame[frame["status"] == "FINISHED"]
    if finished.empty:
        return None
    pivot = condition_pivot(condition_table(finished, task_cols=["images_per_label"]))
    stopped = finished.assign(condition=condition_names(finished)).groupby(
        ["images_per_label", "condition"])["stopped_early"].any()
    from tunetl.meta.analysis import ipl_label

    stopped.index = stopped.index.set_levels(
        [[ipl_label(v) for v in stopped.index.levels[0]], stopped.index.levels[1]])
    text = pivot.copy().astype(object)
    for ipl in pivot.index:
        for cond in pivot.columns:
            value = pivot.loc[ipl, cond]
            mark = "*" if stopped.get((ipl, cond), False) else ""
            text.loc[ipl, cond] = "" if pd.isna(value) else f"{value:.1f}{mark}"
    return text.to_string()


def export(experiment: str | list[str], out: str | Path, tracking_uri: str | None = None) -> Path:
    from tunetl.tracking import export_parquet

    return export_parquet(trials(experiment, tracking_uri), Path(out))


def format_table(frame: pd.DataFrame, columns: list[str] | None = None) -> str:
    """Plain-text table for the terminal; accuracies as percentages."""
    if frame.empty:
        return "(no finished trials)"
    shown = frame[columns] if columns else frame
    shown = shown.copy()
    for col in shown.columns:
        if col.endswith(("acc_mean", "acc_std")) or col in ("val_acc", "best_val_acc"):
            shown[col] = shown[col].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                        else f"{100 * v:.1f}")
    return shown.to_string(index=False)
