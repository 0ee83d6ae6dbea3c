"""The Python API that the CLI mirrors: run a search, ask MLflow for the best configurations, export.

This is the one place where search (Ray), tracking (MLflow) and meta (dataset features) meet, so that
each of those layers stays independent of the others.
"""

from __future__ import annotations

import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tunetl.config import ConfigError, ExperimentConfig, load_experiment
from tunetl.params import SEARCH_PARAMS
from tunetl.records import MAX_TAG_CHARS, SKIPPED_FILES_TAG, STORAGE_TAG

if TYPE_CHECKING:
    from tunetl.history import Continuation
    from tunetl.search.session import SearchSession


@dataclass
class RunSummary:
    experiment: str
    parent_run_id: str
    tracking_uri: str
    #: The search's folder: a local path, or a URI for object-store storage.
    storage_path: Path | str
    num_trials: int
    num_failed: int
    seconds: float
    #: This search's trials (the trials frame of its child runs).
    trials: pd.DataFrame
    best: pd.DataFrame
    #: The end of the search: test accuracies, the logged (and registered) winner; None if interrupted.
    delivery: Any = None

    @property
    def ok(self) -> bool:
        return self.num_trials > self.num_failed


@dataclass
class Plan:
    """Everything checked before Ray starts or an MLflow run exists."""

    experiment: ExperimentConfig
    space: Any
    #: One single-task experiment and its loaded data per target task.
    tasks: list[tuple[ExperimentConfig, Any]]
    grid_points: int
    skipped: int

    @property
    def task_names(self) -> str:
        return ", ".join(t.name for _, t in self.tasks)


def _load(spec: Any, where: str) -> Any:
    from tunetl.data import load_dataset

    try:
        return load_dataset(spec)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise ConfigError(f"{where}: {err}") from None


def plan(
    experiment: str | Path | dict[str, Any] | ExperimentConfig,
    overrides: list[str] | None = None,
    name: str | None = None,
) -> Plan:
    """Load and validate an experiment completely; raises ConfigError naming the key on bad input."""
    from tunetl.search.recipe import check_recipe
    from tunetl.search.space import SpaceError, check_space, parse_space

    exp = experiment if isinstance(experiment, ExperimentConfig) else load_experiment(experiment, overrides, name)
    origin = exp.search_space_file if exp.search_space_file not in (None, "inline") else "search_space"
    try:
        space = parse_space(exp.search_space, origin=origin)
    except SpaceError as err:
        raise ConfigError(str(err)) from None
    stage_counts = _stage_counts(exp, space, origin)
    tasks = []
    for i, task_exp in enumerate(exp.task_experiments()):
        where = "dataset" if exp.tasks is None else f"tasks[{i}]"
        tasks.append((task_exp, _load(task_exp.dataset, f"{where}.dataset" if exp.tasks else where)))
        if len(tasks[-1][1].class_names) < 2:
            raise ConfigError(f"{where}: {tasks[-1][1].name} has {len(tasks[-1][1].class_names)} class(es); a "
                              "classifier needs at least 2 (check the folder's subfolders or classes:)")
        if task_exp.source.train_on is not None:
            _load(task_exp.source.train_on, f"{where}.source.train_on" if exp.tasks else "source.train_on")
        if task_exp.source.weights_file is not None:
            _check_weights_file(task_exp.source.weights_file,
                                f"{where}.source.weights_file" if exp.tasks else "source.weights_file")
    counts = []
    for _, task in tasks:
        per_class = np.bincount(task.train.labels, minlength=len(task.class_names))
        c = int(per_class.argmin())
        counts.append((int(per_class[c]), f"{task.class_names[c]} of {task.name}"))
    smallest, smallest_name = min(counts)
    try:
        check_space(
            space,
            num_stages=stage_counts[exp.backbone],
            min_class_count=smallest,
            min_class_name=smallest_name,
            has_source=all(e.source.kind != "none" for e, _ in tasks),
            searcher=exp.searcher.type,
            stage_counts=stage_counts,
            default_backbone=exp.backbone,
        )
        check_recipe(space, exp.training)
    except SpaceError as err:
        raise ConfigError(str(err)) from None
    from tunetl.search.schedulers import check_scheduler
    from tunetl.search.searchers import check_searcher

    for why in (check_scheduler(exp, space), check_searcher(exp)):
        if why:
            raise ConfigError(why)
    points, skipped = space.grid_points()
    return Plan(experiment=exp, space=space, tasks=tasks, grid_points=len(points), skipped=skipped)


def _check_weights_file(path: str, where: str) -> None:
    """A weights file is read (safely: tensors only, never a pickle's code) before Ray starts."""
    from tunetl.models.weights import WeightsError, load_state_file

    if not Path(path).is_file():
        raise ConfigError(f"{where}: {path}: no such file; give the path of a state-dict file (.pt, .pth, "
                          ".safetensors)")
    try:
        load_state_file(path)
    except WeightsError as err:
        raise ConfigError(f"{where}: {err}") from None


