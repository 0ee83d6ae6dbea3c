"""The report's sections, each from `tunetl.meta.analysis` numbers: conditions, frozen depth, IL/LL,
alpha, graduated scale, top trials, learning curves."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from tunetl.meta.analysis import (
    DEFAULT_TASK_COLS,
    alpha_beta,
    condition_names,
    condition_pivot,
    condition_sort_key,
    condition_table,
    freeze_heuristic,
    il_means,
    ipl_label,
    ipl_sort_key,
    scale_summary,
    scale_table,
)
from tunetl.params import SEARCH_PARAMS
from tunetl.report.plots import (
    MAX_GRID_VALUES,
    MAX_PANELS,
    _cap_note,
    _colors,
    _figure,
    _legend,
    _log_axis,
    _metric_name,
    _panel_groups,
    _pct_axis,
    _save,
)
from tunetl.report.tables import (
    _cell,
    _missing,
    _num,
    _Section,
    _table,
    _varying,
    _varying_cols,
)

TOP_TRIALS = 10
PLOTS: dict[str, str] = {
    "conditions": "accuracy_by_condition.png",
    "inner_lr": "accuracy_vs_inner_lr.png",
    "alpha": "alpha_vs_images_per_label.png",
    "scale": "accuracy_vs_lr_scale.png",
    "curves": "learning_curves.png",
    "pareto": "pareto_front.png",
}
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
    """Seed means per (task, LL, IL) in percent (`analysis.il_means`, as alpha/beta use)."""
    means, _ = il_means(df, metric)
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


