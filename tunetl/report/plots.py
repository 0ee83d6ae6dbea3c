"""Matplotlib helpers shared by the report's sections: figures, axes, legends, deterministic PNGs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tunetl.meta.analysis import ipl_sort_key
from tunetl.report.tables import _num, _task_label, _varying_cols

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGSIZE = (7.0, 4.5)
DPI = 120
#: More panels than this would be unreadable; the caption says how many were left out.
MAX_PANELS = 6
#: Above this many distinct IL or LL values (a random search) points are scattered, not joined.
MAX_GRID_VALUES = 8


# --- plotting helpers ----------------------------------------------------------------------------


def _figure(panels: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure with `panels` axes (two per row beyond one), sized to stay readable."""
    from matplotlib.figure import Figure

    cols = 1 if panels == 1 else 2
    rows = math.ceil(panels / cols)
    size = FIGSIZE if panels == 1 else (10.0, 3.6 * rows + 0.6)
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    for ax in axes[:panels]:
        ax.grid(True, alpha=0.3)
    return fig, axes[:panels]


def _save(fig: Figure, path: Path) -> None:
    """PNG without the Software/date metadata, so that equal plots give equal bytes."""
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})


def _colors(n: int, ordered: bool) -> list[Any]:
    """A sequential palette for ordered series (sizes, rates), categorical otherwise."""
    from matplotlib import colormaps

    if ordered and n > 1:
        cmap = colormaps["viridis"]
        return [cmap(0.85 * i / (n - 1)) for i in range(n)]
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _log_axis(ax: Axes, values: Sequence[float], axis: str = "x") -> Callable[[float], float]:
    """Log axis that still shows 0: zero sits at its own tick, left of a "//" break.

    Limits come from `values`, not from one panel's data, so panels share ticks and the zero tick.
    Returns the map from a value to its plotted position (identity for positive values).
    """
    positive = sorted({float(v) for v in values if v > 0})
    has_zero = any(v == 0 for v in values)
    if not positive:
        return lambda v: v
    lo, hi = positive[0], positive[-1]
    gap = 10 ** max(1.0, round(math.log10(hi / lo) / 4)) if hi > lo else 10.0
    zero_at = lo / gap
    set_scale = ax.set_xscale if axis == "x" else ax.set_yscale
    set_scale("log")
    if len(positive) <= MAX_GRID_VALUES:
        ticks = positive
    else:
        ticks = [10.0**k for k in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)]
    labels = [_num(t) for t in ticks]
    if has_zero:
        ticks, labels = [zero_at, *ticks], ["0", *labels]
    from matplotlib.ticker import NullLocator

    start = zero_at if has_zero else lo
    margin = 10 ** max(0.1, 0.05 * math.log10(hi / start))
    (ax.xaxis if axis == "x" else ax.yaxis).set_minor_locator(NullLocator())
    (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks, labels)
    (ax.set_xlim if axis == "x" else ax.set_ylim)(start / margin, hi * margin)
    if has_zero:
        brk = math.sqrt(zero_at * lo)
        on_x = axis == "x"
        ax.text(
            *((brk, 0) if on_x else (0, brk)),
            "//",
            transform=ax.get_xaxis_transform() if on_x else ax.get_yaxis_transform(),
            ha="center",
            va="center",
            fontsize=11,
            backgroundcolor="white",
            clip_on=False,
            rotation=0 if on_x else 90,
        )
    return lambda v: zero_at if v == 0 else float(v)


def _legend(fig: Figure, axes: list[Axes], title: str) -> None:
    """One legend: inside a single panel with few lines, else outside on the right."""
    if len(axes) == 1:
        many = len(axes[0].get_legend_handles_labels()[1]) > 4
        axes[0].legend(
            title=title,
            fontsize=9,
            title_fontsize=9,
            loc="upper left" if many else "best",
            bbox_to_anchor=(1.01, 1.0) if many else None,
            framealpha=0.9,
        )
        return
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, title=title, fontsize=9, title_fontsize=9, loc="outside right upper"
    )


def _pct_axis(ax: Axes, metric: str, axis: str = "y") -> None:
    label = f"{_metric_name(metric)} (%)"
    (ax.set_ylabel if axis == "y" else ax.set_xlabel)(label)


def _metric_name(metric: str) -> str:
    return {
        "best_val_acc": "best validation accuracy",
        "val_acc": "final validation accuracy",
        "train_acc": "final training accuracy",
    }.get(metric, metric)


def _panel_groups(df: pd.DataFrame, cols: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """Split a table into panels by the `cols` that vary, titled by their values."""
    varying = _varying_cols(df, cols)
    if not varying:
        return [("", df)]
    groups = []
    for _, part in df.groupby(varying, dropna=False, sort=False):
        groups.append((_task_label(part.iloc[0], varying), part))
    if "images_per_label" in varying:
        groups.sort(key=lambda g: ipl_sort_key(g[1]["images_per_label"].iloc[0]))
    return groups


def _cap_note(total: int) -> str:
    return (
        f" Only the first {MAX_PANELS} of {total} panels are drawn." if total > MAX_PANELS else ""
    )


