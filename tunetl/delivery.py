"""The end of a search: the selected configurations scored once on the test split, the winner's
classifier logged on the parent run and, when asked, registered under the `champion` alias.

Called by `tunetl.api.run` after every trial ended; it composes the search layer's checkpoints, the
torch-only `tunetl.winner` and the tracking layer's model logging, like `api` itself.

Selection never sees the test split: configurations are ranked by score (best-epoch val_acc, mean over
seeds), the best per `images_per_label` group and overall are taken, and only then are their trials'
delivered weights evaluated on it, once. The delivered model is the overall best configuration's
best seed (by score), at its best epoch, or retrained on train+val with `output.refit`.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tunetl.config import ExperimentConfig

SCORE = "best_val_acc"


@dataclass
class Delivery:
    """What the end of a search produced; `notes` are the lines printed about it."""

    frame: pd.DataFrame
    parent_metrics: dict[str, float] = field(default_factory=dict)
    model_id: str | None = None
    model_test_acc: float | None = None
    registered: str | None = None
    version: int | None = None
    champion: bool = False
    notes: list[str] = field(default_factory=list)


def _say(delivery: Delivery, text: str) -> None:
    delivery.notes.append(text)
    print(f"[tunetl] {text}", file=sys.stderr, flush=True)


def _members(frame: pd.DataFrame, row: pd.Series, cols: list[str]) -> pd.DataFrame:
    """The finished, non-diverged trials (one per seed) of the configuration in `row`."""
    from tunetl.tracking.query import _hashable

    want = tuple(_hashable(row[c]) for c in cols)
    ok = (frame["status"] == "FINISHED") & ~frame["diverged"].astype(bool) & frame[SCORE].map(
        lambda v: isinstance(v, float) and math.isfinite(v))
    keys = frame[cols].apply(lambda r: tuple(_hashable(v) for v in r), axis=1)
    return frame[ok & (keys == want)]


def selected_configs(frame: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """(name, configuration row) of the best configuration overall and per images_per_label group."""
    from tunetl.tracking.query import best_configs

    out = []
    overall = best_configs(frame, metric=SCORE, top=1)
    if overall.empty:
        return []
    out.append(("overall", overall.iloc[0]))
    if "images_per_label" in frame.columns and frame["images_per_label"].astype(str).nunique() > 1:
        per = best_configs(frame, metric=SCORE, top=1, group_by=["images_per_label"])
        out += [(f"ipl_{'all' if int(r['images_per_label']) < 0 else int(r['images_per_label'])}", r)
                for _, r in per.iterrows()]
    return out


def deliver(
    plan: Any,
    frame: pd.DataFrame,
    checkpoints: dict[str, tuple[Any, dict[str, Any]]],
    *,
    tracking_uri: str,
    experiment_id: str,
    parent_run_id: str,
    source_state: Callable[[str | None], Any],
    register: str | None,
    refit: bool,
) -> Delivery:
    from tunetl.params import TrialParams
    from tunetl.search.runner import load_checkpoint
    from tunetl.search.tune_space import trial_params, trial_seed
    from tunetl.tracking.query import default_config_cols
    from tunetl.tracking.trial_logger import client_for, log_metrics
    from tunetl.winner import accuracy, delivered_classifier
    from tunetl.winner import refit as refit_model

    exp: ExperimentConfig = plan.experiment
    out = Delivery(frame.copy())
    if exp.tasks is not None:
        _say(out, "a multi-task search delivers no model and no test accuracy (one model per task is not built)")
        return out
    task_exp, task = plan.tasks[0]
    selected = selected_configs(out.frame)
    if not selected:
        failed = int((out.frame["status"] == "FAILED").sum()) if len(out.frame) else 0
        why = f"all {failed} trial(s) failed" if failed else "no trial finished with a finite validation accuracy"
        _say(out, f"no model logged{' or registered' if register else ''}: {why}")
        return out
    cols = default_config_cols(out.frame)
    client = client_for(tracking_uri)
    best_epochs: dict[str, int] = {}  # all refit needs of a checkpoint; the state itself is not kept
    classifiers: dict[str, Any] = {}

    def classifier_of(run_id: str) -> Any:
        if run_id not in classifiers:
            checkpoint, config = checkpoints.get(run_id, (None, {}))
            if checkpoint is None:
                classifiers[run_id] = None
            else:
                state = load_checkpoint(checkpoint)
                best_epochs[run_id] = int(state.get("best_epoch") or 0)
                params = TrialParams.model_validate(trial_params(plan.space, config))
                classifiers[run_id] = delivered_classifier(task_exp, task, params, state)
        return classifiers[run_id]

    if task.test is not None:
        if "test_acc" not in out.frame.columns:
            out.frame["test_acc"] = math.nan
        for name, row in selected:
            members = _members(out.frame, row, cols)
            accs = []
            for idx, run_id in zip(members.index, members["run_id"], strict=True):
                if math.isfinite(out.frame.at[idx, "test_acc"]):
                    accs.append(float(out.frame.at[idx, "test_acc"]))
                    continue
                clf = classifier_of(run_id)
                if clf is None:
                    continue
                acc = accuracy(clf, task.test)
                out.frame.at[idx, "test_acc"] = acc
                log_metrics(client, run_id, {"test_acc": acc}, step=0)
                accs.append(acc)
            if accs:
                out.parent_metrics["test_acc" if name == "overall" else f"test_acc_{name}"] = sum(accs) / len(accs)
    else:
        _say(out, "no test split (dataset.test_fraction / test_path): accuracies are validation accuracies, "
                  "which selected the winner and so are optimistic")

    members = _members(out.frame, selected[0][1], cols).sort_values(SCORE, ascending=False, kind="stable")
    winner = members.iloc[0]
    run_id = str(winner["run_id"])
    clf = classifier_of(run_id)
    if clf is None:
        _say(out, f"no model logged: trial run {run_id} left no checkpoint with its best weights")
        return out
    checkpoint, config = checkpoints[run_id]
    seed = trial_seed(config, exp.seeds)
    test_acc = out.frame.at[winner.name, "test_acc"] if "test_acc" in out.frame.columns else math.nan
    if refit:
        epochs = best_epochs[run_id] or exp.training.epochs
        params = TrialParams.model_validate(trial_params(plan.space, config))
        clf = refit_model(task_exp, task, params, seed=seed, epochs=epochs,
                          source_state=source_state(params.backbone))
        test_acc = accuracy(clf, task.test) if task.test is not None else math.nan
        _say(out, f"refit the winner on train+val for {epochs} epoch(s) (seed {seed})")
    score = float(winner[SCORE])
    out.model_test_acc = float(test_acc) if math.isfinite(test_acc) else None
    out.parent_metrics["model_score"] = score
    if out.model_test_acc is not None:
        out.parent_metrics["model_test_acc"] = out.model_test_acc
    out.model_id = _log(clf, task, out, tracking_uri=tracking_uri, experiment_id=experiment_id,
                        parent_run_id=parent_run_id, trial_run=run_id, score=score, refit=refit,
                        config={c: _plain(winner[c]) for c in cols}, register=register, exp=exp)
    return out


def _plain(value: Any) -> Any:
    from tunetl.tracking.query import _hashable

    v = _hashable(value)
    return list(v) if isinstance(v, tuple) else v


def _example_image(task: Any) -> Any:
    split = task.test if task.test is not None else task.val
    x, _ = next(iter(split.batches(batch_size=1)))
    return x[0].numpy()


def _log(clf: Any, task: Any, out: Delivery, *, tracking_uri: str, experiment_id: str, parent_run_id: str,
         trial_run: str, score: float, refit: bool, config: dict[str, Any], register: str | None,
         exp: ExperimentConfig) -> str:
    from tunetl.tracking.image_model import (
        DATASET_TAG,
        SCORE_TAG,
        TEST_TAG,
        log_classifier,
        png_bytes,
        register_classifier,
    )

    tags = {SCORE_TAG: f"{score:.6f}", DATASET_TAG: task.name, "tunetl.experiment": exp.name,
            "tunetl.parent_run": parent_run_id, "tunetl.trial_run": trial_run, "tunetl.refit": str(refit).lower(),
            "tunetl.config": json.dumps(config, default=str)[:4000]}
    if out.model_test_acc is not None:
        tags[TEST_TAG] = f"{out.model_test_acc:.6f}"
    metrics = {"score": score, **({"test_acc": out.model_test_acc} if out.model_test_acc is not None else {})}
    model_id = log_classifier(clf, tracking_uri, experiment_id, parent_run_id,
                              example=png_bytes(_example_image(task)), metrics=metrics, tags=tags)
    shown = f"test accuracy {100 * out.model_test_acc:.1f}%" if out.model_test_acc is not None else "no test split"
    _say(out, f"logged the winner ({config.get('condition') or 'best configuration'}, trial run {trial_run}, "
              f"score {100 * score:.1f}%, {shown}) as model {model_id} on the parent run")
    if register:
        description = f"{exp.name}: {json.dumps(config, default=str)}"
        version, moved, why = register_classifier(tracking_uri, register, parent_run_id, model_id, tags, description)
        out.registered, out.version, out.champion = register, version, moved
        if moved:
            _say(out, f"registered {register} version {version} and set alias champion ({why})")
        else:
            _say(out, f"registered {register} version {version}; alias champion left on the current champion "
                      f"({why})")
    return model_id
