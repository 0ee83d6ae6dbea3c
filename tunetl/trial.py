"""One trial end to end, without Ray or MLflow: the unit the search layer schedules.

`TrialRunner` owns everything a trial needs between epochs (model, optimizer, data on the device, RNG)
so that the Ray trainable can report and checkpoint after each epoch and resume from a checkpoint.
Small datasets are preprocessed once and kept on the device; when the trial does not augment, the
frozen prefix is run once too and its activations reused every epoch (BatchNorm there is in eval mode,
so the result is the same as recomputing it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from tunetl.config import ExperimentConfig
from tunetl.data import ImageSet, Preprocess, TaskData, augment_batch, images_per_label_indices, load_dataset
from tunetl.engine import Batch, evaluate, train_one_epoch
from tunetl.models import list_backbones
from tunetl.params import ResolvedParams, TrialParams
from tunetl.transfer import make_optimizer, prepare_model

#: Preprocessed tensors up to this size stay on the device for the whole trial.
RESIDENT_BYTES = 1 << 30


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def pick_device(gpu: float = 0) -> torch.device:
    return torch.device("cuda" if gpu > 0 and torch.cuda.is_available() else "cpu")


def model_in_channels(experiment: ExperimentConfig, task: TaskData) -> int:
    """ImageNet weights expect RGB; otherwise the model takes the data's own channels."""
    return 3 if experiment.source.weights == "imagenet" else task.in_channels


