"""Plots and tables from the trials frame: what `tunetl report` writes.

Every number comes from `tunetl.meta.analysis`, so a report never disagrees with the analyses or
with `tunetl best`. Output is deterministic (fixed file names, no timestamps, PNG metadata
stripped) so that a report can be committed and diffed, and a second run over the same records
rewrites the same bytes.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tunetl.meta.analysis import (
    DEFAULT_METRIC,
    DEFAULT_TASK_COLS,
    alpha_beta,
    condition_names,
    condition_pivot,
    condition_sort_key,
    condition_table,
    finished_trials,
    freeze_heuristic,
    ipl_label,
    ipl_sort_key,
    scale_summary,
    scale_table,
)
from tunetl.params import SEARCH_PARAMS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGSIZE = (7.0, 4.5)
DPI = 120
TOP_TRIALS = 10
#: More panels than this would be unreadable; the caption says how many were left out.
MAX_PANELS = 6
#: Above this many distinct IL or LL values (a random search) points are scattered, not joined.
MAX_GRID_VALUES = 8

PLOTS: dict[str, str] = {
    "conditions": "accuracy_by_condition.png",
    "inner_lr": "accuracy_vs_inner_lr.png",
    "alpha": "alpha_vs_images_per_label.png",
    "scale": "accuracy_vs_lr_scale.png",
    "curves": "learning_curves.png",
    "pareto": "pareto_front.png",
}
TABLES: tuple[str, ...] = (
    "conditions",
    "freeze_heuristic",
    "alpha_beta",
    "scale_table",
    "scale_summary",
    "top_trials",
    "pareto_front",
)
#: Every file this module may write; ones a later report does not write are removed as stale.
OUTPUT_FILES: tuple[str, ...] = (
    *PLOTS.values(),
    *(f"{t}.{ext}" for t in TABLES for ext in ("md", "csv")),
    "index.md",
    "index.html",
)
_TOP_COLS = (
    "run_id",
    *(k for k in SEARCH_PARAMS if k != "augment"),
    "seed",
    "dataset",
    "source",
    "backbone",
    "epochs_run",
    "stopped_early",
)
_NUMBER = re.compile(r"^[-+]?(\d|\.\d|inf|nan)|^(n/a|all)$", re.IGNORECASE)
_CSS = (
    "body{font-family:sans-serif;max-width:62em;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #bbb;padding:.2em .6em}th{background:#eee}td.num{text-align:right}"
    "img{max-width:100%}p.caption{color:#444}"
)


@dataclass
class _Table:
    """A table as written to CSV (`data`) and as shown in Markdown/HTML (`headers`, `rows`)."""

    stem: str
    data: pd.DataFrame
    headers: list[str]
    rows: list[list[str]]


@dataclass
class _Section:
    heading: str
    caption: str
    image: str | None = None
    text: str | None = None
    table: _Table | None = None


# --- formatting ----------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _num(value: float) -> str:
    """Short, exact-looking numbers: 0.001, 1e-05, 0.25, 16."""
    return f"{float(value):.4g}"


def _cell(column: str, value: Any) -> str:
    """One table cell as text; `_pct` columns get one decimal like the seeds' tables."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_cell("", v) for v in value) + "]"
    if _missing(value):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if column == "images_per_label":
        return ipl_label(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.1f}" if column.endswith("_pct") else _num(value)
    return str(value)


def _table(stem: str, data: pd.DataFrame, shown: pd.DataFrame | None = None) -> _Table:
    """CSV data plus its printable cells (`shown` overrides cells, e.g. "97.1 ± 0.4")."""
    view = data if shown is None else shown
    headers = [str(c) for c in view.columns]
    rows = [
        [_cell(str(c), v) for c, v in zip(view.columns, r)] for r in view.itertuples(index=False)
    ]
    return _Table(stem, data, headers, rows)


def _md_table(table: _Table) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    numeric = _numeric_columns(table)
    lines = [
        "| " + " | ".join(esc(h) for h in table.headers) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _html_table(table: _Table) -> str:
    numeric = _numeric_columns(table)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{html.escape(c)}</td>' if n else f"<td>{html.escape(c)}</td>"
            for c, n in zip(row, numeric)
        )
        + "</tr>\n"
        for row in table.rows
    )
    return f"<table>\n<tr>{head}</tr>\n{body}</table>"


