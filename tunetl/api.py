"""The Python API that the CLI mirrors: run a search, ask MLflow for the best configurations, export.

This is the one place where search (Ray), tracking (MLflow) and meta (dataset features) meet, so that
each of those layers stays independent of the others.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunetl.config import ConfigError, ExperimentConfig, load_experiment
from tunetl.params import SEARCH_PARAMS


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
        if task_exp.source.train_on is not None:
            _load(task_exp.source.train_on, f"{where}.source.train_on" if exp.tasks else "source.train_on")
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
    except SpaceError as err:
        raise ConfigError(str(err)) from None
    points, skipped = space.grid_points()
    return Plan(experiment=exp, space=space, tasks=tasks, grid_points=len(points), skipped=skipped)


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
    from tunetl.meta.rank import rank_from_features
    from tunetl.search.space import Dist

    k = p.experiment.searcher.prune_backbones
    names = search_backbones(p)
    if not k or "backbone" not in p.space.dims or len(names) <= k:
        return {}
    by = p.experiment.searcher.prune_by
    key = f"feature.{by}"
    scores = {b: float(np.nanmean([bundle.for_backbone(b).features.get(key, np.nan) for bundle in bundles]))
              for b in names}
    kept = rank_from_features({b: {key: s} for b, s in scores.items()}, by)[:k]
    p.space.dims["backbone"] = Dist("grid", tuple(b for b in names if b in kept))
    points, p.skipped = p.space.grid_points()
    p.grid_points = len(points)
    print(f"[tunetl] prune_backbones: kept {kept} of {names} by {by} "
          f"({', '.join(f'{b}: {s:.4g}' for b, s in scores.items())})", flush=True)
    return {"tunetl.prune_backbones.kept": json.dumps(kept),
            "tunetl.prune_backbones.scores": json.dumps({"by": by, **scores})}


def _needs_source(p: Plan) -> bool:
    from tunetl.search.space import values_of

    depths = values_of(p.space, "transfer_depth") + values_of(p.space, "transfer_fraction")
    return not depths or any(d is None or d > 0 for d in depths)


def _bundles(p: Plan, storage: Any) -> list[Any]:
    """Per task: source weights (trained and cached once), the source's name, the task's features.

    The source cache lives in the storage (`cache/sources`); for an object store it is built in a local
    mirror and uploaded, so that a driver on another machine finds it too.
    """
    from tunetl.meta.features import task_features
    from tunetl.search.trainable import TaskBundle
    from tunetl.source import source_description, source_state_for
    from tunetl.trial import model_in_channels

    cache = storage.cache_dir()
    needs = [exp.source.kind != "none" and _needs_source(p) for exp, _ in p.tasks]
    if any(needs):
        storage.pull("cache/sources", cache / "sources")
    bundles = []
    for (task_exp, task), need in zip(p.tasks, needs, strict=True):
        per_backbone = {}
        for backbone in search_backbones(p):
            exp = task_exp.model_copy(update={"backbone": backbone})
            state = source_state_for(exp, cache, in_channels=model_in_channels(exp, task)) if need else None
            per_backbone[backbone] = TaskBundle(exp, task, state, source_description(exp),
                                                task_features(exp, task, state))
        first = next(iter(per_backbone.values()))
        first.others = per_backbone
        bundles.append(first)
    if any(needs):
        storage.push(cache / "sources", "cache/sources")
    return bundles


class SearchInterrupted(RuntimeError):
    """The search was stopped by Ctrl-C or SIGTERM; its state is saved and `--resume` finishes it."""

    def __init__(self, message: str, summary: RunSummary, signal: int | None) -> None:
        super().__init__(message)
        self.summary, self.signal = summary, signal


def _search_to_resume(storage: Any, exp: ExperimentConfig, *, resume: bool, new: bool) -> str | None:
    """The search folder to continue: asked for (`resume`) or found unfinished with the same inputs."""
    from tunetl.search import runner as rn

    if new:
        if resume:
            raise ConfigError("--resume and --new exclude each other: resume the last search or start a new one")
        return None
    run_dir, busy = rn.unfinished_run_dir(storage, exp.name)
    if run_dir is None and resume:
        run_dir = rn.latest_run_dir(storage, exp.name)
        if run_dir == busy:
            run_dir = None
    if run_dir is None:
        if resume:
            running = f" ({busy} is being run by another tunetl process)" if busy else ""
            raise ConfigError(f"--resume: no earlier search of {exp.name!r} under {storage.display()}{running}")
        return None
    if rn.read_state(storage, run_dir)["fingerprint"] != exp.fingerprint():
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
) -> RunSummary:
    """Run a search, or finish an unfinished one; every trial becomes an MLflow child run under one parent.

    An unfinished search of the same experiment and space under `storage` (its driver killed or
    stopped) is resumed unless `new`. Raises `SearchInterrupted` when Ctrl-C or SIGTERM stops it.
    """
    from tunetl.search import runner as rn
    from tunetl.search.space import describe
    from tunetl.tracking import SearchRecorder, adopt_credentials, check_tracking, resolve_tracking_uri

    p = plan(experiment, overrides, name)
    exp = p.experiment
    uri = adopt_credentials(resolve_tracking_uri(tracking_uri))
    check_tracking(uri)
    store = rn.open_storage(storage)
    started = time.perf_counter()
    run_name = _search_to_resume(store, exp, resume=resume, new=new)
    print(f"[tunetl] {exp.name}: {p.task_names}; backbone {exp.backbone}; {describe(p.space)}; "
          f"x {len(exp.seeds)} seed(s); searcher {exp.searcher.type}, scheduler {exp.scheduler.type}",
          flush=True)
    rn.init_ray(address, num_cpus=num_cpus)
    rn.check_resources(exp)
    rn.check_storage(store)
    rn.check_data([task for _, task in p.tasks])
    bundles = _bundles(p, store)
    prune_tags = _prune_backbones(p, bundles)
    recorder = SearchRecorder(uri, exp.name)
    run_name = run_name or f"{exp.name}_{time.strftime('%Y%m%d-%H%M%S')}"
    run_path: Path | str = Path(store.path(run_name)) if store.is_local else store.display(run_name)
    lock = rn.DriverLock(store, run_name)
    if not lock.acquire():
        raise rn.SearchError(f"{run_path} is being run by another tunetl process; wait for it or pass --new")
    try:
        if store.exists(run_name, rn.STATE_FILE):
            state = rn.read_state(store, run_name)
            parent = state["parent_run_id"]
            recorder.reopen_parent(parent)
            rn.write_state(store, run_name, {**state, "finished": False})
        else:
            parent = recorder.start_parent(_parent_params(exp, p),
                                           tags={"tunetl.storage": str(run_path), **_skipped_tag(p), **prune_tags})
            rn.write_state(store, run_name, {"fingerprint": exp.fingerprint(), "parent_run_id": parent,
                                             "experiment": exp.name, "tracking_uri": uri, "finished": False,
                                             "config": exp.model_dump(mode="json")})
        if rn.can_restore(store, run_name):
            logger = recorder.trial_logger()
            tuner = rn.restore_tuner(store, run_name, exp, space=p.space, bundles=bundles, recorder=logger)
        else:
            # New, or its driver died before Tune saved any state: start the trials in the same folder.
            warm = _warm_start(p, bundles, uri)
            if warm:
                recorder.set_parent_tags({f"tunetl.warm_start.{i}": json.dumps(w) for i, w in enumerate(warm)})
            tuner = rn.build_tuner(exp, p.space, bundles=bundles, recorder=recorder.trial_logger(),
                                   storage=store, run_name=run_name, warm_start=warm)
        try:
            outcome = rn.fit(tuner, started, run_path)
        except BaseException:
            recorder.close_open_children("KILLED", "interrupted")
            recorder.end_parent("KILLED")
            raise
        return _finish(exp, recorder, outcome, uri, parent, store, run_name)
    finally:
        lock.release()


def _finish(
    exp: ExperimentConfig, recorder: Any, outcome: Any, uri: str, parent: str, store: Any, run_name: str
) -> RunSummary:
    """Close the search's runs in MLflow; mark the state finished unless it was interrupted."""
    from tunetl.search import runner as rn

    failed = outcome.num_errors
    if outcome.interrupted:
        recorder.close_open_children("KILLED", "interrupted")
        recorder.end_parent("KILLED")
    else:
        orphans = recorder.close_open_children("KILLED", "no trial took this run over after a restart")
        if orphans:
            print(f"[tunetl] closed {orphans} run(s) of an earlier driver as KILLED", file=sys.stderr)
        recorder.end_parent(
            "FINISHED" if outcome.num_trials > failed else "FAILED",
            summary={"num_trials": outcome.num_trials, "num_failed": failed},
        )
        rn.mark_state(store, run_name, finished=True)
    from tunetl.tracking import load_trials

    frame = load_trials(exp.name, uri, parent_run_id=parent)
    summary = RunSummary(exp.name, parent, uri, outcome.path, outcome.num_trials, failed,
                         outcome.seconds, frame, best_table(frame))
    if outcome.interrupted:
        raise SearchInterrupted(
            f"search {run_name} stopped with {outcome.num_incomplete} trial(s) unfinished; its state is "
            f"saved: run the same command again (or add --resume) to finish it", summary, outcome.signal)
    return summary