def _check_local_run(exp: ExperimentConfig, address: str | None, num_cpus: int | None) -> None:
    """What a local Ray could never run, said before it starts (a cluster is checked once joined)."""
    import os

    if num_cpus is not None and num_cpus <= 0:
        raise ConfigError(f"--num-cpus {num_cpus}: give a positive number of CPUs (or leave it out: all)")
    if address or os.environ.get("RAY_ADDRESS"):
        return
    cpus = num_cpus or os.cpu_count() or 1
    if exp.resources.cpu > cpus:
        raise ConfigError(
            f"resources.cpu: each trial asks for {exp.resources.cpu:g} CPU(s) but the local Ray has {cpus}; "
            f"lower it (--set resources.cpu=1) or join a cluster with --address"
        )


def _stage_counts(exp: ExperimentConfig, space: Any, origin: str) -> dict[str, int]:
    """Stages of the default backbone and of every backbone the search space names (checked to exist)."""
    from tunetl.models import backbone_stages
    from tunetl.search.space import values_of

    counts: dict[str, int] = {}
    for where, name in [("backbone", exp.backbone), *((f"{origin}.backbone", b) for b in values_of(space, "backbone"))]:
        if name in counts:
            continue
        try:
            counts[name] = len(backbone_stages(name))
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
    return counts


def search_backbones(p: Plan) -> list[str]:
    """The backbones a search's trials use: the space's backbone values, else the experiment's."""
    from tunetl.search.space import values_of

    return list(dict.fromkeys(values_of(p.space, "backbone"))) or [p.experiment.backbone]


def _prune_backbones(p: Plan, bundles: list[Any]) -> dict[str, str]:
    """`searcher.prune_backbones: k`: keep the k backbones whose zero-shot score (mean over tasks of
    `feature.<prune_by>`, from each backbone's source weights) is highest; the space's backbone axis is cut
    to them and the scores become parent-run tags."""
    from tunetl.features.rank import rank_from_features
    from tunetl.search.space import Dist

    k = p.experiment.searcher.prune_backbones
    names = search_backbones(p)
    if not k or "backbone" not in p.space.dims or len(names) <= k:
        return {}
    by = p.experiment.searcher.prune_by
    key = f"feature.{by}"
    values = {b: [float(bundle.for_backbone(b).features.get(key, np.nan)) for bundle in bundles] for b in names}
    unscored = [b for b, v in values.items() if not np.isfinite(v).any()]
    if unscored:
        raise ConfigError(f"searcher.prune_backbones: no {by} score for {unscored} (it needs each backbone's "
                          "source weights: source.weights, weights_file or train_on); remove prune_backbones")
    scores = {b: float(np.nanmean(v)) for b, v in values.items()}
    kept = rank_from_features({b: {key: s} for b, s in scores.items()}, by)[:k]
    p.space.dims["backbone"] = Dist("grid", tuple(b for b in names if b in kept))
    for bundle in bundles:  # the pruned backbones' source weights need not travel to every trial
        bundle.others = {b: other for b, other in bundle.others.items() if b in kept}
    points, p.skipped = p.space.grid_points()
    p.grid_points = len(points)
    print(f"[tunetl] prune_backbones: kept {kept} of {names} by {by} "
          f"({', '.join(f'{b}: {s:.4g}' for b, s in scores.items())})", flush=True)
    return {"tunetl.prune_backbones.kept": json.dumps(kept),
            "tunetl.prune_backbones.scores": json.dumps({"by": by, **scores})}


def _bundles(p: Plan, storage: Any) -> list[Any]:
    """Per task: source weights (trained and cached once), the source's name, the task's features.

    The source cache lives in the storage (`cache/sources`); for an object store it is built in a local
    mirror and uploaded, so that a driver on another machine finds it too.
    """
    from tunetl.features.task import task_features
    from tunetl.search.space import space_needs_source
    from tunetl.search.trainable import TaskBundle
    from tunetl.source import source_description, source_state_for
    from tunetl.trial import model_in_channels

    cache = storage.cache_dir()
    needs = [exp.source.kind != "none" and space_needs_source(p.space) for exp, _ in p.tasks]
    if any(needs):
        storage.pull("cache/sources", cache / "sources")
    bundles = []
    for (task_exp, task), need in zip(p.tasks, needs, strict=True):
        per_backbone = {}
        for backbone in search_backbones(p):
            exp = task_exp.model_copy(update={"backbone": backbone})
            state = source_state_for(exp, cache, in_channels=model_in_channels(exp, task)) if need else None
            # Trials never receive the test split: it is stripped before the bundle goes to Ray.
            per_backbone[backbone] = TaskBundle(exp, task.without_test(), state, source_description(exp),
                                                task_features(exp, task, state))
        first = next(iter(per_backbone.values()))
        first.others = per_backbone
        bundles.append(first)
    if any(needs):
        storage.push(cache / "sources", "cache/sources")
    return bundles


