"""The `tunetl run` command line the fault tests start as a real process: a tiny quickstart search over
images-per-label sizes (one trial each), no early stopping, one seed."""

from __future__ import annotations

import sys
from pathlib import Path

QUICK = str(Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml")


def run_argv(uri: str, storage: Path, *, name: str, sizes: list[int], epochs: int, num_cpus: int,
             sets: tuple[str, ...] = ()) -> list[str]:
    space = f"search_space={{transfer_depth: 0, images_per_label: {{grid: {sizes}}}}}"
    argv = [sys.executable, "-m", "tunetl.cli", "run", QUICK, "--name", name, "--tracking-uri", uri,
            "--storage", str(storage), "--num-cpus", str(num_cpus)]
    for item in (f"training.epochs={epochs}", "scheduler.type=none", "seeds=[0]", *sets, space):
        argv += ["--set", item]
    return argv
