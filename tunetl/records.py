"""The record vocabulary: names that a search writes and the tracking layer, `sync` and the read tools read.

One place for the MLflow tag names, the keys of a trial's Tune results, the per-epoch metric names, the
files tunetl keeps in a search folder and the length limits, so that a writer and its readers in
different layers cannot drift apart. Imports nothing.
"""

from __future__ import annotations

# MLflow tags of a trial's child run
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
TRIAL_ID_TAG = "tunetl.trial_id"
NODE_TAG = "tunetl.node"
HOST_TAG = "tunetl.host"
PID_TAG = "tunetl.pid"
STOPPED_EARLY_TAG = "tunetl.stopped_early"
DIVERGED_TAG = "tunetl.diverged"
ERROR_TAG = "tunetl.error"
#: The error of an attempt that was retried (`tunetl.error` is kept for runs that end FAILED).
RETRIED_ERROR_TAG = "tunetl.retried_error"
#: A child run closed by the driver because its trial was gone (its worker or driver killed).
ORPHAN_TAG = "tunetl.orphan"
RESTORED_EPOCH_TAG = "tunetl.restored_epoch"
PBT_DONOR_TAG = "tunetl.pbt_donor"

# MLflow tags of a search's parent run
STORAGE_TAG = "tunetl.storage"
SKIPPED_FILES_TAG = "tunetl.skipped_files"
#: A parent run that `tunetl sync` made because the store never had the search's own.
SYNCED_FROM_TAG = "tunetl.synced_from"

#: Tag values tunetl writes are cut to this many characters (an error keeps its last ones: the cause).
MAX_TAG_CHARS = 5000

# Metrics of a trial's child run
#: Per epoch, at step = epoch. `lr_factor`: the learning-rate schedule's factor that epoch (1 without one).
EPOCH_METRICS: tuple[str, ...] = ("val_acc", "val_loss", "train_acc", "train_loss", "lr_factor")
#: Logged with each epoch (value = step = the epoch): the latest value is how many epochs a trial ran.
EPOCHS_RUN = "epochs_run"
#: The trial's score: its best epoch's val_acc (the epoch whose weights are delivered).
BEST_METRIC = "best_val_acc"

# Values of the trials frame
#: `images_per_label: all` in the trials frame (the real count is `feature.images_per_label`).
ALL_IMAGES = -1

# Keys of a trial's Tune results (`result.json`)
#: The first result of each trial attempt: JSON {"params": ..., "tags": ...} of its MLflow run, and for an
#: attempt restored from a checkpoint the epoch it continues from (`RESTORED_KEY`), the PBT donor trial
#: whose checkpoint it took (`DONOR_KEY`) or else the epochs that checkpoint holds (`HISTORY_KEY`).
RECORD_KEY = "tunetl_record"
RESTORED_KEY = "restored_epoch"
DONOR_KEY = "donor"
HISTORY_KEY = "history"
#: Each epoch's MLflow metrics, which the driver logs to the trial's run.
TRACKED_KEY = "tunetl_metrics"
#: The run id in results of searches made before runs were written on the driver (read, no longer written).
RUN_ID_KEY = "mlflow_run_id"
DIVERGED_KEY = "diverged"

# tunetl's files in a search folder
#: Experiment, parent run, tracking URI, config, finished.
STATE_FILE = "tunetl_search.json"
#: How each trial ended, written by the driver (`tunetl.search.ledger.TrialLedger`).
LEDGER_FILE = "tunetl_trials.json"
