"""One epoch of training and evaluation in plain PyTorch (no Ray, no MLflow).

The frozen prefix runs under `torch.no_grad()` and the trainable suffix with autograd, so that a caller
can replace the prefix by cached activations (`start_stage`); MixUp/CutMix (`mix`) act on the
activations leaving the prefix, so they see the same tensors either way. Losses and hits are summed on the device
and read once per epoch: no host sync per step. `amp` runs forward passes under `torch.autocast` in that
dtype (bfloat16: same range as float32, so no loss scaling is needed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from tunetl.models import StagedModel

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class EpochStats:
    loss: float
    acc: float
    samples: int


class _Accumulator:
    """Sums loss and hits on the device; `.result()` is the epoch's only host sync."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | None = None
        self.hits: torch.Tensor | None = None
        self.count = 0

    def add(self, logits: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor) -> None:
        hits = (logits.argmax(dim=1) == y).sum()
        self.loss = loss_sum.detach() if self.loss is None else self.loss + loss_sum.detach()
        self.hits = hits if self.hits is None else self.hits + hits
        self.count += int(y.shape[0])

    def result(self) -> EpochStats:
        if self.count == 0 or self.loss is None or self.hits is None:
            return EpochStats(loss=float("nan"), acc=float("nan"), samples=0)
        return EpochStats(
            loss=float(self.loss.item()) / self.count,
            acc=float(self.hits.item()) / self.count,
            samples=self.count,
        )


def _autocast(x: torch.Tensor, amp: torch.dtype | None) -> AbstractContextManager[object]:
    return torch.autocast(device_type=x.device.type, dtype=amp) if amp is not None else nullcontext()


def run_prefix(model: StagedModel, x: torch.Tensor, start_stage: int, frozen_prefix: int) -> torch.Tensor:
    """Activations entering stage `max(start_stage, frozen_prefix)`: the frozen stages from
    `start_stage` on run without autograd (none when the input is already past them)."""
    if start_stage < frozen_prefix:
        with torch.no_grad():
            x = model.forward_stages(x, start_stage, frozen_prefix)
    return x


def forward_split(model: StagedModel, x: torch.Tensor, start_stage: int, frozen_prefix: int) -> torch.Tensor:
    """Logits from activations entering `start_stage`; stages before `frozen_prefix` run without autograd."""
    x = run_prefix(model, x, start_stage, frozen_prefix)
    x = model.forward_stages(x, max(start_stage, frozen_prefix), len(model.stages))
    return model.head(model.neck(x))


#: Mixes a batch (inputs, integer labels) into (mixed inputs, soft targets of shape (B, classes)).
Mixer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def train_one_epoch(
    model: StagedModel,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    frozen_prefix: int = 0,
    start_stage: int = 0,
    amp: torch.dtype | None = None,
    label_smoothing: float = 0.0,
    mix: Mixer | None = None,
    grad_clip: float = 0.0,
) -> EpochStats:
    """Train over `batches` of ready inputs (already on the device, preprocessed and augmented).

    `mix` (MixUp/CutMix) acts on the activations entering the first trained stage, i.e. after the
    frozen prefix, so the same trial mixes the same tensors whether or not the prefix was cached;
    `label_smoothing` is CrossEntropyLoss's; `grad_clip` > 0 clips the gradients' global norm.
    Accuracy counts each sample's own (unmixed) label.
    """
    model.train()
    acc = _Accumulator()
    clipped = [p for group in optimizer.param_groups for p in group["params"]] if grad_clip > 0 else []
    stage = max(start_stage, frozen_prefix)
    for x, y in batches:
        with _autocast(x, amp):
            x = run_prefix(model, x, start_stage, frozen_prefix)
            target = y
            if mix is not None:
                x, target = mix(x, y)
            logits = forward_split(model, x, stage, stage)
        loss_sum = F.cross_entropy(logits.float(), target, reduction="sum", label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / y.shape[0]).backward()
        if clipped:
            torch.nn.utils.clip_grad_norm_(clipped, grad_clip)
        optimizer.step()
        acc.add(logits, y, loss_sum)
    return acc.result()


@torch.no_grad()
def evaluate(
    model: StagedModel | nn.Module,
    batches: Iterable[Batch],
    *,
    start_stage: int = 0,
    amp: torch.dtype | None = None,
) -> EpochStats:
    model.eval()
    acc = _Accumulator()
    for x, y in batches:
        with _autocast(x, amp):
            logits = forward_split(model, x, start_stage, start_stage) if isinstance(model, StagedModel) else model(x)
        logits = logits.float()
        acc.add(logits, y, F.cross_entropy(logits, y, reduction="sum"))
    return acc.result()
