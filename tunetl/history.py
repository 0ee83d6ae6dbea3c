"""What earlier searches tell a new one: `tunetl run --more N` and `searcher.warm_start: history`.

Both read finished trials from MLflow (params and best_val_acc, plus the other objectives of a
multi-objective search) and hand them to the searcher as completed trials of its Optuna study
(`tunetl.search.searchers.Seed`). Like `api`, this module is where search and tracking meet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tunetl.config import ConfigError, ExperimentConfig

#: Settings that may change between a search and its `--more`: how many trials, budgets, speed.
MORE_MAY_CHANGE = ({"searcher": {"num_samples"}, "run": True, "training": {"feature_cache"},
                    "source_file": True, "search_space_file": True})


@dataclass
class Continuation:
    """An earlier finished search that `--more` adds trials to."""

    run_dir: str
    parent_run_id: str
    told: list[Any]
    #: Trials the parent run already holds (moves the sampler's seed so they are not redrawn).
    earlier_trials: int


def _comparable(body: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(body, default=str))
    for key, what in MORE_MAY_CHANGE.items():
        if what is True:
            out.pop(key, None)
        elif isinstance(out.get(key), dict):
            for sub in what:
                out[key].pop(sub, None)
    return out


def continuation(store: Any, exp: ExperimentConfig, space: Any, uri: str, tasks: list[str]) -> Continuation:
    """The newest finished search of `exp.name` under `store`, checked to have the same experiment and
    space, and its finished trials as seeds. ConfigError (exit 2) says why `--more` cannot run."""
    from tunetl.search.searchers import objectives, seeds_from_trials, space_changes
    from tunetl.search.session import finished_run_dir
    from tunetl.tracking import load_trials

    if exp.searcher.type not in ("random", "optuna"):
        raise ConfigError(f"--more: searcher.type {exp.searcher.type} has no more trials to draw; --more continues "
                          "a random or optuna search (a grid already ran every point)")
    if exp.scheduler.type in ("pbt", "pb2", "bohb"):
        raise ConfigError(f"--more: scheduler.type {exp.scheduler.type} keeps its own population; start a new search")
    finished = finished_run_dir(store, exp.name)
    if finished is None:
        raise ConfigError(f"--more: no finished search of {exp.name!r} under {store.display()}; run it first "
                          "(or finish it with --resume)")
    run_dir, state = finished
    changed = space_changes(_comparable(state.config), _comparable(exp.model_dump(mode="json")))
    if changed:
        raise ConfigError(f"--more: the experiment changed since {run_dir}: {', '.join(changed)} differ; "
                          "--more adds trials to the same search (only searcher.num_samples and run.* may "
                          "change); run without --more to start a new search")
    parent = state.parent_run_id
    frame = load_trials(exp.name, uri, parent_run_id=parent)
    told = seeds_from_trials(frame, space, objectives(exp), tasks=tasks, origin=f"--more of {run_dir}")
    return Continuation(run_dir, parent, told, len(frame))


def history_seeds(exp: ExperimentConfig, space: Any, uri: str, tasks: list[str]) -> list[Any]:
    """`warm_start: history`: the finished trials of every earlier search of `exp.name` in MLflow."""
    from tunetl.search.searchers import objectives, seeds_from_trials
    from tunetl.tracking import load_trials
    from tunetl.tracking.uri import TrackingError

    try:
        frame = load_trials(exp.name, uri)
    except TrackingError:
        return []  # no earlier search of this name
    if frame.empty:
        return []
    return seeds_from_trials(frame, space, objectives(exp), tasks=tasks, origin="history")


def seed_tags(prefix: str, seeds: list[Any]) -> dict[str, str]:
    """Parent-run tags naming what the searcher was told: the count and the points with their values."""
    body = [{"point": s.point, "values": s.values} for s in seeds]
    return {f"{prefix}.count": str(len(seeds)), f"{prefix}.points": json.dumps(body)[:5000]}
