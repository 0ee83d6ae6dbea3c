"""The issue-7 benchmark harness: every figure a ratio of two things measured side by side in one run.

    .venv/bin/python benchmarks/harness.py                    # full run, ~9 min on 2 idle CPU cores
    .venv/bin/python benchmarks/harness.py --quick            # smoke run (harness_quick.*): ~1 min of
                                                              # CPU, 5.5 min wall under load average ~10
    .venv/bin/python benchmarks/harness.py --only plain,cache --repeats 5

Sections (`--only`): plain (TrialRunner and a Tune trial vs a plain PyTorch loop), overhead (whole
search vs its trials' training time), cache (frozen-prefix feature cache on vs off per frozen depth),
asha (ASHA vs the full grid on the quickstart), nodes (trials/hour on 1 vs 2 local Ray nodes), gpu
(images/s per trial with 1/2/4 trials per GPU; skipped without CUDA), anytime (best accuracy found vs
epochs spent for grid, random, ASHA, HyperBand, Optuna+ASHA, PBT and BOHB on 72 configurations of
MNIST-5k, 3 seeds each; not part of the default run: estimated 5-15 min on 2 quiet cores, not yet measured).

Writes `<out>/harness.json` (machine, raw numbers, medians, ratios, targets) and `<out>/harness.md`.
A run with `--only` replaces just those sections in an existing results file, so e.g. the gpu section
can be added from a GPU machine; each section records the machine it ran on. Timings are medians over
`--repeats`; targets are reported (met or missed, and why), never asserted.

This file measures: each `measure_<section>` returns numbers and measurement facts only.
`harness_report.py` writes: its `describe_<section>` adds the tables, notes and targets, and its `render`
the Markdown (`python benchmarks/harness_report.py benchmarks/results/harness.json` re-renders it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness_report
import numpy as np
from harness_report import FACTS, SECTIONS, machine_line

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
#: What a plain `harness.py` runs: `vs_tune` (4 searches a repeat), `anytime` (19 searches) and `scale` (a
#: 10,000-run store) only when named with --only.
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in ("vs_tune", "anytime", "scale"))
RESULTS_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Run context, statistics, output plumbing


@dataclass
class Ctx:
    quick: bool
    repeats: int
    work: Path
    log: Path
    threads: int
    verbose: bool
    simulate_gpu: bool
    stderr: Any = field(default=None)
    #: Seconds the quickstart's source model took to train (once per harness run; None until then).
    source_s: float | None = None
    #: Where results (and the sections' plots) are written.
    out_dir: Path = ROOT / "benchmarks" / "results"

    @property
    def storage(self) -> Path:
        """One storage folder for every search: the source model is trained and cached once."""
        return self.work / "runs"

    @property
    def base(self) -> list[str]:
        """Overrides for every quickstart search: quick mode trains a shorter source model."""
        return ["source.epochs=3"] if self.quick else []

    def say(self, msg: str) -> None:
        """Progress to the terminal even while Ray/Tune output is redirected to the log."""
        print(f"[harness] {msg}", file=self.stderr or sys.stderr, flush=True)


def spread(values: list[float]) -> dict[str, Any]:
    """Median with min/max and the interquartile range; the raw values are kept too."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {"n": 0, "median": None, "min": None, "max": None, "q1": None, "q3": None, "values": []}
    q1, med, q3 = np.percentile(arr, [25, 50, 75])
    return {
        "n": int(arr.size),
        "median": float(med),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "q1": float(q1),
        "q3": float(q3),
        "values": [float(v) for v in arr],
    }


@contextlib.contextmanager
def quiet(ctx: Ctx) -> Iterator[None]:
    """Send fd 1/2 (Tune's tables, Ray and MLflow logs, child processes) to the harness log."""
    if ctx.verbose:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(ctx.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)


def machine() -> dict[str, Any]:
    import mlflow
    import ray
    import torch
    import torchvision

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cuda = torch.cuda.is_available()
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gb": round(ram / 2**30, 1),
        "gpu": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cuda": torch.version.cuda if cuda else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ray": ray.__version__,
        "mlflow": mlflow.__version__,
        "numpy": np.__version__,
    }


# --------------------------------------------------------------------------------------------------
# tunetl helpers shared by the sections


CACHE_MODES = ("off", "trial", "node")
#: Trials that share one node-cache entry in the headline figure: the quickstart's frozen-depth search runs
#: each condition at 2 images-per-label values x 2 seeds, and all of them index into one entry.
SHARED_TRIALS = 4


def cache_override(mode: str) -> str:
    """`--set` text for the cache mode, quoted: YAML reads a bare `off` as the boolean false."""
    return f"training.feature_cache='{mode}'"


def tune_results(run_dir: Path) -> list[list[dict[str, Any]]]:
    """Every trial's reported results (one dict per epoch) from Tune's result.json files."""
    from tunetl.search.results import read_result_lines

    return [rows for path in sorted(run_dir.glob("*/result.json")) if (rows := read_result_lines(path))]


def start_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> float:
    """Start a local Ray the way tunetl does (`num_gpus` only to declare a logical GPU); returns seconds."""
    import ray

    from tunetl.search.preflight import init_ray

    t0 = time.perf_counter()
    if num_gpus is None:
        init_ray(None, num_cpus=num_cpus)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    return time.perf_counter() - t0


def stop_ray() -> None:
    import ray

    ray.shutdown()


