"""One trial end to end, without Ray or MLflow: the unit the search layer schedules.

`TrialRunner` owns everything a trial needs between epochs (model, optimizer, data on the device, RNG)
so that the Ray trainable can report and checkpoint after each epoch and resume from a checkpoint.
Small datasets are preprocessed once and kept on the device. The frozen prefix (BatchNorm in eval mode,
no gradients) is a pure function of its input, so its outputs are computed once and reused every epoch
(`training.feature_cache`): "node" shares them between the trials of a machine through
`tunetl.feature_cache` (one computation per source weights, depth, preprocessing and split, which every
images-per-label subset and seed indexes into), "trial" computes them once per trial, "off" runs the
prefix every epoch. A trial that augments changes its training inputs every epoch, so its training
batches always run through the whole network; its validation set still uses the cache.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from tunetl.config import ExperimentConfig
from tunetl.data import Preprocess, TaskData, images_per_label_indices, load_dataset
from tunetl.data.policies import make_augmenter
from tunetl.engine import Batch, evaluate, train_one_epoch
from tunetl.feature_cache import FeatureCache
from tunetl.mixing import BatchMixer
from tunetl.models import backbone_stages
from tunetl.params import ResolvedParams, TrialParams
from tunetl.placement import FeatureSource, InputPlacer, loader_settings
from tunetl.schedule import build_lr_schedule
from tunetl.transfer import make_optimizer, prepare_model

FeatureCacheMode = Literal["node", "trial", "off"]


#: A training loss above this (or not finite) marks a run diverged: it stops and ranks with accuracy 0.
DIVERGED_LOSS = 1e6


def has_diverged(loss: float) -> bool:
    return not math.isfinite(loss) or loss > DIVERGED_LOSS


def resolve_trial(params: TrialParams, experiment: ExperimentConfig) -> tuple[ExperimentConfig, ResolvedParams]:
    """The experiment a trial runs (with the backbone its search space chose) and its parameters with
    every default filled in: what a trial trains, and what a delivered model of it is rebuilt from."""
    if params.backbone is not None and params.backbone != experiment.backbone:
        experiment = experiment.model_copy(update={"backbone": params.backbone})
    training = experiment.training
    resolved = params.resolved(len(backbone_stages(experiment.backbone)), training.base_lr, training.augment,
                               training.optimizer, **training.recipe_defaults())
    return experiment, resolved


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float
    #: The learning-rate schedule's factor during this epoch (every group's rate = formula x factor).
    lr_factor: float = 1.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def pick_device(gpu: float = 0) -> torch.device:
    return torch.device("cuda" if gpu > 0 and torch.cuda.is_available() else "cpu")


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `training.amp` on `device` (None: float32)."""
    if setting == "bf16":
        return torch.bfloat16
    if setting == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def trial_threads(experiment: ExperimentConfig) -> int:
    """Torch threads for one trial's (or the source model's) training: the CPUs a trial is given.
    Torch's default, every core, is 2-4x slower for these small models when Ray's processes or other
    trials share the cores (source model on 2 cores: 8.5-22 s with 2 threads, 4.0-4.5 s with 1)."""
    return max(1, int(experiment.resources.cpu))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` torch threads, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_in_channels(experiment: ExperimentConfig, task: TaskData) -> int:
    """ImageNet weights expect RGB; otherwise the model takes the data's own channels."""
    return 3 if experiment.source.weights == "imagenet" else task.in_channels


class TrialRunner:
    """One trial's state between epochs.

    `feature_cache` (default: the experiment's `training.feature_cache`) picks how frozen-prefix outputs
    are reused; `cache_prefix=False` is the same as "off". A trial that augments runs its training
    batches through the whole network whatever the setting; and where a whole split's outputs are too
    large to share (`feature_cache.MAX_ENTRY_BYTES`), or the trial's part of them to keep
    (`placement.RESIDENT_BYTES`), the trial falls back to its own cache or to streaming. `feature_cache_dir`
    defaults to `$TUNETL_FEATURE_CACHE`, else a folder under the node's temp directory.
    """

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
        feature_cache: FeatureCacheMode | None = None,
        feature_cache_dir: str | Path | None = None,
    ) -> None:
        experiment, self.params = resolve_trial(params, experiment)
        self.experiment = experiment
        self.seed = seed
        self.device = torch.device(device) if device is not None else pick_device(experiment.resources.gpu)
        self.amp = amp_dtype(experiment.training.amp, self.device)
        self.task = task if task is not None else load_dataset(experiment.dataset)
        training = experiment.training
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
            weight_decay=self.params.weight_decay,
        )
        self._base_lr0 = float(self.optimizer.param_groups[0]["lr"])
        self.lr_schedule = build_lr_schedule(
            self.optimizer, self.params.lr_schedule, self.params.warmup_epochs, training.epochs
        )
        size = training.image_size or self.model.input_size
        self.preprocess = Preprocess(size, channels, self.model.mean, self.model.std,
                                     mode=self.model.interpolation).to(self.device)
        self.train_idx = images_per_label_indices(
            self.task.train.labels, self.params.images_per_label, seed, self.task.class_names
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.aug_generator = torch.Generator(device=self.device).manual_seed(seed + 1)
        #: Seeds torchvision's draws (v2 policies, MixUp/CutMix), which run on a forked global RNG.
        self.recipe_generator = torch.Generator().manual_seed(seed + 2)
        self.augmenter = make_augmenter(self.params.augment, self.preprocess, self.recipe_generator, self.aug_generator)
        p = self.params
        self.mixer = (
            BatchMixer(p.mixup, p.cutmix, len(self.task.class_names), self.recipe_generator)
            if p.mixup > 0 or p.cutmix > 0
            else None
        )
        self.epoch = 0
        self.best_val_acc = float("-inf")
        #: The model's weights (on the CPU) after its best epoch by val_acc: what a search delivers.
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch = 0
        self.history: list[EpochMetrics] = []

        self.feature_cache: FeatureCacheMode = (feature_cache or training.feature_cache) if cache_prefix else "off"
        if self.feature_cache not in ("node", "trial", "off"):
            raise ValueError(f"feature_cache must be 'node', 'trial' or 'off', got {self.feature_cache!r}")
        cpus = experiment.resources.cpu
        self._placer = InputPlacer(
            self.model,
            self.preprocess,
            self.device,
            cpus=cpus,
            eval_batch_size=training.eval_batch_size,
            dataset=self.task.name,
            node_cache=FeatureCache(feature_cache_dir) if self.feature_cache == "node" else None,
        )
        self.feature_source: dict[str, FeatureSource] = self._placer.sources
        #: Node-cache keys of the splits that use it (for inspection and tests).
        self.feature_keys: dict[str, str] = self._placer.keys
        self._train_set = loader_settings(self.task.train, cpus, self.device)
        self._val_set = loader_settings(self.task.val, cpus, self.device)
        prefix = 0 if self.feature_cache == "off" else self.frozen_prefix
        # With augmentation the inputs change every epoch: only the preprocessed images are kept.
        # MixUp/CutMix, label smoothing and schedules act after the prefix and keep its cache.
        self.train_start, self._train_cache = self._placer.place(
            "train", self.task.train, self.train_idx, 0 if self.augmenter is not None else prefix
        )
        self.val_start, self._val_cache = self._placer.place(
            "val", self.task.val, np.arange(len(self.task.val)), prefix
        )

    @property
    def num_train(self) -> int:
        return len(self.train_idx)

    def _train_batches(self) -> Iterator[Batch]:
        bs = self.experiment.training.batch_size
        if self._train_cache is None:
            order = self.train_idx[torch.randperm(len(self.train_idx), generator=self.generator).numpy()]
            for x, y in self._placer.batches(self._train_set, order, bs, 0):
                yield (self.augmenter(x) if self.augmenter is not None else x), y
            return
        inputs = self._train_cache
        perm = torch.randperm(len(inputs.y), generator=self.generator).to(self.device)
        for start in range(0, len(perm), bs):
            x, y = inputs.take(perm[start : start + bs])
            if self.augmenter is not None:
                x = self.augmenter(x)
            yield x, y

    def _val_batches(self) -> Iterator[Batch]:
        bs = self.experiment.training.eval_batch_size
        if self._val_cache is None:
            yield from self._placer.batches(self._val_set, np.arange(len(self.task.val)), bs, 0)
            return
        inputs = self._val_cache
        for start in range(0, len(inputs.y), bs):
            yield inputs.window(start, start + bs)

    def run_epoch(self) -> EpochMetrics:
        t0 = time.perf_counter()
        lr_factor = float(self.optimizer.param_groups[0]["lr"]) / self._base_lr0
        train = train_one_epoch(
            self.model,
            self._train_batches(),
            self.optimizer,
            frozen_prefix=self.frozen_prefix,
            start_stage=self.train_start,
            amp=self.amp,
            label_smoothing=self.params.label_smoothing,
            mix=self.mixer,
            grad_clip=self.params.grad_clip,
        )
        if self.lr_schedule is not None:
            self.lr_schedule.step()
        val = evaluate(self.model, self._val_batches(), start_stage=self.val_start, amp=self.amp)
        self.epoch += 1
        metrics = EpochMetrics(
            epoch=self.epoch,
            train_loss=train.loss,
            train_acc=train.acc,
            val_loss=val.loss,
            val_acc=val.acc,
            seconds=time.perf_counter() - t0,
            lr_factor=lr_factor,
        )
        if val.acc == val.acc and val.acc > self.best_val_acc:  # NaN never becomes the best
            self.best_val_acc = val.acc
            self.best_epoch = self.epoch
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
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
            "recipe_generator": self.recipe_generator.get_state(),
            "lr_schedule": self.lr_schedule.state_dict() if self.lr_schedule is not None else None,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "best_model": self.best_state,
            "history": [m.as_dict() for m in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` at this runner's own learning rates: the same ones on a resume, new ones
        when PBT hands a trial another trial's checkpoint with perturbed rates."""
        self.model.load_state_dict(state["model"])
        # This runner's base rates (before any schedule factor); the checkpoint brings the schedule's position.
        bases = [group.get("initial_lr", group["lr"]) for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        factor = next((g["lr"] / g["initial_lr"] for g in self.optimizer.param_groups if g.get("initial_lr")), 1.0)
        for group, base in zip(self.optimizer.param_groups, bases, strict=True):
            group["lr"] = base * factor
            if "initial_lr" in group:
                group["initial_lr"] = base
        self.generator.set_state(state["generator"])
        self.aug_generator.set_state(state["aug_generator"])
        # Checkpoints from before the fine-tuning knobs have neither (their trials used neither).
        if "recipe_generator" in state:
            self.recipe_generator.set_state(state["recipe_generator"])
        if self.lr_schedule is not None and state.get("lr_schedule") is not None:
            self.lr_schedule.load_state_dict(state["lr_schedule"])
            for schedule in [self.lr_schedule, *getattr(self.lr_schedule, "_schedulers", [])]:
                schedule.base_lrs = list(bases)
        self.epoch = int(state["epoch"])
        self.best_val_acc = float(state["best_val_acc"])
        self.best_epoch = int(state.get("best_epoch", 0))
        self.best_state = state.get("best_model")
        self.history = [EpochMetrics(**m) for m in state["history"]]
