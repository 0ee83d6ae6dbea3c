"""`write_report`: which sections a trials frame gets, the files they become, the index pages.

Every number comes from `tunetl.meta.analysis`, so a report never disagrees with the analyses or
with `tunetl best`. Output is deterministic (fixed file names, no timestamps, PNG metadata
stripped) so that a report can be committed and diffed, and a second run over the same records
rewrites the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from tunetl.meta.analysis import (
    DEFAULT_METRIC,
    finished_trials,
)
from tunetl.report.plots import _figure, _metric_name, _save
from tunetl.report.sections import (
    _TOP_COLS,
    PLOTS,
    _conditions_section,
    _curves_section,
    _freeze_section,
    _inner_lr_sections,
    _scale_sections,
    _top_section,
)
from tunetl.report.tables import (
    _md_table,
    _render_html,
    _render_md,
    _Section,
    _table,
    _varying,
)

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
