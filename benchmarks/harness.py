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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
SECTIONS = ("plain", "overhead", "cache", "asha", "nodes", "gpu", "vs_tune", "anytime", "scale")
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


def target(
    name: str, goal: str, value: float | None, met: bool | None, shown: str, reason: str = ""
) -> dict[str, Any]:
    """One row of the targets table; `reason` is kept only for missed (or unmeasured) targets."""
    return {"name": name, "goal": goal, "value": value, "shown": shown, "met": met,
            "reason": "" if met else reason}


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


def machine_line(m: dict[str, Any]) -> str:
    gpu = f", GPU {', '.join(m['gpu'])} (CUDA {m['cuda']})" if m.get("gpu") else ", no GPU"
    return (f"{m['cpu']}, {m['usable_cores']}/{m['cores']} cores, {m['ram_gb']} GB RAM{gpu}; "
            f"Python {m['python']}, torch {m['torch']}, ray {m['ray']}, mlflow {m['mlflow']}")


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


def section_plain(ctx: Ctx) -> dict[str, Any]:
    from tunetl.config import load_experiment
    from tunetl.data import load_dataset
    from tunetl.params import TrialParams
    from tunetl.trial import TrialRunner

    epochs = 3 if ctx.quick else 12
    over = ["seeds=[0]", "scheduler.type=none", cache_override("off")]
    exp = load_experiment(QUICKSTART, overrides=over)
    task = load_dataset(exp.dataset)
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
    plain_med = float(np.median(plain))
    out: dict[str, Any] = {
        "setup": {"dataset": task.name, "train_images": int(runner.num_train), "val_images": len(task.val),
                  "backbone": "smallcnn", "batch_size": exp.training.batch_size, "optimizer": "sgd",
                  "epochs_per_repeat": epochs, "torch_threads": ctx.threads},
        "plain_epoch_s": spread(plain),
        "trialrunner_epoch_s": spread(ours),
        "ratio_trialrunner_vs_plain": spread(ratios),
    }
    ctx.say(f"plain: TrialRunner {np.median(ours) * 1e3:.1f} ms vs plain {plain_med * 1e3:.1f} ms per epoch")

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
    ratio = float(np.median(ratios))
    # Noise-robust estimate: TrialRunner vs plain (interleaved) x Tune's per-epoch time vs the runner's own
    # epoch inside the same trial (both measured around the same epochs).
    composed = ratio * float(np.median(report_share))
    raw_ratio = float(np.median([i / b for i, b in zip(iter_s, bracket, strict=True)]))
    out["tune_trial"] = {
        "epochs": tune_epochs,
        "time_this_iter_s": spread(iter_s),
        "epoch_seconds": spread(epoch_s),
        "iter_vs_epoch_seconds": spread(report_share),
        "plain_bracket_s": spread(bracket),
        "ratio_iter_vs_plain_bracket": raw_ratio,
        "ratio_composed": composed,
    }
    per_epoch_log_ms = 1e3 * (float(np.median(iter_s)) - float(np.median(epoch_s)))
    out["rows"] = [
        {"loop": "plain PyTorch loop (harness)", "epoch ms": 1e3 * plain_med, "vs plain": 1.0},
        {"loop": "tunetl TrialRunner (interleaved with the plain loop)", "epoch ms": 1e3 * float(np.median(ours)),
         "vs plain": ratio},
        {"loop": "tunetl trial in Ray Tune: epoch_seconds", "epoch ms": 1e3 * float(np.median(epoch_s)),
         "vs plain": float(np.median(epoch_s)) / float(np.median(bracket))},
        {"loop": "tunetl trial in Ray Tune: time between reports", "epoch ms": 1e3 * float(np.median(iter_s)),
         "vs plain": raw_ratio},
        {"loop": "tunetl trial in Ray Tune: composed estimate", "epoch ms": None, "vs plain": composed},
    ]
    out["note"] = (
        f"Per epoch: {out['setup']['train_images']} training images (batch {exp.training.batch_size}, SGD) and a "
        f"pass over {out['setup']['val_images']} validation images, smallcnn on digits 5-9, torch threads "
        f"{ctx.threads}. TrialRunner and the plain loop alternate epoch by epoch (ABBA) in this process. The Tune "
        "trial (resources.cpu=1) runs one search per repeat; 'time between reports' is Tune's time_this_iter_s "
        "(the epoch plus MLflow logging and tune.report), compared with plain-loop epochs timed just before and "
        "after that search ('vs plain' of the Tune rows). Epoch 1 (trial start-up) is left out. The composed "
        "estimate = (TrialRunner vs plain) x (time between reports / epoch_seconds inside the trial): both factors "
        "are measured side by side, so it is less exposed to load from other processes than the bracketed ratio."
    )
    out["targets"] = [
        target("plain.trialrunner", "TrialRunner epoch <= 1.05 x plain loop", ratio, ratio <= 1.05,
               f"{ratio:.3f} x", f"TrialRunner's epoch is {100 * (ratio - 1):.0f}% slower than the plain loop "
               f"on {plain_med * 1e3:.0f} ms epochs"),
        target("plain.tune_trial", "Tune trial epoch (incl. report + MLflow log) <= 1.05 x plain loop (composed)",
               composed, composed <= 1.05, f"{composed:.3f} x (bracketed: {raw_ratio:.2f} x)",
               f"each epoch also pays ~{per_epoch_log_ms:.0f} ms for MLflow logging (SQLite) and tune.report, "
               f"large next to a {plain_med * 1e3:.0f} ms digits epoch"),
    ]
    return out


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


