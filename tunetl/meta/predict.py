"""A meta-model's recommendation for a new dataset, as JSON-ready data and as terminal text.

`tunetl.features.task.task_features` describes the whole dataset; the trials the model learned from
recorded the counts of their own images-per-label subset (`feature.images_per_label`,
`feature.num_train`). `subset_features` derives those two for the subset the user will train on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from tunetl.meta.regressor import MetaModel, Recommendation


def subset_features(
    features: Mapping[str, Any], images_per_label: int | None = None
) -> dict[str, float]:
    """`features` plus the per-subset counts when absent: images per label = min(N, smallest
    class), train size = min(all images, classes x N) (exact for balanced data and for N at or
    below the smallest class); N = None means all images."""
    out = {k: float(v) for k, v in features.items() if v is not None}
    if images_per_label is not None and images_per_label < 1:
        raise ValueError(
            f"images_per_label must be a positive integer or None (all), got {images_per_label}"
        )
    smallest = out.get("feature.images_per_label_min", math.nan)
    total = out.get("feature.num_train_total", math.nan)
    classes = out.get("feature.num_classes", math.nan)
    if "feature.images_per_label" not in out:
        out["feature.images_per_label"] = (
            smallest if images_per_label is None else min(float(images_per_label), smallest)
        )
    if "feature.num_train" not in out:
        out["feature.num_train"] = (
            total if images_per_label is None else min(total, classes * float(images_per_label))
        )
    return out


def _number(value: float | None) -> float | None:
    """JSON has no NaN/inf: those become null."""
    return None if value is None or not math.isfinite(value) else float(value)


def recommend(
    model: MetaModel,
    features: Mapping[str, Any],
    name: str | None = None,
    version: int | str | None = None,
) -> dict[str, Any]:
    """The recommendation as plain JSON types: settings, nearest tasks, extrapolation, the model."""
    rec: Recommendation = model.predict(features)
    settings = {
        "inner_lr": _number(rec.inner_lr),
        "last_lr": _number(rec.last_lr),
        "lr_scale": _number(rec.lr_scale),
        "frozen_depth": rec.frozen_depth,
    }
    return {
        "recommendation": settings,
        "uncertainty": {
            k: [{"low": _number(lo), "high": _number(hi), "how": how} for lo, hi, how in ranges]
            for k, ranges in rec.intervals.items()
        },
        "agreement": {k: _number(v) for k, v in rec.agreement.items()},
        "nearest_tasks": [{"task": t, "distance": _number(d)} for t, d in rec.nearest_tasks],
        "extrapolation": [
            {k: (_number(v) if isinstance(v, float) else v) for k, v in asdict(o).items()}
            for o in rec.extrapolation
        ],
        "notes": list(rec.notes),
        "model": {
            "name": name,
            "version": None if version is None else str(version),
            "kind": model.kind,
            "description": model.description,
            "n_tasks": model.n_tasks,
            "features": list(model.features),
            "leave_one_task_out": {k: _number(v) for k, v in (model.loto or {}).items()},
        },
        "features": {
            k: _number(None if v is None else float(v))
            for k, v in sorted(features.items())
            if k.startswith("feature.")
        },
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "- (not searched in the training experiments)"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_recommendation(result: Mapping[str, Any]) -> str:
    """Terminal text for `recommend`'s result."""
    model = result["model"]
    label = model.get("name") or "meta-model"
    if model.get("version") is not None:
        label += f" version {model['version']}"
    lines = [f"Recommendation from {label} ({model['kind']}, {model['n_tasks']} training tasks)"]
    source = result.get("source")
    if source:
        how = {"recorded": "the source its searches used", "recipe": "trained with its searches' recipe",
               "unchecked": "not checked: the meta-model records no source"}[source["match"]]
        digest = (source.get("sha256") or "")[:12]
        lines.append(f"Features from {source['backbone']} source {source['source']} (weights sha256 {digest}; {how})")
    uncertainty = result.get("uncertainty") or {}
    for key, value in result["recommendation"].items():
        ranges = [f"{r['how']} {r['low']:.3g} .. {r['high']:.3g}" for r in uncertainty.get(key, [])
                  if r["low"] is not None and r["high"] is not None]
        shown = _fmt(value) + (f"   ({'; '.join(ranges)})" if value is not None and ranges else "")
        lines.append(f"  {key:<13}{shown}")
    agreement = result.get("agreement") or {}
    if agreement:
        lines.append("Votes behind the decisions (share of trees / neighbours, or probability): "
                     + ", ".join(f"{k} {v:.0%}" for k, v in agreement.items() if v is not None))
    lines.append("Nearest training tasks (standardised feature distance):")
    lines += [f"  {t['task']}  ({t['distance']:.2f})" for t in result["nearest_tasks"]]
    if result["extrapolation"]:
        lines.append("EXTRAPOLATION: outside the training range, do not trust blindly:")
        for o in result["extrapolation"]:
            lines.append(
                f"  {o['feature']} = {o['value']:g} (trained on {o['low']:g} .. {o['high']:g})"
            )
    lines += [f"Note: {n}" for n in result["notes"] if not n.startswith("the dataset lies outside")]
    loto = model.get("leave_one_task_out") or {}
    errors = [k for k, v in loto.items() if v is not None and k.endswith(("_mae", "_accuracy"))]
    if errors:
        parts = []
        for key in errors:
            base = loto.get(f"{key}_baseline")
            guess = "" if base is None else f" (constant guess {base:.3g})"
            parts.append(f"{key} {loto[key]:.3g}{guess}")
        lines.append("Leave-one-task-out: " + "; ".join(parts))
    return "\n".join(lines)
