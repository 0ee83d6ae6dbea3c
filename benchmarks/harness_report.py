"""The benchmark harness's writer: from each section's measurements, its tables, notes and targets.

`harness.py` measures (`measure_<section>` returns numbers and measurement facts only); `describe_<section>`
here turns those into the presentation keys of the results file (`rows`, `note` or `setup.note`,
`targets`), and `render` turns a results file into Markdown. Keeping the prose here lets a figure's wording
change without touching the code that times it. Run as a script, it re-renders the Markdown next to a results
file (from the rows, notes and targets stored in it), without measuring:

    .venv/bin/python benchmarks/harness_report.py benchmarks/results/harness.json   # rewrites harness.md
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: Every section, in the order the report shows them (and `--only` lists them).
SECTIONS = ("plain", "overhead", "cache", "asha", "nodes", "gpu", "vs_tune", "anytime", "scale")
#: Key of a measured dict for values only the writer needs (a constant of the measurement, a plot's path):
#: `describe` reads them and leaves them out, so the results file keeps the keys it always had.
FACTS = "facts"

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


def target(
    name: str, goal: str, value: float | None, met: bool | None, shown: str, reason: str = ""
) -> dict[str, Any]:
    """One row of the targets table; `reason` is kept only for missed (or unmeasured) targets."""
    return {"name": name, "goal": goal, "value": value, "shown": shown, "met": met,
            "reason": "" if met else reason}


# --------------------------------------------------------------------------------------------------
# plain


def describe_plain(measured: dict[str, Any]) -> dict[str, Any]:
    """The plain loop, the TrialRunner and the Tune trial, from the spreads' medians."""
    return {"rows": plain_rows(measured), "note": plain_note(measured["setup"]),
            "targets": plain_targets(measured)}


