"""Ray Tune schedulers that only compare like with like, and `build_scheduler` from the experiment.

Ray's schedulers rank every trial against every other. In a transfer search that is wrong whenever
trials differ in how much data they train on: a trial at 5 images per label always trails one at 50
and would be stopped (ASHA, HyperBand, median stopping) or overwritten by it (PBT copies the donor's
whole config, its `images_per_label` included) for that alone. `Grouped` keeps one instance of any
Ray scheduler per group (by default per `images_per_label`) and shows each instance only its own
group's trials; everything else is Ray's own implementation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tunetl.config import ExperimentConfig
from tunetl.search.space import SearchSpace

#: Schedulers that pause trials and continue them later from a checkpoint, so trials must save one
#: at every report (the trainable reads this to checkpoint every epoch).
PAUSING = ("hyperband", "bohb", "pbt", "pb2")
#: Learning-rate parameters that PBT/PB2 perturb.
PERTURBED = ("inner_lr", "last_lr", "lr_scale")


class _GroupView:
    """The Tune controller as one group's scheduler sees it: only that group's trials."""

    def __init__(self, controller: Any, member: Callable[[Any], bool]) -> None:
        self._controller, self._member = controller, member

    def get_trials(self) -> list[Any]:
        return [t for t in self._controller.get_trials() if self._member(t)]

    def get_live_trials(self) -> list[Any]:
        return [t for t in self._controller.get_live_trials() if self._member(t)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)


class Grouped(FIFOScheduler):
    """One scheduler from `factory()` per group of `group_of(trial.config)`; picklable when both are."""

    def __init__(self, group_of: Callable[[dict[str, Any]], Hashable], factory: Callable[[], TrialScheduler]) -> None:
        super().__init__()
        self._group_of = group_of
        self._factory = factory
        self._groups: dict[Hashable, TrialScheduler] = {}
        self._key_of: dict[str, Hashable] = {}
        self._search: tuple[str | None, str | None, dict[str, Any]] | None = None
        self._supports_buffered_results = factory()._supports_buffered_results
        self._turn = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._search = (metric, mode, spec)
        self._metric = metric
        return all(s.set_search_properties(metric, mode, **spec) for s in self._groups.values())

    def _key(self, trial: Any) -> Hashable:
        key = self._key_of.get(trial.trial_id)
        if key is None:
            key = self._key_of[trial.trial_id] = self._group_of(trial.config)
        return key

    def _scheduler(self, trial: Any) -> TrialScheduler:
        key = self._key(trial)
        sched = self._groups.get(key)
        if sched is None:
            sched = self._groups[key] = self._factory()
            if self._search is not None:
                metric, mode, spec = self._search
                sched.set_search_properties(metric, mode, **spec)
        return sched

    def _view(self, controller: Any, key: Hashable) -> _GroupView:
        return _GroupView(controller, lambda t: self._key(t) == key)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._scheduler(trial).on_trial_add(self._view(tune_controller, self._key(trial)), trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._scheduler(trial).on_trial_result(self._view(tune_controller, self._key(trial)), trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._scheduler(trial).on_trial_complete(self._view(tune_controller, self._key(trial)), trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._scheduler(trial).on_trial_remove(self._view(tune_controller, self._key(trial)), trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._scheduler(trial).on_trial_error(self._view(tune_controller, self._key(trial)), trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        """Each group's own choice, asking the groups in turn so that none starves the others."""
        for t in tune_controller.get_trials():
            if t.status in ("PENDING", "PAUSED"):
                self._scheduler(t)  # a trial Tune has not announced yet still belongs to a group
        keys = list(self._groups)
        if not keys:
            return super().choose_trial_to_run(tune_controller)
        self._turn = (self._turn + 1) % len(keys)
        for key in itertools.islice(itertools.cycle(keys), self._turn, self._turn + len(keys)):
            trial = self._groups[key].choose_trial_to_run(self._view(tune_controller, key))
            if trial is not None:
                return trial
        return None

    def debug_string(self) -> str:
        return "\n".join(f"[{', '.join(map(str, k))}]: {s.debug_string()}" for k, s in self._groups.items())


class _Factory:
    """A picklable `() -> scheduler` (Tune saves the scheduler with the experiment state)."""

    def __init__(self, kind: str, kwargs: dict[str, Any]) -> None:
        self.kind, self.kwargs = kind, kwargs

    def __call__(self) -> TrialScheduler:
        from ray.tune import schedulers as s

        classes: dict[str, Any] = {
            "asha": s.ASHAScheduler,
            "hyperband": s.HyperBandScheduler,
            "median": s.MedianStoppingRule,
            "pbt": s.PopulationBasedTraining,
            "bohb": s.HyperBandForBOHB,
        }
        if self.kind == "pb2":
            from ray.tune.schedulers.pb2 import PB2

            return PB2(**self.kwargs)
        return classes[self.kind](**self.kwargs)


