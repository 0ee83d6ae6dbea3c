"""`tunetl rank` in MLflow: one run per ranking, its scores as metrics per backbone and the table as JSON."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pandas as pd

from tunetl.tracking.recorder import get_or_create_experiment
from tunetl.tracking.registry import KIND_TAG
from tunetl.tracking.trial_logger import client_for, log_params

#: The experiment that holds rankings unless another is named.
RANK_EXPERIMENT = "tunetl-rank"


def _metric_key(backbone: str) -> str:
    """MLflow metric names allow letters, digits, `_ - . / ` and spaces; timm names fit, others are cleaned."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", backbone)


def log_ranking(tracking_uri: str, table: pd.DataFrame, params: dict[str, Any],
                experiment_name: str = RANK_EXPERIMENT) -> str:
    """Record a ranking: params (dataset, backbones, images), `<score>/<backbone>` metrics, `rank.json`."""
    from mlflow.entities import Metric

    client = client_for(tracking_uri)
    run = client.create_run(get_or_create_experiment(tracking_uri, experiment_name),
                            run_name=f"rank {params.get('dataset', '')}"[:250], tags={KIND_TAG: "rank"})
    run_id = run.info.run_id
    try:
        log_params(client, run_id, params)
        metrics = []
        for row in table.to_dict("records"):
            for score in ("logme", "hscore", "leep", "nce", "seconds", "rank"):
                value = row.get(score)
                if value is not None and math.isfinite(float(value)):
                    metrics.append(Metric(f"{score}/{_metric_key(row['backbone'])}", float(value), 0, 0))
        if metrics:
            client.log_batch(run_id, metrics=metrics)
        records = json.loads(table.to_json(orient="records"))
        client.log_dict(run_id, records, "rank.json")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id
