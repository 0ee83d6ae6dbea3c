"""MLflow child runs -> the trials frame (docs/architecture.md), and what is asked of it.

MLflow stores params as text; this module is where their types come back, so that `best`, reports,
export and the meta-analysis all see ints, floats, bools and tuples, never strings.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetl.params import SEARCH_PARAMS, as_tuples
from tunetl.records import (
    ALL_IMAGES,
    DIVERGED_TAG,
    EPOCH_METRICS,
    EPOCHS_RUN,
    ERROR_TAG,
    NODE_TAG,
    PARENT_TAG,
    STOPPED_EARLY_TAG,
)
from tunetl.tracking.trial_logger import client_for, encode_param
from tunetl.tracking.uri import TrackingError, redact

if TYPE_CHECKING:
    import pandas as pd

#: Columns that describe the run rather than its configuration.
RUN_COLUMNS: tuple[str, ...] = (
    "run_id",
    "experiment",
    "parent_run_id",
    "status",
    "stopped_early",
    "diverged",
    "error",
    "node",
)
#: Test-split accuracy, logged on the trials of the configurations a search selected, and its table column.
TEST_METRIC, TEST_COLUMN = "test_acc", "test_acc_mean"
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(nan|inf|infinity)$", re.IGNORECASE)
_PAGE = 1000


def restore_value(text: str) -> Any:
    """Undo `encode_param`: "None" -> None, ints, floats, bools, JSON lists -> tuples, else the text."""
    if text == "None":
        return None
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    if text.startswith("["):
        try:
            return as_tuples(json.loads(text))
        except ValueError:
            return text
    return text


def _column(name: str, values: list[Any]) -> pd.Series:
    """One param column with a single dtype where the values allow it."""
    import pandas as pd

    if name.startswith("feature."):
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    if name == "images_per_label":
        values = [ALL_IMAGES if v == "all" else v for v in values]
    present = [v for v in values if v is not None]
    missing = len(present) < len(values)
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean" if missing else "bool")
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="Int64" if missing else "int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    return pd.Series(values, dtype="object")


def _param_order(names: set[str]) -> list[str]:
    search = [p for p in SEARCH_PARAMS if p in names]
    features = sorted(n for n in names if n.startswith("feature."))
    rest = sorted(names - set(search) - set(features))
    return search + rest + features


def _experiment_ids(client: Any, names: list[str], tracking_uri: str) -> dict[str, str]:
    ids = {}
    for name in names:
        experiment = client.get_experiment_by_name(name)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            raise TrackingError(
                f"no MLflow experiment named {name} at {redact(tracking_uri)}; run `tunetl run` first "
                "or check --tracking-uri"
            )
        ids[str(experiment.experiment_id)] = name
    return ids


def _child_runs(client: Any, experiment_ids: list[str], parent_run_id: str | None = None) -> list[Any]:
    """Every active child run of the experiments (or of one parent run), all pages."""
    runs: list[Any] = []
    token = None
    only = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" if parent_run_id else ""
    while True:
        page = client.search_runs(
            experiment_ids, filter_string=only, max_results=_PAGE, page_token=token,
            order_by=["attributes.start_time ASC"],
        )
        runs.extend(r for r in page if PARENT_TAG in r.data.tags)
        token = page.token
        if not token:
            return runs


def load_trials(experiments: str | list[str], tracking_uri: str, parent_run_id: str | None = None) -> pd.DataFrame:
    """The trials frame: one row per child run of the named experiments (only one search's with
    `parent_run_id`: its metric histories are all that is read), typed."""
    import pandas as pd

    names = [experiments] if isinstance(experiments, str) else list(experiments)
    client = client_for(tracking_uri)
    ids = _experiment_ids(client, names, tracking_uri)
    runs = _child_runs(client, list(ids), parent_run_id)

    rows: list[dict[str, Any]] = []
    params: list[dict[str, Any]] = []
    extra_metrics: set[str] = set()
    for run in runs:
        tags = run.data.tags
        rows.append(
            {
                "run_id": run.info.run_id,
                "experiment": ids[str(run.info.experiment_id)],
                "parent_run_id": tags[PARENT_TAG],
                "status": run.info.status,
                "stopped_early": tags.get(STOPPED_EARLY_TAG, "false").lower() == "true",
                "diverged": tags.get(DIVERGED_TAG, "false").lower() == "true",
                "error": tags.get(ERROR_TAG),
                "node": tags.get(NODE_TAG),
            }
        )
        params.append({k: restore_value(v) for k, v in run.data.params.items()})
        extra_metrics.update(run.data.metrics)

    frame = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    frame["stopped_early"] = frame["stopped_early"].astype(bool)
    frame["diverged"] = frame["diverged"].astype(bool)
    for name in _param_order({k for p in params for k in p}):
        frame[name] = _column(name, [p.get(name) for p in params])
    metric_names = [*EPOCH_METRICS, "best_val_acc"]
    metric_names += sorted(extra_metrics - set(metric_names) - {EPOCHS_RUN})
    for name in metric_names:
        frame[name] = pd.Series([run.data.metrics.get(name, math.nan) for run in runs], dtype="float64")
    frame[EPOCHS_RUN] = pd.Series([_epochs_run(client, r) for r in runs], dtype="int64")
    return frame


def _epochs_run(client: Any, run: Any) -> int:
    """From the run's own `epochs_run` metric; a metric-history request only for runs recorded without
    it (by tunetl before it logged one), so loading N trials is not N round trips."""
    metrics = run.data.metrics
    if EPOCHS_RUN in metrics:
        return int(metrics[EPOCHS_RUN])
    return len(client.get_metric_history(run.info.run_id, "val_acc")) if "val_acc" in metrics else 0


def typed_trials(frame: pd.DataFrame, param_cols: list[str]) -> pd.DataFrame:
    """A trials frame built from another record of the runs (Ray's results, `tunetl.search.results`),
    typed and ordered as `load_trials` orders MLflow's: each parameter takes the same text round trip
    (`encode_param` -> `restore_value`), so both exports of one search hold equal values."""
    out = frame[[c for c in RUN_COLUMNS if c in frame.columns]].copy()
    for name in _param_order(set(param_cols)):
        values = [None if v is None else restore_value(encode_param(v)) for v in frame[name]]
        out[name] = _column(name, values).set_axis(frame.index)
    metrics = [c for c in (*EPOCH_METRICS, "best_val_acc") if c in frame.columns]
    rest = [c for c in frame.columns if c not in out.columns and c not in metrics and c != "epochs_run"]
    for col in [*metrics, *(["epochs_run"] if "epochs_run" in frame.columns else []), *rest]:
        out[col] = frame[col]
    return out


def default_config_cols(frame: pd.DataFrame) -> list[str]:
    """What makes a configuration: the search parameters present, plus backbone and dataset."""
    return [c for c in dict.fromkeys((*SEARCH_PARAMS, "backbone", "dataset")) if c in frame.columns]


def _hashable(value: Any) -> Any:
    """A grouping key for one cell: lists -> tuples, every kind of missing -> None."""
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    import pandas as pd

    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def _sort_key(value: Any) -> tuple[int, Any]:
    """Orders group values of mixed kinds: missing first, then numbers, then text."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))


def best_configs(
    frame: pd.DataFrame,
    metric: str = "val_acc",
    top: int = 5,
    group_by: list[str] | None = None,
    config_cols: list[str] | None = None,
) -> pd.DataFrame:
    """Configurations ranked by mean `metric` over seeds (finished runs only), top K overall or per group.

    A trial's score, what `tunetl.api` ranks by, is `best_val_acc`: its best epoch's validation accuracy
    (the weights a search delivers); `val_acc` is the last epoch's. `test_acc_mean` is the mean test accuracy of the
    configuration's trials where a search measured it (the configurations it selected), else empty."""
    import pandas as pd

    if metric not in frame.columns:
        raise ValueError(
            f"metric {metric!r} is not a column of the trials frame; pick one of "
            f"{', '.join([*EPOCH_METRICS, 'best_val_acc'])}"
        )
    group_by = list(group_by or [])
    cols = list(config_cols) if config_cols is not None else default_config_cols(frame)
    cols = group_by + [c for c in cols if c not in group_by]
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"column(s) {', '.join(missing)} are not in the trials frame")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")

    values = pd.to_numeric(frame[metric], errors="coerce").astype("float64")
    # A diverged trial (non-finite loss) ran no meaningful configuration: it never ranks.
    diverged = frame["diverged"] if "diverged" in frame.columns else False
    done = frame[(frame["status"] == "FINISHED") & values.map(math.isfinite) & ~diverged]
    out_cols = [*cols, f"{metric}_mean", f"{metric}_std", "n_seeds", TEST_COLUMN]
    if done.empty:
        return pd.DataFrame(columns=out_cols)

    # Test accuracy exists only for the configurations a search selected (never used to rank): empty elsewhere.
    tests = (done[TEST_METRIC].astype("float64") if TEST_METRIC in done.columns
             else pd.Series(math.nan, index=done.index))
    groups: dict[tuple[Any, ...], list[float]] = {}
    group_tests: dict[tuple[Any, ...], list[float]] = {}
    for key, value, test in zip(
        (tuple(_hashable(v) for v in row) for row in done[cols].itertuples(index=False, name=None)),
        done[metric].astype("float64"),
        tests,
    ):
        groups.setdefault(key, []).append(float(value))
        if math.isfinite(test):
            group_tests.setdefault(key, []).append(float(test))

    records = []
    for key, vals in groups.items():
        series = pd.Series(vals, dtype="float64")
        seen = group_tests.get(key)
        records.append([*key, series.mean(), series.std(ddof=1), len(vals),
                        sum(seen) / len(seen) if seen else math.nan])
    table = pd.DataFrame(records, columns=out_cols)
    table = table.sort_values(f"{metric}_mean", ascending=False, kind="stable")
    if not group_by:
        return table.head(top).reset_index(drop=True)
    keys = sorted(
        {tuple(r) for r in table[group_by].itertuples(index=False, name=None)},
        key=lambda k: tuple(_sort_key(v) for v in k),
    )
    parts = []
    for key in keys:
        mask = pd.Series(True, index=table.index)
        for col, val in zip(group_by, key):
            mask &= table[col].map(lambda v, val=val: v == val or (v is None and val is None))
        parts.append(table[mask].head(top))
    return pd.concat(parts, ignore_index=True)


