"""Headline evaluation of the meta-model (docs/evaluation.md): leave one task out over a recorded grid.

    tunetl run experiments/meta_mnist.yaml                                  # records the grid
    python benchmarks/meta_eval.py --experiment meta_mnist [--tracking-uri URI] [--out FILE.md]

Prints, in Markdown: per held-out task the accuracy of the default, the best fixed configuration, the
one-shot prediction and the oracle, with each one's share of the oracle's gain next to Dube et al.'s
16%; the error of each predicted quantity for the meta-model, a constant and the best fixed
configuration; the meta-model's leave-one-task-out errors and intervals; which features it uses
(and, with --drop-column, what removing each one costs).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from tunetl import api
from tunetl.meta.dataset import meta_dataset
from tunetl.meta.evaluate import one_shot_evaluation, quantity_errors
from tunetl.meta.loto import drop_column_errors
from tunetl.meta.parts import KINDS
from tunetl.meta.regressor import feature_importance, fit_meta_model

DUBE_SHARE = 0.16


def _cfg(config: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def _markdown(frame: pd.DataFrame, index: bool) -> str:
    """A frame as a Markdown table (pandas' to_markdown needs tabulate, not a dependency here)."""
    data = frame.reset_index() if index else frame

    def cell(v: object) -> str:
        return "-" if isinstance(v, float) and not math.isfinite(v) else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, data.columns)) + " |", "|" + "---|" * len(data.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in data.itertuples(index=False)]
    return "\n".join(lines)


def _share(value: float) -> str:
    return "n/a (no gain)" if not math.isfinite(value) else f"{100 * value:.0f}%"


def headline(frame: pd.DataFrame, kind: str = "forest", hold_out_pair: bool = True,
             compare_kinds: bool = True, drop_column: bool = False, features: list[str] | None = None) -> str:
    """The whole Markdown section, from the trials frame (`features`: the model's inputs, default all)."""
    table, s = one_shot_evaluation(frame, kind=kind, hold_out_pair=hold_out_pair, features=features)
    out = ["| held-out task | (a) default | (b) best fixed | (c) predicted | (d) oracle | predicted config | "
           "best fixed config |", "|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        out.append(f"| {r.task} | {r.default:.1f} | {r.best_fixed:.1f} | {r.predicted:.1f} | {r.oracle:.1f} | "
                   f"{_cfg(r.predicted_config)} | {_cfg(r.fixed_config)} |")
    out.append(f"| **mean over {int(s['n_tasks'])} tasks** | {s['default']:.1f} | {s['best_fixed']:.1f} | "
               f"{s['predicted']:.1f} | {s['oracle']:.1f} | | |")
    out += ["", "| share of the oracle's gain over the default | |", "|---|---|",
            f"| (b) best fixed configuration | {_share(s['share_best_fixed'])} |",
            f"| (c) one-shot prediction ({kind}) | {_share(s['share_predicted'])} |"]
    if compare_kinds:
        for other in KINDS:
            if other != kind:
                _, so = one_shot_evaluation(frame, kind=other, hold_out_pair=hold_out_pair, features=features)
                out.append(f"| (c) one-shot prediction ({other}) | {_share(so['share_predicted'])} |")
    out.append(f"| Dube et al. 2018, single best fixed scale (70 tasks) | {100 * DUBE_SHARE:.0f}% |")

    errors = quantity_errors(frame, kind=kind, hold_out_pair=hold_out_pair, features=features)
    floor = errors.attrs.get("alpha_floor", math.nan)
    out += ["", f"Error of each predicted quantity on the held-out tasks (IL = 0 counted as {floor:g} in the "
            "log10 errors; lower is better except accuracies):", "",
            "| quantity | error | cases | meta-model | constant | best fixed config | meta-model vs constant |",
            "|---|---|---|---|---|---|---|"]
    for r in errors.itertuples(index=False):
        if r.error == "accuracy":
            vs = f"{100 * (r.meta_model - r.constant):+.0f} points"
        else:
            vs = f"{100 * (r.meta_model / r.constant - 1):+.0f}%" if r.constant > 0 else "n/a"
        out.append(f"| {r.quantity} | {r.error} | {r.n} | {r.meta_model:.3f} | {r.constant:.3f} | "
                   f"{r.best_fixed:.3f} | {vs} |")

    meta = meta_dataset(frame)
    model = fit_meta_model(meta, features=features, kind=kind)
    importance = feature_importance(model)
    if len(importance.columns):
        out += ["", f"Feature importance of the {kind} meta-model fitted on all {model.n_tasks} tasks "
                "(columns sum to 1):", "", _markdown(importance, index=True)]
    if drop_column:
        drops = drop_column_errors(meta, features=features, kind=kind, hold_out="pair" if hold_out_pair else "task")
        out += ["", "Leave-one-task-out errors with one feature dropped (row `none`: all kept):", "",
                _markdown(drops, index=False)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiment", action="append", required=True)
    ap.add_argument("--tracking-uri")
    ap.add_argument("--kind", default="forest", choices=list(KINDS))
    ap.add_argument("--hold-out", choices=["pair", "task"], default="pair",
                    help="pair: also drop the held-out task's dataset/source pair at other sizes from training")
    ap.add_argument("--no-kinds", action="store_true", help="skip the knn/ridge comparison rows")
    ap.add_argument("--drop-column", action="store_true",
                    help="also the leave-one-task-out errors with each feature dropped (slower)")
    ap.add_argument("--feature", dest="features", action="append", metavar="feature.NAME",
                    help="an input of the meta-model (repeatable; default: every usable feature.*)")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args()
    text = headline(api.trials(args.experiment, args.tracking_uri), kind=args.kind,
                    hold_out_pair=args.hold_out == "pair", compare_kinds=not args.no_kinds,
                    drop_column=args.drop_column, features=args.features)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
