"""Transferability scores and dataset statistics computed from features, pure numpy.

These are the cheap, training-free descriptors the meta-regressor uses to guess a good transfer
recipe before any trial runs: how well a source model's features (LogME) or its predictions (LEEP)
fit the target labels, how far the target's feature distribution is from the source's, and how many
images each label has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TINY = 1e-300
_CLAMP = 1e12


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """Return `x` as a finite float64 (N, D) matrix or say what is wrong with it."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N, D); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; check the feature extractor's output")
    return arr


def _as_labels(labels: np.ndarray, n: int, name: str = "labels") -> np.ndarray:
    """Return integer labels 0..K-1 of length `n`, or raise naming the mismatch."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(
            f"{name} must be 1-D with {n} entries (one per row); got shape {arr.shape}"
        )
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must be integers 0..K-1; got dtype {arr.dtype}")
    if n and arr.min() < 0:
        raise ValueError(f"{name} must be >= 0; got {int(arr.min())}; remap classes to 0..K-1")
    return arr.astype(np.int64)


@dataclass(frozen=True)
class LogMEFit:
    """Per-class result of the LogME evidence maximisation.

    evidence[k] is the maximised log evidence (not divided by N) of the one-hot target of class k;
    alpha[k], beta[k] are the prior and noise precisions that maximise it.
    """

    evidence: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    iterations: int


def logme_fit(
    features: np.ndarray, labels: np.ndarray, max_iter: int = 100, tol: float = 1e-7
) -> LogMEFit:
    """Maximise the Bayesian linear-regression evidence for every class at once (You et al. 2021).

    For class k with one-hot target y (N,), the model is y = F w + e, w ~ N(0, alpha^-1 I_D),
    e ~ N(0, beta^-1 I_N). With A = alpha I + beta F^T F and m = beta A^-1 F^T y the log evidence is

        L(alpha, beta) = D/2 log alpha + N/2 log beta - N/2 log 2pi
                         - beta/2 ||F m - y||^2 - alpha/2 ||m||^2 - 1/2 log|A|.

    It is maximised by MacKay's fixed point: with sigma_i the eigenvalues of F^T F,
    gamma = sum_i beta sigma_i / (alpha + beta sigma_i), alpha <- gamma / ||m||^2,
    beta <- (N - gamma) / ||F m - y||^2, until L/N changes by less than `tol` for every class.
    One eigendecomposition (of F^T F, or of F F^T when D > N) makes each step O(min(N, D) * K):
    with p_i = v_i^T F^T y the projections on the eigenvectors, m_i = beta p_i / (alpha + beta
    sigma_i), ||F m - y||^2 = ||y||^2 - 2 sum_i m_i p_i + sum_i sigma_i m_i^2 and
    log|A| = sum_i log(alpha + beta sigma_i) + (D - r) log alpha for r = min(N, D) eigenvalues.
    """
    f = _as_matrix(features, "features")
    n, d = f.shape
    y_idx = _as_labels(labels, n)
    num_classes = int(y_idx.max()) + 1
    y = np.zeros((n, num_classes))
    y[np.arange(n), y_idx] = 1.0

    if d <= n:
        sig, vecs = np.linalg.eigh(f.T @ f)
        sig = np.maximum(sig, 0.0)
        p = vecs.T @ (f.T @ y)
    else:
        sig, vecs = np.linalg.eigh(f @ f.T)
        sig = np.maximum(sig, 0.0)
        p = np.sqrt(sig)[:, None] * (vecs.T @ y)
    r = sig.shape[0]
    sigma = sig[:, None]
    y2 = y.sum(axis=0)

    def evaluate(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, ...]:
        denom = alpha + beta * sigma
        m = beta * p / denom
        m2 = (m**2).sum(axis=0)
        res2 = np.maximum(y2 - 2.0 * (m * p).sum(axis=0) + (sigma * m**2).sum(axis=0), _TINY)
        gamma = (beta * sigma / denom).sum(axis=0)
        log_det = np.log(denom).sum(axis=0) + (d - r) * np.log(alpha)
        evidence = (
            d / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - n / 2 * np.log(2 * np.pi)
            - beta / 2 * res2
            - alpha / 2 * m2
            - log_det / 2
        )
        return evidence, gamma, m2, res2

    alpha = np.ones(num_classes)
    beta = np.ones(num_classes)
    evidence, gamma, m2, res2 = evaluate(alpha, beta)
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        alpha = np.clip(gamma / np.maximum(m2, _TINY), 1.0 / _CLAMP, _CLAMP)
        beta = np.clip((n - gamma) / res2, 1.0 / _CLAMP, _CLAMP)
        previous = evidence
        evidence, gamma, m2, res2 = evaluate(alpha, beta)
        if np.all(np.abs(evidence - previous) < tol * n):
            break
    return LogMEFit(evidence=evidence, alpha=alpha, beta=beta, iterations=iterations)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME score: mean over classes of the maximised log evidence divided by N (higher = better).

    It says how well a linear model on these (frozen) features can explain the target labels,
    with the Bayesian evidence penalising over-fitting, so it ranks source models without training.
    """
    fit = logme_fit(features, labels)
    return float(np.mean(fit.evidence) / np.asarray(features).shape[0])


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP score (Nguyen et al. 2020): log expected empirical prediction, in (-inf, 0].

    theta(x_i) are the source model's softmax outputs over its Cs classes z. The empirical joint is
    P(y, z) = 1/N sum_{i: y_i = y} theta(x_i)_z, the conditional P(y | z) = P(y, z) / P(z), and

        LEEP = 1/N sum_i log( sum_z P(y_i | z) theta(x_i)_z ).

    It is 0 when the source predictions determine the target label and -H(y) (label entropy) when
    they carry no information. Source classes never predicted (P(z) = 0) get P(y | z) = 0; they
    cannot contribute because theta(x_i)_z = 0 for every i.
    """
    theta = _as_matrix(source_probs, "source_probs")
    n = theta.shape[0]
    y = _as_labels(labels, n)
    if theta.min() < 0:
        raise ValueError(
            "source_probs has negative entries; pass softmax probabilities, not logits"
        )
    sums = theta.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-3):
        raise ValueError(
            f"source_probs rows must sum to 1 (softmax outputs); got sums in "
            f"[{sums.min():.4g}, {sums.max():.4g}]; apply softmax to the logits first"
        )
    theta = theta / sums[:, None]
    onehot = np.zeros((n, int(y.max()) + 1))
    onehot[np.arange(n), y] = 1.0
    joint = onehot.T @ theta / n
    marginal = joint.sum(axis=0)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    eep = np.einsum("ij,ij->i", theta, conditional[y])
    return float(np.mean(np.log(np.maximum(eep, _TINY))))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances, clipped at 0 against round-off."""
    d2 = (a**2).sum(axis=1)[:, None] + (b**2).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