def plain_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per loop: the plain loop, the TrialRunner, and the Tune trial three ways."""
    tune = m["tune_trial"]
    plain_med, epoch_s = m["plain_epoch_s"]["median"], tune["epoch_seconds"]["median"]
    return [
        {"loop": "plain PyTorch loop (harness)", "epoch ms": 1e3 * plain_med, "vs plain": 1.0},
        {"loop": "tunetl TrialRunner (interleaved with the plain loop)",
         "epoch ms": 1e3 * m["trialrunner_epoch_s"]["median"], "vs plain": m["ratio_trialrunner_vs_plain"]["median"]},
        {"loop": "tunetl trial in Ray Tune: epoch_seconds", "epoch ms": 1e3 * epoch_s,
         "vs plain": epoch_s / tune["plain_bracket_s"]["median"]},
        {"loop": "tunetl trial in Ray Tune: time between reports", "epoch ms": 1e3 * tune["time_this_iter_s"]["median"],
         "vs plain": tune["ratio_iter_vs_plain_bracket"]},
        {"loop": "tunetl trial in Ray Tune: composed estimate", "epoch ms": None, "vs plain": tune["ratio_composed"]},
    ]


def plain_note(setup: dict[str, Any]) -> str:
    return (
        f"Per epoch: {setup['train_images']} training images (batch {setup['batch_size']}, SGD) and a "
        f"pass over {setup['val_images']} validation images, smallcnn on digits 5-9, torch threads "
        f"{setup['torch_threads']}. TrialRunner and the plain loop alternate epoch by epoch (ABBA) in this process. "
        "The Tune trial (resources.cpu=1) runs one search per repeat; 'time between reports' is Tune's "
        "time_this_iter_s (the epoch plus tune.report; MLflow is written on the driver), compared with plain-loop epochs timed "
        "just before and after that search ('vs plain' of the Tune rows). Epoch 1 (trial start-up) is left out. "
        "The composed estimate = (TrialRunner vs plain) x (time between reports / epoch_seconds inside the trial): "
        "both factors are measured side by side, so it is less exposed to load from other processes than the "
        "bracketed ratio."
    )


def plain_targets(m: dict[str, Any]) -> list[dict[str, Any]]:
    """A miss names the cost behind it: the slower epoch, or the per-epoch logging next to a short epoch."""
    tune = m["tune_trial"]
    ratio, plain_med = m["ratio_trialrunner_vs_plain"]["median"], m["plain_epoch_s"]["median"]
    composed, raw_ratio = tune["ratio_composed"], tune["ratio_iter_vs_plain_bracket"]
    report_share = composed / ratio
    return [
        target("plain.trialrunner", "TrialRunner epoch <= 1.05 x plain loop", ratio, ratio <= 1.05,
               f"{ratio:.3f} x", f"TrialRunner's epoch is {100 * (ratio - 1):.0f}% slower than the plain loop "
               f"on {plain_med * 1e3:.0f} ms epochs"),
        target("plain.tune_trial", "Tune trial epoch (incl. its records) <= 1.05 x plain loop (composed)",
               composed, composed <= 1.05, f"{composed:.3f} x (bracketed: {raw_ratio:.2f} x)",
               f"TrialRunner's own epoch is {100 * (ratio - 1):.1f}% slower than the plain loop; the report "
               f"(records are written on the driver) adds {100 * (report_share - 1):.1f}%"),
    ]


# --------------------------------------------------------------------------------------------------
# overhead


OVERHEAD_NOTE = ("Ray runs one trial at a time (num_cpus=1) so wall time and summed training time compare "
                 "directly. Wall = the tunetl.api.run call with Ray already started and the source model already "
                 "cached, after one untimed 1-trial search (creates the MLflow tables, warms workers). Training = "
                 "sum of every epoch's epoch_seconds from Tune's results; per trial s = (wall - training) / trials.")


def describe_overhead(measured: dict[str, Any]) -> dict[str, Any]:
    """`sizes` holds the quickstart search first, then the same small search with longer and longer trials."""
    sizes = measured["sizes"]
    rows = [{"search": label, "trials": s["trials"], "epochs run": s["epochs"],
             "wall s": s["wall_s"]["median"], "training s": s["train_s"]["median"],
             "overhead": f"{100 * s['overhead']['median']:.0f}%",
             "per trial s": s["per_trial_overhead_s"]["median"]} for label, s in sizes.items()]
    return {"setup": {**measured["setup"], "note": OVERHEAD_NOTE}, "rows": rows,
            "targets": overhead_targets(sizes)}


def overhead_targets(sizes: dict[str, Any]) -> list[dict[str, Any]]:
    """The quickstart's overhead, and whether it falls along the growing searches (labels after the first)."""
    quick_label, *growing = sizes
    quickstart = sizes[quick_label]
    qs = quickstart["overhead"]["median"]
    overheads = [sizes[label]["overhead"]["median"] for label in growing]
    falling = all(b <= a for a, b in zip(overheads, overheads[1:], strict=False))
    per_trial = quickstart["per_trial_overhead_s"]["median"]
    train_per_trial = quickstart["train_s"]["median"] / quickstart["trials"]
    return [
        target("overhead.quickstart", "quickstart search wall time < 1.25 x its training time", qs, qs < 0.25,
               f"+{100 * qs:.0f}%",
               f"digits trials train for only ~{train_per_trial:.1f} s each, while each trial costs "
               f"~{per_trial:.1f} s beyond training (Tune scheduling, trial start, checkpoints, the driver's "
               "MLflow writes on the CPU the trial trains on)"),
        target("overhead.falling", "overhead falls as trials grow (the same 5 trials, more epochs each)",
               None, falling,
               " -> ".join(f"{100 * o:.0f}%" for o in overheads),
               "overhead did not fall monotonically over the sizes (noisy machine?)"),
    ]


# --------------------------------------------------------------------------------------------------
# cache