def _source_tags(bundles: list[Any], storage: Any) -> dict[str, str]:
    """`tunetl.source.<i>` parent tags: which source (recipe, key, weights hash, storage) each task's
    features came from, so that `fit-regressor`/`predict` can insist on the same one."""
    from tunetl.features.source_match import source_tags
    from tunetl.source import source_record
    from tunetl.trial import model_in_channels

    records = [source_record(b.experiment, model_in_channels(b.experiment, b.task), b.source_state,
                             storage.display())
               for b in bundles if b.source_state is not None]
    return source_tags(records)


class SearchInterrupted(RuntimeError):
    """The search was stopped by Ctrl-C or SIGTERM; its state is saved and `--resume` finishes it."""

    def __init__(self, message: str, summary: RunSummary, signal: int | None) -> None:
        super().__init__(message)
        self.summary, self.signal = summary, signal


def run(
    experiment: str | Path | dict[str, Any] | ExperimentConfig,
    *,
    overrides: list[str] | None = None,
    name: str | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage: str | Path | None = None,
    resume: bool = False,
    new: bool = False,
    num_cpus: int | None = None,
    register_model: str | None = None,
    more: int | None = None,
) -> RunSummary:
    """Run a search, or finish an unfinished one; every trial becomes an MLflow child run under one parent.

    An unfinished search of the same experiment and space under `storage` (its driver killed or
    stopped) is resumed unless `new`. Raises `SearchInterrupted` when Ctrl-C or SIGTERM stops it.
    At the end the winner is evaluated on the test split and logged (`tunetl.delivery`);
    `register_model` (or `output.register_model`) also registers it under the alias `champion`.
    `more=N` adds N trials (per seed) to the newest finished random/Optuna search instead: its finished
    trials are told to the searcher and the new ones join its parent run.
    """
    from tunetl.search import preflight as pf
    from tunetl.search import runner as rn
    from tunetl.search.session import SearchSession, folder_to_resume, new_run_name

    p = plan(experiment, overrides, name)
    uri, store = _checked_inputs(p, address, num_cpus, tracking_uri, storage, register_model)
    started = time.perf_counter()
    cont = _continuation(p, store, uri, more, resume) if more is not None else None
    run_name = None if cont else folder_to_resume(store, p.experiment, resume=resume, new=new)
    exp = p.experiment
    recorder = _start_ray_and_recorder(p, uri, address, num_cpus)
    pf.check_resources(exp)
    pf.check_storage(store)
    pf.check_data([task for _, task in p.tasks])
    bundles = _bundles(p, store)
    prune_tags = _prune_backbones(p, bundles)
    session = SearchSession(store, exp, recorder, uri, run_name or new_run_name(exp.name))
    with session.held():
        session.open_parent(_parent_params(exp, p), more=cont,
                            tags={STORAGE_TAG: str(session.path), **_skipped_tag(p),
                                  **_source_tags(bundles, store), **prune_tags})
        with session.killed_on_stop():
            tuner = _tuner(session, p, bundles, cont)
            outcome = rn.fit(tuner, started, session.path)
        return _finish(session, outcome, p, bundles)


def _checked_inputs(p: Plan, address: str | None, num_cpus: int | None, tracking_uri: str | None,
                    storage: str | Path | None, register_model: str | None) -> tuple[str, Any]:
    """Every check that needs neither Ray nor an MLflow run: (tracking URI, search storage). Applies
    `register_model` to `p.experiment` first, so that its name is checked with the rest."""
    from tunetl.search import preflight as pf
    from tunetl.tracking import adopt_credentials, check_tracking, resolve_tracking_uri

    _check_local_run(p.experiment, address, num_cpus)
    if register_model:
        out = p.experiment.output.model_copy(update={"register_model": register_model})
        p.experiment = p.experiment.model_copy(update={"output": out})
    _check_model_name(p.experiment.output.register_model)
    uri = adopt_credentials(resolve_tracking_uri(tracking_uri))
    check_tracking(uri)
    store = pf.open_storage(storage)
    pf.check_local_storage(store)
    pf.check_address(address)
    return uri, store


def _continuation(p: Plan, store: Any, uri: str, more: int, resume: bool) -> Continuation:
    """`--more N`: the finished search to continue, its trials told to the searcher; `p.experiment`
    draws N trials (per seed)."""
    from tunetl.history import continuation

    if resume:
        raise ConfigError("--more and --resume exclude each other: --more adds trials to a finished search")
    exp = p.experiment = p.experiment.model_copy(
        update={"searcher": p.experiment.searcher.model_copy(update={"num_samples": more})})
    cont = continuation(store, exp, p.space, uri, [t.name for _, t in p.tasks])
    print(f"[tunetl] --more {more}: {len(cont.told)} finished configuration(s) of {cont.run_dir} told to the "
          f"searcher; new trials join parent run {cont.parent_run_id}", flush=True)
    return cont