def feature_similarity(
    source_feats: np.ndarray,
    target_feats: np.ndarray,
    max_samples: int = 1000,
    seed: int = 0,
) -> float:
    """Similarity of two feature distributions in [0, 1]: 1 - MMD^2 / 2 (higher = more similar).

    MMD^2 = mean k(s, s') + mean k(t, t') - 2 mean k(s, t) (the biased estimate, always >= 0) with
    the Gaussian kernel k(a, b) = exp(-||a - b||^2 / h), h = the median squared distance between
    all pooled points (median heuristic). Because k is in (0, 1], MMD^2 lies in [0, 2], so the score
    lies in [0, 1]; it is 1 exactly when the two samples are the same set of points.

    Why this and not the cosine of the mean features: a characteristic kernel compares every moment
    (the mean shift is included), while the mean cosine is near 1 for any two sets of non-negative
    (ReLU) features. The median bandwidth makes the score invariant to a common scaling, rotation or
    translation of both sets, so it does not depend on the backbone's feature scale. Sets larger
    than `max_samples` are subsampled without replacement with `seed`, which keeps the cost at
    O(max_samples^2 * D) and the result deterministic.
    """
    src = _as_matrix(source_feats, "source_feats")
    tgt = _as_matrix(target_feats, "target_feats")
    if src.shape[1] != tgt.shape[1]:
        raise ValueError(
            f"source_feats has {src.shape[1]} features per row but target_feats has "
            f"{tgt.shape[1]}; extract both with the same backbone layer"
        )
    rng = np.random.default_rng(seed)
    if src.shape[0] > max_samples:
        src = src[rng.choice(src.shape[0], max_samples, replace=False)]
    if tgt.shape[0] > max_samples:
        tgt = tgt[rng.choice(tgt.shape[0], max_samples, replace=False)]
    pooled = np.vstack([src, tgt])
    d2 = _squared_distances(pooled, pooled)
    off_diag = d2[np.triu_indices(pooled.shape[0], k=1)]
    positive = off_diag[off_diag > 0]
    if positive.size == 0:
        return 1.0
    h = float(np.median(off_diag)) or float(np.median(positive))
    k = np.exp(-d2 / h)
    ns = src.shape[0]
    mmd2 = k[:ns, :ns].mean() + k[ns:, ns:].mean() - 2.0 * k[:ns, ns:].mean()
    return float(np.clip(1.0 - mmd2 / 2.0, 0.0, 1.0))