CACHE_NOTE = ("Columns: per-epoch time in each `training.feature_cache` mode; set-up = TrialRunner construction "
              "(preprocessing, and the prefix pass where cached); node build = the first trial on a fresh node cache "
              "(computes and writes the entry), node hit = a second trial that reads it; trial x = (set-up + "
              "trial_epochs x epoch) without the cache / with it; 'node, N share' spreads one build over N "
              "trials. Epoch times are medians over repeats of each repeat's median epoch. Source weights are "
              "random-init (timing depends on shapes only); resnet18 runs on digits upsampled to the given size, "
              "3 channels. Without the cache every epoch runs the frozen prefix on the training and validation "
              "images; preprocessing is done once in every mode.")


def describe_cache(measured: dict[str, Any]) -> dict[str, Any]:
    """Facts: `shared_trials`, how many trials share one node-cache entry in the headline figure."""
    shared = measured[FACTS]["shared_trials"]
    return {"rows": [cache_row(row, shared) for row in measured["results"]], "note": CACHE_NOTE,
            "targets": cache_targets(measured["results"], shared)}


def cache_row(row: dict[str, Any], shared: int) -> dict[str, Any]:
    med = {k: v["median"] for k, v in row["stats"].items()}
    return {
        "backbone": f"{row['backbone']} @{row['image_size']}px", "frozen": row["frozen_depth"],
        "off epoch ms": 1e3 * med["off_epoch"], "trial epoch ms": 1e3 * med["trial_epoch"],
        "node epoch ms": 1e3 * med["node_epoch"], "off setup s": med["off_setup"],
        "trial setup s": med["trial_setup"], "node build s": med["node_build"], "node hit s": med["node_hit"],
        "epoch x": row["epoch_speedup"], "trial x: trial": row["trial_speedup_trial_cache"],
        "trial x: node 1st": row["trial_speedup_node_first"], "trial x: node hit": row["trial_speedup_node_hit"],
        f"trial x: node, {shared} share": row["trial_speedup_node_shared"],
    }


def cache_targets(results: list[dict[str, Any]], shared: int) -> list[dict[str, Any]]:
    """The headline: the deepest frozen depth of the non-smallcnn backbone (none when only smallcnn ran)."""
    deep = [r for r in results if r["backbone"] != "smallcnn"]
    if not deep:
        return []
    d = max(deep, key=lambda r: r["frozen_depth"])
    sp = d["trial_speedup_node_shared"]
    build_s = d["stats"]["node_build"]["median"]
    return [target(
        "cache.deepest",
        f"{d['backbone']} trial at the deepest frozen depth ({d['frozen_depth']}) >= 5x faster with the node "
        f"cache than without ({shared} trials sharing one entry, the first of them building it)",
        sp, sp >= 5,
        f"{sp:.1f} x (first trial on a node {d['trial_speedup_node_first']:.1f} x, later ones "
        f"{d['trial_speedup_node_hit']:.0f} x; per-trial cache {d['trial_speedup_trial_cache']:.0f} x)",
        f"the first trial on a node computes the prefix for the whole split ({d['split_images']} training + "
        f"{d['val_images']} validation images, {build_s:.1f} s) so that every subset and seed can share it, "
        f"while each trial trains on only {d['train_images']} images")]


# --------------------------------------------------------------------------------------------------
# asha


ASHA_NOTE = ("best = the best configuration's mean best_val_acc over seeds per images_per_label group (api.rank); "
             "epochs = sum of each trial's epochs run. Run once: accuracies are deterministic per trial, ASHA's "
             "cuts depend on trial arrival order.")


def describe_asha(measured: dict[str, Any]) -> dict[str, Any]:
    """`runs` holds the full grid first, then the ASHA variant measured against it, then any others;
    facts: the `scheduler` of that ASHA variant (grace_period, reduction_factor, epochs)."""
    return {"setup": {**measured["setup"], "note": ASHA_NOTE}, "rows": asha_rows(measured["runs"]),
            "targets": [asha_target(measured["runs"], measured[FACTS]["scheduler"])]}


