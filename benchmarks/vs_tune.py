"""The harness's `vs_tune` section: the quickstart search as tunetl runs it vs what a user would write instead.

    .venv/bin/python benchmarks/harness.py --only vs_tune --repeats 3     # ~4 min per repeat, 2 cores

Four ways to run the same 30 trials (quickstart: 5 conditions x 2 images-per-label x 3 seeds, 15 epochs,
same training code: tunetl's `TrialRunner`, one torch thread, actors reused, Ray already started, source
model already cached):
  tunetl        `tunetl.api.run` (MLflow parent and child runs, per-epoch records, checkpoints, delivery);
  plain         a Ray Tune script without MLflow (`tune.report` per epoch, nothing else);
  setup_mlflow  the same, each trial logging its params and per-epoch metrics through Ray's `setup_mlflow`;
  callback      the plain script with Ray's `MLflowLoggerCallback` on the driver.
The four run interleaved (one of each per repeat) so that a change in the machine's load hits them alike.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

#: How the search is scored and recorded by the hand-written variants.
KINDS = ("tunetl", "plain", "setup_mlflow", "callback")


def busy_cpu_s() -> float:
    """Machine-wide busy CPU seconds so far (/proc/stat): Ray's workers are not this process's children, and
    they exit before a search returns, so only the machine's counter sees all of a search's CPU. Meaningful
    on an otherwise idle machine; the section records the load beside it."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def trial_grid(experiment_path: Path, overrides: list[str]) -> tuple[Any, list[dict[str, Any]]]:
    """The quickstart's trials as tunetl plans them: (one task bundle, one config per trial)."""
    from tunetl import api

    p = api.plan(str(experiment_path), overrides)
    points, _ = p.space.grid_points()
    configs = [{"params": point, "seed": seed} for point in points for seed in p.experiment.seeds]
    return p, configs


def _bundle(p: Any, storage: Path) -> Any:
    """The task bundle exactly as `tunetl run` builds it (source weights from the shared cache)."""
    from tunetl import api
    from tunetl.search.preflight import open_storage

    return api._bundles(p, open_storage(storage))[0]


def plain_trainable(config: dict[str, Any], bundle: Any = None, log: str = "none") -> None:
    """What a user writes: build the trial, train it, report each epoch (and log to MLflow if asked)."""
    import torch
    from ray import tune

    from tunetl.params import TrialParams
    from tunetl.trial import TrialRunner

    torch.set_num_threads(1)
    spec = config["trial"]
    params = TrialParams.model_validate(spec["params"])
    runner = TrialRunner(params, bundle.experiment, seed=spec["seed"], task=bundle.task,
                         source_state=bundle.source_state)
    mlflow = None
    if log == "setup_mlflow":
        from ray.air.integrations.mlflow import setup_mlflow

        mlflow = setup_mlflow(config, tracking_uri=config["tracking_uri"], experiment_name=config["experiment"],
                              create_experiment_if_not_exists=True)
        mlflow.log_params({k: v for k, v in spec["params"].items() if v is not None} | {"seed": spec["seed"]})
    for _ in range(bundle.experiment.training.epochs):
        m = runner.run_epoch()
        metrics = {"val_acc": m.val_acc, "val_loss": m.val_loss, "train_acc": m.train_acc,
                   "train_loss": m.train_loss, "epoch_seconds": m.seconds}
        if mlflow is not None:
            mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch_seconds"}, step=m.epoch)
        tune.report(metrics)
    if mlflow is not None:
        mlflow.end_run()


def run_plain(kind: str, p: Any, configs: list[dict[str, Any]], bundle: Any, work: Path, uri: str,
              name: str) -> dict[str, Any]:
    """One hand-written search; returns wall seconds and the trials' summed training seconds."""
    from ray import tune

    callbacks: list[Any] = []
    if kind == "callback":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        callbacks.append(MLflowLoggerCallback(tracking_uri=uri, experiment_name=name, save_artifact=False))
    log = "setup_mlflow" if kind == "setup_mlflow" else "none"
    trainable = tune.with_resources(tune.with_parameters(plain_trainable, bundle=bundle, log=log), {"cpu": 1})
    space = {"trial": tune.grid_search(configs), "tracking_uri": uri, "experiment": name}
    # A user's script runs with Tune's default loggers (CSV, JSON, TensorBoard), which tunetl turns off in
    # this process: bring them back for the hand-written searches.
    saved = os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "0"
    t0 = time.perf_counter()
    tuner = tune.Tuner(trainable, param_space=space,
                       tune_config=tune.TuneConfig(metric="val_acc", mode="max", reuse_actors=True),
                       run_config=tune.RunConfig(name=name, storage_path=str(work / "plain_runs"), verbose=0,
                                                 callbacks=callbacks))
    try:
        grid = tuner.fit()
    finally:
        if saved is None:
            os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)
        else:
            os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = saved
    wall = time.perf_counter() - t0
    errors = sum(1 for r in grid if r.error)
    if errors:
        raise RuntimeError(f"{name}: {errors} trial(s) failed")
    train = sum(float(r.metrics_dataframe["epoch_seconds"].sum()) for r in grid)
    return {"wall_s": wall, "train_s": train, "trials": len(grid)}


def measure(ctx: Any, run_search: Any, tune_results: Any, quickstart: Path, repeats: int,
            overrides: list[str]) -> dict[str, list[dict[str, Any]]]:
    """`repeats` rounds of the four kinds, interleaved; Ray and the source model are ready before."""
    p, configs = trial_grid(quickstart, [*ctx.base, *overrides])
    bundle = _bundle(p, ctx.storage)
    uri = f"sqlite:///{ctx.work / 'vs_tune_mlflow.db'}"
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    # Create the store's tables once: two workers creating them at the same time race in SQLite.
    from mlflow import MlflowClient

    MlflowClient(uri).search_experiments(max_results=1)
    raw: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for r in range(repeats):
        for kind in KINDS if r % 2 == 0 else tuple(reversed(KINDS)):
            cpu0 = busy_cpu_s()
            name = f"vs_{kind}_{r}"
            if kind == "tunetl":
                summary, wall = run_search(ctx, name, overrides)
                results = tune_results(summary.storage_path)
                row = {"wall_s": wall, "train_s": sum(x["epoch_seconds"] for rows in results for x in rows),
                       "trials": len(results)}
            else:
                row = run_plain(kind, p, configs, bundle, ctx.work, uri, name)
            row["cpu_s"] = busy_cpu_s() - cpu0
            raw[kind].append(row)
            ctx.say(f"vs_tune: {kind} round {r}: wall {row['wall_s']:.1f} s, training {row['train_s']:.1f} s, "
                    f"{row['trials']} trials")
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # setup_mlflow/the callback export it
    return raw
