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
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from tunetl.config import SourceSpec
from tunetl.data import Preprocess, TaskData
from tunetl.meta.features import sample_per_label
from tunetl.meta.transferability import h_score, leep, logme, nce
from tunetl.models import build
from tunetl.models.torchvision_nets import TORCHVISION_BACKBONES

SCORES = ("logme", "hscore", "leep", "nce")
#: Images per class of the sample when none is given.
DEFAULT_IMAGES_PER_LABEL = 50


@torch.no_grad()
def score_backbone(
    backbone: str,
    task: TaskData,
    idx: np.ndarray,
    *,
    source: SourceSpec | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    source_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Scores of one backbone on the images `idx` of the target's training split, and the seconds taken."""
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
    model.eval()
    size = image_size or model.input_size
    pre = Preprocess(size, 3, model.mean, model.std, mode=model.interpolation)
    feats, probs = [], []
    for x, _ in task.train.batches(idx, batch_size, False, None):
        h = model.features(pre(x))
        feats.append(h.float().numpy())
        probs.append(torch.softmax(model.head(h).float(), dim=1).numpy())
    features, outputs = np.concatenate(feats), np.concatenate(probs)
    labels = task.train.labels[idx]
    out: dict[str, Any] = {
        "backbone": backbone,
        "logme": logme(features, labels),
        "hscore": h_score(features, labels),
        "leep": leep(outputs, labels) if has_head else math.nan,
        "nce": nce(outputs, labels) if has_head else math.nan,
        "images": len(idx),
        "image_size": int(size) if size else int(min(task.image_size)),
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
) -> pd.DataFrame:
    """Every backbone scored on the same sample of the target, best first by `by` (one of SCORES)."""
    if by not in SCORES:
        raise ValueError(f"rank by one of {', '.join(SCORES)}, not {by!r}")
    if not backbones:
        raise ValueError("give at least one backbone to rank")
    idx = sample_per_label(task, images_per_label or DEFAULT_IMAGES_PER_LABEL, seed)
    rows = [score_backbone(b, task, idx, source=source, image_size=image_size) for b in backbones]
    frame = pd.DataFrame(rows).sort_values(by, ascending=False, na_position="last").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def rank_from_features(features: dict[str, dict[str, float]], by: str = "logme") -> list[str]:
    """Backbones ordered by a search's own per-backbone `feature.<by>` (computed with their source weights)."""
    key = f"feature.{by}"

    def score(b: str) -> float:
        value = features[b].get(key, math.nan)
        return value if math.isfinite(value) else -math.inf

    return sorted(features, key=score, reverse=True)
