"""Plan-time checks of the fine-tuning knobs that need the experiment's training settings.

Each knob's own range is checked where the space is parsed (`TrialParams`); what is left needs
`training`: warmup shorter than the trial, and `stage_multipliers` never meeting `layer_decay` (set in
the same trial by the space, one of its conditions, or `training.layer_decay`).
"""

from __future__ import annotations

from typing import Any

from tunetl.config import TrainingConfig
from tunetl.params import exclusive_multipliers_error
from tunetl.search.space import SearchSpace, SpaceError, values_of


def check_recipe(space: SearchSpace, training: TrainingConfig) -> None:
    """Raise SpaceError (naming the keys) for knob values that cannot run with these training settings."""
    o = space.origin
    for w in values_of(space, "warmup_epochs"):
        if w is not None and w >= training.epochs:
            raise SpaceError(
                f"{o}.warmup_epochs: {w} must be < training.epochs ({training.epochs}): warmup ramps up to the "
                "full learning rate, which some epochs must then use"
            )
    conditions = [{k: v for k, v in c.items() if k != "name"} for c in space.conditions or []]
    for cond in conditions or [{}]:
        multipliers, decays = _given(space, cond, "stage_multipliers"), _given(space, cond, "layer_decay")
        if multipliers and (decays or training.layer_decay is not None):
            decay_from = f"{o}.layer_decay" if decays else f"training.layer_decay: {training.layer_decay:g}"
            raise SpaceError(f"{o}: " + exclusive_multipliers_error(f"{o}.stage_multipliers", decay_from))


def _given(space: SearchSpace, condition: dict[str, Any], key: str) -> bool:
    """Whether trials of this condition get a (non-null) value of `key`: from it, else from the space."""
    if key in condition:
        return condition[key] is not None
    if key in space.dims:
        d = space.dims[key]
        return d.kind not in ("grid", "choice") or any(v is not None for v in d.values)
    return space.fixed.get(key) is not None
