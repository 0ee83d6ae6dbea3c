"""One trial end to end outside a search (no Ray, no MLflow): the Python API's `tunetl.train_trial`.

It lives above both `trial` and `source` because it resolves the source weights a trial transfers
(training and caching a source model when needed) before running the trial.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tunetl.config import ExperimentConfig
from tunetl.data import TaskData
from tunetl.params import TrialParams, needs_source
from tunetl.source import default_cache_dir, source_state_for
from tunetl.trial import EpochMetrics, TrialRunner, model_in_channels


def train_trial(
    params: TrialParams | dict[str, Any],
    experiment: ExperimentConfig,
    *,
    seed: int = 0,
    epochs: int | None = None,
    task: TaskData | None = None,
    source_state: dict[str, torch.Tensor] | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    device: torch.device | str | None = None,
    storage: str | Path | None = None,
) -> list[EpochMetrics]:
    """Run one trial for `epochs` (default: the experiment's) and return its per-epoch metrics.

    `source_state` defaults to the experiment's source weights: for `source.train_on`, the model cached
    under `<storage>/cache/sources/` by a `tunetl run` of the same experiment and `--storage` (a local
    folder, default ./tunetl_runs), trained and cached there when absent.
    """
    p = params if isinstance(params, TrialParams) else TrialParams.model_validate(params)
    if source_state is None and needs_source(p.transfer_depth):
        cache = Path(storage) / "cache" if storage is not None else default_cache_dir()
        source_state = source_state_for(experiment, cache,
                                        in_channels=model_in_channels(experiment, task) if task else None)
    runner = TrialRunner(p, experiment, seed=seed, task=task, source_state=source_state, device=device)
    for _ in range(epochs or experiment.training.epochs):
        m = runner.run_epoch()
        if on_epoch is not None:
            on_epoch(m)
    return runner.history
