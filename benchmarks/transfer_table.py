"""Accuracy of scratch, FTall and SnT per images-per-label, with tunetl's trial runner (no Ray/MLflow).

    .venv/bin/python benchmarks/transfer_table.py [--experiment experiments/quickstart.yaml]
        [--sizes 5 50] [--seeds 0 1 2] [--set training.epochs=30 ...]

Prints a Markdown table of mean validation accuracy (%) over seeds; used to calibrate the quickstart
and quoted in the closing notes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tunetl.config import load_experiment
from tunetl.models import list_backbones
from tunetl.source import default_cache_dir, source_state_for
from tunetl.standalone import train_trial


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", default="experiments/quickstart.yaml")
    ap.add_argument("--sizes", nargs="+", default=["5", "50"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    exp = load_experiment(args.experiment, overrides=args.overrides)
    depth = len(list_backbones()[exp.backbone])
    source = source_state_for(exp, default_cache_dir())  # the cache `tunetl run` fills
    conditions = {"scratch": {"transfer_depth": 0}, "FTall": {"frozen_depth": 0}}
    conditions.update({f"S{n}T": {"transfer_depth": n, "frozen_depth": n} for n in range(1, depth)})
    t0 = time.perf_counter()
    print(f"{exp.dataset.builtin or exp.dataset.path} {exp.dataset.classes}, {exp.backbone}, "
          f"epochs {exp.training.epochs}, batch {exp.training.batch_size}, lr {exp.training.base_lr}, "
          f"seeds {args.seeds}")
    print("| images/label | " + " | ".join(conditions) + " |")
    print("|---" * (len(conditions) + 1) + "|")
    for size in args.sizes:
        ipl = size if size == "all" else int(size)
        row = []
        for params in conditions.values():
            accs = [train_trial({**params, "images_per_label": ipl}, exp, seed=s, source_state=source)[-1].val_acc
                    for s in args.seeds]
            row.append(f"{100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f}")
        print(f"| {size} | " + " | ".join(row) + " |", flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
