"""The experiment's searcher for Ray Tune: grid, random, Optuna TPE (one or several objectives), BOHB.

Random and Optuna searches share one path: Optuna's study (random = Optuna's `RandomSampler`), so
both repeat each configuration once per seed (Tune's `Repeater`), both bound `frozen_depth` by the
trial's `transfer_depth`, and both can be told earlier results: `Seed`s with values become completed
trials of the study before the first new one is asked for (`--more`, `warm_start: history`), seeds
without values are evaluated first (the meta-model's recommendation).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tunetl.config import OBJECTIVE_COLUMN, OBJECTIVES, ExperimentConfig
from tunetl.search.schedulers import PERTURBED
from tunetl.search.space import Dist, SearchSpace
from tunetl.search.tune_space import (
    OptunaSpace,
    grid_param_space,
    random_param_space,
    warm_start_point,
)


@dataclass
class Seed:
    """A configuration the searcher is told about, in `OptunaSpace` names; `values` (one per objective)
    when it was already evaluated, None when it is to be evaluated first."""

    point: dict[str, Any]
    values: list[float] | None = None
    origin: str = ""


@dataclass
class SearcherPlan:
    search_alg: Any
    param_space: dict[str, Any]
    num_samples: int
    #: Seeds the study accepted (the rest did not fit the space).
    told: list[Seed] = dataclasses.field(default_factory=list)
    #: The Optuna study behind a random/optuna search: what the searcher knows before the first trial.
    study: Any = None


def objectives(experiment: ExperimentConfig) -> list[str]:
    return list(experiment.searcher.objectives or ["val_acc"])


def trainable_space(experiment: ExperimentConfig, space: SearchSpace) -> SearchSpace:
    """The space trials decode their config with. Under PBT/PB2 the perturbed learning rates are
    top-level config keys (PBT changes them), so a grid of them becomes the list they start from."""
    if experiment.scheduler.type not in ("pbt", "pb2"):
        return space
    dims = {k: Dist("choice", d.values) if k in PERTURBED and d.is_grid else d for k, d in space.dims.items()}
    return dataclasses.replace(space, dims=dims)


def check_searcher(experiment: ExperimentConfig) -> str | None:
    """Why this searcher cannot run this experiment (None when it can): checked before Ray starts."""
    s = experiment.searcher
    if s.objectives and len(s.objectives) > 1 and len(experiment.seeds) > 1:
        return ("searcher.objectives: a multi-objective search runs one seed per configuration; "
                f"set seeds: [{experiment.seeds[0]}]")
    if "history" in s.warm_starts and s.type != "optuna":
        return f"searcher.warm_start: history seeds an Optuna study; set searcher.type: optuna (got {s.type})"
    return None


def build_searcher(
    experiment: ExperimentConfig, space: SearchSpace, num_tasks: int, seeds: list[Seed] | None = None,
    *, sampler_seed_offset: int = 0,
) -> SearcherPlan:
    """Tune's search algorithm, param_space and num_samples for the experiment.

    `sampler_seed_offset` moves the sampler's seed (a continued search must not redraw the
    configurations it already ran)."""
    from ray.tune.search import BasicVariantGenerator, Repeater

    cfg = experiment.searcher
    run_seeds = experiment.seeds
    sched = experiment.scheduler.type
    if cfg.type == "grid":
        return SearcherPlan(None, grid_param_space(space, run_seeds, num_tasks), cfg.num_samples)
    if sched in ("pbt", "pb2"):
        # PBT refuses searchers that suggest configurations; Tune's own random sampling it accepts.
        gen = BasicVariantGenerator(random_state=cfg.seed + sampler_seed_offset)
        return SearcherPlan(gen, random_param_space(space, run_seeds, num_tasks), cfg.num_samples)
    if sched == "bohb":
        from ray import tune
        from ray.tune.search.bohb import TuneBOHB

        param_space = random_param_space(space, run_seeds, num_tasks)
        param_space["seed"] = tune.choice(list(run_seeds))
        bohb = TuneBOHB(seed=cfg.seed + sampler_seed_offset)
        return SearcherPlan(bohb, param_space, cfg.num_samples * len(run_seeds))
    searcher, told, study = _optuna(experiment, space, num_tasks, seeds or [], sampler_seed_offset)
    if len(run_seeds) > 1:
        searcher = Repeater(searcher, repeat=len(run_seeds), set_index=True)
    return SearcherPlan(searcher, {}, cfg.num_samples * len(run_seeds), told, study)


def _optuna(
    experiment: ExperimentConfig, space: SearchSpace, num_tasks: int, seeds: list[Seed], offset: int
) -> tuple[Any, list[Seed], Any]:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    cfg = experiment.searcher
    names = objectives(experiment)
    seed = cfg.seed + offset
    # TPE handles several objectives itself (MOTPE); NSGA-II needs far more trials than a transfer search has.
    sampler = (optuna.samplers.RandomSampler(seed=seed) if cfg.type == "random"
               else optuna.samplers.TPESampler(seed=seed))
    define = OptunaSpace(space, num_tasks)
    directions = ["maximize" if OBJECTIVES[n] == "max" else "minimize" for n in names]
    storage = optuna.storages.InMemoryStorage()
    study_name = f"tunetl-{experiment.name}"
    study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler, directions=directions)
    told, first = [], []
    for s in seeds:
        fixed = optuna.trial.FixedTrial(s.point)
        try:
            define(fixed)
        except ValueError:
            continue  # a configuration this space cannot express (e.g. a value no longer in it)
        if s.values is None:
            first.append(s.point)
        else:
            study.add_trial(optuna.trial.create_trial(
                params=fixed.params, distributions=fixed.distributions, values=s.values))
        told.append(s)
    metric: Any = [OBJECTIVE_COLUMN[n] for n in names] if len(names) > 1 else OBJECTIVE_COLUMN[names[0]]
    mode: Any = [OBJECTIVES[n] for n in names] if len(names) > 1 else OBJECTIVES[names[0]]
    searcher = OptunaSearch(space=define, metric=metric, mode=mode, points_to_evaluate=first or None,
                            sampler=sampler, study_name=study_name, storage=storage)
    return searcher, told, study


def seeds_from_trials(
    frame: pd.DataFrame, space: SearchSpace, names: list[str], *, tasks: list[str] | None = None, origin: str = ""
) -> list[Seed]:
    """Finished trials (a trials frame) as evaluated seeds: one per configuration, its objectives
    averaged over seeds (best_val_acc for val_acc), in the space's Optuna names."""
    if frame.empty:
        return []
    done = frame[frame["status"] == "FINISHED"]
    keys = [k for k in _space_keys(space) if k in done.columns]
    if tasks and len(tasks) > 1 and "dataset" in done.columns:
        keys.append("dataset")
    cols = [OBJECTIVE_COLUMN[n] for n in names]
    if done.empty or any(c not in done.columns for c in cols):
        return []
    out: list[Seed] = []
    for _, group in done.groupby([done[k].astype(str) for k in keys], sort=True) if keys else [((), done)]:
        row = group.iloc[0]
        values = [float(group[c].mean()) for c in cols]
        if any(not math.isfinite(v) for v in values):
            continue
        rec = {k: _plain(row[k]) for k in keys if k != "dataset"}
        task = tasks.index(row["dataset"]) if tasks and len(tasks) > 1 and row.get("dataset") in tasks else None
        point = exact_point(space, rec, task)
        if point is not None:
            out.append(Seed(point, values, origin))
    return out