def asha_rows(runs: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for label, run in runs.items():
        row = {"search": label, "trials": run["trials"], "stopped early": run["stopped"], "epochs": run["epochs"],
               "epochs vs grid": f"{100 * run['epoch_ratio']:.0f}%", "wall s": run["wall_s"]}
        for g, best in run["best"].items():
            row[f"best @{g}/label"] = f"{best['accuracy']:.1f} ({best['condition']})"
        rows.append(row)
    return rows


def asha_target(runs: dict[str, Any], sched: dict[str, Any]) -> dict[str, Any]:
    """A miss says why: the grace period's floor on epochs, the accuracy gap, what the other variants cost."""
    _, shipped_label, *others = runs
    shipped = runs[shipped_label]
    worst_gap = max(shipped["gap_points"].values())
    ok_acc, ok_epochs = worst_gap <= 1.0, shipped["epoch_ratio"] <= 0.40
    reasons = []
    if not ok_epochs:
        grace, epochs = sched["grace_period"], sched["epochs"]
        floor = min(grace, epochs) / epochs
        reasons.append(f"the scheduler (grace_period {grace} of {epochs} epochs, reduction "
                       f"{sched['reduction_factor']:g}) runs every trial for at least {100 * floor:.0f}% of its "
                       f"epochs, so ASHA cannot spend much less ({100 * shipped['epoch_ratio']:.0f}% here); the "
                       "quickstart's former grace period was long because at 5 images per label an epoch is one "
                       "SGD step")
    if not ok_acc:
        reasons.append(f"ASHA's best is {worst_gap:.1f} points below the grid's in one images-per-label group")
    for label in others:
        other = runs[label]
        reasons.append(f"{label} spends {100 * other['epoch_ratio']:.0f}% of the epochs but its best is up to "
                       f"{max(other['gap_points'].values()):.1f} points below the grid's")
    return target("asha.shipped", "ASHA best within 1 point of the grid for <= 40% of its epochs",
                  shipped["epoch_ratio"], ok_acc and ok_epochs,
                  f"{100 * shipped['epoch_ratio']:.0f}% of epochs, worst gap {worst_gap:.1f} pt", "; ".join(reasons))


# --------------------------------------------------------------------------------------------------
# nodes


NODES_NOTE = ("Every layout is a ray.cluster_utils.Cluster on this machine (one process set per node); cluster "
              "start-up is not timed. On a 2-core machine '2 nodes x 1 CPU' uses both cores, so compare it with "
              "'1 node x 2 CPUs' (same cores, one node) to see the cost of a second node; the Tune driver and "
              "MLflow writes share those cores. Worker start = time to the first report of each Tune worker "
              "process (start-up, imports, data, one epoch), paid once per worker and, with 2 slots, twice at once.")


def describe_nodes(measured: dict[str, Any]) -> dict[str, Any]:
    """`layouts` holds 1 node x 1 CPU first: the other layouts are compared with it."""
    layouts = measured["layouts"]
    one = next(iter(layouts.values()))["trials_per_hour"]["median"]
    rows = [{"cluster": label, "nodes used": s["nodes_used"], "trials/hour": s["trials_per_hour"]["median"],
             "min": s["trials_per_hour"]["min"], "max": s["trials_per_hour"]["max"],
             "wall s": s["wall_s"]["median"], "worker start s": s["worker_start_s"]["median"],
             "vs 1 node x 1 CPU": s["trials_per_hour"]["median"] / one}
            for label, s in layouts.items()]
    return {"setup": {**measured["setup"], "note": NODES_NOTE}, "rows": rows, "targets": []}


# --------------------------------------------------------------------------------------------------
# gpu


GPU_NOTE = ("images/s = training images per epoch / epoch_seconds (the epoch includes one validation pass); "
            "epoch 1 left out; all k trials run at once on the GPU")


def describe_gpu(measured: dict[str, Any]) -> dict[str, Any]:
    """Nothing to add to a skipped section (no GPU): its status and reason say it all."""
    if "shares" not in measured:
        return {}
    rows = []
    for k, share in measured["shares"].items():
        s, trials = share["images_per_s_per_trial"], int(k)
        rows.append({"trials per GPU": trials, "resources.gpu": 1 / trials, "images/s per trial": s["median"],
                     "min": s["min"], "max": s["max"], "images/s all trials": trials * s["median"]})
    base = rows[0]["images/s all trials"]
    for row in rows:
        row["aggregate vs 1"] = row["images/s all trials"] / base
    return {"setup": {**measured["setup"], "note": GPU_NOTE}, "rows": rows, "targets": []}


# --------------------------------------------------------------------------------------------------
# anytime


def describe_anytime(measured: dict[str, Any]) -> dict[str, Any]:
    """Facts: `quick`, `epochs` per trial, the samplers' `sampler` override, how many searches were
    `reused` from an earlier run, and where to draw the `plot`."""
    raw, facts = measured["raw"], measured[FACTS]
    result = summarize_anytime(raw)
    png = plot_anytime(raw, Path(facts["plot"]))
    searched = sum(r["wall_s"] for runs in raw.values() for r in runs)
    reused = facts["reused"]
    result["setup"] = {"note": f"MNIST-5k digits 5-9, smallcnn from digits 0-4, frozen-prefix cache; "
                       f"{'quick space' if facts['quick'] else '72 configurations'} per images-per-label group, "
                       f"{facts['epochs']} epochs; samplers draw {facts['sampler']}; "
                       "epochs counted in the order Tune received them (2 trials at a time). Grid configurations "
                       "within 1 / 2 points of the grid's best (what a sampler must hit): " + "; ".join(
                           f"@{g}: {n['1 pt']} / {n['2 pt']} of {n['of']}" for g, n in result["needles"].items())
                       + ". The searches took "
                       f"{searched:.0f} s" + (f" ({reused} kept from an earlier run in the same --workdir)"
                                              if reused else "") + ". Plot: " + png.name}
    return result


def epochs_to_reach(curve: list[tuple[int, float]], level: float) -> int | None:
    return next((k for k, acc in curve if acc >= level), None)


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
    return {"rows": rows, "targets": targets, "needles": anytime_needles(raw)}


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
# vs_tune


def vs_tune_why(med: dict[str, Any]) -> str:
    """What tunetl's search pays beyond the plain script's, in the measured numbers."""
    slower = med["tunetl"]["train"]["median"] / med["plain"]["train"]["median"] - 1
    return (f"the same epochs take {100 * slower:.0f}% longer inside tunetl's trials: the driver writes every "
            "trial's MLflow run (SQLite) on the same CPUs the trials train on; and a tunetl search also "
            "checkpoints, tests and logs the winner's model")


def describe_vs_tune(measured: dict[str, Any]) -> dict[str, Any]:
    """`medians` per kind of search (the plain script's among them); facts: `cpus`, Ray's CPUs."""
    med = measured["medians"]
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
    targets = [
        target("vs_tune.wall", "quickstart wall time <= 1.15 x a plain Ray Tune script without MLflow", ratio,
               ratio <= 1.15, f"{ratio:.2f}x", vs_tune_why(med)),
        target("vs_tune.per_trial", "cost per trial beyond training <= plain script's + 0.15 s", extra,
               extra <= 0.15, f"+{extra:.2f} s", vs_tune_why(med)),
    ]
    note = (f"The quickstart's 30 trials (15 epochs, 1 CPU each, {measured[FACTS]['cpus']} at a time, actors "
            "reused) four ways, interleaved, Ray started and the source model cached before; the same "
            "`TrialRunner` trains in all four. tunetl's wall includes its end of search (test accuracy of the "
            "winners, the winner's model logged). CPU = machine-wide busy CPU seconds (/proc/stat) during each "
            "search: other load on the machine is counted too (see load). Per trial beyond training = (CPUs x "
            "wall - summed epoch seconds) / trials.")
    return {"setup": {"note": note}, "rows": rows, "targets": targets}


# --------------------------------------------------------------------------------------------------
# scale


def describe_scale(measured: dict[str, Any]) -> dict[str, Any]:
    """`raw` holds one row per store size, ascending; facts: `epochs` of metrics per run and the least-squares
    `growth_per_1000` runs of `sqlite_s` and `server_s`."""
    rows, facts = measured["raw"], measured[FACTS]
    top = rows[-1]
    targets = []
    for key, where in (("sqlite_s", "SQLite"), ("server_s", "mlflow server")):
        slope = facts["growth_per_1000"][key]
        targets.append(target(f"scale.best_{key[:-2]}", f"`tunetl best` on {top['runs']:,} runs ({where}) < 5 s "
                              "including start-up", top[key], top[key] < 5, f"{top[key]:.2f} s",
                              f"{top[key]:.2f} s: MLflow's search_runs returns every run's params, tags and "
                              "metrics; see the growth row"))
        targets.append(target(f"scale.growth_{key[:-2]}", f"growth per 1,000 runs ({where}) < 0.2 s", slope,
                              slope < 0.2, f"{slope:.3f} s", f"{slope:.3f} s per 1,000 runs"))
    shown = [{"runs": r["runs"], "tunetl best, SQLite (s)": f"{r['sqlite_s']:.2f}",
              "tunetl best, mlflow server (s)": f"{r['server_s']:.2f}"} for r in rows]
    note = (f"One store grown through {', '.join(str(r['runs']) for r in rows)} child runs ({facts['epochs']} "
            "epochs of metrics each, as a trial records them); `tunetl best --experiment scale` in a fresh process "
            "(start-up included), median of the repeats; the server is a real `mlflow server --workers 1` over the "
            "same SQLite file, warmed by one untimed query.")
    return {"setup": {"note": note}, "rows": shown, "targets": targets}


# --------------------------------------------------------------------------------------------------
# Dispatch and Markdown


DESCRIBERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "plain": describe_plain,
    "overhead": describe_overhead,
    "cache": describe_cache,
    "asha": describe_asha,
    "nodes": describe_nodes,
    "gpu": describe_gpu,
    "anytime": describe_anytime,
    "vs_tune": describe_vs_tune,
    "scale": describe_scale,
}


