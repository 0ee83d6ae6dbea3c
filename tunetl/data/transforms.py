"""Batch transforms: `Preprocess` (to the backbone's input) and `augment_batch` (the seeds' preset).

Both work on whole batches on whatever device the batch is on, so a GPU trial never round-trips
single images through the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def _per_channel(values: float | Sequence[float], channels: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"{what} has {t.numel()} values but the output has {channels} channels")
    return t.reshape(1, channels, 1, 1).clone()


class Preprocess(nn.Module):
    """uint8 or [0,1] float batch (B,C,H,W) -> normalised float32 batch for a backbone.

    Steps: to float32 in [0, 1] (uint8 is divided by 255, float is taken as already in [0, 1]);
    channels converted to `in_channels` (1->3 repeats, 3->1 averages); resized bilinearly with
    antialiasing to `size` when set and different; normalised with `mean`/`std` (one value per output
    channel, or a single value for all).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        size: int | tuple[int, int] | None,
        in_channels: int,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        mode: Literal["bilinear", "bicubic"] = "bilinear",
    ) -> None:
        super().__init__()
        # timm models name their own interpolation; anything F.interpolate cannot antialias is bilinear.
        self.mode = mode if mode in ("bilinear", "bicubic") else "bilinear"
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)
        self.in_channels = in_channels
        std_t = _per_channel(std, in_channels, "std")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive, got {std!r}")
        self.register_buffer("mean", _per_channel(mean, in_channels, "mean"), persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        channels = x.shape[1]
        if channels == 3 and self.in_channels == 1:
            x = x.mean(dim=1, keepdim=True)
        elif channels != self.in_channels and channels != 1:
            raise ValueError(f"cannot convert {channels}-channel images to {self.in_channels} channels")
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode=self.mode, align_corners=False, antialias=True)
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"size={self.size}, in_channels={self.in_channels}, mode={self.mode}"


def _reflect(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Mirror out-of-range indices back into [0, n) without repeating the edge (like F.pad reflect)."""
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    flip: bool = True,
    pad: int | None = None,
    padding_mode: Literal["reflect", "zeros"] = "reflect",
) -> torch.Tensor:
    """Random crop with padding plus random horizontal flip, drawn per sample from `generator`.

    Meant for raw uint8 batches straight from `ImageSet.batches`, before `Preprocess` (cheaper at native
    size, and the pad of 1/8 of the side is relative to the native image); any dtype works because it
    only gathers pixels. The pad defaults to ~1/8 of each side (at least 1). `flip=False` keeps
    orientation (digits). The same generator state gives the same output.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
    if padding_mode not in ("reflect", "zeros"):
        raise ValueError(f"padding_mode must be 'reflect' or 'zeros', got {padding_mode!r}")
    b, c, h, w = x.shape
    if b == 0:
        return x
    pad_h = max(1, round(h / 8)) if pad is None else pad
    pad_w = max(1, round(w / 8)) if pad is None else pad
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    dy = torch.randint(0, 2 * pad_h + 1, (b,), generator=generator, device=gen_device).to(x.device)
    dx = torch.randint(0, 2 * pad_w + 1, (b,), generator=generator, device=gen_device).to(x.device)
    flips = torch.randint(0, 2, (b,), generator=generator, device=gen_device).to(x.device).bool()

    rows = torch.arange(h, device=x.device)[None, :] + dy[:, None] - pad_h
    cols = torch.arange(w, device=x.device)[None, :] + dx[:, None] - pad_w
    if flip:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    if padding_mode == "reflect":
        inside = None
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    else:
        inside = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    out = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    if inside is not None:
        out = torch.where(inside, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out