def _start_ray_and_recorder(p: Plan, uri: str, address: str | None, num_cpus: int | None) -> Any:
    """Say what runs, then start Ray and the search's MLflow recorder side by side: MLflow's import and
    store set-up (1.5-1.8 s) overlap Ray's start (about 4 s)."""
    from tunetl.search import preflight as pf
    from tunetl.search.space import describe
    from tunetl.tracking import SearchRecorder

    exp = p.experiment
    print(f"[tunetl] {exp.name}: {p.task_names}; backbone {exp.backbone}; {describe(p.space)}; "
          f"x {len(exp.seeds)} seed(s); searcher {exp.searcher.type}, scheduler {exp.scheduler.type}",
          flush=True)
    with ThreadPoolExecutor(1, thread_name_prefix="tunetl-mlflow") as pool:
        recorder_ready = pool.submit(SearchRecorder, uri, exp.name)
        pf.init_ray(address, num_cpus=num_cpus)
        return recorder_ready.result()


def _tuner(session: SearchSession, p: Plan, bundles: list[Any], cont: Continuation | None) -> Any:
    """Tune's own state of the folder if it saved any; else a new Tuner in the same folder (a new search,
    or one whose driver died before Tune saved anything)."""
    from tunetl.search import runner as rn

    store, run_name, recorder, uri = session.storage, session.run_name, session.recorder, session.tracking_uri
    if rn.can_restore(store, run_name):
        # Tune's saved state holds the search's run writer, which keeps writing under the same parent run.
        return rn.restore_tuner(store, run_name, p.experiment, space=p.space, bundles=bundles)
    warm = _warm_start(p, bundles, uri)
    if warm:
        recorder.set_parent_tags({f"tunetl.warm_start.{i}": json.dumps(w) for i, w in enumerate(warm)})
    told = cont.told if cont else _history(p, uri, recorder)
    return rn.build_tuner(p.experiment, p.space, bundles=bundles, recorder=recorder.trial_logger(),
                          storage=store, run_name=run_name, warm_start=warm, told=told,
                          sampler_seed_offset=cont.earlier_trials if cont else 0)


def _check_model_name(name: str | None) -> None:
    from tunetl.tracking.registry import _check_name

    if name is None:
        return
    try:
        _check_name(name)
    except ValueError as err:
        raise ConfigError(f"--register-model / output.register_model: {err}") from None


def _deliver(p: Plan, frame: pd.DataFrame, outcome: Any, session: SearchSession, bundles: list[Any]) -> Any:
    """Test accuracy of the selected configurations, the winner's model logged (and registered)."""
    from tunetl.delivery import Delivery, deliver

    out = p.experiment.output
    try:
        return deliver(p, frame, outcome.checkpoints, tracking_uri=session.tracking_uri,
                       experiment_id=session.recorder.experiment_id, parent_run_id=session.parent_run_id,
                       # refit starts from the source weights of the winner's own backbone
                       source_state=lambda backbone: bundles[0].for_backbone(backbone).source_state,
                       register=out.register_model, refit=out.refit)
    except Exception as err:  # the search's records stand even if its model cannot be delivered
        print(f"[tunetl] the winner's model was not delivered: {type(err).__name__}: {err}", file=sys.stderr)
        return Delivery(frame, notes=[f"the winner's model was not delivered: {err}"])


def _finish(session: SearchSession, outcome: Any, p: Plan, bundles: list[Any]) -> RunSummary:
    """Close the search's runs in MLflow; mark the state finished unless it was interrupted."""
    from tunetl.tracking import load_trials

    exp, recorder, uri, parent = p.experiment, session.recorder, session.tracking_uri, session.parent_run_id
    failed = outcome.num_errors
    delivery = None
    if outcome.interrupted:
        session.close_killed()
        frame = load_trials(exp.name, uri, parent_run_id=parent)
    else:
        orphans = recorder.close_open_children("KILLED", "no trial took this run over after a restart")
        if orphans:
            print(f"[tunetl] closed {orphans} run(s) of an earlier driver as KILLED", file=sys.stderr)
        frame = load_trials(exp.name, uri, parent_run_id=parent)
        delivery = _deliver(p, frame, outcome, session, bundles)
        frame = delivery.frame
        recorder.end_parent(
            "FINISHED" if outcome.num_trials > failed else "FAILED",
            summary={"num_trials": outcome.num_trials, "num_failed": failed, **delivery.parent_metrics},
        )
        session.mark_finished()
    summary = RunSummary(exp.name, parent, uri, outcome.path, outcome.num_trials, failed,
                         outcome.seconds, frame, best_table(frame), delivery)
    if outcome.interrupted:
        left = f"with {outcome.num_incomplete} trial(s) unfinished" if outcome.num_incomplete else "before it finished"
        raise SearchInterrupted(
            f"search {session.run_name} stopped {left}; its state is saved: run the same command again (or add "
            "--resume) to finish it", summary, outcome.signal)
    return summary


