"""Augmentation policies (`augment`): none, crop_flip (the seeds' preset), TrivialAugmentWide, RandAugment.

They act on preprocessed training batches, before any stage runs, so a trial that augments runs its
training batches through the frozen prefix every epoch (its validation split still uses the cache).
`crop_flip` is `augment_batch` (batched, on the batch's device). `trivial` and `randaugment` are
torchvision.transforms.v2's policies, made for uint8 images: the batch is mapped back to 0..255 with the
preprocessing's mean/std, each image gets its own draw, and the result is normalised again. Their
random draws come from torchvision's global RNG, forked and seeded from the trial's generator per batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from tunetl.data.transforms import Preprocess, augment_batch
from tunetl.params import AUGMENT_POLICIES as POLICIES

Augmenter = Callable[[torch.Tensor], torch.Tensor]


def policy_transform(policy: str) -> v2.Transform:
    """torchvision's transform for a named v2 policy (its default strength)."""
    if policy == "trivial":
        return v2.TrivialAugmentWide()
    if policy == "randaugment":
        return v2.RandAugment()
    raise ValueError(f"{policy!r} is not a torchvision policy: use trivial or randaugment")


class PolicyAugment:
    """A v2 policy applied per image to a normalised batch (B, C, H, W)."""

    def __init__(self, policy: str, preprocess: Preprocess, generator: torch.Generator) -> None:
        self.transform = policy_transform(policy)
        self.mean, self.std = preprocess.mean, preprocess.std
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        pixels = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = torch.stack([self.transform(image) for image in pixels])
        return (out.to(x.dtype) / 255 - mean) / std


def make_augmenter(
    policy: str, preprocess: Preprocess, generator: torch.Generator, crop_generator: torch.Generator
) -> Augmenter | None:
    """The training-batch augmentation of `policy`; None for `none`. `crop_generator` (on the batches'
    device) drives crop_flip, `generator` (CPU) the v2 policies."""
    if policy == "none":
        return None
    if policy == "crop_flip":
        return lambda x: augment_batch(x, crop_generator)
    if policy in POLICIES:
        return PolicyAugment(policy, preprocess, generator)
    raise ValueError(f"unknown augment policy {policy!r}: use {', '.join(POLICIES)} (or true/false)")
