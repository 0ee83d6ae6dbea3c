"""The harness's `scale` section: `tunetl best` on MLflow stores of 1,000 to 10,000 child runs.

    .venv/bin/python benchmarks/harness.py --only scale           # ~6 min: writes the store, then times
    .venv/bin/python benchmarks/scale.py --runs 1000,10000        # the same, printed, no results file

The store is generated with MLflow's client the way tunetl records a trial (a child run under one parent,
the search parameters as params, five epochs of the epoch metrics, `epochs_run`, `best_val_acc`), then
`tunetl best --experiment scale` runs as a user runs it, a fresh process each time (start-up included),
against the SQLite file and against a real `mlflow server` on 127.0.0.1 over the same file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

EXPERIMENT = "scale"
EPOCHS = 5
FULL_SIZES = (1000, 4000, 10000)
QUICK_SIZES = (200, 1000)
PARAMS = {"transfer_depth": [0, 2, 4], "frozen_depth": [0, 1, 2, 3], "inner_lr": [0.0, 0.001, 0.01, 0.1],
          "last_lr": [0.01, 0.1], "lr_scale": [0.5, 1.0, 2.0], "images_per_label": [5, 50],
          "backbone": ["smallcnn"], "dataset": ["digits[5,6,7,8,9]"], "seed": [0, 1, 2]}
EPOCH_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "lr_factor")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


def add_runs(uri: str, n: int, start: int) -> None:
    """Child runs `start`..`n`-1 under the experiment's one parent, each as a trial records itself."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
    parents = client.search_runs([exp_id], filter_string="tags.`tunetl.role` = 'parent'", max_results=1)
    parent = (parents[0] if parents else client.create_run(exp_id, tags={"tunetl.role": "parent"})).info.run_id
    rng = np.random.default_rng(start)
    for i in range(start, n):
        run = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, "tunetl.trial_id": f"t{i:05d}"},
                                run_name=f"trial {i}")
        now = int(time.time() * 1000)
        acc = rng.uniform(0.2, 1.0, EPOCHS)
        metrics = [Metric(m, float(acc[e] if "acc" in m else 1 - acc[e]), now, e + 1)
                   for e in range(EPOCHS) for m in EPOCH_METRICS]
        metrics += [Metric("epochs_run", float(e + 1), now, e + 1) for e in range(EPOCHS)]
        metrics.append(Metric("best_val_acc", float(acc.max()), now, 0))
        params = [Param(k, str(v[i % len(v)])) for k, v in PARAMS.items()]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id)


def time_best(uri: str, repeats: int) -> list[float]:
    """Wall seconds of `tunetl best --experiment scale`, a fresh process each time."""
    cmd = [str(Path(sys.executable).parent / "tunetl"), "best", "--experiment", EXPERIMENT, "--tracking-uri", uri]
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=600)
        out.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mlflow_server(db: Path) -> Iterator[str]:
    """A real `mlflow server` (1 worker) over `db`, stopped with its process group."""
    import signal

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(db.with_suffix(".server.log"), "ab")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                             f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=_clean_env(), cwd=db.parent,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server over {db} did not start (log: {log.name})")
            time.sleep(0.5)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def measure(work: Path, sizes: tuple[int, ...], repeats: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Grow one store through `sizes`, timing `tunetl best` at each size on SQLite and on a server."""
    work.mkdir(parents=True, exist_ok=True)
    db = work / "scale.db"
    uri = f"sqlite:///{db}"
    rows, have = [], 0
    for n in sizes:
        t0 = time.perf_counter()
        add_runs(uri, n, have)
        say(f"scale: store at {n} runs ({time.perf_counter() - t0:.0f} s to add {n - have})")
        have = n
        sqlite = time_best(uri, repeats)
        with mlflow_server(db) as http:
            time_best(http, 1)  # a fresh server's first search is slower; a user's server is warm
            server = time_best(http, repeats)
        rows.append({"runs": n, "sqlite_s": float(np.median(sqlite)), "server_s": float(np.median(server)),
                     "sqlite_values": sqlite, "server_values": server})
        say(f"scale: {n} runs: tunetl best {np.median(sqlite):.2f} s (SQLite), {np.median(server):.2f} s (server)")
    return rows


def growth_per_1000(rows: list[dict[str, Any]], key: str) -> float:
    """Least-squares slope of seconds over runs, per 1,000 runs."""
    x = np.array([r["runs"] for r in rows], dtype=float)
    y = np.array([r[key] for r in rows], dtype=float)
    return float(np.polyfit(x, y, 1)[0] * 1000) if len(rows) > 1 else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=",".join(map(str, FULL_SIZES)), help="store sizes, ascending")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("scale-work"))
    args = ap.parse_args(argv)
    sizes = tuple(sorted(int(s) for s in args.runs.split(",")))
    rows = measure(args.workdir, sizes, args.repeats, lambda m: print(m, flush=True))
    for key in ("sqlite_s", "server_s"):
        print(f"{key}: growth per 1,000 runs {growth_per_1000(rows, key):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
