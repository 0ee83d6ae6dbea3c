"""ASHA that only compares like with like.

Ray's `ASHAScheduler` ranks every trial against every other at each rung. In a transfer search that is
wrong whenever trials differ in how much data they train on: a trial at 5 images per label always
trails one at 50 and would be stopped for that alone. `GroupedASHA` keeps one Ray `ASHAScheduler` per
group (by default per `images_per_label`) and sends each trial's events to its group's scheduler;
everything else is Ray's own implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler


class GroupedASHA(FIFOScheduler):
    def __init__(self, group_of: Callable[[dict[str, Any]], Hashable], **asha_kwargs: Any) -> None:
        super().__init__()
        self._group_of = group_of
        self._asha_kwargs = asha_kwargs
        self._groups: dict[Hashable, ASHAScheduler] = {}
        self._by_trial: dict[str, ASHAScheduler] = {}
        self._search: tuple[str | None, str | None, dict[str, Any]] | None = None

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._search = (metric, mode, spec)
        self._metric = metric
        return all(s.set_search_properties(metric, mode, **spec) for s in self._groups.values())

    def _scheduler(self, trial: Any) -> ASHAScheduler:
        sched = self._by_trial.get(trial.trial_id)
        if sched is None:
            key = self._group_of(trial.config)
            sched = self._groups.get(key)
            if sched is None:
                sched = self._groups[key] = ASHAScheduler(**self._asha_kwargs)
                if self._search is not None:
                    metric, mode, spec = self._search
                    sched.set_search_properties(metric, mode, **spec)
            self._by_trial[trial.trial_id] = sched
        return sched

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._scheduler(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        return self._scheduler(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._scheduler(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._scheduler(trial).on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._scheduler(trial).on_trial_error(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"ASHA [{', '.join(map(str, k))}]: {s.debug_string()}" for k, s in self._groups.items())
