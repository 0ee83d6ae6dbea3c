"""The report's tables and pages: cells formatted once, written as CSV, Markdown and HTML."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tunetl.meta.analysis import (
    ipl_label,
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


# --- pages ----------------------------------------------------------------------------------------


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


