"""Dataset features of a transfer task, recorded on every trial as `feature.*` and used by the regressor.

Source-target features come from one forward pass of the *source* model over (a stratified sample of)
the target training images:
- `logme`: LogME evidence of the penultimate features for the target labels;
- `leep`: LEEP of the source head's softmax outputs for the target labels;
- `similarity`: how close the target's activation statistics are to the source's, read from the
  BatchNorm running statistics the source model stored (mean over BN channels of the Bhattacharyya
  coefficient between the source's and the target's per-channel Gaussians; 1 = identical). It needs
  no source images, so it means the same for a source trained here, ImageNet weights, or a file.
  Backbones without BatchNorm fall back to `feature_similarity` of source vs target penultimate
  features when the source images are known (`source.train_on`), else NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from tunetl.config import ExperimentConfig
from tunetl.data import Preprocess, TaskData, images_per_label_indices, load_dataset
from tunetl.features.transferability import feature_similarity, label_features, leep, logme
from tunetl.models import StagedModel, build
from tunetl.source import head_classes

#: Images per class used for the source-target features (keeps a 224-px backbone on CPU in seconds).
FEATURE_IMAGES_PER_LABEL = 100


def basic_features(task: TaskData) -> dict[str, float]:
    counts = label_features(task.train.labels, len(task.class_names))
    return {
        "feature.images_per_label_min": counts["images_per_label_min"],
        "feature.images_per_label_median": counts["images_per_label_median"],
        "feature.num_classes": counts["num_classes"],
        "feature.num_train_total": counts["num_images"],
        "feature.resolution": float(min(task.image_size)),
        "feature.channels": float(task.in_channels),
    }


def source_model(experiment: ExperimentConfig, source_state: dict[str, torch.Tensor], in_channels: int) -> StagedModel:
    model = build(experiment.backbone, num_classes=head_classes(source_state), in_channels=in_channels)
    model.load_state_dict(source_state)
    return model.eval()


def sample_per_label(task: TaskData, per_label: int, seed: int = 0) -> np.ndarray:
    """Up to `per_label` training images of each class (fewer when the smallest class has fewer), seeded."""
    counts = np.bincount(task.train.labels, minlength=len(task.class_names))
    k = int(min(per_label, counts.min()))
    return images_per_label_indices(task.train.labels, k, seed)


@torch.no_grad()
def _forward(model: StagedModel, task: TaskData, idx: np.ndarray, pre: Preprocess,
             bn_hooks: bool) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Penultimate features, softmax outputs, and per-BN-layer similarity to the stored statistics."""
    bns = [m for m in model.stages.modules() if isinstance(m, nn.BatchNorm2d)] if bn_hooks else []
    sums: dict[int, list[torch.Tensor]] = {
        i: [torch.zeros(0), torch.zeros(0), torch.zeros(())] for i in range(len(bns))
    }

    def hook(i: int) -> Any:
        def fn(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].transpose(0, 1).flatten(1).double()
            s, s2, n = sums[i]
            sums[i] = [x.sum(1) + (s if s.numel() else 0), (x * x).sum(1) + (s2 if s2.numel() else 0),
                       n + x.shape[1]]
        return fn

    handles = [bn.register_forward_pre_hook(hook(i)) for i, bn in enumerate(bns)]
    feats, probs = [], []
    try:
        for x, _ in task.train.batches(idx, 256, False, None):
            h = model.features(pre(x))
            feats.append(h.float().numpy())
            probs.append(torch.softmax(model.head(h), dim=1).float().numpy())
    finally:
        for h in handles:
            h.remove()
    coeffs = []
    for i, bn in enumerate(bns):
        s, s2, n = sums[i]
        mu_t = s / n
        var_t = (s2 / n - mu_t**2).clamp_min(1e-8)
        mu_s, var_s = bn.running_mean.double(), bn.running_var.double().clamp_min(1e-8)
        pooled = var_s + var_t
        db = 0.25 * (mu_s - mu_t) ** 2 / pooled + 0.5 * torch.log(pooled / (2 * torch.sqrt(var_s * var_t)))
        coeffs.append(float(torch.exp(-db).mean()))
    return np.concatenate(feats), np.concatenate(probs), coeffs


def task_features(
    experiment: ExperimentConfig, task: TaskData, source_state: dict[str, torch.Tensor] | None
) -> dict[str, float]:
    """All `feature.*` values of a task that do not depend on the trial (counts per subset are added per trial)."""
    out = basic_features(task)
    nan = float("nan")
    out.update({"feature.logme": nan, "feature.leep": nan, "feature.similarity": nan})
    if source_state is None:
        return out
    channels = 3 if experiment.source.weights == "imagenet" else task.in_channels
    model = source_model(experiment, source_state, channels)
    size = experiment.training.image_size or model.input_size
    pre = Preprocess(size, channels, model.mean, model.std)
    idx = sample_per_label(task, FEATURE_IMAGES_PER_LABEL)
    feats, probs, coeffs = _forward(model, task, idx, pre, bn_hooks=True)
    labels = task.train.labels[idx]
    out["feature.logme"] = float(logme(feats, labels))
    out["feature.leep"] = float(leep(probs, labels))
    if coeffs:
        out["feature.similarity"] = float(np.mean(coeffs))
    elif experiment.source.train_on is not None:
        src_task = load_dataset(experiment.source.train_on)
        src_idx = sample_per_label(src_task, FEATURE_IMAGES_PER_LABEL)
        src_feats, _, _ = _forward(model, src_task, src_idx, pre, bn_hooks=False)
        out["feature.similarity"] = float(feature_similarity(src_feats, feats))
    return {k: (v if math.isfinite(v) else nan) for k, v in out.items()}
