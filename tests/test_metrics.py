"""Metric arithmetic and bootstrap intervals: resampled statistics agree with the direct ones."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from glmopt.metrics import (
    bootstrap_indices,
    interval95,
    perplexity_resampled,
    relative_drop_pct,
    relative_drops_pct,
    spearman_resampled,
)


def test_identity_resample_gives_the_direct_statistics():
    rng = np.random.default_rng(0)
    windows = np.column_stack([rng.uniform(100, 200, 12), np.full(12, 50.0)])
    identity = np.arange(12)[None, :]
    expected = np.exp(windows[:, 0].sum() / windows[:, 1].sum())
    assert perplexity_resampled(windows, identity)[0] == pytest.approx(expected)
    a, b = rng.normal(size=40), rng.normal(size=40)
    b[:5] = b[5]  # ties take average ranks, as scipy does
    assert spearman_resampled(a, b, np.arange(40)[None, :])[0] == pytest.approx(spearmanr(a, b).statistic)


def test_vectorised_spearman_matches_scipy_on_every_resample():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=30), rng.normal(size=30)
    idx = bootstrap_indices(30, 20, seed=3)
    got = spearman_resampled(a, b, idx)
    for row, value in zip(idx, got, strict=True):
        assert value == pytest.approx(spearmanr(a[row], b[row]).statistic)


def test_interval_holds_the_estimate_and_narrows_with_more_samples():
    rng = np.random.default_rng(2)
    widths = []
    for n in (50, 800):
        correct = (rng.random(n) < 0.8).astype(float)
        lo, hi = interval95(correct[bootstrap_indices(n, 1000, seed=0)].mean(axis=1))
        assert lo <= correct.mean() <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_paired_drop_interval_is_zero_for_the_same_model_and_excludes_zero_for_a_real_drop():
    rng = np.random.default_rng(4)
    nll = rng.uniform(150, 250, 16)
    reference = np.column_stack([nll, np.full(16, 64.0)])
    idx = bootstrap_indices(16, 500, seed=0)
    same = relative_drops_pct("perplexity", perplexity_resampled(reference, idx), perplexity_resampled(reference, idx))
    assert interval95(same) == [0.0, 0.0]
    worse = reference.copy()
    worse[:, 0] *= 1.05  # every window 5% more NLL: a clear, consistent drop
    drops = relative_drops_pct("perplexity", perplexity_resampled(reference, idx), perplexity_resampled(worse, idx))
    lo, hi = interval95(drops)
    assert 0 < lo <= hi
    point = relative_drop_pct(
        "perplexity",
        float(perplexity_resampled(reference, np.arange(16)[None, :])[0]),
        float(perplexity_resampled(worse, np.arange(16)[None, :])[0]),
    )
    assert lo <= point <= hi


def test_drop_sign_follows_the_metric_direction():
    assert relative_drop_pct("perplexity", 10.0, 11.0) == pytest.approx(10.0)
    assert relative_drop_pct("accuracy", 0.8, 0.72) == pytest.approx(10.0)
    assert relative_drops_pct("spearman", np.array([0.5]), np.array([0.55]))[0] == pytest.approx(-10.0)
