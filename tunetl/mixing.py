"""MixUp and CutMix per training batch (`mixup`, `cutmix`: Beta alphas), with torchvision.transforms.v2.

The engine applies the mixer to the activations entering the first trained stage: the images when
nothing is frozen, the frozen prefix's outputs otherwise (so cached prefix outputs stay usable). With
both alphas above 0 each batch gets one of the two at random, as in torchvision's reference recipe.
torchvision draws from the global RNG; each batch runs under a forked RNG seeded from the trial's own
generator, so trials stay reproducible and resume bit for bit without touching anyone else's RNG.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


class BatchMixer:
    """(inputs, integer labels) -> (mixed inputs, soft targets (B, num_classes))."""

    def __init__(self, mixup: float, cutmix: float, num_classes: int, generator: torch.Generator) -> None:
        if mixup < 0 or cutmix < 0:
            raise ValueError(f"mixup and cutmix are Beta alphas >= 0 (0 = off), got {mixup} and {cutmix}")
        if mixup == 0 and cutmix == 0:
            raise ValueError("BatchMixer needs mixup > 0 or cutmix > 0")
        self.cutmix = cutmix > 0
        choices: list[v2.Transform] = []
        if mixup > 0:
            choices.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
        if cutmix > 0:
            choices.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
        self.transform: v2.Transform = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
        self.generator = generator

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        if x.dim() != 4:
            if self.cutmix:
                raise ValueError(
                    f"cutmix cuts boxes out of (B, C, H, W) inputs, but the first trained stage takes inputs of "
                    f"shape {tuple(shape)}; use mixup, or a frozen_depth whose last frozen stage outputs feature maps"
                )
            x = x.reshape(shape[0], 1, 1, -1)  # MixUp is elementwise: any layout mixes alike
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mixed, target = self.transform(x, y)
        return mixed.reshape(shape), target
