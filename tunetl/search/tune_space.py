"""`SearchSpace` -> what Ray Tune runs: a param_space for the grid searcher, a define-by-run for Optuna.

Both encode the valid grid points (already filtered for frozen_depth <= transfer_depth) as an index
`_point`, so no trial is ever spent on an invalid combination. `trial_params` turns a Tune config back
into the trial's parameters.
"""

from __future__ import annotations

from typing import Any

from tunetl.params import LR_PARAMS, param_distance
from tunetl.search.space import INT_PARAMS, Dist, SearchSpace

POINT, CONDITION, SEED, TRIAL_INDEX, TASK = "_point", "_condition", "seed", "__trial_index__", "_task"


def _primitive(values: tuple[Any, ...]) -> bool:
    return all(v is None or isinstance(v, (bool, int, float, str)) for v in values)


def _tune_domain(d: Dist) -> Any:
    from ray import tune

    if d.kind == "choice":
        return tune.choice(list(d.values))
    if d.kind == "uniform":
        return tune.uniform(d.low, d.high)
    if d.kind == "loguniform":
        return tune.loguniform(d.low, d.high)
    if d.kind == "randint":
        return tune.randint(int(d.low), int(d.high) + 1)  # YAML bounds are inclusive
    raise ValueError(f"no Tune domain for {d.kind}")


def grid_param_space(space: SearchSpace, seeds: list[int], num_tasks: int = 1) -> dict[str, Any]:
    from ray import tune

    points, _ = space.grid_points()
    param_space: dict[str, Any] = {TASK: tune.grid_search(list(range(num_tasks)))} if num_tasks > 1 else {}
    param_space |= {
        POINT: tune.grid_search(list(range(len(points)))),
        SEED: tune.grid_search(list(seeds)),
    }
    if space.conditions is not None and space.conditions_kind == "choice":
        param_space[CONDITION] = tune.choice(list(range(len(space.conditions))))
    for key, d in space.random_dims().items():
        param_space[key] = _tune_domain(d)
    return param_space


def random_param_space(space: SearchSpace, seeds: list[int], num_tasks: int = 1) -> dict[str, Any]:
    """Tune's random search: a valid grid point drawn uniformly, the sampled dimensions from their
    distributions, every configuration once per seed."""
    from ray import tune

    points, _ = space.grid_points()
    param_space: dict[str, Any] = {TASK: tune.choice(list(range(num_tasks)))} if num_tasks > 1 else {}
    param_space |= {POINT: tune.choice(list(range(len(points)))), SEED: tune.grid_search(list(seeds))}
    if space.conditions is not None and space.conditions_kind == "choice":
        param_space[CONDITION] = tune.choice(list(range(len(space.conditions))))
    for key, d in space.random_dims().items():
        param_space[key] = _tune_domain(d)
    return param_space


class OptunaSpace:
    """Optuna define-by-run space; a class (not a closure) so Tune can checkpoint the searcher.

    Grid points are sampled as one categorical index: lists such as stage multipliers cannot be
    Optuna categorical values, and invalid depth pairs are already filtered out of the points.
    """

    def __init__(self, space: SearchSpace, num_tasks: int = 1) -> None:
        self.space = space
        self.num_tasks = num_tasks
        self.points, _ = space.grid_points()
        self.conditions = space.conditions if space.conditions_kind == "choice" else None

    def __call__(self, trial: Any) -> None:
        if self.num_tasks > 1:
            trial.suggest_categorical(TASK, list(range(self.num_tasks)))
        point: dict[str, Any] = {}
        if len(self.points) > 1:
            point = self.points[trial.suggest_categorical(POINT, list(range(len(self.points))))]
        elif self.points:
            point = self.points[0]
        cond: dict[str, Any] = {}
        if self.conditions:
            cond = self.conditions[trial.suggest_categorical(CONDITION, list(range(len(self.conditions))))]
        td = cond.get("transfer_depth", point.get("transfer_depth", self.space.fixed.get("transfer_depth")))
        for key, d in self.space.random_dims().items():
            if d.kind == "choice":
                if _primitive(d.values):
                    trial.suggest_categorical(key, list(d.values))
                else:
                    trial.suggest_categorical(f"{key}_index", list(range(len(d.values))))
            elif d.kind in ("uniform", "loguniform"):
                trial.suggest_float(key, d.low, d.high, log=d.kind == "loguniform")
            elif key == "frozen_depth" and isinstance(td, int):
                trial.suggest_int(key, int(d.low), max(int(d.low), min(int(d.high), td)))
            else:
                trial.suggest_int(key, int(d.low), int(d.high))


class GroupKey:
    """The task and the values of `keys` in a trial's parameters: ASHA's comparison group (picklable)."""

    def __init__(self, space: SearchSpace, keys: list[str]) -> None:
        self.space, self.keys = space, list(keys)

    def __call__(self, config: dict[str, Any]) -> tuple[str, ...]:
        params = trial_params(self.space, config)
        task = (f"task={config[TASK]}",) if TASK in config else ()
        return (*task, *(f"{k}={params.get(k)}" for k in self.keys))


def warm_start_point(space: SearchSpace, recommendation: dict[str, Any], task: int | None = None) -> dict[str, Any]:
    """An Optuna first point close to a meta-model's recommendation, expressed in `OptunaSpace` names."""
    rec = {k: v for k, v in recommendation.items() if v is not None}
    point: dict[str, Any] = {} if task is None else {TASK: task}
    points, _ = space.grid_points()
    if len(points) > 1:
        point[POINT] = min(
            range(len(points)),
            key=lambda i: sum(param_distance(k, points[i].get(k), v) for k, v in rec.items() if k in points[i]),
        )
    for key, d in space.random_dims().items():
        if key not in rec:
            continue
        if d.kind in ("uniform", "loguniform"):
            point[key] = float(min(max(rec[key], d.low), d.high))
        elif d.kind == "randint":
            point[key] = int(min(max(round(rec[key]), d.low), d.high))
        elif d.kind == "choice" and _primitive(d.values):
            point[key] = min(d.values, key=lambda v: param_distance(key, v, rec[key]))
    return point


def trial_params(space: SearchSpace, config: dict[str, Any]) -> dict[str, Any]:
    """The trial parameters (by YAML name) that a Tune config stands for."""
    points, _ = space.grid_points()
    out: dict[str, Any] = dict(space.fixed)
    out.update(points[int(config.get(POINT, 0))])
    if space.conditions is not None and space.conditions_kind == "choice":
        cond = space.conditions[int(config[CONDITION])]
        out.update({k: v for k, v in cond.items() if k != "name"})
        if "name" in cond:
            out["condition"] = cond["name"]
    for key, d in space.random_dims().items():
        if f"{key}_index" in config:
            out[key] = d.values[int(config[f"{key}_index"])]
        elif key in config:
            out[key] = config[key]
    for key in LR_PARAMS:
        # A learning rate PBT perturbed (or filled in) is a top-level config key, whatever its dimension.
        if config.get(key) is not None and f"{key}_index" not in config:
            out[key] = float(config[key])
    for key in INT_PARAMS:
        if isinstance(out.get(key), float):
            out[key] = int(out[key])
    return out


def trial_seed(config: dict[str, Any], seeds: list[int]) -> int:
    if SEED in config:
        return int(config[SEED])
    return int(seeds[int(config.get(TRIAL_INDEX, 0)) % len(seeds)])
