"""Headline evaluation of the meta-model (docs/evaluation.md): leave one task out over a recorded grid.

    .venv/bin/tunetl run experiments/meta_digits.yaml            # records the grid (~2-3 min)
    .venv/bin/python benchmarks/meta_eval.py --experiment meta_digits [--tracking-uri URI]

Prints a Markdown table per held-out task and the summary next to Dube et al.'s numbers.
"""

from __future__ import annotations

import argparse

from tunetl import api
from tunetl.meta.evaluate import one_shot_evaluation


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", action="append", required=True)
    ap.add_argument("--tracking-uri")
    ap.add_argument("--kind", default="forest", choices=["forest", "knn", "ridge"])
    ap.add_argument("--hold-out", choices=["pair", "task"], default="pair",
                    help="pair: also drop the held-out task's dataset/source pair at other sizes from training")
    args = ap.parse_args()
    table, s = one_shot_evaluation(api.trials(args.experiment, args.tracking_uri), kind=args.kind,
                                   hold_out_pair=args.hold_out == "pair")
    print("| held-out task | (a) default | (b) best fixed | (c) predicted | (d) oracle | predicted config |")
    print("|---|---|---|---|---|---|")
    for r in table.itertuples(index=False):
        cfg = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.predicted_config.items())
        print(f"| {r.task} | {r.default:.1f} | {r.best_fixed:.1f} | {r.predicted:.1f} | {r.oracle:.1f} | {cfg} |")
    print(f"| **mean over {int(s['n_tasks'])} tasks** | {s['default']:.1f} | {s['best_fixed']:.1f} | "
          f"{s['predicted']:.1f} | {s['oracle']:.1f} | |")
    print(f"\nshare of the oracle's gain over the default: best fixed {100 * s['share_best_fixed']:.0f}%, "
          f"one-shot prediction {100 * s['share_predicted']:.0f}% (Dube et al.: one fixed scale 16%)")


if __name__ == "__main__":
    main()
