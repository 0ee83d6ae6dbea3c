"""Where a trial's inputs live between epochs, chosen once when the trial starts.

A split is held, in order of preference: as the node cache's frozen-prefix outputs of the whole split
(`tunetl.feature_cache`, shared by every trial of the machine with the same source weights, depth and
preprocessing; a subset indexes into it without a copy), as the trial's own prefix outputs or
preprocessed images when they fit in `RESIDENT_BYTES`, or not at all: then every epoch streams raw
images through the whole network. `TrialRunner` owns the training; this module owns only that choice,
so a new placement (e.g. pinned host memory for a GPU) is one place to change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from tunetl.data import ImageSet, Preprocess, StreamingImageSet
from tunetl.engine import Batch
from tunetl.feature_cache import MAX_ENTRY_BYTES, FeatureCache, prefix_fingerprint, prefix_key
from tunetl.models import StagedModel

log = logging.getLogger(__name__)

#: Preprocessed tensors up to this size stay on the device for the whole trial.
RESIDENT_BYTES = 1 << 30
#: Most DataLoader worker processes a streaming trial starts.
MAX_LOADER_WORKERS = 8

#: Where a split's inputs come from each epoch: the node cache (read or computed by this trial), the
#: trial's own prefix outputs, its preprocessed images (no frozen prefix to run), or streamed raw images.
FeatureSource = Literal["node-hit", "node-computed", "trial", "preprocessed", "streamed"]


def loader_settings(images: ImageSet, cpus: float, device: torch.device, *, every_epoch: bool = True) -> ImageSet:
    """Streamed folders get DataLoader workers from the trial's CPUs (one stays for training), pinned
    memory only when batches go to a GPU, and persistent workers for the passes made every epoch;
    in-memory sets need none of it."""
    if not isinstance(images, StreamingImageSet):
        return images
    workers = max(images.num_workers, min(MAX_LOADER_WORKERS, int(cpus) - 1))
    return images.with_loader(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=every_epoch)


@dataclass(frozen=True)
class Inputs:
    """A split's inputs to the stage the trial starts at, held for the whole trial.

    `x` holds either the trial's own rows (`rows` None) or a whole split (a memory-mapped node-cache
    entry on the CPU), which `rows` indexes into, so a subset costs no copy.
    """

    x: torch.Tensor
    y: torch.Tensor
    rows: torch.Tensor | None = None

    def take(self, sel: torch.Tensor) -> Batch:
        return self.x[sel if self.rows is None else self.rows[sel]], self.y[sel]

    def window(self, start: int, stop: int) -> Batch:
        x = self.x[start:stop] if self.rows is None else self.x[self.rows[start:stop]]
        return x, self.y[start:stop]


@dataclass
class InputPlacer:
    """Places a trial's splits (`place`) and streams what is not held (`batches`); records where each
    split's inputs come from (`sources`) and its node-cache key (`keys`)."""

    model: StagedModel
    preprocess: Preprocess
    device: torch.device
    cpus: float
    eval_batch_size: int
    dataset: str
    node_cache: FeatureCache | None
    sources: dict[str, FeatureSource] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    _prefix_ids: dict[int, str] = field(default_factory=dict)

    def batches(self, images: ImageSet, idx: np.ndarray, batch_size: int, stage: int) -> Iterator[Batch]:
        """Preprocessed batches of `images[idx]` on the device, through stages [0, stage) when stage > 0."""
        for x, y in images.batches(idx, batch_size, False, None):
            x = self.preprocess(x.to(self.device, non_blocking=True))
            if stage > 0:
                with torch.no_grad():
                    x = self.model.forward_stages(x, 0, stage)
            yield x, y.to(self.device, non_blocking=True)

    def place(self, split: str, images: ImageSet, idx: np.ndarray, stage: int) -> tuple[int, Inputs | None]:
        """(start stage, held inputs) of a split: the node cache, else the trial's own, else streaming."""
        once = loader_settings(images, self.cpus, self.device, every_epoch=False)
        if stage > 0 and self.node_cache is not None:
            shared = self._shared(split, images, once, idx, stage)
            if shared is not None:
                return stage, shared
        own = self._resident(once, idx, stage)
        if own is not None:
            self.sources[split] = "trial" if stage > 0 else "preprocessed"
            return stage, own
        # Too big to keep: every epoch streams raw images through all stages.
        self.sources[split] = "streamed"
        return 0, None

    def _resident(self, images: ImageSet, idx: np.ndarray, stage: int) -> Inputs | None:
        """Preprocess (and run the frozen prefix) once, if the result fits in `RESIDENT_BYTES`."""
        if len(idx) == 0:
            return None
        self.model.eval()
        xs, ys, size = [], [], 0
        with torch.no_grad():
            for x, y in self.batches(images, idx, self.eval_batch_size, stage):
                xs.append(x)
                ys.append(y)
                size += x.numel() * x.element_size()
                if size > RESIDENT_BYTES:
                    return None
        return Inputs(torch.cat(xs), torch.cat(ys))

    def _shared(self, split: str, images: ImageSet, once: ImageSet, idx: np.ndarray, stage: int) -> Inputs | None:
        """The prefix outputs of the whole split from the node cache (computed here on a miss, reading
        `once`: the split with loader settings for a single pass); None when they are too large to
        share or the trial's rows too large to keep."""
        assert self.node_cache is not None
        if len(idx) == 0:
            return None
        self.model.eval()
        height, width = self.preprocess.size or images.image_size
        with torch.no_grad():  # one blank input gives the output's shape and dtype without reading images
            blank = torch.zeros(1, self.preprocess.in_channels, height, width, device=self.device)
            sample = self.model.forward_stages(blank, 0, stage)
        row_bytes = sample[0].numel() * sample.element_size()
        if row_bytes * len(images) > MAX_ENTRY_BYTES or row_bytes * len(idx) > RESIDENT_BYTES:
            log.info("%s features of %d images are too large to share: this trial keeps its own", split, len(images))
            return None
        if stage not in self._prefix_ids:  # hashed once for both splits
            self._prefix_ids[stage] = prefix_fingerprint(self.model, stage)
        key = prefix_key(
            self._prefix_ids[stage],
            self.preprocess,
            images,
            dataset=self.dataset,
            split=split,
            device=self.device,
            dtype=sample.dtype,
        )
        found = self.node_cache.get_or_compute(key, lambda: self._split_features(once, stage, sample))
        features = found.features
        if tuple(features.shape) != (len(images), *sample.shape[1:]):
            log.warning("node-cache entry %s has shape %s: this trial keeps its own", key, tuple(features.shape))
            return None
        self.keys[split] = key
        self.sources[split] = "node-computed" if found.computed else "node-hit"
        rows = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        y = torch.from_numpy(images.labels[rows.numpy()]).to(self.device)
        if self.device.type == "cpu":
            whole = len(idx) == len(images) and bool((rows == torch.arange(len(images))).all())
            return Inputs(features, y, None if whole else rows)
        return Inputs(features[rows].to(self.device, non_blocking=True), y)

    def _split_features(self, images: ImageSet, stage: int, sample: torch.Tensor) -> torch.Tensor:
        """Prefix outputs of every image of a split, gathered on the CPU for the node cache."""
        out = torch.empty((len(images), *sample.shape[1:]), dtype=sample.dtype)
        bs = self.eval_batch_size
        self.model.eval()
        start = 0
        with torch.no_grad():
            for x, _ in self.batches(images, np.arange(len(images)), bs, stage):
                out[start : start + len(x)] = x.to("cpu")
                start += len(x)
        return out