def run_search(ctx: Ctx, name: str, overrides: list[str], *, experiment: Any = None,
               address: str | None = None) -> tuple[Any, float]:
    """`tunetl.api.run` of the quickstart (or `experiment`) with a SQLite store in the work folder;
    returns the summary and the call's wall time."""
    from tunetl import api

    uri = f"sqlite:///{ctx.work / 'mlflow.db'}"
    if experiment is None:
        experiment, overrides = str(QUICKSTART), [*ctx.base, *overrides]
    t0 = time.perf_counter()
    with quiet(ctx):
        summary = api.run(experiment, overrides=overrides, name=name, address=address, tracking_uri=uri,
                          storage=ctx.storage, new=True)
    wall = time.perf_counter() - t0
    if summary.num_failed:
        raise RuntimeError(f"search {name}: {summary.num_failed} of {summary.num_trials} trials failed; "
                           f"see {ctx.log}")
    return summary, wall


def pretrain_source(ctx: Ctx) -> float:
    """Train the quickstart's source model into the shared storage's cache once; returns its seconds."""
    from tunetl.config import load_experiment
    from tunetl.data import load_dataset
    from tunetl.source import source_state_for
    from tunetl.trial import model_in_channels

    if ctx.source_s is None:
        exp = load_experiment(QUICKSTART, overrides=ctx.base)
        t0 = time.perf_counter()
        with quiet(ctx):
            channels = model_in_channels(exp, load_dataset(exp.dataset))
            source_state_for(exp, ctx.storage / "cache", in_channels=channels)
        ctx.source_s = time.perf_counter() - t0
    return ctx.source_s


def warm_up(ctx: Ctx, name: str, address: str | None = None) -> float:
    """One 1-trial, 1-epoch search, not counted: creates the MLflow store's tables and warms Ray's workers
    and the OS caches, so that the first measured search does not carry those one-off costs."""
    over = ["training.epochs=1", "seeds=[0]", "search_space={transfer_depth: 0, images_per_label: 5}"]
    return run_search(ctx, f"warmup_{name}", over, address=address)[1]


# --------------------------------------------------------------------------------------------------
# plain: TrialRunner (and a Tune trial) vs a plain PyTorch loop