def section_overhead(ctx: Ctx) -> dict[str, Any]:
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
    rows, summaries = [], {}
    for label, _ in sizes:
        runs = raw[label]
        s = {k: spread([run[k] for run in runs]) for k in ("wall_s", "train_s", "overhead", "per_trial_overhead_s")}
        s["trials"], s["epochs"] = runs[0]["trials"], runs[0]["epochs"]
        summaries[label] = s
        rows.append({"search": label, "trials": s["trials"], "epochs run": s["epochs"],
                     "wall s": s["wall_s"]["median"], "training s": s["train_s"]["median"],
                     "overhead": f"{100 * s['overhead']['median']:.0f}%",
                     "per trial s": s["per_trial_overhead_s"]["median"]})
    quick_label = quickstart[0]
    qs = summaries[quick_label]["overhead"]["median"]
    overheads = [summaries[label]["overhead"]["median"] for label, _ in growing]
    falling = all(b <= a for a, b in zip(overheads, overheads[1:], strict=False))
    per_trial = summaries[quick_label]["per_trial_overhead_s"]["median"]
    train_per_trial = summaries[quick_label]["train_s"]["median"] / summaries[quick_label]["trials"]
    return {
        "setup": {"ray_cpus": 1, "concurrent_trials": 1, "ray_start_s": ray_s, "source_train_s": source_s,
                  "first_search_s": first_s,
                  "note": "Ray runs one trial at a time (num_cpus=1) so wall time and summed training time "
                          "compare directly. Wall = the tunetl.api.run call with Ray already started and the "
                          "source model already cached, after one untimed 1-trial search (creates the MLflow "
                          "tables, warms workers). Training = sum of every epoch's epoch_seconds from Tune's "
                          "results; per trial s = (wall - training) / trials."},
        "sizes": summaries,
        "runs": raw,
        "rows": rows,
        "targets": [
            target("overhead.quickstart", "quickstart search wall time < 1.25 x its training time", qs, qs < 0.25,
                   f"+{100 * qs:.0f}%",
                   f"digits trials train for only ~{train_per_trial:.1f} s each, while each trial costs "
                   f"~{per_trial:.1f} s beyond training (Tune scheduling, trial start, MLflow run and params, "
                   "per-epoch logging, checkpoint)"),
            target("overhead.falling", "overhead falls as trials grow (the same 5 trials, more epochs each)",
                   None, falling,
                   " -> ".join(f"{100 * o:.0f}%" for o in overheads),
                   "overhead did not fall monotonically over the sizes (noisy machine?)"),
        ],
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


def section_cache(ctx: Ctx) -> dict[str, Any]:
    results = []
    for case in cache_cases(ctx.quick):
        results += measure_cache_case(ctx, case)
    table = []
    for row in results:
        med = {k: v["median"] for k, v in row["stats"].items()}
        table.append({
            "backbone": f"{row['backbone']} @{row['image_size']}px", "frozen": row["frozen_depth"],
            "off epoch ms": 1e3 * med["off_epoch"], "trial epoch ms": 1e3 * med["trial_epoch"],
            "node epoch ms": 1e3 * med["node_epoch"], "off setup s": med["off_setup"],
            "trial setup s": med["trial_setup"], "node build s": med["node_build"], "node hit s": med["node_hit"],
            "epoch x": row["epoch_speedup"], "trial x: trial": row["trial_speedup_trial_cache"],
            "trial x: node 1st": row["trial_speedup_node_first"], "trial x: node hit": row["trial_speedup_node_hit"],
            f"trial x: node, {SHARED_TRIALS} share": row["trial_speedup_node_shared"],
        })
    deep = [r for r in results if r["backbone"] != "smallcnn"]
    targets = []
    if deep:
        d = max(deep, key=lambda r: r["frozen_depth"])
        sp = d["trial_speedup_node_shared"]
        build_s = d["stats"]["node_build"]["median"]
        targets.append(target(
            "cache.deepest",
            f"{d['backbone']} trial at the deepest frozen depth ({d['frozen_depth']}) >= 5x faster with the node "
            f"cache than without ({SHARED_TRIALS} trials sharing one entry, the first of them building it)",
            sp, sp >= 5,
            f"{sp:.1f} x (first trial on a node {d['trial_speedup_node_first']:.1f} x, later ones "
            f"{d['trial_speedup_node_hit']:.0f} x; per-trial cache {d['trial_speedup_trial_cache']:.0f} x)",
            f"the first trial on a node computes the prefix for the whole split ({d['split_images']} training + "
            f"{d['val_images']} validation images, {build_s:.1f} s) so that every subset and seed can share it, "
            f"while each trial trains on only {d['train_images']} images"))
    note = ("Columns: per-epoch time in each `training.feature_cache` mode; set-up = TrialRunner construction "
            "(preprocessing, and the prefix pass where cached); node build = the first trial on a fresh node cache "
            "(computes and writes the entry), node hit = a second trial that reads it; trial x = (set-up + "
            "trial_epochs x epoch) without the cache / with it; 'node, N share' spreads one build over N "
            "trials. Epoch times are medians over repeats of each repeat's median epoch. Source weights are "
            "random-init (timing depends on shapes only); resnet18 runs on digits upsampled to the given size, "
            "3 channels. Without the cache every epoch runs the frozen prefix on the training and validation "
            "images; preprocessing is done once in every mode.")
    return {"modes": list(CACHE_MODES), "cases": [c.__dict__ for c in cache_cases(ctx.quick)],
            "results": results, "rows": table, "note": note, "targets": targets}


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


def section_asha(ctx: Ctx) -> dict[str, Any]:
    from tunetl import api

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
    labels = [label for label, _ in asha_variants(ctx.quick)]
    grid = runs[labels[0]]
    rows, targets = [], []
    for label in labels:
        run = runs[label]
        gaps = {g: grid["best"][g]["accuracy"] - run["best"].get(g, {"accuracy": float("nan")})["accuracy"]
                for g in grid["best"]}
        run["epoch_ratio"] = run["epochs"] / grid["epochs"]
        run["gap_points"] = gaps
        row = {"search": label, "trials": run["trials"], "stopped early": run["stopped"], "epochs": run["epochs"],
               "epochs vs grid": f"{100 * run['epoch_ratio']:.0f}%", "wall s": run["wall_s"]}
        for g, best in run["best"].items():
            row[f"best @{g}/label"] = f"{best['accuracy']:.1f} ({best['condition']})"
        rows.append(row)
    shipped = runs[labels[1]]
    worst_gap = max(shipped["gap_points"].values())
    ok_acc, ok_epochs = worst_gap <= 1.0, shipped["epoch_ratio"] <= 0.40
    reasons = []
    if not ok_epochs:
        from tunetl.config import load_experiment

        exp = load_experiment(QUICKSTART, overrides=[*ctx.base, *asha_variants(ctx.quick)[1][1]])
        sched, epochs = exp.scheduler, exp.training.epochs
        floor = min(sched.grace_period, epochs) / epochs
        reasons.append(f"the scheduler (grace_period {sched.grace_period} of {epochs} epochs, reduction "
                       f"{sched.reduction_factor:g}) runs every trial for at least {100 * floor:.0f}% of its epochs, "
                       f"so ASHA cannot spend much less ({100 * shipped['epoch_ratio']:.0f}% here); the quickstart's "
                       "former grace period was long because at 5 images per label an epoch is one SGD step")
    if not ok_acc:
        reasons.append(f"ASHA's best is {worst_gap:.1f} points below the grid's in one images-per-label group")
    for label in labels[2:]:
        other = runs[label]
        reasons.append(f"{label} spends {100 * other['epoch_ratio']:.0f}% of the epochs but its best is up to "
                       f"{max(other['gap_points'].values()):.1f} points below the grid's")
    targets.append(target("asha.shipped", "ASHA best within 1 point of the grid for <= 40% of its epochs",
                          shipped["epoch_ratio"], ok_acc and ok_epochs,
                          f"{100 * shipped['epoch_ratio']:.0f}% of epochs, worst gap {worst_gap:.1f} pt",
                          "; ".join(reasons)))
    return {"setup": {"ray_cpus": 2, "note": "best = the best configuration's mean best_val_acc over seeds per "
                      "images_per_label group (api.rank); epochs = sum of each trial's epochs run. Run once: "
                      "accuracies are deterministic per trial, ASHA's cuts depend on trial arrival order."},
            "runs": runs, "rows": rows, "targets": targets}


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


def section_nodes(ctx: Ctx) -> dict[str, Any]:
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
    one = summaries[layouts[0][0]]["trials_per_hour"]["median"]
    rows = [{"cluster": label, "nodes used": s["nodes_used"], "trials/hour": s["trials_per_hour"]["median"],
             "min": s["trials_per_hour"]["min"], "max": s["trials_per_hour"]["max"],
             "wall s": s["wall_s"]["median"], "worker start s": s["worker_start_s"]["median"],
             "vs 1 node x 1 CPU": s["trials_per_hour"]["median"] / one}
            for label, s in summaries.items()]
    return {"setup": {"trials": raw[layouts[0][0]][0]["trials"], "overrides": over,
                      "note": "Every layout is a ray.cluster_utils.Cluster on this machine (one process set per "
                              "node); cluster start-up is not timed. On a 2-core machine '2 nodes x 1 CPU' uses "
                              "both cores, so compare it with '1 node x 2 CPUs' (same cores, one node) to see "
                              "the cost of a second node; the Tune driver and MLflow writes share those cores. "
                              "Worker start = time to the first report of each Tune worker process (start-up, "
                              "imports, data, one epoch), paid once per worker and, with 2 slots, twice at once."},
            "layouts": summaries, "runs": raw, "rows": rows, "targets": []}


# --------------------------------------------------------------------------------------------------
# gpu: images/s per trial with 1, 2 and 4 trials sharing one GPU


def section_gpu(ctx: Ctx) -> dict[str, Any]:
    import torch

    from tunetl.config import load_experiment

    if not torch.cuda.is_available() and not ctx.simulate_gpu:
        return {"status": "skipped", "reason": "skipped: no GPU (torch.cuda.is_available() is False)"}
    simulated = not torch.cuda.is_available()
    backbone, size, epochs = ("smallcnn", None, 3) if simulated else ("resnet18", 112, 4 if ctx.quick else 6)
    shares = [1, 2] if simulated else [1, 2, 4]
    rows, raw = [], {}
    start_ray(num_cpus=2, num_gpus=1) if simulated else start_ray()
    try:
        for k in shares:
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
                summary, wall = run_search(ctx, f"gpu_{k}_{r}", [], experiment=exp)
                results = tune_results(summary.storage_path)
                train_images = int(summary.trials["feature.num_train"].iloc[0])
                for rows_ in results:
                    per_trial.append(train_images / float(np.median([x["epoch_seconds"] for x in rows_[1:]])))
            s = spread(per_trial)
            raw[str(k)] = {"images_per_s_per_trial": s, "aggregate_images_per_s": k * s["median"]}
            rows.append({"trials per GPU": k, "resources.gpu": 1 / k, "images/s per trial": s["median"],
                         "min": s["min"], "max": s["max"], "images/s all trials": k * s["median"]})
            ctx.say(f"gpu: {k} trial(s)/GPU: {s['median']:.0f} images/s per trial")
    finally:
        stop_ray()
    base = rows[0]["images/s all trials"]
    for row in rows:
        row["aggregate vs 1"] = row["images/s all trials"] / base
    return {"status": "simulated on CPU (code path check only)" if simulated else "ok",
            "setup": {"backbone": backbone, "image_size": size, "epochs": epochs, "batch_size": 64,
                      "note": "images/s = training images per epoch / epoch_seconds (the epoch includes one "
                              "validation pass); epoch 1 left out; all k trials run at once on the GPU"},
            "shares": raw, "rows": rows, "targets": []}


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


def epochs_to_reach(curve: list[tuple[int, float]], level: float) -> int | None:
    return next((k for k, acc in curve if acc >= level), None)


def section_anytime(ctx: Ctx) -> dict[str, Any]:
    """Each method is a real tunetl search (Ray Tune, MLflow); 3 seeds of each sampler, the grid once.

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
    result = summarize_anytime(raw)
    png = plot_anytime(raw, ctx.out_dir / ("anytime_quick.png" if ctx.quick else "anytime.png"))
    searched = sum(r["wall_s"] for runs in raw.values() for r in runs)
    result["setup"] = {"note": f"MNIST-5k digits 5-9, smallcnn from digits 0-4, frozen-prefix cache; "
                       f"{'quick space' if ctx.quick else '72 configurations'} per images-per-label group, "
                       f"{exp['training']['epochs']} epochs; samplers draw {anytime_methods(ctx.quick)[1][1][0]}; "
                       "epochs counted in the order Tune received them (2 trials at a time). Grid configurations "
                       "within 1 / 2 points of the grid's best (what a sampler must hit): " + "; ".join(
                           f"@{g}: {n['1 pt']} / {n['2 pt']} of {n['of']}" for g, n in result["needles"].items())
                       + ". The searches took "
                       f"{searched:.0f} s" + (f" ({reused} kept from an earlier run in the same --workdir)"
                                              if reused else "") + ". Plot: " + png.name}
    return result


def summarize_anytime(raw: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Rows (median over seeds) and the 30% target, from every search's (epochs, best so far) curves."""
    grid = raw["grid"][0]["curves"]
    rows, targets = [], []
    reached: dict[str, dict[str, float]] = {}
    for label, runs in raw.items():
        row: dict[str, Any] = {"method": label, "seeds": len(runs)}
        for g, gcurve in grid.items():
            total, top = gcurve[-1][0], gcurve[-1][1]
            spent = [r["curves"].get(g, [(0, 0.0)])[-1][0] for r in runs]
            finals = [r["curves"].get(g, [(0, 0.0)])[-1][1] for r in runs]
            row[f"@{g}: epochs (median)"] = int(np.median(spent))
            row[f"@{g}: best % (median)"] = f"{100 * float(np.median(finals)):.1f}"
            for gap in (1, 2):
                hits = [epochs_to_reach(r["curves"].get(g, []), top - gap / 100) for r in runs]
                med = float(np.median([h / total if h is not None else float("inf") for h in hits]))
                if gap == 1:
                    reached.setdefault(label, {})[g] = med
                row[f"@{g}: epochs to grid best -{gap}pt"] = "never" if not np.isfinite(med) else f"{100 * med:.0f}%"
        rows.append(row)
    ok_methods = [m for m, per in reached.items() if m != "grid" and all(v <= 0.30 for v in per.values())]
    others = [m for m in reached if m != "grid"]
    best_method = min(others, key=lambda m: max(reached[m].values())) if others else "grid"
    worst = max(reached[best_method].values())
    targets.append(target("anytime.30pct", "a method within 1 point of the grid's best at <= 30% of the grid's "
                          "epochs (median of 3 seeds, every images-per-label group)", worst, bool(ok_methods),
                          f"{best_method}: {100 * worst:.0f}%" if np.isfinite(worst) else f"{best_method}: never",
                          "" if ok_methods else "no method reached the grid's best -1 point within 30% of its epochs "
                          "in every group (few grid configurations lie that close to its best: see the note)"))
    return {"rows": rows, "targets": targets, "raw": raw, "needles": anytime_needles(raw)}


def anytime_trial_bests(rows: list[list[dict[str, Any]]]) -> dict[str, list[float]]:
    """Per images-per-label group: each trial's best val_acc."""
    bests: dict[str, list[float]] = {}
    for trial in rows:
        counted = [(g, float(r["val_acc"])) for r in trial if (g := anytime_group(r)) is not None]
        if counted:
            bests.setdefault(counted[0][0], []).append(max(acc for _, acc in counted))
    return bests


def anytime_needles(raw: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """How many of the grid's trials per group come within 1 and 2 points of its best: the targets a
    sampler can hit (one in 72 makes 'within 1 point at 30% of the epochs' a lottery)."""
    bests = raw["grid"][0].get("trial_bests", {})
    return {g: {f"{gap} pt": sum(a >= max(accs) - gap / 100 for a in accs) for gap in (1, 2)} | {"of": len(accs)}
            for g, accs in bests.items()}


def plot_anytime(raw: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Median over seeds of best val acc vs epochs spent, one panel per images-per-label group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted(raw["grid"][0]["curves"], key=lambda g: float(g) if g.replace(".", "").isdigit() else 1e9)
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        for label, runs in raw.items():
            longest = max(len(r["curves"].get(g, [])) for r in runs)
            if not longest:
                continue
            xs = np.arange(1, longest + 1)
            ys = [[r["curves"][g][min(k, len(r["curves"][g])) - 1][1] if r["curves"].get(g) else np.nan
                   for k in xs] for r in runs]
            ax.plot(xs, 100 * np.nanmedian(np.asarray(ys, dtype=float), axis=0), label=label)
        ax.set_xscale("log")
        ax.set_xlabel("epochs spent (log)")
        ax.set_ylabel("best val acc found (%)")
        ax.set_title(f"{g} images per label")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Results: JSON and Markdown


# --------------------------------------------------------------------------------------------------
# vs_tune: the quickstart as tunetl runs it vs what a user would write with Ray Tune (benchmarks/vs_tune.py)


def section_vs_tune(ctx: Ctx) -> dict[str, Any]:
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
    plain = med["plain"]
    rows = [{"search": kind, "wall s (median)": f"{m['wall']['median']:.1f}",
             "wall min-max": f"{m['wall']['min']:.1f}-{m['wall']['max']:.1f}",
             "x plain wall": f"{m['wall']['median'] / plain['wall']['median']:.2f}",
             "CPU s (median)": f"{m['cpu']['median']:.1f}",
             "x plain CPU": f"{m['cpu']['median'] / plain['cpu']['median']:.2f}",
             "training s": f"{m['train']['median']:.1f}",
             "per trial beyond training s": f"{m['per_trial']['median']:.2f}"} for kind, m in med.items()]
    ratio = med["tunetl"]["wall"]["median"] / plain["wall"]["median"]
    extra = med["tunetl"]["per_trial"]["median"] - plain["per_trial"]["median"]
    why = ("tunetl's trials log to MLflow from the workers (an MLflow client per worker, a synchronous write per "
           "epoch), and a tunetl search also checkpoints, tests and logs the winner's model")
    targets = [
        target("vs_tune.wall", "quickstart wall time <= 1.15 x a plain Ray Tune script without MLflow", ratio,
               ratio <= 1.15, f"{ratio:.2f}x", why),
        target("vs_tune.per_trial", "cost per trial beyond training <= plain script's + 0.15 s", extra,
               extra <= 0.15, f"+{extra:.2f} s", why),
    ]
    return {"setup": {"note": f"The quickstart's 30 trials (15 epochs, 1 CPU each, {cpus} at a time, actors reused) "
                      "four ways, interleaved, Ray started and the source model cached before; the same "
                      "`TrialRunner` trains in all four. tunetl's wall includes its end of search (test accuracy "
                      "of the winners, the winner's model logged). CPU = machine-wide busy CPU seconds "
                      "(/proc/stat) during each search: other load on the machine is counted too (see load). "
                      "Per trial beyond training = (CPUs x wall - summed epoch seconds) / trials."},
            "raw": raw, "medians": med, "rows": rows, "targets": targets}


# --------------------------------------------------------------------------------------------------
# scale: `tunetl best` on a generated store of up to 10,000 child runs (benchmarks/scale.py)


def section_scale(ctx: Ctx) -> dict[str, Any]:
    import scale

    sizes = scale.QUICK_SIZES if ctx.quick else scale.FULL_SIZES
    rows = scale.measure(ctx.work / "scale", sizes, ctx.repeats, ctx.say)
    top = rows[-1]
    targets = []
    for key, where in (("sqlite_s", "SQLite"), ("server_s", "mlflow server")):
        slope = scale.growth_per_1000(rows, key)
        targets.append(target(f"scale.best_{key[:-2]}", f"`tunetl best` on {top['runs']:,} runs ({where}) < 5 s "
                              "including start-up", top[key], top[key] < 5, f"{top[key]:.2f} s",
                              f"{top[key]:.2f} s: MLflow's search_runs returns every run's params, tags and "
                              "metrics; see the growth row"))
        targets.append(target(f"scale.growth_{key[:-2]}", f"growth per 1,000 runs ({where}) < 0.2 s", slope,
                              slope < 0.2, f"{slope:.3f} s", f"{slope:.3f} s per 1,000 runs"))
    shown = [{"runs": r["runs"], "tunetl best, SQLite (s)": f"{r['sqlite_s']:.2f}",
              "tunetl best, mlflow server (s)": f"{r['server_s']:.2f}"} for r in rows]
    return {"setup": {"note": f"One store grown through {', '.join(map(str, sizes))} child runs ({scale.EPOCHS} "
                      "epochs of metrics each, as a trial records them); `tunetl best --experiment scale` in a "
                      "fresh process (start-up included), median of the repeats; the server is a real `mlflow "
                      "server --workers 1` over the same SQLite file, warmed by one untimed query."},
            "raw": rows, "rows": shown, "targets": targets}


RUNNERS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "plain": section_plain,
    "overhead": section_overhead,
    "cache": section_cache,
    "asha": section_asha,
    "nodes": section_nodes,
    "gpu": section_gpu,
    "anytime": section_anytime,
    "vs_tune": section_vs_tune,
    "scale": section_scale,
}

TITLES = {
    "plain": "Per-epoch time: tunetl trial vs a plain PyTorch loop",
    "overhead": "Whole-search wall time vs the sum of its trials' training time",
    "cache": "Frozen-prefix feature cache on vs off, per frozen depth",
    "asha": "ASHA vs the full grid on the quickstart (shipped frozen-depth search)",
    "nodes": "Trials per hour on 1 vs 2 local Ray nodes",
    "gpu": "GPU: images/s per trial with 1, 2 and 4 trials per GPU",
    "anytime": "Best accuracy found vs epochs spent: grid, random, ASHA, HyperBand, Optuna+ASHA, PBT, BOHB",
    "vs_tune": "The quickstart as tunetl runs it vs a plain Ray Tune script (without MLflow, setup_mlflow, "
               "MLflowLoggerCallback)",
    "scale": "`tunetl best` on MLflow stores of 1,000 to 10,000 child runs (SQLite and a real server)",
}


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def render(results: dict[str, Any]) -> str:
    out = [f"# Benchmark harness results{' (quick mode)' if results['quick'] else ''}", "",
           f"Machine: {machine_line(results['machine'])}", "",
           f"Last run: {results['date']}, `{results['command']}`, {results['seconds']:.0f} s.", ""]
    summary = [{"section": name, "status": sec["status"], "measured": sec.get("date"), "repeats": sec.get("repeats"),
                "seconds": sec.get("seconds"), "load average (1 min) start / end": sec.get("load")}
               for name in SECTIONS if (sec := results["sections"].get(name)) is not None]
    out += [md_table(summary), "", f"Sum of section times: {sum(s['seconds'] or 0 for s in summary):.0f} s. "
            "The load average shows how busy the machine was: timings are only as quiet as the machine.", ""]
    targets = []
    for name in SECTIONS:
        sec = results["sections"].get(name)
        if sec is None:
            continue
        out += [f"## {name}: {TITLES[name]}", ""]
        if sec.get("machine_line") and sec["machine_line"] != machine_line(results["machine"]):
            out += [f"Measured on: {sec['machine_line']} ({sec['date']}).", ""]
        if sec.get("status") not in (None, "ok"):
            out += [f"Status: {sec.get('reason') or sec['status']}", ""]
        if sec.get("rows"):
            out += [md_table(sec["rows"]), ""]
        note = sec.get("note") or (sec.get("setup") or {}).get("note")
        if note:
            out += [note, ""]
        if sec.get("seconds") is not None:
            out += [f"Section time: {sec['seconds']:.0f} s.", ""]
        targets += [{**t, "section": name} for t in sec.get("targets", [])]
    out += ["## Targets", "", "| target | goal | measured | met | why missed |", "|---|---|---|---|---|"]
    out += [f"| {t['name']} | {t['goal']} | {t['shown']} | {fmt(t['met'])} | {t['reason']} |" for t in targets]
    return "\n".join(out) + "\n"


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
            sec = RUNNERS[name](ctx)
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
    md_path.write_text(render(results))
    ctx.say(f"wrote {json_path} and {md_path} ({results['seconds']:.0f} s)")
    if args.workdir is None and not failed:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