def _warm_start(p: Plan, bundles: list[Any], uri: str) -> list[dict[str, Any]] | None:
    """`searcher.warm_start: MODEL`: the meta-model's recommendation per task, as Optuna's first points."""
    name = p.experiment.searcher.warm_start
    if not name:
        return None
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
    }


def _skipped_tag(p: Plan) -> dict[str, str]:
    names = [f"{task.name}: {f}" for _, task in p.tasks for f in task.skipped_files]
    return {"tunetl.skipped_files": "\n".join(names)[:5000]} if names else {}


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
    frame = trials(experiment, tracking_uri)
    if parent_run_id is not None:
        frame = frame[frame["parent_run_id"] == parent_run_id]
    return rank(frame, metric=metric, top=top, group_by=group_by)


def rank(frame: pd.DataFrame, *, metric: str = "val_acc", top: int = 5,
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
    from tunetl.tracking import metric_histories, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
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


def features(dataset: str, source: str | None = None, backbone: str = "smallcnn",
             cache_dir: str | Path = ".tunetl_cache", images_per_label: int | None = None) -> dict[str, float]:
    """`feature.*` of a target dataset for a source (training and caching a source model if asked)."""
    from tunetl.data import DatasetSpec
    from tunetl.meta.features import task_features
    from tunetl.meta.predict import subset_features
    from tunetl.source import source_state_for
    from tunetl.trial import model_in_channels

    try:
        spec = DatasetSpec.parse(dataset)
    except ValueError as err:
        raise ConfigError(f"--dataset {dataset!r}: {err}") from None
    exp = ExperimentConfig(name="features", dataset=spec, source=source_spec(source), backbone=backbone,
                           search_space={})
    task = _load(spec, "--dataset")
    state = source_state_for(exp, cache_dir, in_channels=model_in_channels(exp, task))
    return subset_features(task_features(exp, task, state), images_per_label)


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
) -> tuple[pd.DataFrame, str | None]:
    """`tunetl rank`: every backbone scored on the target in one forward pass, best first; recorded in MLflow
    (experiment `experiment`, None = not recorded). Returns the table and the MLflow run id."""
    from tunetl.data import DatasetSpec
    from tunetl.meta.rank import rank_backbones as rank_all
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
    task = _load(spec, "--dataset")
    try:
        table = rank_all(backbones, task, images_per_label=images_per_label, source=source_spec(source),
                         image_size=image_size, by=by)
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
                  "image_size": image_size or "native"}
        run_id = log_ranking(resolve_tracking_uri(tracking_uri), table, params, experiment)
    return table, run_id


