"""Transferability scores on synthetic data whose ordering is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from tunetl.features.transferability import (
    feature_similarity,
    label_features,
    leep,
    logme,
    logme_fit,
)

N, D, K, CS = 300, 16, 5, 7


@pytest.fixture()
def task() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, N)
    means = rng.normal(size=(K, D)) * 3.0
    return labels, means, rng.normal(size=(N, D))


def _direct_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, F F^T / alpha + I / beta): the evidence with w integrated out, no algebra."""
    n = f.shape[0]
    return float(multivariate_normal(np.zeros(n), f @ f.T / alpha + np.eye(n) / beta).logpdf(y))


@pytest.mark.parametrize("shape", [(60, 8), (20, 50)], ids=["N>D", "D>N"])
def test_logme_evidence_matches_gaussian_marginal_and_is_a_maximum(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=shape)
    f[:, 0] += np.arange(shape[0]) % 3
    labels = np.arange(shape[0]) % 3
    fit = logme_fit(f, labels)
    for k in range(3):
        y = (labels == k).astype(float)
        a, b = fit.alpha[k], fit.beta[k]
        assert fit.evidence[k] == pytest.approx(
            _direct_log_evidence(f, y, a, b), rel=1e-9, abs=1e-9
        )
        around = [_direct_log_evidence(f, y, a * s, b * t) for s in (0.5, 2.0) for t in (0.5, 2.0)]
        assert fit.evidence[k] >= max(around) - 1e-4
    assert logme(f, labels) == pytest.approx(fit.evidence.mean() / shape[0])


def test_logme_ranks_separable_over_noisy_over_random(task) -> None:
    labels, means, noise = task
    separable = logme(means[labels] + noise, labels)
    noisy = logme(0.3 * means[labels] + noise, labels)
    random = logme(noise, labels)
    assert separable > noisy > random


def test_logme_is_invariant_to_feature_scale_and_rotation(task) -> None:
    labels, means, noise = task
    feats = means[labels] + noise
    rotation, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(D, D)))
    base = logme(feats, labels)
    assert logme(10.0 * feats, labels) == pytest.approx(base, rel=1e-6)
    assert logme(feats @ rotation, labels) == pytest.approx(base, rel=1e-6)


def test_logme_handles_a_realistic_feature_matrix() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 1000)
    noise = rng.normal(size=(1000, 256))
    signal = np.eye(256)[labels] * 2.0
    assert np.isfinite(logme(noise, labels))
    assert logme(noise + signal, labels) > logme(noise, labels)


def test_logme_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="labels must be 1-D with 4"):
        logme(np.ones((4, 2)), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="NaN"):
        logme(np.full((3, 2), np.nan), np.array([0, 1, 0]))


def _probs(labels: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Source softmax that puts `strength` on source class y (mod CS), the rest random."""
    onehot = np.eye(CS)[labels % CS]
    return strength * onehot + (1 - strength) * rng.dirichlet(np.ones(CS), labels.shape[0])


def test_leep_perfect_predictions_score_zero(task) -> None:
    labels, _, _ = task
    assert leep(np.eye(CS)[labels], labels) == pytest.approx(0.0, abs=1e-12)


def test_leep_uninformative_predictions_score_minus_label_entropy(task) -> None:
    labels, _, _ = task
    prior = np.bincount(labels) / labels.size
    entropy = -(prior * np.log(prior)).sum()
    assert leep(np.full((N, CS), 1.0 / CS), labels) == pytest.approx(-entropy, rel=1e-12)


def test_leep_ranks_informative_over_weak_over_random(task) -> None:
    labels, _, _ = task
    rng = np.random.default_rng(4)
    strong = leep(_probs(labels, 0.8, rng), labels)
    weak = leep(_probs(labels, 0.2, rng), labels)
    random = leep(rng.dirichlet(np.ones(CS), N), labels)
    assert 0.0 >= strong > weak > random


def test_leep_is_invariant_to_permuting_source_classes(task) -> None:
    labels, _, _ = task
    probs = _probs(labels, 0.5, np.random.default_rng(5))
    probs[:, 6] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    permuted = probs[:, np.random.default_rng(6).permutation(CS)]
    assert leep(permuted, labels) == pytest.approx(leep(probs, labels), rel=1e-12)


def test_leep_rejects_logits() -> None:
    with pytest.raises(ValueError, match="softmax"):
        leep(np.array([[2.0, -1.0], [0.5, 0.5]]), np.array([0, 1]))


def test_feature_similarity_self_beats_shifted_and_decreases_with_shift() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    assert feature_similarity(a, a) == 1.0
    scores = [feature_similarity(a, b + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1] + 0.2


def test_feature_similarity_is_symmetric_and_scale_invariant() -> None:
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(150, 5)), rng.normal(size=(120, 5)) + 0.7
    s = feature_similarity(a, b)
    assert feature_similarity(b, a) == pytest.approx(s, rel=1e-12)
    assert feature_similarity(100 * a, 100 * b) == pytest.approx(s, rel=1e-9)


def test_feature_similarity_subsamples_large_sets_deterministically() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(500, 4)), rng.normal(size=(500, 4)) + 1.0
    assert feature_similarity(a, b, max_samples=100) == feature_similarity(a, b, max_samples=100)
    with pytest.raises(ValueError, match="same backbone layer"):
        feature_similarity(a, b[:, :3])


def test_label_features_counts_empty_classes() -> None:
    stats = label_features(np.array([0, 0, 0, 1, 2, 2]), num_classes=4)
    assert stats == {
        "images_per_label_min": 0.0,
        "images_per_label_median": 1.5,
        "images_per_label_max": 3.0,
        "num_classes": 4.0,
        "num_images": 6.0,
    }
    assert label_features(np.array([1, 1, 0]))["num_classes"] == 2.0
    with pytest.raises(ValueError, match="num_classes=2"):
        label_features(np.array([0, 3]), num_classes=2)
