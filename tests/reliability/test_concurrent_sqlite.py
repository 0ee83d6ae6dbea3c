"""Three `tunetl run` processes at once on one new SQLite tracking file, for real.

Without a lock, MLflow creates a new SQLite file's tables from every process that opens it first, and all
but one crash with "table ... already exists" / "duplicate column name" (measured: 2 of 3 searches, 7 of 8
bare clients); `client_for` serialises that first open with a file lock. After it, SQLite's busy timeout
(MLflow sets 20 s) absorbs the write contention: no "database is locked", no lost row.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.cli import run_argv

pytestmark = pytest.mark.slow

NAME = "shared"
SEARCHES = 3
SIZES = [5, 10, 15]
EPOCHS = 3


def _argv(uri: str, storage: Path) -> list[str]:
    return run_argv(uri, storage, name=NAME, sizes=SIZES, epochs=EPOCHS, num_cpus=1)


def test_concurrent_searches_on_one_sqlite_file_lose_no_row(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from tunetl import api
    from tunetl.search.results import load_searches

    db = tmp_path / "shared.db"
    uri = f"sqlite:///{db}"
    assert not db.exists()  # every search races to create the tables
    procs, logs, ray_tmps = [], [], []
    try:
        for i in range(SEARCHES):
            # Each search its own local Ray (`ray.init()` would join another local cluster otherwise).
            ray_tmps.append(Path(tempfile.mkdtemp(prefix="tunetl-ray-")))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
            env["RAY_TMPDIR"] = str(ray_tmps[-1])
            logs.append(tmp_path / f"search{i}.log")
            with logs[-1].open("wb") as out:
                procs.append(subprocess.Popen(_argv(uri, tmp_path / f"runs{i}"), env=env, stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path))
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
        for path in ray_tmps:
            shutil.rmtree(path, ignore_errors=True)
    texts = [log.read_text(errors="replace") for log in logs]
    for code, text in zip(codes, texts, strict=True):
        assert code == 0, text[-3000:]
        assert "database is locked" not in text and "Traceback" not in text, text[-3000:]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id], max_results=1000)
    parents = {r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == SEARCHES
    assert Counter(r.data.tags["mlflow.parentRunId"] for r in children) == {p: len(SIZES) for p in parents}
    assert {r.info.status for r in runs} == {"FINISHED"}
    for r in children:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")] == list(range(1, EPOCHS + 1))
        assert "best_val_acc" in r.data.metrics
    # Each search's rows in MLflow are exactly the trials Ray ran for it.
    frame = api.trials(NAME, uri)
    for i in range(SEARCHES):
        stored = {t.run_id for s in load_searches(tmp_path / f"runs{i}") for t in s.trials}
        assert len(stored) == len(SIZES) and stored <= set(frame["run_id"])