def fit_regressor(
    experiments: list[str], tracking_uri: str | None = None, register: str | None = None
) -> tuple[Any, str, int | None, pd.DataFrame]:
    """Meta-dataset from the experiments' trials -> fitted meta-model, logged (and registered) in MLflow."""
    from tunetl.meta.regressor import fit_meta_model, meta_dataset
    from tunetl.tracking import resolve_tracking_uri
    from tunetl.tracking.registry import log_meta_model

    uri = resolve_tracking_uri(tracking_uri)
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
    model = fit_meta_model(meta, description=f"trained on {', '.join(experiments)}")
    run_id, version = log_meta_model(model, uri, register=register, description=model.description)
    return model, run_id, version, meta


def predict(
    dataset: str,
    *,
    source: str | None = None,
    backbone: str = "smallcnn",
    images_per_label: int | None = None,
    model: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Recommended inner_lr, last_lr, lr_scale, frozen_depth for a new dataset from a registered meta-model."""
    from tunetl.meta.predict import recommend
    from tunetl.tracking import resolve_tracking_uri
    from tunetl.tracking.registry import DEFAULT_MODEL_NAME, load_meta_model

    uri = resolve_tracking_uri(tracking_uri)
    meta_model, name, version = load_meta_model(model or DEFAULT_MODEL_NAME, uri)
    feats = features(dataset, source, backbone, images_per_label=images_per_label)
    try:
        return recommend(meta_model, feats, name=name, version=version)
    except ValueError as err:
        raise ConfigError(f"--dataset {dataset}: {err}") from None


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