def _arrow_safe(series: pd.Series) -> pd.Series:
    """Object columns pyarrow can write: tuples -> lists; columns of mixed kinds -> text."""
    import pandas as pd
    import pyarrow as pa

    if series.dtype != object:
        return series
    values = [list(_hashable(v)) if isinstance(v, tuple) else v for v in series]
    try:
        pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        values = [None if v is None else str(v) for v in values]
    return pd.Series(values, index=series.index, dtype="object", name=series.name)


def export_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the trials frame as Parquet (pyarrow); `pandas.read_parquet` reads it back."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    safe = frame.copy()
    for col in safe.columns:
        safe[col] = _arrow_safe(safe[col])
    safe.to_parquet(out, engine="pyarrow", index=False)
    return out


def metric_histories(
    run_ids: list[str], tracking_uri: str, metrics: tuple[str, ...] = ("val_acc", "train_acc")
) -> dict[str, pd.DataFrame]:
    """Per-epoch curves (columns step + each metric) of a few runs, for learning-curve plots."""
    import pandas as pd

    client = client_for(tracking_uri)
    out = {}
    for run_id in run_ids:
        series = {m: {h.step: h.value for h in client.get_metric_history(run_id, m)} for m in metrics}
        steps = sorted(set().union(*[s.keys() for s in series.values()]))
        out[run_id] = pd.DataFrame({"step": steps, **{m: [series[m].get(s) for s in steps] for m in metrics}})
    return out


def run_tags(run_ids: list[str], tracking_uri: str, prefix: str = "tunetl.") -> dict[str, dict[str, str]]:
    """The tags (those starting with `prefix`) of each run, e.g. a search's parent-run records."""
    client = client_for(tracking_uri)
    out = {}
    for run_id in run_ids:
        tags = client.get_run(run_id).data.tags
        out[run_id] = {k: v for k, v in tags.items() if k.startswith(prefix)}
    return out