def _history(p: Plan, uri: str, recorder: Any) -> list[Any]:
    """`searcher.warm_start: history`: earlier searches' finished trials, tagged on the parent run."""
    from tunetl.history import history_seeds, seed_tags

    if "history" not in p.experiment.searcher.warm_starts:
        return []
    seeds = history_seeds(p.experiment, p.space, uri, [t.name for _, t in p.tasks])
    recorder.set_parent_tags(seed_tags("tunetl.warm_start.history", seeds))
    print(f"[tunetl] warm start from history: {len(seeds)} finished configuration(s) of earlier searches of "
          f"{p.experiment.name!r} told to the searcher", flush=True)
    return seeds


def _warm_start(p: Plan, bundles: list[Any], uri: str) -> list[dict[str, Any]] | None:
    """`searcher.warm_start: MODEL`: the meta-model's recommendation per task, as Optuna's first points."""
    names = [n for n in p.experiment.searcher.warm_starts if n != "history"]
    if not names:
        return None
    name = names[0]
    from tunetl.meta.predict import recommend, subset_features
    from tunetl.search.space import values_of
    from tunetl.search.tune_space import warm_start_point
    from tunetl.tracking.registry import load_meta_model

    model, model_name, version = load_meta_model(name, uri)
    sizes = [v for v in values_of(p.space, "images_per_label") if isinstance(v, int)]
    points = []
    for i, bundle in enumerate(bundles):
        feats = subset_features(bundle.features, min(sizes) if sizes else None)
        rec = recommend(model, feats, name=model_name, version=version)["recommendation"]
        points.append(warm_start_point(p.space, rec, task=i if len(bundles) > 1 else None))
    print(f"[tunetl] warm start from {model_name} version {version}: {points}", flush=True)
    return points


def _parent_params(exp: ExperimentConfig, p: Plan) -> dict[str, Any]:
    return {
        "backbone": exp.backbone,
        "dataset": p.task_names[:500],
        "search_space": exp.search_space_file or "inline",
        "searcher": exp.searcher.type,
        "scheduler": exp.scheduler.type,
        "epochs": exp.training.epochs,
        "seeds": list(exp.seeds),
        "grid_points": p.grid_points,
        "fingerprint": exp.fingerprint(),
        # Files the pre-flight scan left out (`dataset.bad_files: skip`); their names are a parent tag.
        "skipped_files": sum(len(task.skipped_files) for _, task in p.tasks),
        **_budget_params(exp),
    }


def _budget_params(exp: ExperimentConfig) -> dict[str, Any]:
    """The search's budgets and objectives, where set (parent-run params)."""
    out: dict[str, Any] = {f"run.{k}": v for k, v in exp.run.model_dump().items() if v is not None}
    if exp.searcher.objectives:
        out["objectives"] = list(exp.searcher.objectives)
    if exp.searcher.type != "grid":
        out["num_samples"] = exp.searcher.num_samples
    return out


def _skipped_tag(p: Plan) -> dict[str, str]:
    names = [f"{task.name}: {f}" for _, task in p.tasks for f in task.skipped_files]
    return {SKIPPED_FILES_TAG: "\n".join(names)[:MAX_TAG_CHARS]} if names else {}


def tracking_store(tracking_uri: str | None) -> str:
    """The tracking URI to read: resolved, its credentials moved into MLflow's variables (never printed),
    and checked to answer within seconds (MLflow alone retries for minutes, then quotes the URI whole)."""
    from tunetl.tracking import adopt_credentials, check_tracking, resolve_tracking_uri

    uri = adopt_credentials(resolve_tracking_uri(tracking_uri))
    check_tracking(uri)
    return uri


def trials(experiment: str | list[str], tracking_uri: str | None = None) -> pd.DataFrame:
    """Every child run (trial) of the experiment(s) as the trials frame."""
    from tunetl.tracking import load_trials

    return load_trials(experiment, tracking_store(tracking_uri))


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
    metric: str = "best_val_acc",
    top: int = 5,
    group_by: list[str] | None = None,
    parent_run_id: str | None = None,
) -> pd.DataFrame:
    """Top configurations by mean `metric` over seeds (per group when `group_by` is given).

    The default, `best_val_acc`, is a trial's score: its best epoch's validation accuracy, the epoch
    whose weights the search delivers; `val_acc` ranks by the last epoch instead."""
    frame = trials(experiment, tracking_uri)
    if parent_run_id is not None:
        frame = frame[frame["parent_run_id"] == parent_run_id]
    return rank(frame, metric=metric, top=top, group_by=group_by)


def pareto(experiment: str | list[str], tracking_uri: str | None = None,
           objectives: str = "val_acc,train_seconds") -> pd.DataFrame:
    """The trials on the Pareto front of `objectives` (comma-separated), best accuracy first."""
    from tunetl.config import OBJECTIVE_COLUMN
    from tunetl.pareto import pareto_front, parse_objectives

    try:
        names = parse_objectives(objectives)
        front = pareto_front(trials(experiment, tracking_uri), names)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    keep = ["run_id", *varying_params(front), "seed", *(OBJECTIVE_COLUMN[n] for n in names)]
    return front[[c for c in dict.fromkeys(keep) if c in front.columns]].reset_index(drop=True)