def plain_smallcnn(in_channels: int, num_classes: int) -> Any:
    """smallcnn written as one nn.Sequential: conv-bn-relu x4 (pool after 2 and 3), avgpool, linear."""
    from torch import nn

    layers: list[nn.Module] = []
    width = in_channels
    for out, pool in ((32, False), (64, True), (64, True), (128, False)):
        layers += [nn.Conv2d(width, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        width = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


class PlainLoop:
    """A competent plain PyTorch loop: data normalised once into tensors, shuffled index slices per step,
    one SGD step per batch, then a no-grad pass over the validation set (what a TrialRunner epoch does)."""

    def __init__(self, runner: Any, seed: int) -> None:
        import torch

        torch.manual_seed(seed)
        task, train = runner.task, runner.experiment.training
        self.model = plain_smallcnn(task.in_channels, task.num_classes)
        theirs = sum(p.numel() for p in runner.model.parameters())
        ours = sum(p.numel() for p in self.model.parameters())
        if theirs != ours:
            raise RuntimeError(f"plain smallcnn has {ours} parameters but tunetl's has {theirs}")
        self.opt = torch.optim.SGD(self.model.parameters(), lr=train.base_lr, momentum=train.momentum,
                                   weight_decay=train.weight_decay)
        idx = torch.as_tensor(runner.train_idx)

        def norm(x: torch.Tensor) -> torch.Tensor:
            return (x.float() / 255.0 - 0.5) / 0.5

        self.x_train, self.y_train = norm(task.train.images[idx]), torch.as_tensor(task.train.labels)[idx]
        self.x_val, self.y_val = norm(task.val.images), torch.as_tensor(task.val.labels)
        self.batch, self.eval_batch = train.batch_size, train.eval_batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def epoch(self) -> float:
        import torch
        import torch.nn.functional as F

        self.model.train()
        perm = torch.randperm(len(self.y_train), generator=self.gen)
        hits = torch.zeros((), dtype=torch.long)
        for start in range(0, len(perm), self.batch):
            sel = perm[start : start + self.batch]
            x, y = self.x_train[sel], self.y_train[sel]
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            hits += (logits.argmax(1) == y).sum()
        self.model.eval()
        val_hits = torch.zeros((), dtype=torch.long)
        with torch.no_grad():
            for start in range(0, len(self.y_val), self.eval_batch):
                logits = self.model(self.x_val[start : start + self.eval_batch])
                val_hits += (logits.argmax(1) == self.y_val[start : start + self.eval_batch]).sum()
        return float(val_hits) / len(self.y_val)


def measure_plain(ctx: Ctx) -> dict[str, Any]:
    """Epoch times of a TrialRunner and a plain loop, interleaved, and of a trial inside Ray Tune."""
    from tunetl.config import load_experiment
    from tunetl.data import load_dataset

    epochs = 3 if ctx.quick else 12
    over = ["seeds=[0]", "scheduler.type=none", cache_override("off")]
    exp = load_experiment(QUICKSTART, overrides=over)
    task = load_dataset(exp.dataset)
    runner, ours, plain, ratios = time_runner_vs_plain(ctx, exp, task, epochs)
    out: dict[str, Any] = {
        "setup": {"dataset": task.name, "train_images": int(runner.num_train), "val_images": len(task.val),
                  "backbone": "smallcnn", "batch_size": exp.training.batch_size, "optimizer": "sgd",
                  "epochs_per_repeat": epochs, "torch_threads": ctx.threads},
        "plain_epoch_s": spread(plain),
        "trialrunner_epoch_s": spread(ours),
        "ratio_trialrunner_vs_plain": spread(ratios),
    }
    ctx.say(f"plain: TrialRunner {np.median(ours) * 1e3:.1f} ms vs plain {float(np.median(plain)) * 1e3:.1f} ms "
            "per epoch")
    out["tune_trial"] = time_tune_trial(ctx, runner, over, epochs, float(np.median(ratios)))
    return out


def time_runner_vs_plain(
    ctx: Ctx, exp: Any, task: Any, epochs: int
) -> tuple[Any, list[float], list[float], list[float]]:
    """Per repeat, the median epoch of a TrialRunner and of a plain loop run in turns (ABBA), and their ratio;
    also returns the last runner, whose data the Tune part's plain loops reuse."""
    from tunetl.params import TrialParams
    from tunetl.trial import TrialRunner

    params = TrialParams(transfer_depth=0, frozen_depth=0, images_per_label="all")
    ours, plain, ratios = [], [], []
    for r in range(ctx.repeats):
        runner = TrialRunner(params, exp, seed=r, task=task, device="cpu")
        loop = PlainLoop(runner, seed=r)
        runner.run_epoch()  # warm-up epoch each, not timed
        loop.epoch()
        a, b = [], []
        for e in range(epochs):
            order = (0, 1) if e % 2 == 0 else (1, 0)  # ABBA: neither side always runs second
            for which in order:
                t0 = time.perf_counter()
                runner.run_epoch() if which == 0 else loop.epoch()
                (a if which == 0 else b).append(time.perf_counter() - t0)
        ours.append(float(np.median(a)))
        plain.append(float(np.median(b)))
        ratios.append(ours[-1] / plain[-1])
    return runner, ours, plain, ratios


def time_tune_trial(ctx: Ctx, runner: Any, over: list[str], epochs: int, ratio: float) -> dict[str, Any]:
    """One 1-trial search per repeat, bracketed by plain-loop epochs: Tune's time between reports, the
    trial's own epoch_seconds, and the composed estimate (`ratio` = TrialRunner vs plain)."""
    tune_epochs = 3 if ctx.quick else 12
    space = "search_space={transfer_depth: 0, frozen_depth: 0, images_per_label: all}"
    tune_over = [*over, f"training.epochs={tune_epochs}", space]
    iter_s, epoch_s, report_share, bracket = [], [], [], []
    start_ray(num_cpus=1)
    try:
        warm_up(ctx, "plain")
        for r in range(ctx.repeats):
            loop = PlainLoop(runner, seed=r)
            before = plain_epochs(loop, epochs)
            summary, _ = run_search(ctx, f"plain_tune_{r}", tune_over)
            bracket.append(float(np.median(before + plain_epochs(loop, epochs))))
            (rows,) = tune_results(summary.storage_path)
            rows = rows[1:]  # epoch 1 also carries the trial's start-up
            iter_s.append(float(np.median([row["time_this_iter_s"] for row in rows])))
            epoch_s.append(float(np.median([row["epoch_seconds"] for row in rows])))
            report_share.append(float(np.median([row["time_this_iter_s"] / row["epoch_seconds"] for row in rows])))
    finally:
        stop_ray()
    # Noise-robust estimate: TrialRunner vs plain (interleaved) x Tune's per-epoch time vs the runner's own
    # epoch inside the same trial (both measured around the same epochs).
    return {
        "epochs": tune_epochs,
        "time_this_iter_s": spread(iter_s),
        "epoch_seconds": spread(epoch_s),
        "iter_vs_epoch_seconds": spread(report_share),
        "plain_bracket_s": spread(bracket),
        "ratio_iter_vs_plain_bracket": float(np.median([i / b for i, b in zip(iter_s, bracket, strict=True)])),
        "ratio_composed": ratio * float(np.median(report_share)),
    }


def plain_epochs(loop: PlainLoop, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        loop.epoch()
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------------------------------
# overhead: whole-search wall time vs the sum of its trials' training time


#: The searches whose trials grow (same trials, more epochs each): the overhead should fall along them.
_GROWING = ["seeds=[0]", "search_space.images_per_label=all", "scheduler.type=none"]


def overhead_sizes(quick: bool) -> tuple[tuple[str, list[str]], list[tuple[str, list[str]]]]:
    """(the quickstart search, or its quick-mode stand-in; the same small search with longer and longer
    trials)."""
    if quick:
        three = ["seeds=[0]", "search_space.images_per_label=5",
                 "search_space.conditions={grid: [{name: base, transfer_depth: 0}, "
                 "{name: FTall}, {name: S2T, transfer_depth: 2, frozen_depth: 2}]}"]
        return (("5 trials x 3 epochs", ["seeds=[0]", "training.epochs=3", "search_space.images_per_label=5"]),
                [(f"3 trials x {e} epochs", [*three, f"training.epochs={e}"]) for e in (2, 6)])
    return (("quickstart as shipped (20 trials, 15 epochs)", []),
            [(f"quickstart, 1 seed, all images/label, {e} epochs (5 trials)", [*_GROWING, f"training.epochs={e}"])
             for e in (3, 12, 48)])


def measure_overhead(ctx: Ctx) -> dict[str, Any]:
    """Wall time of each search vs its trials' summed epoch_seconds; `sizes` and `runs` list the quickstart
    search first, then the growing ones."""
    source_s = pretrain_source(ctx)
    ray_s = start_ray(num_cpus=1)
    quickstart, growing = overhead_sizes(ctx.quick)
    sizes = [quickstart, *growing]
    raw: dict[str, list[dict[str, float]]] = {label: [] for label, _ in sizes}
    try:
        first_s = warm_up(ctx, "overhead")
        for r in range(ctx.repeats):
            for i, (label, over) in enumerate(sizes):
                summary, wall = run_search(ctx, f"overhead_{i}_{r}", over)
                results = tune_results(summary.storage_path)
                train = sum(row["epoch_seconds"] for rows in results for row in rows)
                raw[label].append({
                    "wall_s": wall,
                    "train_s": train,
                    "trials": len(results),
                    "epochs": sum(len(rows) for rows in results),
                    "overhead": wall / train - 1,
                    "per_trial_overhead_s": (wall - train) / len(results),
                })
                ctx.say(f"overhead: {label}: wall {wall:.1f} s, training {train:.1f} s")
    finally:
        stop_ray()
    summaries = {}
    for label, _ in sizes:
        runs = raw[label]
        s = {k: spread([run[k] for run in runs]) for k in ("wall_s", "train_s", "overhead", "per_trial_overhead_s")}
        s["trials"], s["epochs"] = runs[0]["trials"], runs[0]["epochs"]
        summaries[label] = s
    return {
        "setup": {"ray_cpus": 1, "concurrent_trials": 1, "ray_start_s": ray_s, "source_train_s": source_s,
                  "first_search_s": first_s},
        "sizes": summaries,
        "runs": raw,
    }


# --------------------------------------------------------------------------------------------------
# cache: frozen-prefix feature cache on vs off at every frozen depth


@dataclass(frozen=True)
class CacheCase:
    backbone: str
    image_size: int | None
    images_per_label: int
    val_fraction: float
    epochs: int
    trial_epochs: int
    depths: tuple[int, ...]
    classes: tuple[int, ...] = (5, 6, 7, 8, 9)


def cache_cases(quick: bool) -> list[CacheCase]:
    if quick:
        return [CacheCase("smallcnn", None, 50, 0.3, 2, 20, (0, 4)),
                CacheCase("resnet18", 32, 5, 0.1, 1, 20, (0, 5), (5, 6, 7))]
    return [CacheCase("smallcnn", None, 50, 0.3, 5, 20, (0, 1, 2, 3, 4)),
            CacheCase("resnet18", 64, 10, 0.1, 2, 20, (0, 1, 2, 3, 4, 5), (5, 6, 7))]


def cache_experiment(case: CacheCase) -> Any:
    from tunetl.config import load_experiment

    body = {
        "name": f"cache_{case.backbone}",
        "dataset": {"builtin": "digits", "classes": list(case.classes), "val_fraction": case.val_fraction},
        "backbone": case.backbone,
        "search_space": {},
        "training": {"epochs": case.trial_epochs, "batch_size": 32, "optimizer": "sgd", "base_lr": 0.01,
                     "image_size": case.image_size},
    }
    return load_experiment(body)


def timed_runner(params: Any, exp: Any, mode: str, **kw: Any) -> tuple[Any, float]:
    from tunetl.trial import TrialRunner

    t0 = time.perf_counter()
    runner = TrialRunner(params, exp, feature_cache=mode, **kw)
    return runner, time.perf_counter() - t0


def measure_cache_case(ctx: Ctx, case: CacheCase) -> list[dict[str, Any]]:
    from tunetl.data import load_dataset
    from tunetl.models import build, list_backbones
    from tunetl.params import TrialParams

    exp = cache_experiment(case)
    task = load_dataset(exp.dataset)
    channels = 3 if case.backbone != "smallcnn" else task.in_channels
    # Random-init weights stand in for the source: the cache's cost depends on shapes, not values.
    source = build(case.backbone, num_classes=task.num_classes, in_channels=channels, seed=123).state_dict()
    num_stages = len(list_backbones()[case.backbone])
    rows = []
    for depth in case.depths:
        params = TrialParams(transfer_depth=num_stages, frozen_depth=depth, images_per_label=case.images_per_label)
        raw: dict[str, list[float]] = {k: [] for k in ("off_setup", "off_epoch", "trial_setup", "trial_epoch",
                                                       "node_build", "node_hit", "node_epoch")}
        sources: dict[str, Any] = {}
        for r in range(ctx.repeats):
            kw: dict[str, Any] = dict(seed=r, task=task, source_state=source, device="cpu", in_channels=channels)
            for mode in CACHE_MODES[r % 3 :] + CACHE_MODES[: r % 3]:  # rotate: no mode always runs first
                if mode == "node":
                    # A fresh node cache per repeat: the first trial computes the prefix outputs, a second
                    # trial (same data and prefix, another learning rate) reads them.
                    where = ctx.work / "feature_cache" / f"{case.backbone}-{depth}-{r}"
                    first, build_s = timed_runner(params, exp, mode, feature_cache_dir=where, **kw)
                    other = params.model_copy(update={"base_lr": 0.02})
                    runner, hit_s = timed_runner(other, exp, mode, feature_cache_dir=where, **kw)
                    raw["node_build"].append(build_s)
                    raw["node_hit"].append(hit_s)
                    sources = {"node first trial": dict(first.feature_source), "node second trial":
                               dict(runner.feature_source)}
                    del first
                else:
                    runner, setup_s = timed_runner(params, exp, mode, **kw)
                    raw[f"{mode}_setup"].append(setup_s)
                runner.run_epoch()  # warm-up (first-call kernel set-up), not timed
                times = []
                for _ in range(case.epochs):
                    t0 = time.perf_counter()
                    runner.run_epoch()
                    times.append(time.perf_counter() - t0)
                raw[f"{mode}_epoch"].append(float(np.median(times)))
        med = {k: float(np.median(v)) for k, v in raw.items()}
        e = case.trial_epochs
        trial_s = {  # a whole trial: set-up (incl. any cache build, or a node-cache hit) + its epochs
            "off": med["off_setup"] + e * med["off_epoch"],
            "trial": med["trial_setup"] + e * med["trial_epoch"],
            "node_first": med["node_build"] + e * med["node_epoch"],
            "node_hit": med["node_hit"] + e * med["node_epoch"],
            "node_shared": (med["node_build"] + (SHARED_TRIALS - 1) * med["node_hit"]) / SHARED_TRIALS
            + e * med["node_epoch"],
        }
        row: dict[str, Any] = {
            "backbone": case.backbone, "frozen_depth": depth, "num_stages": num_stages,
            "train_images": int(runner.num_train), "val_images": len(task.val), "split_images": len(task.train),
            "image_size": case.image_size or task.image_size[0], "trial_epochs": e,
            "stats": {k: spread(v) for k, v in raw.items()}, "feature_source": sources, "trial_s": trial_s,
            "epoch_speedup": med["off_epoch"] / med["node_epoch"],
            "trial_speedup_trial_cache": trial_s["off"] / trial_s["trial"],
            "trial_speedup_node_first": trial_s["off"] / trial_s["node_first"],
            "trial_speedup_node_hit": trial_s["off"] / trial_s["node_hit"],
            "trial_speedup_node_shared": trial_s["off"] / trial_s["node_shared"],
        }
        rows.append(row)
        ctx.say(f"cache: {case.backbone} frozen {depth}: epoch x{row['epoch_speedup']:.1f}, trial x"
                f"{row['trial_speedup_node_first']:.1f} (node, first) x{row['trial_speedup_node_hit']:.1f} (hit)")
    return rows


def measure_cache(ctx: Ctx) -> dict[str, Any]:
    """Every case's rows of timings per frozen depth (see measure_cache_case)."""
    results = []
    for case in cache_cases(ctx.quick):
        results += measure_cache_case(ctx, case)
    return {"modes": list(CACHE_MODES), "cases": [c.__dict__ for c in cache_cases(ctx.quick)],
            "results": results, FACTS: {"shared_trials": SHARED_TRIALS}}


# --------------------------------------------------------------------------------------------------
# asha: ASHA vs the full grid on the shipped frozen-depth search


def asha_variants(quick: bool) -> list[tuple[str, list[str]]]:
    base = ["seeds=[0]", "training.epochs=4", "search_space.images_per_label=50"] if quick else []
    # The quickstart ships without early stopping (issue 18: ASHA could cut a winner); its former ASHA
    # (grace 10, reduction 2, per images_per_label) is the variant measured against the full grid.
    asha = "scheduler={type: asha, grace_period: %d, reduction_factor: 2, group_by: [images_per_label]}"
    variants = [("grid (scheduler none, as shipped)", [*base, "scheduler.type=none"]),
                ("ASHA grace 10, reduction 2", [asha % 10] if not quick else [*base, asha % 2])]
    if not quick:
        variants.append(("ASHA grace 4, reduction 3",
                         ["scheduler={type: asha, grace_period: 4, reduction_factor: 3}"]))
    return variants


def measure_asha(ctx: Ctx) -> dict[str, Any]:
    """Each variant's epochs, trials and best configuration per images-per-label group, with its epochs and
    accuracy gaps relative to the grid's; `runs` lists the grid first, then the ASHA variant the target is on."""
    from tunetl import api
    from tunetl.config import load_experiment

    pretrain_source(ctx)
    start_ray(num_cpus=2)
    runs: dict[str, dict[str, Any]] = {}
    try:
        for i, (label, over) in enumerate(asha_variants(ctx.quick)):
            summary, wall = run_search(ctx, f"asha_{i}", over)
            frame = summary.trials
            best = api.rank(frame, metric="best_val_acc", top=1, group_by=["images_per_label"])
            per_group = {str(row["images_per_label"]): {"accuracy": 100 * float(row["best_val_acc_mean"]),
                                                       "condition": str(row.get("condition"))}
                         for _, row in best.iterrows()}
            runs[label] = {"epochs": int(frame["epochs_run"].sum()), "trials": int(len(frame)),
                           "stopped": int(frame["stopped_early"].sum()), "wall_s": wall, "best": per_group}
            ctx.say(f"asha: {label}: {runs[label]['epochs']} epochs, best {per_group}")
    finally:
        stop_ray()
    grid = next(iter(runs.values()))
    for run in runs.values():
        run["epoch_ratio"] = run["epochs"] / grid["epochs"]
        run["gap_points"] = {g: grid["best"][g]["accuracy"]
                             - run["best"].get(g, {"accuracy": float("nan")})["accuracy"] for g in grid["best"]}
    exp = load_experiment(QUICKSTART, overrides=[*ctx.base, *asha_variants(ctx.quick)[1][1]])
    scheduler = {"grace_period": exp.scheduler.grace_period, "reduction_factor": exp.scheduler.reduction_factor,
                 "epochs": exp.training.epochs}
    return {"setup": {"ray_cpus": 2}, "runs": runs, FACTS: {"scheduler": scheduler}}


# --------------------------------------------------------------------------------------------------
# nodes: trials/hour on 1 vs 2 local Ray nodes


@contextlib.contextmanager
def ray_cluster(node_cpus: list[int]) -> Iterator[str]:
    """A local multi-node Ray cluster (ray.cluster_utils.Cluster), like tests/cluster/test_multinode.py."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": node_cpus[0]})
    try:
        for cpus in node_cpus[1:]:
            cluster.add_node(num_cpus=cpus)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


def worker_start(run_dir: Path) -> float:
    """Median time to the first report of the first trial in each Tune worker process: its start-up
    (process, imports, the task's data from the object store) plus one epoch."""
    firsts: dict[int, tuple[float, float]] = {}
    for rows in tune_results(run_dir):
        first = rows[0]
        started = first["timestamp"] - first["time_this_iter_s"]
        if first["pid"] not in firsts or started < firsts[first["pid"]][0]:
            firsts[first["pid"]] = (started, first["time_this_iter_s"])
    return float(np.median([t for _, t in firsts.values()]))


def measure_nodes(ctx: Ctx) -> dict[str, Any]:
    """Trials/hour, wall and worker start-up per cluster layout; `layouts` lists 1 node x 1 CPU first."""
    if ctx.quick:
        over = ["seeds=[0]", "training.epochs=2", "scheduler.type=none",
                "search_space={transfer_depth: 4, frozen_depth: {grid: [0, 2]}, images_per_label: 50}"]
        layouts = [("1 node x 1 CPU", [1]), ("2 nodes x 1 CPU", [1, 1])]
    else:
        over = ["seeds=[0, 1]", "training.epochs=5", "scheduler.type=none",
                "search_space={transfer_depth: 4, frozen_depth: {grid: [0, 2, 3]}, images_per_label: all}"]
        layouts = [("1 node x 1 CPU", [1]), ("2 nodes x 1 CPU", [1, 1]), ("1 node x 2 CPUs", [2])]
    pretrain_source(ctx)
    raw: dict[str, list[dict[str, float]]] = {label: [] for label, _ in layouts}
    for label, cpus in layouts:
        with quiet(ctx), ray_cluster(cpus) as address:
            if not ctx.quick:
                warm_up(ctx, f"nodes_{len(cpus)}x{cpus[0]}", address=address)
            for r in range(ctx.repeats):
                summary, wall = run_search(ctx, f"nodes_{len(cpus)}x{cpus[0]}_{r}", over, address=address)
                raw[label].append({"wall_s": wall, "trials": summary.num_trials,
                                   "trials_per_hour": 3600 * summary.num_trials / wall,
                                   "nodes_used": int(summary.trials["node"].nunique()),
                                   "worker_start_s": worker_start(summary.storage_path)})
        ctx.say(f"nodes: {label}: {np.median([x['trials_per_hour'] for x in raw[label]]):.0f} trials/h")
    summaries = {label: {"trials_per_hour": spread([x["trials_per_hour"] for x in raw[label]]),
                         "worker_start_s": spread([x["worker_start_s"] for x in raw[label]]),
                         "wall_s": spread([x["wall_s"] for x in raw[label]]),
                         "nodes_used": max(x["nodes_used"] for x in raw[label])} for label, _ in layouts}
    return {"setup": {"trials": raw[layouts[0][0]][0]["trials"], "overrides": over}, "layouts": summaries,
            "runs": raw}


# --------------------------------------------------------------------------------------------------
# gpu: images/s per trial with 1, 2 and 4 trials sharing one GPU


def measure_gpu(ctx: Ctx) -> dict[str, Any]:
    """images/s per trial with k trials sharing the GPU, per k (`shares`); skipped without CUDA."""
    import torch

    if not torch.cuda.is_available() and not ctx.simulate_gpu:
        return {"status": "skipped", "reason": "skipped: no GPU (torch.cuda.is_available() is False)"}
    simulated = not torch.cuda.is_available()
    backbone, size, epochs = ("smallcnn", None, 3) if simulated else ("resnet18", 112, 4 if ctx.quick else 6)
    shares = [1, 2] if simulated else [1, 2, 4]
    raw = {}
    start_ray(num_cpus=2, num_gpus=1) if simulated else start_ray()
    try:
        for k in shares:
            s = spread(gpu_images_per_s(ctx, k, backbone, size, epochs, simulated))
            raw[str(k)] = {"images_per_s_per_trial": s, "aggregate_images_per_s": k * s["median"]}
            ctx.say(f"gpu: {k} trial(s)/GPU: {s['median']:.0f} images/s per trial")
    finally:
        stop_ray()
    return {"status": "simulated on CPU (code path check only)" if simulated else "ok",
            "setup": {"backbone": backbone, "image_size": size, "epochs": epochs, "batch_size": 64},
            "shares": raw}


def gpu_images_per_s(ctx: Ctx, k: int, backbone: str, size: int | None, epochs: int, simulated: bool) -> list[float]:
    """Each trial's images/s (epoch 1 left out) in searches of k trials at `resources.gpu` 1/k, all at once."""
    from tunetl.config import load_experiment

    lrs = ", ".join(f"{0.01 * (1 + i / 10):g}" for i in range(k))  # k distinct trials, same cost
    body = {
        "name": f"gpu_{k}",
        "dataset": {"builtin": "digits", "val_fraction": 0.1},
        "backbone": backbone,
        "search_space": {"transfer_depth": 0, "frozen_depth": 0, "images_per_label": "all"},
        "training": {"epochs": epochs, "batch_size": 64, "image_size": size},
        "scheduler": {"type": "none"},
        "resources": {"cpu": 0.5 if simulated else 1, "gpu": 1 / k},
    }
    over = [f"search_space.base_lr={{grid: [{lrs}]}}", cache_override("off")]
    exp = load_experiment(body, overrides=over)
    per_trial = []
    for r in range(ctx.repeats):
        summary, _ = run_search(ctx, f"gpu_{k}_{r}", [], experiment=exp)
        results = tune_results(summary.storage_path)
        train_images = int(summary.trials["feature.num_train"].iloc[0])
        for rows in results:
            per_trial.append(train_images / float(np.median([x["epoch_seconds"] for x in rows[1:]])))
    return per_trial


# --------------------------------------------------------------------------------------------------
# anytime: best accuracy found vs epochs spent, per scheduler/searcher, on a space of 72 configurations

ANYTIME_SPACE = {"transfer_depth": 4, "frozen_depth": {"grid": [0, 1, 2, 3]},
                 "inner_lr": {"grid": [0.001, 0.01, 0.1]}, "last_lr": {"grid": [0.01, 0.1]},
                 "lr_scale": {"grid": [0.3, 1.0, 3.0]}, "images_per_label": {"grid": [5, 50]}}
ANYTIME_QUICK_SPACE = {"transfer_depth": 4, "frozen_depth": {"grid": [0, 2]}, "inner_lr": {"grid": [0.001, 0.1]},
                       "last_lr": 0.1, "lr_scale": 1.0, "images_per_label": {"grid": [5, 50]}}


def anytime_experiment(quick: bool) -> dict[str, Any]:
    """MNIST-5k digits 5-9 from a smallcnn trained on digits 0-4; IL x LL x lr_scale x frozen depth x
    images per label (72 configurations per group; quick: 4)."""
    return {
        "name": "anytime",
        # 375 validation images: evaluating them is most of an epoch's time at 5 images per label.
        "dataset": {"builtin": "mnist5k", "classes": [5, 6, 7, 8, 9], "val_fraction": 0.15},
        "source": {"train_on": {"builtin": "mnist5k", "classes": [0, 1, 2, 3, 4]}, "epochs": 2 if quick else 5},
        "backbone": "smallcnn",
        "search_space": ANYTIME_QUICK_SPACE if quick else ANYTIME_SPACE,
        "training": {"epochs": 3 if quick else 6, "batch_size": 32, "optimizer": "sgd", "base_lr": 0.01,
                     "feature_cache": "node"},
        "scheduler": {"type": "none", "group_by": ["images_per_label"]},
        "searcher": {"type": "grid"},
        "resources": {"cpu": 1, "gpu": 0},
        "seeds": [0],
    }


def anytime_methods(quick: bool) -> list[tuple[str, list[str]]]:
    """(label, overrides); the non-grid methods draw a sixth of the grid's trials (quick: half)."""
    n = 4 if quick else 24
    rand = f"searcher={{type: random, num_samples: {n}, seed: SEED}}"
    return [
        ("grid", []),
        ("random", [rand]),
        ("ASHA", [rand, "scheduler={type: asha, grace_period: 1, reduction_factor: 3, group_by: [images_per_label]}"]),
        ("HyperBand", [rand, "scheduler={type: hyperband, reduction_factor: 3, group_by: [images_per_label]}"]),
        ("Optuna+ASHA", [f"searcher={{type: optuna, num_samples: {n}, seed: SEED}}",
                         "scheduler={type: asha, grace_period: 1, reduction_factor: 3, group_by: [images_per_label]}"]),
        ("PBT", [rand, "scheduler={type: pbt, perturbation_interval: 2, group_by: [images_per_label]}"]),
        ("BOHB", [rand, "scheduler={type: bohb, reduction_factor: 3, group_by: [images_per_label]}"]),
    ]


def anytime_group(result: dict[str, Any]) -> str | None:
    """The images-per-label group of one Tune result (from the trial label's `ipl=N`), None when the
    result has no val_acc to count."""
    import re

    group = re.search(r"ipl=(\S+)", str(result.get("trial", "")))
    return group.group(1) if group and isinstance(result.get("val_acc"), (int, float)) else None


def anytime_curve(rows: list[list[dict[str, Any]]]) -> dict[str, list[tuple[int, float]]]:
    """Per images-per-label group: (epochs spent so far, best val_acc so far) after each epoch of the
    search, epochs in the order Tune received them."""
    events = [(float(r.get("timestamp", 0)), g, float(r["val_acc"]))
              for trial in rows for r in trial if (g := anytime_group(r)) is not None]
    curves: dict[str, list[tuple[int, float]]] = {}
    best: dict[str, float] = {}
    for _, g, acc in sorted(events):
        best[g] = max(best.get(g, 0.0), acc)
        curves.setdefault(g, []).append((len(curves.get(g, [])) + 1, best[g]))
    return curves


def measure_anytime(ctx: Ctx) -> dict[str, Any]:
    """Each method is a real tunetl search (Ray Tune, MLflow); 3 seeds of each sampler, the grid once. Returns
    every search's (epochs spent, best so far) curves and per-trial bests; the writer summarises and plots them.

    The searches finished by an earlier run with the same `--workdir` are kept (anytime_raw.json), so an
    interrupted hour-long run continues where it stopped and the summary can be re-drawn without searching.
    """
    seeds = [0] if ctx.quick else [0, 1, 2]
    exp = anytime_experiment(ctx.quick)
    raw_path = ctx.work / "anytime_raw.json"
    raw: dict[str, list[dict[str, Any]]] = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    todo = [(label, over, seed) for label, over in anytime_methods(ctx.quick)
            for seed in ([0] if label == "grid" else seeds)
            if not any(r["seed"] == seed for r in raw.get(label, []))]
    reused = sum(len(runs) for runs in raw.values())
    if todo:
        start_ray(num_cpus=2)
    try:
        for label, over, seed in todo:
            sets = [o.replace("SEED", str(seed)) for o in over]
            summary, wall = run_search(ctx, f"anytime_{label}_{seed}", sets, experiment=exp)
            results = tune_results(Path(summary.storage_path))
            curves = anytime_curve(results)
            raw.setdefault(label, []).append({"seed": seed, "wall_s": wall, "trials": summary.num_trials,
                                              "curves": curves, "trial_bests": anytime_trial_bests(results)})
            raw_path.write_text(json.dumps(raw, indent=1))
            ctx.say(f"anytime: {label} seed {seed}: {summary.num_trials} trials, "
                    f"{ {g: c[-1] for g, c in curves.items()} }, {wall:.0f} s")
    finally:
        if todo:
            stop_ray()
    plot = ctx.out_dir / ("anytime_quick.png" if ctx.quick else "anytime.png")
    return {"raw": raw, FACTS: {"quick": ctx.quick, "epochs": exp["training"]["epochs"],
                                "sampler": anytime_methods(ctx.quick)[1][1][0], "reused": reused, "plot": str(plot)}}


def anytime_trial_bests(rows: list[list[dict[str, Any]]]) -> dict[str, list[float]]:
    """Per images-per-label group: each trial's best val_acc."""
    bests: dict[str, list[float]] = {}
    for trial in rows:
        counted = [(g, float(r["val_acc"])) for r in trial if (g := anytime_group(r)) is not None]
        if counted:
            bests.setdefault(counted[0][0], []).append(max(acc for _, acc in counted))
    return bests


# --------------------------------------------------------------------------------------------------
# vs_tune: the quickstart as tunetl runs it vs what a user would write with Ray Tune (benchmarks/vs_tune.py)


def measure_vs_tune(ctx: Ctx) -> dict[str, Any]:
    """Each kind of search's wall, CPU and training seconds, and its cost per trial beyond training."""
    import vs_tune

    pretrain_source(ctx)
    cpus = 2
    start_ray(num_cpus=cpus)
    try:
        warm_up(ctx, "vs_tune")
        raw = vs_tune.measure(ctx, run_search, tune_results, QUICKSTART, ctx.repeats,
                              ["training.epochs=3"] if ctx.quick else [])
    finally:
        stop_ray()
    med: dict[str, dict[str, float]] = {}
    for kind, runs in raw.items():
        per_trial = [(cpus * r["wall_s"] - r["train_s"]) / r["trials"] for r in runs]
        med[kind] = {"wall": spread([r["wall_s"] for r in runs]), "cpu": spread([r["cpu_s"] for r in runs]),
                     "train": spread([r["train_s"] for r in runs]), "per_trial": spread(per_trial)}
    return {"raw": raw, "medians": med, FACTS: {"cpus": cpus}}


# --------------------------------------------------------------------------------------------------
# scale: `tunetl best` on a generated store of up to 10,000 child runs (benchmarks/scale.py)


def measure_scale(ctx: Ctx) -> dict[str, Any]:
    """`tunetl best` seconds per store size (`raw`, ascending) and their growth per 1,000 runs."""
    import scale

    sizes = scale.QUICK_SIZES if ctx.quick else scale.FULL_SIZES
    rows = scale.measure(ctx.work / "scale", sizes, ctx.repeats, ctx.say)
    growth = {key: scale.growth_per_1000(rows, key) for key in ("sqlite_s", "server_s")}
    return {"raw": rows, FACTS: {"epochs": scale.EPOCHS, "growth_per_1000": growth}}


RUNNERS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "plain": measure_plain,
    "overhead": measure_overhead,
    "cache": measure_cache,
    "asha": measure_asha,
    "nodes": measure_nodes,
    "gpu": measure_gpu,
    "anytime": measure_anytime,
    "vs_tune": measure_vs_tune,
    "scale": measure_scale,
}

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                    help=f"comma-separated sections to run (default: {','.join(DEFAULT_SECTIONS)}; also: anytime)")
    ap.add_argument("--quick", action="store_true", help="smaller searches and fewer epochs (1-2 minutes)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per timing (default 3, quick 1)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                    help="folder for harness.json and harness.md (quick: harness_quick.*)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for in-process timings (a trial with resources.cpu=1 uses 1)")
    ap.add_argument("--workdir", type=Path, help="keep runs, MLflow store and the log here (default: a temp dir)")
    ap.add_argument("--verbose", action="store_true", help="show Ray/Tune output instead of logging it")
    ap.add_argument("--simulate-gpu", action="store_true",
                    help="run the gpu section's code path on CPU with a logical Ray GPU (checks only)")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        ap.error(f"--only {args.only!r}: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    args.sections = chosen
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        ap.error(f"--repeats {args.repeats}: must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tunetl-harness-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(quick=args.quick, repeats=args.repeats, work=work, log=work / "harness.log",
              threads=args.threads, verbose=args.verbose, simulate_gpu=args.simulate_gpu, out_dir=args.out)
    ctx.stderr = os.fdopen(os.dup(2), "w")
    for name in [n for n in os.environ if n.startswith("MLFLOW_")]:
        del os.environ[name]  # the harness writes only to its own SQLite store
    # Searches share one node feature cache per harness run (Ray workers inherit this), never an older one.
    os.environ["TUNETL_FEATURE_CACHE"] = str(work / "search_feature_cache")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "harness_quick" if args.quick else "harness"
    json_path, md_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    started, load_start = time.perf_counter(), os.getloadavg()
    mach = machine()
    ctx.say(f"{', '.join(args.sections)}; {'quick' if args.quick else 'full'}, {args.repeats} repeat(s); "
            f"log: {ctx.log}")
    sections: dict[str, Any] = {}
    if json_path.exists() and set(args.sections) != set(DEFAULT_SECTIONS):
        with contextlib.suppress(ValueError, KeyError):
            sections = json.loads(json_path.read_text())["sections"]
    failed = []
    for name in args.sections:
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        ctx.say(f"section {name} ...")
        try:
            sec = harness_report.describe(name, RUNNERS[name](ctx))
        except Exception as err:  # one broken section must not lose the others' numbers
            sec = {"status": "error", "reason": f"error: {type(err).__name__}: {err} (log: {ctx.log})",
                   "targets": []}
            failed.append(name)
            ctx.say(f"section {name} failed: {type(err).__name__}: {err}")
        sec.setdefault("status", "ok")
        sec.update(seconds=time.perf_counter() - t0, machine_line=machine_line(mach),
                   date=time.strftime("%Y-%m-%d %H:%M:%S"), repeats=args.repeats, quick=args.quick,
                   load=f"{load0:.1f} / {os.getloadavg()[0]:.1f}")
        sections[name] = sec
        ctx.say(f"section {name}: {sec['status']} in {sec['seconds']:.0f} s")
    results = {
        "version": RESULTS_VERSION,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python benchmarks/harness.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "repeats": args.repeats,
        "machine": mach,
        "seconds": time.perf_counter() - started,
        "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "sections": sections,
        "targets": [{**t, "section": n} for n, s in sections.items() for t in s.get("targets", [])],
    }
    json_path.write_text(json.dumps(results, indent=2, default=str))
    md_path.write_text(harness_report.render(results))
    ctx.say(f"wrote {json_path} and {md_path} ({results['seconds']:.0f} s)")
    if args.workdir is None and not failed:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
