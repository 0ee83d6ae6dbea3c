"""After a search: rebuild a trial's delivered classifier, score it once on the test split, refit it.

No Ray and no MLflow: the driver (`tunetl.api`) hands in a trial's saved state (read from its Tune
checkpoint) and the task's data. A trial's weights are those of its best epoch by val_acc (the
`best_model` that `TrialRunner` keeps and every checkpoint carries), so nothing is retrained unless
`output.refit` asks for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tunetl.classifier import ClassifierSpec, ImageClassifier
from tunetl.config import ExperimentConfig
from tunetl.data import ImageSet, TaskData, TensorImageSet
from tunetl.params import TrialParams
from tunetl.trial import TrialRunner, model_in_channels, resolve_trial


def classifier_spec(experiment: ExperimentConfig, task: TaskData, params: TrialParams) -> ClassifierSpec:
    experiment, resolved = resolve_trial(params, experiment)
    training = experiment.training
    return ClassifierSpec(
        backbone=experiment.backbone,
        class_names=list(task.class_names),
        image_channels=task.in_channels,
        image_size=tuple(task.image_size),  # type: ignore[arg-type]
        model_channels=model_in_channels(experiment, task),
        input_size=training.image_size,
        head=resolved.head,
        activation=resolved.activation,
        hidden=training.hidden,
        dropout=training.dropout,
    )


def delivered_classifier(
    experiment: ExperimentConfig, task: TaskData, params: TrialParams, state: dict[str, Any]
) -> ImageClassifier | None:
    """The classifier a trial's checkpoint delivers (its best epoch's weights); None when the checkpoint
    predates `best_model` or the trial never had a finite val_acc."""
    weights = state.get("best_model")
    if not weights:
        return None
    return ImageClassifier(classifier_spec(experiment, task, params), weights)


@torch.no_grad()
def accuracy(classifier: ImageClassifier, images: ImageSet, batch_size: int = 512) -> float:
    """Top-1 accuracy on a labelled split (uint8 batches at the training size, as the loaders give)."""
    hits = total = 0
    for x, y in images.batches(batch_size=batch_size):
        hits += int((classifier(x).argmax(dim=1) == y).sum())
        total += int(y.shape[0])
    return hits / total if total else float("nan")


def train_and_val(task: TaskData) -> TaskData:
    """The task with its validation images added to the training split (what refit trains on)."""
    if not (isinstance(task.train, TensorImageSet) and isinstance(task.val, TensorImageSet)):
        raise ValueError("output.refit needs a dataset held in memory; this one is streamed from disk")
    both = TensorImageSet(torch.cat([task.train.images, task.val.images]),
                          np.concatenate([task.train.labels, task.val.labels]))
    return TaskData(task.name, task.class_names, both, task.val, task.in_channels, task.image_size)


def refit(
    experiment: ExperimentConfig,
    task: TaskData,
    params: TrialParams,
    *,
    seed: int,
    epochs: int,
    source_state: dict[str, torch.Tensor] | None,
) -> ImageClassifier:
    """The configuration retrained on train+val with the trial's seed for `epochs` (its best epoch):
    `images_per_label` subsets are then drawn from the union. In-memory data only."""
    runner = TrialRunner(params, experiment, seed=seed, task=train_and_val(task), source_state=source_state,
                         device="cpu",
                         feature_cache="trial")
    for _ in range(max(1, epochs)):
        runner.run_epoch()
    state = {k: v.detach().cpu() for k, v in runner.model.state_dict().items()}
    return ImageClassifier(classifier_spec(experiment, task, params), state)
