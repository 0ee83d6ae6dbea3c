"""The Pareto front of a multi-objective search: trials no other trial beats on every objective."""

from __future__ import annotations

import pandas as pd

from tunetl.config import OBJECTIVE_COLUMN, OBJECTIVES


def parse_objectives(text: str) -> list[str]:
    """`val_acc,train_seconds` -> the objective names; ValueError names an unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or len(names) < 2:
        raise ValueError(f"--pareto {text!r}: give two or more of {', '.join(OBJECTIVES)} separated by commas")
    return names


def pareto_front(frame: pd.DataFrame, objectives: list[str]) -> pd.DataFrame:
    """The finished trials on the front, sorted by the first objective (best first)."""
    cols = [OBJECTIVE_COLUMN[n] for n in objectives]
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"no {', '.join(missing)} in the runs: the search did not record it "
                         "(set searcher.objectives to record it per epoch)")
    done = frame[(frame["status"] == "FINISHED")].dropna(subset=cols)
    # Every objective as "larger is better".
    signed = pd.DataFrame({c: done[c] if OBJECTIVES[n] == "max" else -done[c]
                           for n, c in zip(objectives, cols, strict=True)})
    values = signed.to_numpy()
    keep = []
    for i in range(len(values)):
        dominated = ((values >= values[i]).all(axis=1) & (values > values[i]).any(axis=1)).any()
        keep.append(not dominated)
    front = done[keep]
    first = cols[0]
    return front.sort_values(first, ascending=OBJECTIVES[objectives[0]] == "min", kind="stable")