def _numeric_columns(table: _Table) -> list[bool]:
    """Right-align a column when every cell reads as a number."""
    return [
        bool(table.rows) and all(_NUMBER.match(row[i]) for row in table.rows)
        for i in range(len(table.headers))
    ]


def _varying(df: pd.DataFrame, col: str) -> bool:
    """Whether `col` exists and takes at least two distinct non-missing values."""
    if col not in df.columns:
        return False
    values = df[col].dropna()
    return values.map(lambda v: v if not isinstance(v, list) else tuple(v)).nunique() > 1


def _task_label(row: Mapping[str, Any], cols: Sequence[str]) -> str:
    """ "digits[5,6] from digits[0,1], 10/label" built from the columns that identify the task."""
    parts = []
    for col in cols:
        value = row[col]
        if _missing(value):
            continue
        if col == "images_per_label":
            parts.append(f"{ipl_label(value)} img/label")
        elif col == "source":
            parts.append(f"from {value}")
        else:
            parts.append(str(value))
    return ", ".join(parts) or "all trials"


def _varying_cols(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    return [c for c in cols if c in df.columns and df[c].astype(str).nunique() > 1]


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


# --- sections ------------------------------------------------------------------------------------


def _conditions_section(df: pd.DataFrame, metric: str, out: Path) -> list[_Section]:
    """Soekhoe Fig. 5: accuracy per condition, one line per images-per-label."""
    table = condition_table(df, metric)
    if table["condition"].nunique() < 2:
        return []
    order = sorted(table["condition"].unique(), key=condition_sort_key)
    x_of = {c: i for i, c in enumerate(order)}
    groups = _panel_groups(table, ("dataset", "source"))
    shown = groups[:MAX_PANELS]
    fig, axes = _figure(len(shown))
    sizes = (
        sorted(table["images_per_label"].unique(), key=ipl_sort_key)
        if "images_per_label" in table.columns
        else [None]
    )
    colors = _colors(len(sizes), ordered=True)
    dodge = 0.12 / max(1, len(sizes) - 1) if len(sizes) > 1 else 0.0
    for ax, (title, part) in zip(axes, shown):
        for i, (size, color) in enumerate(zip(sizes, colors)):
            rows = part if size is None else part[part["images_per_label"] == size]
            rows = rows.sort_values("condition", key=lambda s: s.map(condition_sort_key))
            if rows.empty:
                continue
            x = np.array([x_of[c] for c in rows["condition"]]) + (i - (len(sizes) - 1) / 2) * dodge
            ax.errorbar(
                x,
                rows["acc_mean_pct"],
                yerr=np.nan_to_num(rows["acc_std_pct"].to_numpy(dtype=float)),
                marker="o",
                capsize=3,
                color=color,
                label="all trials" if size is None else ipl_label(size),
            )
            cut = rows["stopped"].to_numpy(dtype=bool)
            if cut.any():
                ax.scatter(x[cut], rows["acc_mean_pct"].to_numpy()[cut], s=30, facecolors="white",
                           edgecolors=color, linewidths=1.5, zorder=3)
        ax.set_xticks(range(len(order)), order)
        ax.set_xlabel("condition")
        _pct_axis(ax, metric)
        if title:
            ax.set_title(title, fontsize=10)
    fig.suptitle("Accuracy by transfer condition (mean ± std over seeds)")
    fig.supxlabel(
        "base = from scratch, FTall = transfer and fine-tune all, "
        "SnT = first n stages transferred and frozen"
        + ("\nhollow marker = ASHA stopped at least one seed early" if table["stopped"].any() else ""),
        fontsize=9,
        color="#444",
    )
    _legend(fig, axes, "images / label")
    _save(fig, out / PLOTS["conditions"])

    smallest = sizes[0]
    small = table if smallest is None else table[table["images_per_label"] == smallest]
    per_condition = small.groupby("condition")["acc_mean_pct"].mean()
    winner = min(per_condition.index[per_condition == per_condition.max()], key=condition_sort_key)
    where = "overall" if smallest is None else f"at {ipl_label(smallest)} images per label"
    where += ", averaged over tasks," if len(groups) > 1 else ""
    plot = _Section(
        "Accuracy by condition",
        "Conditions left to right freeze more transferred stages, and a point above its line's "
        f"`base` means transfer helped; {where} the best is {winner} "
        f"({per_condition[winner]:.1f}%)." + _cap_note(len(groups)),
        image=PLOTS["conditions"],
    )
    mean = condition_pivot(table, "acc_mean_pct", decimals=None)
    std = condition_pivot(table, "acc_std_pct", decimals=None)
    cells = mean.copy().astype(object)
    for col in mean.columns:
        cells[col] = [
            "n/a" if _missing(m) else (f"{m:.1f}" if _missing(s) else f"{m:.1f} ± {s:.1f}")
            for m, s in zip(mean[col], std[col])
        ]
    data = mean.round(2).reset_index()
    data.columns.name = None
    tab = _Section(
        "Condition table",
        f"Mean ± std {_metric_name(metric)} (%) over seeds, one row per images-per-label size; "
        "read across a row to see which condition wins at that size.",
        table=_table("conditions", data, cells.reset_index()),
    )
    return [plot, tab]


def _freeze_section(df: pd.DataFrame, metric: str) -> list[_Section]:
    """Soekhoe's rule of thumb, when frozen depth and size both vary."""
    if not (_varying(df, "frozen_depth") and "images_per_label" in df.columns):
        return []
    result = freeze_heuristic(df, metric)
    data = result["table"]
    return [
        _Section(
            "Freezing heuristic",
            "Per size, the frozen depth with the best mean accuracy against fine-tuning all "
            "stages (FTall); the rule generalises where freezing wins.",
            text=f"Rule: {result['rule']}.",
            table=_table("freeze_heuristic", data),
        )
    ]


def _il_frame(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Seed means per (task, LL, IL) in percent; missing rates fall back to base_lr."""
    tc = [c for c in DEFAULT_TASK_COLS if c in df.columns]
    rows = df.copy()
    if "base_lr" in rows.columns:
        for col in ("inner_lr", "last_lr"):
            rows[col] = rows[col].fillna(rows["base_lr"])
    rows = rows.dropna(subset=["inner_lr", "last_lr"])
    means = rows.groupby([*tc, "last_lr", "inner_lr"], dropna=False)[metric].mean().reset_index()
    means["acc_mean_pct"] = means[metric] * 100.0
    return means


def _inner_lr_sections(df: pd.DataFrame, metric: str, out: Path) -> list[_Section]:
    """Dube Figs. 6-7 (accuracy vs IL per LL) and Fig. 9 (alpha_m vs size), with the alpha table.

    alpha/beta need several IL values per LL, so a random search (continuous rates) gets only the
    scatter plot.
    """
    if not ({"inner_lr", "last_lr"} <= set(df.columns) and _varying(df, "inner_lr")):
        return []
    means = _il_frame(df, metric)
    tc = [c for c in DEFAULT_TASK_COLS if c in means.columns]
    groups = _panel_groups(means, tc)
    shown = groups[:MAX_PANELS]
    rates = sorted(means["last_lr"].unique())
    grid = means["inner_lr"].nunique() <= MAX_GRID_VALUES and len(rates) <= MAX_GRID_VALUES
    fig, axes = _figure(len(shown))
    colors = _colors(len(rates), ordered=True)
    for ax, (title, part) in zip(axes, shown):
        pos = _log_axis(ax, means["inner_lr"].tolist())
        if grid:
            for rate, color in zip(rates, colors):
                line = part[part["last_lr"] == rate].sort_values("inner_lr")
                if not line.empty:
                    ax.plot(
                        [pos(v) for v in line["inner_lr"]],
                        line["acc_mean_pct"],
                        marker="o",
                        color=color,
                        label=f"LL = {_num(rate)}",
                    )
        else:
            art = ax.scatter(
                [pos(v) for v in part["inner_lr"]],
                part["acc_mean_pct"],
                c=np.log10(part["last_lr"].clip(lower=1e-12)),
                cmap="viridis",
                s=18,
            )
            fig.colorbar(art, ax=ax, label="log10 last-layer LR")
        ax.set_xlabel("inner learning rate IL (0 = inner stages frozen)")
        _pct_axis(ax, metric)
        if title:
            ax.set_title(title, fontsize=10)
    if grid:
        fig.suptitle("Accuracy vs inner-stage learning rate, one line per last-layer rate LL")
        _legend(fig, axes, "last-layer LR")
    else:
        fig.suptitle("Accuracy vs inner-stage learning rate (colour: last-layer rate)")
    _save(fig, out / PLOTS["inner_lr"])
    best = means.loc[means["acc_mean_pct"].idxmax()]
    sections = [
        _Section(
            "Accuracy vs inner learning rate",
            "A line that rises from the `0` tick means fine-tuning the inner stages pays off at "
            f"that last-layer rate; the best is IL = {_num(best['inner_lr'])}, "
            f"LL = {_num(best['last_lr'])} ({best['acc_mean_pct']:.1f}%)." + _cap_note(len(groups)),
            image=PLOTS["inner_lr"],
        )
    ]
    if not grid:
        return sections
    ab = alpha_beta(df, metric)
    if "images_per_label" in ab.columns and ab["images_per_label"].nunique() > 1:
        sections.append(_alpha_plot(ab, out))
    data = ab.assign(max_acc=ab["max_acc"] * 100, min_acc=ab["min_acc"] * 100).rename(
        columns={"max_acc": "max_acc_pct", "min_acc": "min_acc_pct", "beta": "beta_pct"}
    )
    sections.append(
        _Section(
            "Alpha / beta table",
            "alpha is the inner learning rate with the best mean accuracy for each task and "
            "last-layer rate (0: keep the inner stages frozen); beta is how much the worst IL "
            "loses against it, in percent of the worst.",
            table=_table("alpha_beta", data),
        )
    )
    return sections


def _alpha_plot(ab: pd.DataFrame, out: Path) -> _Section:
    """Dube Fig. 9: alpha_m against images per label, one line per LL, log y with 0 shown."""
    sizes = sorted(ab["images_per_label"].unique(), key=ipl_sort_key)
    x_of = {s: i for i, s in enumerate(sizes)}
    groups = _panel_groups(ab, ("dataset", "source"))
    shown = groups[:MAX_PANELS]
    rates = sorted(ab["last_lr"].unique())
    colors = _colors(len(rates), ordered=True)
    fig, axes = _figure(len(shown))
    for ax, (title, part) in zip(axes, shown):
        pos = _log_axis(ax, ab["alpha"].tolist(), axis="y")
        for rate, color in zip(rates, colors):
            line = part[part["last_lr"] == rate].sort_values(
                "images_per_label", key=lambda s: s.map(ipl_sort_key)
            )
            if not line.empty:
                ax.plot(
                    [x_of[s] for s in line["images_per_label"]],
                    [pos(a) for a in line["alpha"]],
                    marker="o",
                    color=color,
                    label=f"LL = {_num(rate)}",
                )
        ax.set_xticks(range(len(sizes)), [ipl_label(s) for s in sizes])
        ax.set_xlabel("images per label")
        ax.set_ylabel("alpha_m: best inner learning rate")
        if title:
            ax.set_title(title, fontsize=10)
    fig.suptitle("Best inner learning rate (alpha_m) vs images per label")
    _legend(fig, axes, "last-layer LR")
    _save(fig, out / PLOTS["alpha"])
    return _Section(
        "Best inner learning rate vs images per label",
        "Dube et al. find alpha_m grows with the number of images per label: with few images "
        "the inner stages should learn slowly or not at all (the `0` tick)."
        + _cap_note(len(groups)),
        image=PLOTS["alpha"],
    )


def _scale_sections(df: pd.DataFrame, metric: str, out: Path) -> list[_Section]:
    """Dube §4.3: accuracy vs lr_scale per task with the best scale starred, and the summary."""
    if not _varying(df, "lr_scale"):
        return []
    table = scale_table(df, metric)
    tc = _varying_cols(table, [c for c in DEFAULT_TASK_COLS if c in table.columns])
    tasks = _panel_groups(table, tc)
    colors = _colors(len(tasks), ordered=False)
    fig, (ax,) = _figure(1)
    pos = _log_axis(ax, table["lr_scale"].tolist())
    for (label, part), color in zip(tasks, colors):
        part = part.sort_values("lr_scale")
        ax.plot(
            [pos(s) for s in part["lr_scale"]],
            part["acc_mean_pct"],
            marker="o",
            color=color,
            label=label or "all trials",
        )
        top = part[part["best"]]
        ax.plot(
            [pos(s) for s in top["lr_scale"]],
            top["acc_mean_pct"],
            marker="*",
            markersize=16,
            color=color,
            markeredgecolor="black",
            linestyle="none",
        )
    ax.plot(
        [],
        [],
        marker="*",
        markersize=12,
        color="white",
        markeredgecolor="black",
        linestyle="none",
        label="best scale",
    )
    ax.set_xlabel("learning-rate scale (multiplies every stage and head rate)")
    _pct_axis(ax, metric)
    ax.set_title("Accuracy vs learning-rate scale per task")
    if len(tasks) + 1 > 6:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="task")
    else:
        ax.legend(fontsize=9, loc="best", framealpha=0.9, title="task" if tc else None)
    _save(fig, out / PLOTS["scale"])

    summary = scale_summary(df, metric=metric)
    rows = [
        ("tasks", str(summary["n_tasks"])),
        ("tasks skipped (a number missing)", str(summary["n_tasks_skipped"])),
        ("oracle: best scale per task (%)", f"{summary['oracle_acc_pct']:.1f}"),
        ("one fixed scale", _num(summary["fixed_scale"])),
        ("accuracy at the fixed scale (%)", f"{summary['fixed_acc_pct']:.1f}"),
        ("baseline", summary["baseline"] or "n/a"),
        (
            "baseline accuracy (%)",
            "n/a" if summary["baseline_acc_pct"] is None else f"{summary['baseline_acc_pct']:.1f}",
        ),
        (
            "share of the oracle gain the fixed scale captures",
            "n/a"
            if summary["gain_share"] is None or math.isnan(summary["gain_share"])
            else f"{summary['gain_share']:.2f}",
        ),
        (
            "times each scale was best",
            ", ".join(f"{_num(s)}: {c}" for s, c in summary["best_scale_counts"].items()),
        ),
    ]
    data = pd.DataFrame(rows, columns=["quantity", "value"])
    return [
        _Section(
            "Accuracy vs learning-rate scale",
            f"The star marks each task's best scale; one fixed scale of "
            f"{_num(summary['fixed_scale'])} reaches {summary['fixed_acc_pct']:.1f}% against "
            f"{summary['oracle_acc_pct']:.1f}% when every task gets its own best.",
            image=PLOTS["scale"],
        ),
        _Section(
            "Scale summary",
            "How much of the per-task (oracle) gain a single learning-rate scale keeps.",
            table=_table("scale_summary", data),
        ),
        _Section(
            "Accuracy per task and scale",
            "The numbers behind the plot; `best` marks each task's best scale.",
            table=_table("scale_table", table),
        ),
    ]


def _top_section(df: pd.DataFrame, metric: str) -> _Section:
    """The best single trials, with only the columns that tell them apart."""
    ranked = df.assign(_rid=df["run_id"].astype(str) if "run_id" in df.columns else "")
    ranked = ranked.sort_values([metric, "_rid"], ascending=[False, True], kind="stable")
    if {"condition", "transfer_depth", "frozen_depth"} & set(ranked.columns):
        ranked["condition"] = condition_names(ranked)
    keep = [c for c in _TOP_COLS if c in ranked.columns and (c == "run_id" or _varying(df, c))]
    if "condition" in keep and ranked["condition"].nunique() < 2:
        keep.remove("condition")
    top = ranked.head(TOP_TRIALS)
    data = top[keep].copy()
    data[f"{metric}_pct"] = top[metric] * 100.0
    if metric != "val_acc" and "val_acc" in top.columns:
        data["val_acc_pct"] = top["val_acc"] * 100.0
    data = data.reset_index(drop=True)
    data.insert(0, "rank", range(1, len(data) + 1))
    return _Section(
        f"Top {len(data)} trials",
        f"Single trials (not seed means) ranked by {_metric_name(metric)}; the run ids open the "
        "runs in MLflow.",
        table=_table("top_trials", data),
    )


def _curves_section(
    curves: Mapping[str, pd.DataFrame], df: pd.DataFrame, metric: str, out: Path
) -> list[_Section]:
    """Validation (solid) and training (dashed) accuracy per epoch of the given trials."""
    if not curves:
        return []
    for run_id, curve in curves.items():
        missing = [c for c in ("step", "val_acc") if c not in curve.columns]
        if missing:
            raise ValueError(
                f"learning curve of run {run_id} lacks column(s) {missing}; pass a DataFrame with "
                "columns step, val_acc (and optionally train_acc) per run"
            )
    by_id = df.set_index(df["run_id"].astype(str)) if "run_id" in df.columns else None

    def score(run_id: str) -> float:
        if by_id is not None and run_id in by_id.index:
            return float(by_id.loc[run_id, metric])
        return -math.inf

    order = sorted(curves, key=lambda r: (-score(str(r)), str(r)))
    colors = _colors(len(order), ordered=False)
    fig, (ax,) = _figure(1)
    for run_id, color in zip(order, colors):
        curve = curves[run_id].sort_values("step")
        label = str(run_id)[:8]
        if by_id is not None and str(run_id) in by_id.index:
            row = by_id.loc[str(run_id)]
            if isinstance(row, pd.Series):
                label += f" ({_trial_label(row)})"
        ax.plot(curve["step"], curve["val_acc"] * 100.0, color=color, marker=".", label=label)
        if "train_acc" in curve.columns:
            ax.plot(
                curve["step"], curve["train_acc"] * 100.0, color=color, linestyle="--", alpha=0.7
            )
    ax.plot([], [], color="gray", linestyle="--", label="training (dashed)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Learning curves of the best trials (solid: validation)")
    ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    _save(fig, out / PLOTS["curves"])
    return [
        _Section(
            "Learning curves",
            "A widening gap between dashed (training) and solid (validation) means overfitting; "
            "a validation curve still rising at the end means more epochs would help.",
            image=PLOTS["curves"],
        )
    ]


def _trial_label(row: pd.Series) -> str:
    parts = []
    for col, name in (
        ("condition", ""),
        ("images_per_label", "ipl="),
        ("inner_lr", "IL="),
        ("last_lr", "LL="),
        ("lr_scale", "x"),
        ("seed", "seed "),
    ):
        if col in row.index and not _missing(row[col]):
            parts.append(name + _cell(col, row[col]))
    return ", ".join(parts)


# --- assembly ------------------------------------------------------------------------------------


def _overview(frame: pd.DataFrame, done: pd.DataFrame, metric: str) -> str:
    """One paragraph on what the report covers, from the frame itself (no clock, no host)."""
    counts = frame["status"].astype(str).value_counts() if "status" in frame.columns else None
    status = (
        ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        if counts is not None
        else ""
    )
    early = (
        int(frame["stopped_early"].fillna(False).astype(bool).sum())
        if "stopped_early" in frame
        else 0
    )
    parts = [f"{len(frame)} trials ({status}; {early} stopped early by the scheduler)"]
    for col, name in (("dataset", "target"), ("source", "source"), ("backbone", "backbone")):
        if col in done.columns:
            values = sorted({str(v) for v in done[col].dropna()})
            if values:
                parts.append(f"{name}: {', '.join(values)}")
    parts.append(f"metric: {_metric_name(metric)} ({metric}), as a percentage")
    return "; ".join(parts) + "."


def _render_md(title: str, overview: str, sections: list[_Section]) -> str:
    lines = [f"# {title}", "", overview, ""]
    for s in sections:
        lines += [f"## {s.heading}", "", s.caption, ""]
        if s.image:
            lines += [f"![{s.heading}]({s.image})", ""]
        if s.text:
            lines += [f"**{s.text}**", ""]
        if s.table:
            lines += [_md_table(s.table), "", f"CSV: [{s.table.stem}.csv]({s.table.stem}.csv)", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Caption text for HTML: escaped, with Markdown `code` spans kept as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _render_html(title: str, overview: str, sections: list[_Section]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        f'<head><meta charset="utf-8"><title>{e(title)}</title><style>{_CSS}</style></head>',
        "<body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{e(overview)}</p>",
    ]
    for s in sections:
        parts += [f"<h2>{e(s.heading)}</h2>", f'<p class="caption">{_inline(s.caption)}</p>']
        if s.image:
            parts.append(f'<img src="{e(s.image)}" alt="{e(s.heading)}">')
        if s.text:
            parts.append(f"<p><strong>{e(s.text)}</strong></p>")
        if s.table:
            parts += [
                _html_table(s.table),
                f'<p><a href="{e(s.table.stem)}.csv">{e(s.table.stem)}.csv</a></p>',
            ]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _pick_metric(frame: pd.DataFrame, metric: str) -> str:
    """`best_val_acc` when recorded, else the last `val_acc` (runs killed before their end)."""
    if metric in frame.columns and pd.to_numeric(frame[metric], errors="coerce").notna().any():
        return metric
    if metric == DEFAULT_METRIC and "val_acc" in frame.columns:
        return "val_acc"
    return metric


def _pareto_section(frame: pd.DataFrame, out: Path) -> list[_Section]:
    """Accuracy vs training seconds (a multi-objective search records them), the front joined."""
    from tunetl.config import OBJECTIVE_COLUMN
    from tunetl.pareto import pareto_front

    cost = next((n for n in ("train_seconds", "num_params") if frame.get(n) is not None
                 and frame[n].notna().any()), None)
    if cost is None:
        return []
    done = frame[frame["status"] == "FINISHED"].dropna(subset=["best_val_acc", cost])
    front = pareto_front(done, ["val_acc", cost]).sort_values(OBJECTIVE_COLUMN[cost])
    fig, (ax,) = _figure()
    ax.scatter(done[cost], done["best_val_acc"] * 100, color="#bbb", label="trial")
    ax.plot(front[cost], front["best_val_acc"] * 100, "o-", color="C3", label="Pareto front")
    ax.set_xlabel("training seconds" if cost == "train_seconds" else "trained parameters")
    ax.set_ylabel("best validation accuracy (%)")
    ax.legend()
    _save(fig, out / PLOTS["pareto"])
    keep = [c for c in (*_TOP_COLS, "best_val_acc", cost) if c in front.columns and (c in ("run_id", "best_val_acc",
                                                                                         cost) or _varying(done, c))]
    return [_Section("Pareto front", f"Trials no other trial beats on both accuracy and {cost} ({len(front)} of "
                     f"{len(done)}).", image=PLOTS["pareto"], table=_table("pareto_front", front[keep]))]


def write_report(
    frame: pd.DataFrame,
    out_dir: str | Path,
    title: str,
    curves: Mapping[str, pd.DataFrame] | None = None,
    metric: str = DEFAULT_METRIC,
) -> Path:
    """Write the plots, tables, index.md and index.html for a trials frame; return index.md.

    Each plot or table appears only when the frame holds what it needs (several conditions,
    varying inner_lr, varying lr_scale, curves given). Files this module wrote before but does not
    write now are removed, so the folder always matches its index. Raises ValueError when no trial
    finished with a finite metric.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"report folder {out} is a file; pass --out a folder path")
    metric = _pick_metric(frame, metric)
    done = finished_trials(frame, metric)
    out.mkdir(parents=True, exist_ok=True)
    sections = [
        *_conditions_section(done, metric, out),
        *_freeze_section(done, metric),
        *_inner_lr_sections(done, metric, out),
        *_scale_sections(done, metric, out),
        *_curves_section(curves or {}, done, metric, out),
        _top_section(done, metric),
        *_pareto_section(frame, out),
    ]
    written = {s.image for s in sections if s.image}
    for s in sections:
        if s.table:
            s.table.data.to_csv(out / f"{s.table.stem}.csv", index=False, lineterminator="\n")
            md = f"# {s.heading}\n\n{s.caption}\n\n"
            md += f"**{s.text}**\n\n" if s.text else ""
            (out / f"{s.table.stem}.md").write_text(
                md + _md_table(s.table) + "\n", encoding="utf-8"
            )
            written |= {f"{s.table.stem}.csv", f"{s.table.stem}.md"}
    overview = _overview(frame, done, metric)
    index = out / "index.md"
    index.write_text(_render_md(title, overview, sections), encoding="utf-8")
    (out / "index.html").write_text(_render_html(title, overview, sections), encoding="utf-8")
    written |= {"index.md", "index.html"}
    for name in OUTPUT_FILES:
        if name not in written and (out / name).is_file():
            (out / name).unlink()
    return index
