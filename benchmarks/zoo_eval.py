"""Which backbone, and how deep to freeze it: a zoo search's result per backbone, and how well zero-shot
scores ranked the backbones before any training (docs/evaluation.md, issue 13).

    tunetl run experiments/zoo_mnist.yaml --set searcher.prune_backbones=null       # every backbone trained
    tunetl rank --dataset builtin:mnist5k --backbones efficientnet_lite0 efficientnet_lite1 \\
        efficientnet_lite2 --image-size 96 --images-per-label 20 --json --no-record > rank.json
    python benchmarks/zoo_eval.py --experiment zoo_mnist --rank zoo_mnist=rank.json [--out FILE.md]

More experiments (e.g. the same search from random weights, `source.weights_file`) add candidates,
named `BACKBONE [EXPERIMENT]`, each with its own `--rank EXPERIMENT=FILE`.

Prints, in Markdown: per images-per-label group and candidate the best fine-tuned validation accuracy
(a trial's best epoch, as `tunetl best` scores it) with its configuration, the best per frozen fraction,
and Kendall's tau between each zero-shot score and that accuracy over the candidates.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from scipy.stats import kendalltau

from tunetl import api
from tunetl.meta.analysis import finished_trials, ipl_label, ipl_sort_key

METRIC = "best_val_acc"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def candidate(backbone: str, experiment: str, first: str) -> str:
    return backbone if experiment == first else f"{backbone} [{experiment}]"


def load(experiments: list[str], tracking_uri: str | None) -> pd.DataFrame:
    """Every experiment's trials, the backbone column naming the candidate."""
    frames = []
    for name in experiments:
        frame = api.trials(name, tracking_uri)
        frame["backbone"] = [candidate(b, name, experiments[0]) for b in frame["backbone"]]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def best_per_backbone(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (images per label, candidate): the best trial's accuracy (%), its configuration, and the
    best accuracy at each frozen fraction."""
    df = finished_trials(frame, METRIC)
    fractions = sorted(df["frozen_fraction"].dropna().unique()) if "frozen_fraction" in df.columns else []
    rows = []
    for (ipl, backbone), group in df.groupby(["images_per_label", "backbone"], sort=False):
        top = group.loc[group[METRIC].idxmax()]
        row: dict[str, Any] = {"images/label": ipl_label(ipl), "backbone": backbone,
                               "best val acc %": 100 * float(top[METRIC]),
                               "its frozen fraction": top.get("frozen_fraction"), "its inner_lr": top.get("inner_lr"),
                               "trials": len(group), "stopped early": int(group["stopped_early"].fillna(False).sum())
                               if "stopped_early" in group else 0}
        for f in fractions:
            at = group[group["frozen_fraction"] == f][METRIC]
            row[f"best @ frozen {f:g}"] = 100 * float(at.max()) if len(at) else float("nan")
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(["images/label", "best val acc %"], key=lambda s: s.map(ipl_sort_key)
                           if s.name == "images/label" else -s, ignore_index=True)


def rank_scores(specs: list[str], first: str) -> pd.DataFrame:
    """The scores `tunetl rank --json` wrote (`EXPERIMENT=FILE` each), one row per candidate."""
    tables = []
    for spec in specs:
        experiment, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--rank {spec!r}: write it as EXPERIMENT=FILE")
        data = json.loads(Path(path).read_text())
        table = pd.DataFrame(data["ranking"] if isinstance(data, dict) else data)
        if "backbone" not in table.columns:
            raise SystemExit(f"{path}: no 'backbone' column in the ranking; write it with `tunetl rank ... --json`")
        table["backbone"] = [candidate(b, experiment, first) for b in table["backbone"]]
        tables.append(table)
    return pd.concat(tables, ignore_index=True).set_index("backbone")


def taus(best: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Kendall's tau (tie-corrected) between each score and the fine-tuned accuracy, per group, over the
    candidates that have that score (a weights file without its classifier has no LEEP/NCE)."""
    names = [c for c in ("logme", "hscore", "leep", "nce") if c in scores.columns]
    numeric = scores[names].apply(pd.to_numeric, errors="coerce")
    rows = []
    for ipl, group in best.groupby("images/label", sort=False):
        acc = group.set_index("backbone")["best val acc %"]
        row: dict[str, Any] = {"images/label": ipl}
        for name in names:
            have = [b for b in acc.index if b in numeric.index and math.isfinite(numeric.loc[b, name])]
            tau = float(kendalltau(numeric.loc[have, name], acc.loc[have]).statistic) if len(have) > 1 else math.nan
            row[f"tau {name}"] = f"{tau:.2f} over {len(have)}" if math.isfinite(tau) else f"- ({len(have)})"
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", action="append", required=True, help="repeatable: each adds candidates")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--rank", action="append", default=[],
                    help="EXPERIMENT=FILE: the JSON `tunetl rank --json` printed for that experiment's backbones")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args(argv)
    best = best_per_backbone(load(args.experiment, args.tracking_uri))
    parts = [f"Best fine-tuned validation accuracy per candidate ({', '.join(args.experiment)}):", "",
             _markdown(best)]
    if args.rank:
        scores = rank_scores(args.rank, args.experiment[0])
        shown = scores[[c for c in ("logme", "hscore", "leep", "nce", "seconds") if c in scores.columns]]
        parts += ["", "Zero-shot scores (`tunetl rank`):", "", _markdown(shown.reset_index()),
                  "", "Kendall's tau between each score and the best fine-tuned accuracy:", "",
                  _markdown(taus(best, scores))]
    text = "\n".join(parts) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