def rank(frame: pd.DataFrame, *, metric: str = "best_val_acc", top: int = 5,
         group_by: list[str] | None = None) -> pd.DataFrame:
    """`best` on a trials frame already in hand (no MLflow query)."""
    from tunetl.tracking import best_configs

    for col in group_by or []:
        if col not in frame.columns:
            raise ConfigError(f"--group-by: no column {col!r}; available: {', '.join(map(str, frame.columns))}")
    if metric not in frame.columns:
        raise ConfigError(f"--metric: no metric {metric!r} in the runs")
    return best_configs(frame, metric=metric, top=top, group_by=group_by)


def best_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The table `tunetl run` ends with: the best config per backbone and images-per-label, where searched."""
    if frame.empty:
        return frame
    group = [c for c in ("backbone", "images_per_label") if c in frame.columns
             and frame[c].astype(str).nunique() > 1] or None
    return rank(frame, metric="best_val_acc", top=1 if group else 5, group_by=group)


def condition_summary(frame: pd.DataFrame) -> str | None:
    """Accuracy (%) per condition and images per label, mean over seeds; `*` marks trials cut by ASHA.

    None when the search did not vary the transfer condition.
    """
    from tunetl.meta.analysis import condition_pivot, condition_table

    if frame.empty or not ({"condition", "transfer_depth", "frozen_depth"} & set(varying_params(frame))):
        return None
    finished = frame[frame["status"] == "FINISHED"]
    if finished.empty:
        return None
    table = condition_table(finished, task_cols=["images_per_label"])
    pivot = condition_pivot(table)
    stopped = condition_pivot(table, "stopped", decimals=None)
    text = pivot.copy().astype(object)
    for ipl in pivot.index:
        for cond in pivot.columns:
            value = pivot.loc[ipl, cond]
            cut = stopped.loc[ipl, cond]
            mark = "*" if not pd.isna(cut) and bool(cut) else ""
            text.loc[ipl, cond] = "" if pd.isna(value) else f"{value:.1f}{mark}"
    return text.to_string()


def export(experiment: str | list[str], out: str | Path, tracking_uri: str | None = None) -> Path:
    from tunetl.tracking import export_parquet

    return export_parquet(trials(experiment, tracking_uri), Path(out))


def _stored_searches(storage: str | Path, run: str | None) -> list[Any]:
    from tunetl.search.results import StorageError, load_searches

    try:
        return load_searches(storage, run)
    except StorageError as err:
        raise ConfigError(str(err)) from None


def export_storage(storage: str | Path, out: str | Path, run: str | None = None) -> Path:
    """Every trial of the searches under `storage` (or the one named `run`) to Parquet from Ray's results
    alone: no tracking server or database is read. Same columns and types as `export`, plus
    `trial_id` and `search`."""
    from tunetl.search.results import param_names, trials_frame
    from tunetl.tracking.query import export_parquet, typed_trials

    searches = _stored_searches(storage, run)
    return export_parquet(typed_trials(trials_frame(searches), param_names(searches)), Path(out))


def sync(storage: str | Path, run: str | None = None, tracking_uri: str | None = None) -> list[Any]:
    """Bring MLflow up to Ray's results of the searches under `storage` (or `run`): child runs a trial lacks
    are created under the search's parent run, missing params and epochs logged, ended trials' runs
    closed. Idempotent. The tracking URI defaults to the one the search recorded to."""
    from tunetl.tracking import check_tracking, resolve_tracking_uri
    from tunetl.tracking.sync import sync_search

    reports = []
    checked: set[str] = set()
    for search in _stored_searches(storage, run):
        uri = resolve_tracking_uri(tracking_uri or search.tracking_uri)
        if uri not in checked:
            check_tracking(uri)
            checked.add(uri)
        reports.append(sync_search(search, uri))
    return reports


def report(experiment: str | list[str], out: str | Path, tracking_uri: str | None = None,
           curves: int = 5) -> Path:
    """Plots and tables of an experiment's trials (learning curves of the `curves` best); returns index.md."""
    from tunetl.report import write_report
    from tunetl.tracking import metric_histories

    uri = tracking_store(tracking_uri)
    frame = trials(experiment, uri)
    done = frame[frame["status"] == "FINISHED"].sort_values("best_val_acc", ascending=False)
    histories = metric_histories(list(done["run_id"].head(curves)), uri) if curves else None
    names = experiment if isinstance(experiment, str) else ", ".join(experiment)
    return write_report(frame, out, title=names, curves=histories)