def label_features(labels: np.ndarray, num_classes: int | None = None) -> dict[str, float]:
    """Images-per-label statistics of a training set: min, median, max, classes and images.

    `num_classes` counts classes with no image as 0 images (a subset that lost a class should show
    min 0, not hide it); by default it is max(label) + 1.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array; got shape {arr.shape}")
    y = _as_labels(arr, arr.shape[0])
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if int(y.max()) >= k:
        raise ValueError(f"labels contain class {int(y.max())} but num_classes={k}")
    counts = np.bincount(y, minlength=k)
    return {
        "images_per_label_min": float(counts.min()),
        "images_per_label_median": float(np.median(counts)),
        "images_per_label_max": float(counts.max()),
        "num_classes": float(k),
        "num_images": float(y.size),
    }


def nce(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """NCE (Tran et al. 2019): negative conditional entropy -H(Y | Z) of the target label given the source
    model's predicted class Z = argmax of its outputs, in [-H(Y), 0]; higher = more transferable."""
    theta = _as_matrix(source_probs, "source_probs")
    y = _as_labels(labels, theta.shape[0])
    z = theta.argmax(axis=1)
    joint = np.zeros((int(z.max()) + 1, int(y.max()) + 1))
    np.add.at(joint, (z, y), 1.0)
    joint /= joint.sum()
    pz = joint.sum(axis=1, keepdims=True)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)
    mask = joint > 0
    return float(np.sum(joint[mask] * np.log(cond[mask])))


def ledoit_wolf_shrinkage(x: np.ndarray, gram: np.ndarray | None = None) -> float:
    """Ledoit-Wolf shrinkage a of the covariance S = X^T X / N of centred rows X (N, D), as scikit-learn's
    `ledoit_wolf_shrinkage(X, assume_centered=True)`: the shrunk estimate is (1 - a) S + a mu I with
    mu = tr(S) / D. It needs ||X^T X||_F, which equals ||X X^T||_F, so `gram` may be either product
    (whichever is smaller, N x N for wide features), computed here when not given."""
    n, d = x.shape
    if d == 1:
        return 0.0
    if gram is None:
        gram = x @ x.T if n <= d else x.T @ x
    row_norms = np.einsum("ij,ij->i", x, x)
    mu = row_norms.sum() / (n * d)
    delta_ = float((gram**2).sum()) / n**2
    beta = (float((row_norms**2).sum()) / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * row_norms.sum() / n + d * mu**2) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


def h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """Shrinkage H-score (Bao et al. 2019; Ibrahim et al. 2022): tr(cov(f)^-1 cov(E[f | y])), how well the
    class-conditional means of the features separate relative to their overall spread; higher = more
    transferable. The covariance is Ledoit-Wolf shrunk: with more feature dimensions than images (1280-d
    pooled features, a few hundred images) the plain estimate is singular and every backbone scores K-1.

    Why not a D x D solve: with centred features F = sum_i s_i u_i v_i^T (N, D), the shrunk covariance is
    C = sum_i ((1 - a) s_i^2 / N + a mu) v_i v_i^T + a mu (I - V V^T), and the class means M = P F (P
    averages the rows of each class, an orthogonal projection) lie in the row space of F, so
    tr(C^-1 M^T M / N) = 1/N sum_i s_i^2 ||P u_i||^2 / ((1 - a) s_i^2 / N + a mu). The s_i^2 and u_i
    come from the smaller of F F^T and F^T F: for 500 images of 1280-d features a 500 x 500
    eigendecomposition instead of scikit-learn's 1280 x 1280 one (seconds on a loaded CPU); the result
    equals the direct formula with `sklearn.covariance.LedoitWolf` to round-off (tested)."""
    f = _as_matrix(features, "features")
    y = _as_labels(labels, f.shape[0])
    n, d = f.shape
    f = f - f.mean(axis=0, keepdims=True)
    gram = f @ f.T if n <= d else f.T @ f
    shrink = ledoit_wolf_shrinkage(f, gram)
    mu = float(np.trace(gram)) / (n * d)
    lam, vecs = np.linalg.eigh(gram)
    keep = lam > max(float(lam.max(initial=0.0)), 0.0) * max(n, d) * np.finfo(np.float64).eps
    if not keep.any():
        return 0.0
    lam, vecs = lam[keep], vecs[:, keep]
    # Left singular vectors u_i: the Gram's own eigenvectors, or F v_i / s_i from F^T F's.
    u = vecs if n <= d else f @ vecs / np.sqrt(lam)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    class_sums = np.zeros((counts.size, u.shape[1]))
    np.add.at(class_sums, inverse, u)
    projected = (class_sums**2 / counts[:, None]).sum(axis=0)
    return float(np.sum(lam * projected / ((1.0 - shrink) * lam / n + shrink * mu)) / n)