def exact_point(space: SearchSpace, rec: dict[str, Any], task: int | None = None) -> dict[str, Any] | None:
    """`rec` in `OptunaSpace` names when the space holds exactly that configuration, else None."""
    from tunetl.search.tune_space import trial_params

    try:
        point = warm_start_point(space, rec, task)
        for key, d in space.random_dims().items():
            if key in rec and d.kind == "choice" and key not in point:
                matches = [i for i, v in enumerate(d.values) if _same(v, rec[key])]
                if not matches:
                    return None
                point[f"{key}_index"] = matches[0]
        back = trial_params(space, point)
    except (KeyError, IndexError, TypeError, ValueError):
        return None  # e.g. conditions drawn by choice: not a point this space can name
    if any(not _same(back.get(k), v) for k, v in rec.items() if k in back):
        return None
    return point


def _space_keys(space: SearchSpace) -> list[str]:
    keys = set(space.dims)
    for c in space.conditions or []:
        keys |= {k for k in c if k != "name"}
    keys.discard("condition")
    return sorted(keys)


def _plain(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and not math.isnan(v):
        return v
    return v.item() if hasattr(v, "item") else v


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a or []) == list(b or [])
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b or str(a) == str(b)


def space_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys (dotted) whose values differ between two config dumps."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += space_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out