def source_spec(text: str | None) -> Any:
    """`--source`: `imagenet`, a weights file, or a dataset to train a source on (builtin:NAME[...] or a folder)."""
    from tunetl.config import SourceSpec
    from tunetl.data import DatasetSpec

    if text is None or text == "none":
        return SourceSpec()
    if text == "imagenet":
        return SourceSpec(weights="imagenet")
    path = Path(text)
    if path.is_file():
        return SourceSpec(weights_file=str(path.resolve()))
    return SourceSpec(train_on=DatasetSpec.parse(text))


def source_features(
    dataset: str,
    source: str | None = None,
    backbone: str | None = None,
    *,
    storage: str | Path | None = None,
    images_per_label: int | None = None,
    records: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, float], Any]:
    """`feature.*` of a target dataset and the source they came from (`SourceUsed`, None without one).

    With `records` (a meta-model's `sources`) the source must be the one those searches used, or another
    dataset trained with their recipe; anything else raises `SourceMismatch` naming the difference.
    Sources trained here are cached under `<storage>/cache/sources/` (`storage`: a record's storage, else
    `--storage`, default ./tunetl_runs, the same cache `tunetl run` uses).
    """
    from tunetl.data import DatasetSpec
    from tunetl.features.source_match import resolve_source
    from tunetl.features.task import task_features
    from tunetl.meta.predict import subset_features

    try:
        spec = DatasetSpec.parse(dataset)
    except ValueError as err:
        raise ConfigError(f"--dataset {dataset!r}: {err}") from None
    task = _load(spec, "--dataset")
    exp, state, used = resolve_source(spec, task, source_spec(source), backbone=backbone, records=records,
                                      storage=storage)
    return subset_features(task_features(exp, task, state), images_per_label), used


def features(dataset: str, source: str | None = None, backbone: str | None = None, *,
             storage: str | Path | None = None, images_per_label: int | None = None,
             model: str | None = None, tracking_uri: str | None = None) -> dict[str, float]:
    """`feature.*` of a target dataset for a source; with `model` (a registered meta-model), from the
    source its searches used (see `source_features`)."""
    records = None
    if model is not None:
        from tunetl.tracking import resolve_tracking_uri
        from tunetl.tracking.registry import load_meta_model

        records = getattr(load_meta_model(model, resolve_tracking_uri(tracking_uri))[0], "sources", None)
    return source_features(dataset, source, backbone, storage=storage, images_per_label=images_per_label,
                           records=records)[0]


def rank_backbones(
    dataset: str,
    backbones: list[str],
    *,
    images_per_label: int | None = None,
    source: str | None = "imagenet",
    image_size: int | None = None,
    by: str = "logme",
    experiment: str | None = "tunetl-rank",
    tracking_uri: str | None = None,
    threads: int | None = None,
) -> tuple[pd.DataFrame, str | None]:
    """`tunetl rank`: every backbone scored on the target in one forward pass, best first; recorded in MLflow
    (experiment `experiment`, None = not recorded). `threads`: torch/BLAS threads (default: the idle
    cores). Returns the table and the MLflow run id."""
    from tunetl.data import DatasetSpec
    from tunetl.features.rank import rank_backbones as rank_all
    from tunetl.models import backbone_stages
    from tunetl.models.weights import WeightsError

    try:
        spec = DatasetSpec.parse(dataset)
    except ValueError as err:
        raise ConfigError(f"--dataset {dataset!r}: {err}") from None
    for name in backbones:
        try:
            backbone_stages(name)
        except ValueError as err:
            raise ConfigError(f"--backbones: {err}") from None
    if images_per_label is not None and images_per_label < 2:
        raise ConfigError("--images-per-label: LogME and H-score need at least 2 images per class")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads: give 1 or more threads, not {threads}")
    task = _load(spec, "--dataset")
    try:
        table = rank_all(backbones, task, images_per_label=images_per_label, source=source_spec(source),
                         image_size=image_size, by=by, threads=threads)
    except ImportError as err:
        raise ConfigError(str(err)) from None
    except WeightsError:
        raise
    run_id = None
    if experiment:
        from tunetl.tracking import resolve_tracking_uri
        from tunetl.tracking.ranking import log_ranking

        params = {"dataset": task.name, "backbones": ",".join(backbones), "by": by,
                  "images": int(table["images"].iloc[0]), "source": source or "imagenet",
                  "image_size": image_size or "native", "threads": table.attrs.get("threads")}
        run_id = log_ranking(resolve_tracking_uri(tracking_uri), table, params, experiment)
    return table, run_id


