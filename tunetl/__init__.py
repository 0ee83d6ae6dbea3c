"""tunetl: search how to fine-tune a pretrained image classifier on a small dataset.

Importing the package is cheap; the heavy layers load on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def train_trial(*args: Any, **kwargs: Any) -> Any:
    """One trial without Ray or MLflow; see `tunetl.standalone.train_trial`."""
    from tunetl.standalone import train_trial as _train_trial

    return _train_trial(*args, **kwargs)


def load_experiment(*args: Any, **kwargs: Any) -> Any:
    """Read and validate an experiment YAML; see `tunetl.config.load_experiment`."""
    from tunetl.config import load_experiment as _load

    return _load(*args, **kwargs)
