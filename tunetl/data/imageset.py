"""`ImageSet`: labelled images served as uint8 batches, held in memory or streamed from files.

The engine only ever calls `batches`, so whether a dataset fits in memory is decided once at load time
and never leaks into training code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

Batch = tuple[torch.Tensor, torch.Tensor]
Indices = np.ndarray | Sequence[int] | torch.Tensor | None


class ImageSet(ABC):
    """Labelled images of one shape (C, H, W); `batches` yields (x uint8 (B,C,H,W), y int64 (B,))."""

    labels: np.ndarray
    in_channels: int
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @abstractmethod
    def batches(
        self,
        indices: Indices = None,
        batch_size: int = 64,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        """Yield the images at `indices` (all when None) in batches, in order or shuffled."""

    def _order(
        self, indices: Indices, batch_size: int, shuffle: bool, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The visiting order, shared by both implementations so they yield identical batches."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        if indices is None:
            order = torch.arange(n, dtype=torch.int64)
        else:
            order = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
            if order.numel() and (int(order.min()) < 0 or int(order.max()) >= n):
                raise IndexError(f"indices must lie in [0, {n}), got {int(order.min())}..{int(order.max())}")
        if shuffle and order.numel() > 1:
            device = generator.device if generator is not None else "cpu"
            perm = torch.randperm(order.numel(), generator=generator, device=device).cpu()
            order = order[perm]
        return order


class TensorImageSet(ImageSet):
    """Images held as one uint8 tensor (N, C, H, W): built-ins and folders under the memory limit."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if images.shape[0] != len(labels):
            raise ValueError(f"{images.shape[0]} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self._labels_t = torch.from_numpy(self.labels.copy())
        self.in_channels = int(images.shape[1])
        self.image_size = (int(images.shape[2]), int(images.shape[3]))

    def batches(
        self,
        indices: Indices = None,
        batch_size: int = 64,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        order = self._order(indices, batch_size, shuffle, generator)
        for start in range(0, order.numel(), batch_size):
            idx = order[start : start + batch_size]
            yield self.images[idx], self._labels_t[idx]


class _FileDataset(Dataset):
    """Decodes one file per item; picklable so DataLoader workers can run it."""

    def __init__(self, paths: list[str], labels: np.ndarray, decode: Callable[[str], np.ndarray]) -> None:
        self.paths = paths
        self.labels = labels
        self.decode = decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.decode(self.paths[i])), int(self.labels[i])


class _PassOrder(Sampler[int]):
    """The visiting order of the next pass, replaced before each pass: one DataLoader (and its
    persistent workers) then serves every epoch. Samplers run in the main process, so workers see it."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class StreamingImageSet(ImageSet):
    """Images read lazily from files through a DataLoader: folders too large to hold in memory.

    `decode(path)` must return a uint8 array of shape (C, H, W) equal to `(in_channels, *image_size)`
    and be picklable (a module-level function or a `functools.partial` of one) when `num_workers > 0`.
    With workers and `persistent_workers`, one loader per batch size is kept with its worker processes,
    so epochs after the first start without forking; `pin_memory` is for trials that copy batches to a
    GPU.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: np.ndarray,
        decode: Callable[[str], np.ndarray],
        in_channels: int,
        image_size: tuple[int, int],
        num_workers: int = 0,
        *,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        prefetch_factor: int = 4,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} files but {len(labels)} labels")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.in_channels = in_channels
        self.image_size = image_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.prefetch_factor = prefetch_factor
        self._decode = decode
        self._dataset = _FileDataset(self.paths, self.labels, decode)
        self._loaders: dict[int, tuple[DataLoader, _PassOrder]] = {}
        self._busy: set[int] = set()

    def with_loader(
        self, *, num_workers: int, pin_memory: bool, persistent_workers: bool = True
    ) -> StreamingImageSet:
        """The same images with other loader settings (a new object: the original may be shared).
        Passes made once (e.g. caching) want `persistent_workers=False`: no idle workers stay behind."""
        return StreamingImageSet(
            self.paths,
            self.labels,
            self._decode,
            self.in_channels,
            self.image_size,
            num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            prefetch_factor=self.prefetch_factor,
        )

    def __getstate__(self) -> dict[str, object]:
        """Loaders hold worker processes: they are not sent along (a copy starts its own)."""
        state = self.__dict__.copy()
        state["_loaders"], state["_busy"] = {}, set()
        return state

    def _loader(self, batch_size: int, order: list[int]) -> tuple[DataLoader, int | None]:
        """A loader over `order`; the kept one unless a pass with that batch size is still running."""
        settings: dict[str, Any] = {"batch_size": batch_size, "pin_memory": self.pin_memory}
        if self.num_workers > 0:
            settings.update(num_workers=self.num_workers, prefetch_factor=self.prefetch_factor)
        if self.num_workers == 0 or not self.persistent_workers or batch_size in self._busy:
            return DataLoader(self._dataset, sampler=order, **settings), None
        if batch_size not in self._loaders:
            sampler = _PassOrder()
            loader = DataLoader(self._dataset, sampler=sampler, persistent_workers=True, **settings)
            self._loaders[batch_size] = (loader, sampler)
        loader, sampler = self._loaders[batch_size]
        sampler.order = order
        return loader, batch_size

    def batches(
        self,
        indices: Indices = None,
        batch_size: int = 64,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        order = self._order(indices, batch_size, shuffle, generator)
        loader, kept = self._loader(batch_size, order.tolist())
        if kept is None:
            yield from loader
            return
        self._busy.add(kept)
        try:
            yield from loader
        finally:
            self._busy.discard(kept)


@dataclass(frozen=True)
class TaskData:
    """A loaded dataset: fixed train/validation sets with labels 0..K-1 in `class_names` order."""

    name: str
    class_names: list[str]
    train: ImageSet
    val: ImageSet
    in_channels: int
    image_size: tuple[int, int]
    #: Files left out by `bad_files: skip` and symlinks leaving the folder, relative to the folder.
    skipped_files: tuple[str, ...] = ()
    #: The held-out test split (`test_fraction` / `test_path`); None when there is none. Trials never
    #: receive it: the driver strips it (`without_test`) before the data goes to Ray.
    test: ImageSet | None = None

    def without_test(self) -> TaskData:
        return replace(self, test=None)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