def fit_regressor(
    experiments: list[str], tracking_uri: str | None = None, register: str | None = None,
    features: list[str] | None = None,
) -> tuple[Any, str, int | None, pd.DataFrame]:
    """Meta-dataset from the experiments' trials -> fitted meta-model, logged (and registered) in MLflow.
    `features`: the inputs (default: every `feature.*` finite on all tasks and not constant)."""
    from tunetl.meta.dataset import meta_dataset
    from tunetl.meta.loto import fit_with_loto
    from tunetl.tracking.registry import log_meta_model

    uri = tracking_store(tracking_uri)
    frame = trials(experiments, uri)
    try:
        meta = meta_dataset(frame)
    except ValueError as err:
        raise ConfigError(f"--experiment {', '.join(experiments)}: {err}") from None
    if meta.empty:
        raise ConfigError(
            f"--experiment {', '.join(experiments)}: no task with a searched inner_lr, lr_scale or frozen_depth; "
            "run an IL/LL, graduated or frozen-depth search first (e.g. experiments/meta_digits.yaml)"
        )
    try:
        model = fit_with_loto(meta, features=features, description=f"trained on {', '.join(experiments)}")
    except ValueError as err:
        if features is None:
            raise
        raise ConfigError(f"--feature {' '.join(features)}: {err}") from None
    model.sources = _recorded_sources(frame, uri)
    run_id, version = log_meta_model(model, uri, register=register, description=model.description)
    return model, run_id, version, meta


def _recorded_sources(frame: pd.DataFrame, uri: str) -> list[dict[str, Any]]:
    """The source records (`tunetl.source.<i>` tags) of the searches the trials came from."""
    from tunetl.features.source_match import records_from_tags
    from tunetl.tracking.query import run_tags

    parents = sorted({str(p) for p in frame.get("parent_run_id", pd.Series(dtype=str)).dropna()})
    unique: dict[str, dict[str, Any]] = {}
    for tags in run_tags(parents, uri).values():
        for record in records_from_tags(tags):
            unique.setdefault(json.dumps(record, sort_keys=True), record)
    return list(unique.values())


def predict(
    dataset: str,
    *,
    source: str | None = None,
    backbone: str | None = None,
    images_per_label: int | None = None,
    model: str | None = None,
    tracking_uri: str | None = None,
    storage: str | Path | None = None,
) -> dict[str, Any]:
    """Recommended inner_lr, last_lr, lr_scale, frozen_depth for a new dataset from a registered meta-model.

    The features are computed with the source the meta-model's searches used (`source` in the result:
    its name, weights sha256 and cache file), or refused with `SourceMismatch`."""
    from tunetl.meta.predict import recommend
    from tunetl.tracking.registry import DEFAULT_MODEL_NAME, load_meta_model

    uri = tracking_store(tracking_uri)
    meta_model, name, version = load_meta_model(model or DEFAULT_MODEL_NAME, uri)
    feats, used = source_features(dataset, source, backbone, storage=storage, images_per_label=images_per_label,
                                  records=getattr(meta_model, "sources", None))
    try:
        result = recommend(meta_model, feats, name=name, version=version)
    except ValueError as err:
        raise ConfigError(f"--dataset {dataset}: {err}") from None
    result["source"] = used.as_dict() if used is not None else None
    return result


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


def image_files(paths: list[str | Path]) -> list[Path]:
    """Files as given, folders walked (sorted) for image files; a missing path is a ConfigError."""
    from tunetl.data.scan import IMAGE_EXTENSIONS

    out: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            out += sorted(f for f in path.rglob("*") if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS))
        elif path.is_file():
            out.append(path)
        else:
            raise ConfigError(f"{path}: no such file or folder")
    return out


def load_model(model: str, tracking_uri: str | None = None) -> Any:
    """The `ImageClassifier` a search logged, by URI: `models:/NAME@champion`, `models:/NAME/3`,
    `runs:/RUN/classifier`, `models:/m-...`, or a downloaded model folder."""
    from tunetl.tracking import resolve_tracking_uri
    from tunetl.tracking.image_model import load_classifier

    return load_classifier(model, resolve_tracking_uri(tracking_uri))


def classify(model: str, paths: list[str | Path], tracking_uri: str | None = None,
             top_k: int = 1) -> list[dict[str, Any]]:
    """Per image file (folders walked): its `top_k` (label, probability), most probable first."""
    from tunetl.classifier import top_k as best_k
    from tunetl.data.spec import DataError

    files = image_files(paths)
    if not files:
        raise ConfigError(f"no image files in {', '.join(map(str, paths))}")
    clf = load_model(model, tracking_uri)
    try:
        probs = clf.predict(files)
    except (OSError, ValueError, DataError) as err:
        raise ConfigError(f"cannot classify: {err}") from None
    return [{"path": str(f), "predictions": [{"label": lbl, "probability": p} for lbl, p in row]}
            for f, row in zip(files, best_k(probs, clf.spec.class_names, top_k), strict=True)]


def export_model(model: str, fmt: str, out: str | Path, tracking_uri: str | None = None,
                 check_images: int = 32) -> dict[str, Any]:
    """Write the classifier as ONNX or TorchScript and compare it with PyTorch on `check_images` images;
    returns {path, format, max_abs_diff, images}."""
    from tunetl.export import export_classifier

    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"--format {fmt!r}: choose onnx or torchscript")
    return export_classifier(load_model(model, tracking_uri), fmt, Path(out), check_images=check_images)