class TrialRunner:
    def __init__(
        self,
        params: TrialParams,
        experiment: ExperimentConfig,
        *,
        seed: int = 0,
        task: TaskData | None = None,
        source_state: dict[str, torch.Tensor] | None = None,
        device: torch.device | str | None = None,
        in_channels: int | None = None,
        cache_prefix: bool = True,
    ) -> None:
        self.experiment = experiment
        self.seed = seed
        self.device = torch.device(device) if device is not None else pick_device(experiment.resources.gpu)
        self.task = task if task is not None else load_dataset(experiment.dataset)
        training = experiment.training
        stage_names = list_backbones()[experiment.backbone]
        self.params: ResolvedParams = params.resolved(
            len(stage_names), training.base_lr, training.augment, training.optimizer
        )
        channels = in_channels if in_channels is not None else model_in_channels(experiment, self.task)
        torch.manual_seed(seed)
        prepared = prepare_model(
            experiment.backbone,
            num_classes=len(self.task.class_names),
            in_channels=channels,
            params=self.params,
            source_state=source_state,
            seed=seed,
            hidden=training.hidden,
            dropout=training.dropout,
        )
        self.model = prepared.model.to(self.device)
        self.frozen_prefix = prepared.frozen_prefix
        self.optimizer = make_optimizer(
            self.params.optimizer,
            prepared.param_groups,
            momentum=training.momentum,
            weight_decay=training.weight_decay,
        )
        size = training.image_size or self.model.input_size
        self.preprocess = Preprocess(size, channels, self.model.mean, self.model.std).to(self.device)
        self.train_idx = images_per_label_indices(
            self.task.train.labels, self.params.images_per_label, seed, self.task.class_names
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.aug_generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.epoch = 0
        self.best_val_acc = float("-inf")
        self.history: list[EpochMetrics] = []
        augment = self.params.augment
        # With augmentation the inputs change every epoch, so only the preprocessed images are kept.
        self.train_start = self.frozen_prefix if (cache_prefix and not augment) else 0
        self._train_cache = self._resident(self.task.train, self.train_idx, self.train_start)
        if self._train_cache is None:
            self.train_start = 0  # too big to keep: every epoch streams raw images through all stages
        val_stage = self.frozen_prefix if cache_prefix else 0
        self._val_cache = self._resident(self.task.val, np.arange(len(self.task.val)), val_stage)
        self.val_start = self.frozen_prefix if (cache_prefix and self._val_cache is not None) else 0

    @property
    def num_train(self) -> int:
        return len(self.train_idx)

    def _prepared_batches(self, images: ImageSet, idx: np.ndarray, batch_size: int, stage: int) -> Iterator[Batch]:
        for x, y in images.batches(idx, batch_size, False, None):
            x = self.preprocess(x.to(self.device, non_blocking=True))
            if stage > 0:
                with torch.no_grad():
                    x = self.model.forward_stages(x, 0, stage)
            yield x, y.to(self.device, non_blocking=True)

    def _resident(self, images: ImageSet, idx: np.ndarray, stage: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Preprocess (and run the frozen prefix) once, if the result fits in `RESIDENT_BYTES`."""
        if len(idx) == 0:
            return None
        self.model.eval()
        xs, ys, size = [], [], 0
        with torch.no_grad():
            for x, y in self._prepared_batches(images, idx, self.experiment.training.eval_batch_size, stage):
                xs.append(x)
                ys.append(y)
                size += x.numel() * x.element_size()
                if size > RESIDENT_BYTES:
                    return None
        return torch.cat(xs), torch.cat(ys)

    def _train_batches(self) -> Iterator[Batch]:
        bs = self.experiment.training.batch_size
        if self._train_cache is None:
            order = self.train_idx[torch.randperm(len(self.train_idx), generator=self.generator).numpy()]
            for x, y in self._prepared_batches(self.task.train, order, bs, 0):
                yield (augment_batch(x, self.aug_generator) if self.params.augment else x), y
            return
        x_all, y_all = self._train_cache
        perm = torch.randperm(len(y_all), generator=self.generator).to(self.device)
        for start in range(0, len(perm), bs):
            sel = perm[start : start + bs]
            x = x_all[sel]
            if self.params.augment:
                x = augment_batch(x, self.aug_generator)
            yield x, y_all[sel]

    def _val_batches(self) -> Iterator[Batch]:
        bs = self.experiment.training.eval_batch_size
        if self._val_cache is None:
            yield from self._prepared_batches(self.task.val, np.arange(len(self.task.val)), bs, 0)
            return
        x_all, y_all = self._val_cache
        for start in range(0, len(y_all), bs):
            yield x_all[start : start + bs], y_all[start : start + bs]

    def run_epoch(self) -> EpochMetrics:
        t0 = time.perf_counter()
        train = train_one_epoch(
            self.model,
            self._train_batches(),
            self.optimizer,
            frozen_prefix=self.frozen_prefix,
            start_stage=self.train_start,
        )
        val = evaluate(self.model, self._val_batches(), start_stage=self.val_start)
        self.epoch += 1
        metrics = EpochMetrics(
            epoch=self.epoch,
            train_loss=train.loss,
            train_acc=train.acc,
            val_loss=val.loss,
            val_acc=val.acc,
            seconds=time.perf_counter() - t0,
        )
        if val.acc == val.acc:  # NaN never becomes the best
            self.best_val_acc = max(self.best_val_acc, val.acc)
        self.history.append(metrics)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this trial bit for bit after a restart."""
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "aug_generator": self.aug_generator.get_state(),
            "best_val_acc": self.best_val_acc,
            "history": [m.as_dict() for m in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.aug_generator.set_state(state["aug_generator"])
        self.epoch = int(state["epoch"])
        self.best_val_acc = float(state["best_val_acc"])
        self.history = [EpochMetrics(**m) for m in state["history"]]


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
) -> list[EpochMetrics]:
    """Run one trial for `epochs` (default: the experiment's) and return its per-epoch metrics.

    `source_state` defaults to the experiment's source weights (trained and cached on first use).
    """
    from tunetl.source import source_state_for

    p = params if isinstance(params, TrialParams) else TrialParams.model_validate(params)
    if source_state is None and (p.transfer_depth is None or p.transfer_depth > 0):
        source_state = source_state_for(experiment)
    runner = TrialRunner(p, experiment, seed=seed, task=task, source_state=source_state, device=device)
    for _ in range(epochs or experiment.training.epochs):
        m = runner.run_epoch()
        if on_epoch is not None:
            on_epoch(m)
    return runner.history
