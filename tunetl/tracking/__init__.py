"""MLflow records: a parent run per search, a child run per trial, and the trials frame.

This is the only package that imports mlflow, and it does so inside functions: importing
`tunetl.tracking` stays cheap.
"""

from tunetl.tracking.query import best_configs, export_parquet, load_trials, metric_histories
from tunetl.tracking.recorder import SearchRecorder
from tunetl.tracking.trial_logger import TrialLogger
from tunetl.tracking.uri import (
    TrackingError,
    TrackingUnavailable,
    adopt_credentials,
    check_tracking,
    resolve_tracking_uri,
)

__all__ = [
    "SearchRecorder",
    "TrackingError",
    "TrackingUnavailable",
    "TrialLogger",
    "adopt_credentials",
    "best_configs",
    "check_tracking",
    "export_parquet",
    "load_trials",
    "metric_histories",
    "resolve_tracking_uri",
]
