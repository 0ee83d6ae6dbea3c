"""Per-epoch learning-rate schedules (`lr_schedule`, `warmup_epochs`) from torch.optim.lr_scheduler.

Every optimizer group keeps its own rate from the learning-rate formula; a schedule multiplies all of
them by one factor per epoch, stepped once after each epoch:

- warmup: epochs 0..w-1 train at `(e + 1) / (w + 1)` of the rate (LinearLR), epoch w at the full rate;
- `constant`: the full rate after warmup;
- `cosine`: CosineAnnealingLR over the `epochs - w` epochs after warmup, from the full rate towards 0;
- `step`: MultiStepLR, x0.1 after half and after three quarters of the epochs after warmup.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, MultiStepLR, SequentialLR

SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step")
#: Factor of each `step` decay and where the decays fall, as fractions of the epochs after warmup.
STEP_GAMMA = 0.1
STEP_AT = (0.5, 0.75)


def step_milestones(epochs: int) -> list[int]:
    """Epochs (counted from the end of warmup) after which `step` decays the rate."""
    return sorted({max(1, round(epochs * f)) for f in STEP_AT})


def build_lr_schedule(optimizer: Optimizer, schedule: str, warmup_epochs: int, epochs: int) -> LRScheduler | None:
    """The scheduler for a trial of `epochs` epochs; None for a constant rate without warmup.

    Call `.step()` once after each epoch's training.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_schedule {schedule!r}: use {', '.join(SCHEDULES)}")
    if not 0 <= warmup_epochs < epochs:
        raise ValueError(f"warmup_epochs ({warmup_epochs}) must be >= 0 and < the trial's epochs ({epochs})")
    after = epochs - warmup_epochs
    main: LRScheduler | None = None
    if schedule == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=after)
    elif schedule == "step":
        main = MultiStepLR(optimizer, milestones=step_milestones(after), gamma=STEP_GAMMA)
    if warmup_epochs == 0:
        return main
    warmup = LinearLR(optimizer, start_factor=1.0 / (warmup_epochs + 1), total_iters=warmup_epochs)
    if main is None:
        return warmup  # LinearLR holds the full rate once its ramp is done
    return SequentialLR(optimizer, [warmup, main], milestones=[warmup_epochs])
