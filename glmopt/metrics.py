"""Metrics and their direction. Pure functions over arrays; no model code here."""

from __future__ import annotations

import numpy as np

# True where a larger value is better. A "drop" is always reported so that positive means worse.
HIGHER_IS_BETTER = {"perplexity": False, "spearman": True, "accuracy": True}


def relative_drop_pct(metric: str, reference: float, value: float) -> float:
    """Degradation against the reference in percent: positive is worse, whatever the metric's direction."""
    if reference == 0:
        return 0.0 if value == reference else float("inf")
    change = (value - reference) / abs(reference) * 100.0
    return -change if HIGHER_IS_BETTER[metric] else change


def relative_drops_pct(metric: str, reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """relative_drop_pct over arrays of paired resampled values."""
    change = (values - reference) / np.where(reference == 0, np.nan, np.abs(reference)) * 100.0
    return -change if HIGHER_IS_BETTER[metric] else change


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) indices drawn with replacement; the same draw serves every model, so drops are paired."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def interval95(values: np.ndarray) -> list[float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [float(lo), float(hi)]


def perplexity_resampled(per_window: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Perplexity of each resample of windows; per_window holds (summed NLL, token count) rows."""
    return np.exp(per_window[idx, 0].sum(axis=1) / per_window[idx, 1].sum(axis=1))


def spearman_resampled(a: np.ndarray, b: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Spearman correlation of each resample of pairs, vectorised over resamples."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a[idx], axis=1), rankdata(b[idx], axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    return (ra * rb).sum(axis=1) / np.where(denom == 0, np.nan, denom)


def token_nll(logits: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """Summed next-token negative log-likelihood over real tokens, and how many tokens it covers."""
    logits = logits[:, :-1].astype(np.float64)
    target = ids[:, 1:]
    valid = (mask[:, 1:] * mask[:, :-1]).astype(bool)
    peak = logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits - peak).sum(axis=-1)) + peak[..., 0]
    picked = np.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
    nll = (log_norm - picked)[valid]
    return float(nll.sum()), int(valid.sum())


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Attention-mask-weighted mean of token states, L2-normalised (sentence-transformers pooling)."""
    weights = mask[..., None].astype(np.float64)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def probe_accuracy(features: np.ndarray, labels: list, test_fraction: float, seed: int) -> np.ndarray:
    """Correctness (1/0) per test document of a logistic-regression probe trained on a stratified split.

    The split depends only on the labels and the seed, so every model is scored on the same documents.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    probe = LogisticRegression(max_iter=2000, C=10.0)
    probe.fit(x_train, y_train)
    return (probe.predict(x_test) == np.asarray(y_test)).astype(np.float64)
