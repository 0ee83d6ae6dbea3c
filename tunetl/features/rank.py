"""Zero-shot ranking of pretrained backbones on a target task: one forward pass each, no training.

For each backbone its source model (by default the ImageNet weights: Lite's shipped files, timm's hub
cache) runs once over a stratified sample of the target's training images, and four scores are read off:
- `logme`: LogME evidence of the pooled features for the target labels (You et al. 2021);
- `hscore`: H-score of the pooled features (Bao et al. 2019);
- `leep`: LEEP of the source classifier's softmax outputs (Nguyen et al. 2020);
- `nce`: negative conditional entropy of the target label given the source's predicted class (Tran et
  al. 2019).
LEEP and NCE need the source's own classifier: Lite and timm backbones keep their ImageNet head when
built with 1000 classes; a backbone without one (a source trained here, torchvision without its
weights) gets NaN for them. Higher is better for all four; the table is sorted by `by`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch

from tunetl.config import SourceSpec
from tunetl.data import Preprocess, TaskData
from tunetl.features.task import sample_per_label
from tunetl.features.transferability import h_score, leep, logme, nce
from tunetl.models import build
from tunetl.models.inference import for_inference
from tunetl.models.torchvision_nets import TORCHVISION_BACKBONES

SCORES = ("logme", "hscore", "leep", "nce")
#: Images per class of the sample when none is given.
DEFAULT_IMAGES_PER_LABEL = 50


def default_threads() -> int:
    """Threads for the forward pass and the scores: the cores not already busy (by the 1-minute load
    average), at least 1. Why not torch's default (all cores): on a shared CPU an OpenMP or OpenBLAS
    thread that loses its core stalls the others at every barrier; measured on a 2-core machine at load
    ~13, two threads made Lite0's forward 1.6 times slower than one, and a 500-image SVD 20 times."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, math.floor(cores - busy + 0.5)))


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op threads and the BLAS/OpenMP pools numpy uses set to `n`, restored afterwards."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


class RankInputs:
    """The sampled images, read once and resized once per (size, interpolation), shared by every backbone.

    A folder dataset decodes its images on each pass; 28-px digits resized to 128 px cost as much as a
    small backbone's forward pass when redone per backbone.
    """

    def __init__(self, task: TaskData, idx: np.ndarray, batch_size: int = 64) -> None:
        self.idx = idx
        self.labels = task.train.labels[idx]
        self.batches = [x for x, _ in task.train.batches(idx, batch_size, False, None)]
        self._resized: dict[tuple[int | None, str], list[torch.Tensor]] = {}

    def resized(self, size: int | None, mode: str) -> list[torch.Tensor]:
        """The batches as floats in [0, 1] at `size` x `size` (None: as stored), channels unchanged."""
        key = (size, mode)
        if key not in self._resized:
            resize = Preprocess(size, 1, 0.0, 1.0, mode=mode)  # type: ignore[arg-type]
            out = []
            for x in self.batches:
                x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
                # Resize channel by channel so that grey and RGB images share the module (it is 1-channel).
                out.append(torch.cat([resize(x[:, c : c + 1]) for c in range(x.shape[1])], dim=1))
            self._resized[key] = out
        return self._resized[key]


def score_backbone(
    backbone: str,
    task: TaskData,
    idx: np.ndarray,
    *,
    source: SourceSpec | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    source_state: dict[str, torch.Tensor] | None = None,
    inputs: RankInputs | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Scores of one backbone on the images `idx` of the target's training split, and the seconds taken.

    One forward pass under `torch.inference_mode` of an eval-only copy of the network (BatchNorm folded,
    channels-last: `tunetl.models.inference`) gives the pooled features and the source's class
    probabilities; all four scores are read off those two arrays."""
    with _threads(threads or default_threads()), torch.inference_mode():
        return _score(backbone, inputs or RankInputs(task, idx, batch_size), source, image_size, source_state)


def _score(backbone: str, inputs: RankInputs, source: SourceSpec | None, image_size: int | None,
           source_state: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    started = time.perf_counter()
    if source_state is None:
        spec = source or SourceSpec(weights="imagenet")
        weights = spec.weights_file if spec.weights_file is not None else spec.weights
        model = build(backbone, num_classes=1000, in_channels=3, weights=weights)
        # torchvision's ImageNet classifier is dropped when its weights load; Lite and timm keep theirs.
        has_head = spec.weights == "imagenet" and backbone not in TORCHVISION_BACKBONES
    else:
        from tunetl.source import head_classes

        model = build(backbone, num_classes=head_classes(source_state), in_channels=3)
        model.load_state_dict(source_state)
        has_head = head_classes(source_state) > 1
    model = for_inference(model)
    size = image_size or model.input_size
    pre = Preprocess(size, 3, model.mean, model.std, mode=model.interpolation)
    feats, probs = [], []
    for x in inputs.resized(size, pre.mode):
        h = model.features(pre(x).contiguous(memory_format=torch.channels_last))
        feats.append(h.float().numpy())
        probs.append(torch.softmax(model.head(h).float(), dim=1).numpy())
    features, outputs = np.concatenate(feats), np.concatenate(probs)
    labels = inputs.labels
    out: dict[str, Any] = {
        "backbone": backbone,
        "logme": logme(features, labels),
        "hscore": h_score(features, labels),
        "leep": leep(outputs, labels) if has_head else math.nan,
        "nce": nce(outputs, labels) if has_head else math.nan,
        "images": len(inputs.idx),
        "image_size": int(size) if size else int(min(inputs.batches[0].shape[-2:])),
    }
    out["seconds"] = time.perf_counter() - started
    return out


def rank_backbones(
    backbones: list[str],
    task: TaskData,
    *,
    images_per_label: int | None = None,
    source: SourceSpec | None = None,
    image_size: int | None = None,
    by: str = "logme",
    seed: int = 0,
    threads: int | None = None,
) -> pd.DataFrame:
    """Every backbone scored on the same sample of the target, best first by `by` (one of SCORES).

    `threads` (default `default_threads()`) bounds torch's and numpy's thread pools for the whole ranking."""
    if by not in SCORES:
        raise ValueError(f"rank by one of {', '.join(SCORES)}, not {by!r}")
    if not backbones:
        raise ValueError("give at least one backbone to rank")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    n = threads or default_threads()
    idx = sample_per_label(task, images_per_label or DEFAULT_IMAGES_PER_LABEL, seed)
    inputs = RankInputs(task, idx)
    rows = [score_backbone(b, task, idx, source=source, image_size=image_size, inputs=inputs, threads=n)
            for b in backbones]
    frame = pd.DataFrame(rows).sort_values(by, ascending=False, na_position="last").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    frame.attrs["threads"] = n
    return frame


def rank_from_features(features: dict[str, dict[str, float]], by: str = "logme") -> list[str]:
    """Backbones ordered by a search's own per-backbone `feature.<by>` (computed with their source weights)."""
    key = f"feature.{by}"

    def score(b: str) -> float:
        value = features[b].get(key, math.nan)
        return value if math.isfinite(value) else -math.inf

    return sorted(features, key=score, reverse=True)