def describe(name: str, measured: dict[str, Any]) -> dict[str, Any]:
    """A section's results entry: its measurements (less the writer-only facts) and its presentation."""
    kept = {k: v for k, v in measured.items() if k != FACTS}
    return {**kept, **DESCRIBERS[name](measured)}


def machine_line(m: dict[str, Any]) -> str:
    gpu = f", GPU {', '.join(m['gpu'])} (CUDA {m['cuda']})" if m.get("gpu") else ", no GPU"
    return (f"{m['cpu']}, {m['usable_cores']}/{m['cores']} cores, {m['ram_gb']} GB RAM{gpu}; "
            f"Python {m['python']}, torch {m['torch']}, ray {m['ray']}, mlflow {m['mlflow']}")


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
        out += render_section(name, sec, machine_line(results["machine"]))
        targets += [{**t, "section": name} for t in sec.get("targets", [])]
    out += ["## Targets", "", "| target | goal | measured | met | why missed |", "|---|---|---|---|---|"]
    out += [f"| {t['name']} | {t['goal']} | {t['shown']} | {fmt(t['met'])} | {t['reason']} |" for t in targets]
    return "\n".join(out) + "\n"


def render_section(name: str, sec: dict[str, Any], run_machine: str) -> list[str]:
    """A section's heading, where it was measured (when not on the run's machine), status, table and note."""
    out = [f"## {name}: {TITLES[name]}", ""]
    if sec.get("machine_line") and sec["machine_line"] != run_machine:
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
    return out


def main(argv: list[str]) -> int:
    """Re-render the Markdown next to each results JSON given (e.g. after a change of wording here)."""
    for arg in argv:
        path = Path(arg)
        path.with_suffix(".md").write_text(render(json.loads(path.read_text())))
        print(f"wrote {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
