"""Seconds per epoch with the frozen prefix recomputed ("off"), cached per trial ("trial") or shared
per node ("node"), with tunetl's trial runner (no Ray/MLflow).

    .venv/bin/python benchmarks/feature_cache.py [--epochs 4] [--threads 1] [--skip-resnet]

Part 1: smallcnn on the quickstart's target (digits 5-9, every training image) at frozen depth 0..4.
Part 2: resnet18 with random "source" weights at image_size 64 on 50 digits images per label (500),
every stage frozen (only the head trains). "setup" is the runner's construction (prefix outputs
computed or read); for "node" it is shown for the trial that computes the entry and for the next one,
which reads it. The cache goes to a fresh temporary folder. Prints Markdown.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch

from tunetl.config import ExperimentConfig, load_experiment
from tunetl.models import build, list_backbones
from tunetl.params import TrialParams
from tunetl.trial import TrialRunner


def timed(params: TrialParams, exp: ExperimentConfig, source: dict, mode: str, cache_dir: str, epochs: int,
          seed: int = 0) -> tuple[float, float, str]:
    """(setup seconds, median epoch seconds, where the training inputs came from)."""
    t0 = time.perf_counter()
    runner = TrialRunner(params, exp, seed=seed, source_state=source, feature_cache=mode,  # type: ignore[arg-type]
                         feature_cache_dir=cache_dir)
    setup = time.perf_counter() - t0
    seconds = [runner.run_epoch().seconds for _ in range(epochs)]
    return setup, statistics.median(seconds), runner.feature_source["train"]


def table(exp: ExperimentConfig, source: dict, depths: list[int], ipl: Any, epochs: int) -> None:
    print("| frozen depth | off: epoch s | trial: setup / epoch s | node, computing: setup / epoch s "
          "| node, reading: setup / epoch s |")
    print("|---|---|---|---|---|")
    for depth in depths:
        params = TrialParams(transfer_depth=depth, frozen_depth=depth, images_per_label=ipl)
        with tempfile.TemporaryDirectory() as cache_dir:
            _, off, _ = timed(params, exp, source, "off", cache_dir, epochs)
            trial_setup, trial, _ = timed(params, exp, source, "trial", cache_dir, epochs)
            first_setup, first, first_src = timed(params, exp, source, "node", cache_dir, epochs)
            # A second trial of the search: another seed (another subset, when ipl is a number).
            hit_setup, hit, hit_src = timed(params, exp, source, "node", cache_dir, epochs, seed=1)
        print(f"| {depth} | {off:.3f} | {trial_setup:.2f} / {trial:.3f} | {first_setup:.2f} / {first:.3f} "
              f"({first_src}) | {hit_setup:.2f} / {hit:.3f} ({hit_src}) |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a trial gets resources.cpu)")
    ap.add_argument("--skip-resnet", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    exp = load_experiment("experiments/quickstart.yaml")
    source = build("smallcnn", num_classes=5, in_channels=1, seed=123).state_dict()
    print(f"smallcnn, {exp.dataset.display_name()}, all training images, batch {exp.training.batch_size}, "
          f"{args.threads} thread(s), median of {args.epochs} epochs\n")
    table(exp, source, list(range(0, len(list_backbones()["smallcnn"]) + 1)), "all", args.epochs)

    if not args.skip_resnet:
        exp = load_experiment("experiments/quickstart.yaml", overrides=[
            "backbone=resnet18", "training.image_size=64", "dataset.classes=null", "training.batch_size=64",
        ])
        source = build("resnet18", num_classes=10, in_channels=1, seed=0).state_dict()
        depth = len(list_backbones()["resnet18"])
        print(f"\nresnet18 (random source weights), digits, 50 images per label, image_size 64, "
              f"{args.threads} thread(s), median of {args.epochs} epochs\n")
        table(exp, source, [depth], 50, args.epochs)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
