"""One part of a meta-model: standardised task features -> a scikit-learn estimator, or a constant.

A part follows scikit-learn's conventions (the constructor stores parameters, `fit` returns self,
learned state ends in `_`), so that it reads like the estimators it wraps and skops can store it as a
plain object (`tracking/registry.py` trusts this class by name).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunetl.meta.dataset import model_scale

KINDS = ("forest", "knn", "ridge")
DEFAULT_KIND = "forest"

_THREADS: list[Any] = []


def one_thread() -> Any:
    """Single-threaded BLAS/OpenMP: on a handful of rows, thread start-up costs 50x the work.
    The controller (which scans the loaded libraries) is made once per process."""
    if not _THREADS:
        from threadpoolctl import ThreadpoolController

        _THREADS.append(ThreadpoolController())
    return _THREADS[0].limit(limits=1)


def make_estimator(kind: str, classify: bool, n: int) -> Any:
    """The unfitted estimator of a kind (see `tunetl.meta.regressor` for why these settings)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    if kind == "knn":
        cls = KNeighborsClassifier if classify else KNeighborsRegressor
        return cls(n_neighbors=min(3, n), weights="distance", algorithm="brute")
    if kind == "ridge":
        return LogisticRegression(C=1.0) if classify else Ridge(alpha=1.0)
    forest = RandomForestClassifier if classify else RandomForestRegressor
    return forest(n_estimators=50, max_depth=3, min_samples_leaf=2, random_state=0)


def constant_answer(y: np.ndarray, classify: bool) -> float:
    """Majority class (ties -> smaller) or mean: the prediction of a part with nothing to learn, and the
    one-setting-fits-all baseline."""
    if not classify:
        return float(np.asarray(y, dtype="float64").mean())
    values, counts = np.unique(y, return_counts=True)
    return float(values[counts == counts.max()].min())


def feature_matrix(columns: Mapping[str, Any], names: Sequence[str], n: int) -> np.ndarray:
    """The `names` columns on the model scale, one row per case (n rows, no columns without names)."""
    if not names:
        return np.zeros((n, 0))
    return np.column_stack([model_scale(c, columns[c]) for c in names])


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and spreads of `x`; a constant column keeps spread 1, so it standardises to 0."""
    spread = x.std(axis=0)
    return x.mean(axis=0), np.where(spread > 0, spread, 1.0)


class Part:
    """A fitted target of a meta-model (see `tunetl.meta.dataset.PARTS` for which)."""

    def __init__(self, inputs: Sequence[str] = (), kind: str = DEFAULT_KIND, classify: bool = False) -> None:
        self.inputs = list(inputs)
        self.kind = kind
        self.classify = classify

    def fit(self, rows: pd.DataFrame, y: np.ndarray) -> Part:
        """Standardise the inputs on `rows`; fit the estimator, or keep the constant where `y` is constant
        or there are no inputs."""
        x = feature_matrix(rows, self.inputs, len(y))
        self.center_, self.scale_ = standardiser(x)
        self.n_samples_ = len(y)
        self.estimator_: Any = None
        self.constant_: float | None = None
        if np.unique(y).size == 1 or not self.inputs:
            self.constant_ = constant_answer(y, self.classify)
        else:
            with one_thread():
                self.estimator_ = make_estimator(self.kind, self.classify, len(y)).fit(
                    (x - self.center_) / self.scale_, y)
        return self

    @classmethod
    def from_record(cls, record: Mapping[str, Any], kind: str) -> Part:
        """A fitted part from the dict that meta-models registered before `Part` existed stored (keys
        inputs, center, scale, estimator, constant, n, classify), so that those models still predict."""
        part = cls(record["inputs"], kind, bool(record["classify"]))
        part.center_ = np.asarray(record["center"], dtype="float64")
        part.scale_ = np.asarray(record["scale"], dtype="float64")
        part.n_samples_ = int(record["n"])
        part.estimator_ = record["estimator"]
        part.constant_ = record["constant"]
        return part

    def _z(self, values: Mapping[str, float]) -> np.ndarray:
        x = np.array([[float(model_scale(c, values[c])) for c in self.inputs]])
        return (x - self.center_) / self.scale_

    def predict_one(self, values: Mapping[str, float]) -> float:
        """The part's answer for one task's inputs (model scale: log10 for rates, 0/1 for alpha == 0)."""
        if self.estimator_ is None:
            return float(self.constant_)  # type: ignore[arg-type]
        with one_thread():
            return float(np.asarray(self.estimator_.predict(self._z(values)))[0])

    def tree_range(self, values: Mapping[str, float]) -> tuple[float, float] | None:
        """10th..90th percentile of the forest's trees' predictions of a regression part (model scale):
        how much the trees disagree, not a calibrated interval. None for other estimators."""
        est = self.estimator_
        if est is None or self.classify or not hasattr(est, "estimators_"):
            return None
        z = self._z(values)
        with one_thread():
            preds = np.array([float(t.predict(z)[0]) for t in est.estimators_])
        return float(np.percentile(preds, 10)), float(np.percentile(preds, 90))

    def agreement(self, values: Mapping[str, float]) -> float:
        """Share of the votes (trees, neighbours) or probability behind a classifier's answer; 1.0 when
        the part is a constant."""
        if self.estimator_ is None:
            return 1.0
        with one_thread():
            return float(np.max(self.estimator_.predict_proba(self._z(values))))

    def input_weights(self) -> np.ndarray:
        """How much the part leans on each input, summing to 1: the forest's mean decrease in impurity,
        ridge's |coefficient| on the standardised inputs; NaN for knn and constants."""
        est = self.estimator_
        if est is not None and hasattr(est, "feature_importances_"):
            return np.asarray(est.feature_importances_, dtype="float64")
        if est is not None and hasattr(est, "coef_"):
            coef = np.abs(np.asarray(est.coef_, dtype="float64")).reshape(-1, len(self.inputs)).mean(axis=0)
            return coef / coef.sum() if coef.sum() > 0 else coef
        return np.full(len(self.inputs), np.nan)