def pbt_mutations(space: SearchSpace, pb2: bool = False) -> dict[str, Any]:
    """What PBT resamples from, per perturbed learning rate the space varies: the list of values of a
    grid/choice, or the Tune domain of a uniform/loguniform (multiplied by 0.8 or 1.2 on a perturbation).
    PB2 needs [low, high] bounds instead."""
    from ray import tune

    out: dict[str, Any] = {}
    for key in PERTURBED:
        d = space.dims.get(key)
        if d is None:
            continue
        if d.kind in ("grid", "choice"):
            values = sorted(float(v) for v in d.values if v)
            out[key] = [min(values), max(values)] if pb2 else values
        elif pb2:
            out[key] = [d.low, d.high]
        else:
            out[key] = tune.loguniform(d.low, d.high) if d.kind == "loguniform" else tune.uniform(d.low, d.high)
    return out


def check_scheduler(experiment: ExperimentConfig, space: SearchSpace) -> str | None:
    """Why this scheduler cannot run this experiment (None when it can): checked before Ray starts."""
    kind = experiment.scheduler.type
    if kind in ("pbt", "pb2"):
        if experiment.searcher.type not in ("grid", "random"):
            return (f"scheduler.type {kind}: Ray's PBT works with searcher grid or random only (it chooses the "
                    f"next configurations itself), not {experiment.searcher.type}")
        if not pbt_mutations(space):
            return (f"scheduler.type {kind}: the search space varies none of {', '.join(PERTURBED)}; give at least "
                    "one of them as a grid, choice, uniform or loguniform")
        for key in PERTURBED:
            d = space.dims.get(key)
            if d is not None and d.kind == "uniform" and not (d.low or 0) > 0:
                return (f"scheduler.type {kind}: search_space.{key} must stay > 0 under PBT (a learning rate of 0 "
                        "freezes a stage, which a running trial cannot change); raise its lower bound")
        if kind == "pb2":
            try:
                import GPy  # noqa: F401
                import sklearn  # noqa: F401
            except ImportError:
                return "scheduler.type pb2: needs GPy and scikit-learn (pip install GPy scikit-learn)"
    if kind == "bohb":
        if experiment.searcher.type != "random":
            return "scheduler.type bohb: BOHB brings its own searcher; set searcher.type: random (its sampler)"
        try:
            import ConfigSpace  # noqa: F401
            import hpbandster  # noqa: F401
        except ImportError:
            return ("scheduler.type bohb: needs ConfigSpace and hpbandster (pip install ConfigSpace hpbandster); "
                    "or use searcher.type: optuna with scheduler.type: hyperband")
    return None


def build_scheduler(
    experiment: ExperimentConfig, space: SearchSpace, group_of: Callable[[dict[str, Any]], Hashable] | None
) -> Any:
    """The experiment's scheduler, per group of `group_of` when given (time unit: the epoch)."""
    cfg = experiment.scheduler
    epochs = experiment.training.epochs
    kind = cfg.type
    if kind == "none":
        return FIFOScheduler()
    kwargs: dict[str, Any]
    if kind == "asha":
        kwargs = dict(time_attr="epoch", max_t=epochs, grace_period=min(cfg.grace_period, epochs),
                      reduction_factor=cfg.reduction_factor)
    elif kind in ("hyperband", "bohb"):
        kwargs = dict(time_attr="epoch", max_t=epochs, reduction_factor=cfg.reduction_factor)
    elif kind == "median":
        kwargs = dict(time_attr="epoch", grace_period=min(cfg.grace_period, epochs),
                      min_samples_required=cfg.min_samples_required)
    else:
        kwargs = dict(time_attr="epoch", perturbation_interval=cfg.perturbation_interval,
                      quantile_fraction=cfg.quantile_fraction, synch=cfg.synch)
        if kind == "pbt":
            kwargs.update(hyperparam_mutations=pbt_mutations(space), resample_probability=cfg.resample_probability)
        else:
            kwargs.update(hyperparam_bounds=pbt_mutations(space, pb2=True))
    factory = _Factory(kind, kwargs)
    if group_of is None:
        return factory()
    return Grouped(group_of, factory)
