"""Budgets of a whole search: a stop rule on accuracy per comparison group (Tune `Stopper`)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from ray import tune


class GroupTarget(tune.Stopper):
    """Once a trial of a group reaches `target` best_val_acc, the group is done: its trials stop at their
    next report. The search stops when `num_groups` groups are done (any group when it is unknown)."""

    def __init__(self, target: float, group_of: Callable[[dict[str, Any]], Hashable], num_groups: int | None) -> None:
        self.target, self.group_of, self.num_groups = target, group_of, num_groups
        self.done: set[Hashable] = set()
        self._group: dict[str, Hashable] = {}

    def group_key(self, trial_id: str, result: dict[str, Any]) -> Hashable:
        key = self._group.get(trial_id)
        if key is None:
            key = self._group[trial_id] = self.group_of(result.get("config") or {})
        return key

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        key = self.group_key(trial_id, result)
        if float(result.get("best_val_acc") or 0.0) >= self.target:
            self.done.add(key)
        return key in self.done

    def stop_all(self) -> bool:
        return bool(self.done) and (self.num_groups is None or len(self.done) >= self.num_groups)


def stopper(experiment: Any, group_of: Callable[[dict[str, Any]], Hashable], num_groups: int | None) -> Any:
    target = experiment.run.stop_at_val_acc
    return None if target is None else GroupTarget(target, group_of, num_groups)


def num_groups(space: Any, keys: list[str], num_tasks: int) -> int | None:
    """How many comparison groups the space has (tasks x values of `keys`); None when a key is sampled
    from a continuous range."""
    from tunetl.search.space import values_of

    total = max(1, num_tasks)
    for key in keys:
        d = space.dims.get(key)
        if d is not None and d.kind not in ("grid", "choice"):
            return None
        values = {str(v) for v in values_of(space, key)}
        total *= max(1, len(values))
    return total


def keep_checkpoints(experiment: Any) -> int:
    """PBT clones other trials' checkpoints: keep a few so the donor's is still there when it is copied."""
    return 4 if experiment.scheduler.type in ("pbt", "pb2") else 1
