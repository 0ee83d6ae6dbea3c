"""Fault injection for the reliability tests: make chosen trials slow or fail, for real, in Ray workers.

A trial cannot be monkeypatched from a test (it runs in another process), so the test sets
`TUNETL_FAULT` in the driver's environment, which Ray's local workers inherit. The value is a JSON
object or a list of them:

    [{"match": "ipl=5 ", "raise_from": 2, "once_dir": "/tmp/x"}, {"sleep_s": 0.5}]

- `match`: only trials whose label contains this text (default: every trial);
- `sleep_s`: sleep this long after every epoch (a slow trial, so that a test can act mid-search);
- `raise_from`: raise `InjectedFault` after any epoch from this one on has been reported (and
  checkpointed), so that without `once_dir` a retried trial fails again;
- `once_dir`: raise only once per trial (a marker file per trial id is kept there);
- `forbid_module`: raise if the trial's process has imported this module (e.g. `mlflow`, which only
  the driver may import).

Unset (the normal case), this module does nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ENV = "TUNETL_FAULT"


class InjectedFault(RuntimeError):
    """The error an injected fault raises, so that tests and logs can tell it from a real one."""


def _faults() -> list[dict[str, Any]]:
    spec = os.environ.get(ENV)
    if not spec:
        return []
    parsed = json.loads(spec)
    return parsed if isinstance(parsed, list) else [parsed]


def maybe_fail(trial_id: str, label: str, epoch: int) -> None:
    for fault in _faults():
        if str(fault.get("match", "")) not in label:
            continue
        forbidden = fault.get("forbid_module")
        if forbidden and forbidden in sys.modules:
            raise InjectedFault(f"trial {trial_id} ({label}) runs in a process that imported {forbidden}")
        if fault.get("sleep_s"):
            time.sleep(float(fault["sleep_s"]))
        if "raise_from" not in fault or epoch < int(fault["raise_from"]):
            continue
        once_dir = fault.get("once_dir")
        if once_dir:
            marker = Path(once_dir) / f"{trial_id}.failed"
            if marker.exists():
                continue
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(label)
        raise InjectedFault(f"injected fault ({ENV}) in trial {trial_id} ({label}) after epoch {epoch}")
