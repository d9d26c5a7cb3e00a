"""The streaming calibrator: known answers on synthetic data, agreement with ONNX Runtime, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from glmopt.calibrate.histogram import (
    TensorHistogram,
    entropy_range,
    entropy_threshold_indices,
    minmax_range,
    percentile_range,
    quantization_mse,
)


def hist_of(*arrays, bins=2048) -> TensorHistogram:
    h = TensorHistogram(bins)
    for a in arrays:
        h.update(a)
    return h


def test_gaussian_with_outliers_is_clipped_below_the_outliers():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=200_000), [40.0, -35.0, 38.0]])
    lo, hi = entropy_range(hist_of(x))
    assert 2.5 < hi < 20 and -20 < lo < -2.5
    assert minmax_range(hist_of(x)) == (-35.0, 40.0)


def test_uniform_threshold_is_near_the_max():
    x = np.random.default_rng(1).uniform(-3, 3, size=300_000)
    lo, hi = entropy_range(hist_of(x))
    assert hi > 0.9 * 3 and lo < -0.9 * 3


def test_percentile_holds_the_requested_mass():
    x = np.random.default_rng(2).normal(size=400_000)
    lo, hi = percentile_range(hist_of(x), 99.0)
    inside = np.mean((x >= lo) & (x <= hi))
    assert 0.989 <= inside <= 0.993
    assert hi == pytest.approx(2.576, abs=0.02)


@pytest.mark.parametrize("seed", range(6))
def test_entropy_search_equals_onnxruntime_on_the_same_histogram(seed):
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(seed)
    x = [
        rng.normal(size=100_000),
        rng.standard_t(3, size=100_000),
        np.abs(rng.normal(size=50_000)),
        rng.laplace(size=80_000),
        rng.uniform(-1, 5, size=60_000),
        rng.normal(size=90_000) * 0.01,
    ][seed]
    h = hist_of(x, bins=[2048, 1024, 512][seed % 3])
    collector = HistogramCollector("entropy", False, h.num_bins, 128, None, None)
    ort_lo, ort_hi = collector.get_entropy_threshold(
        (h.counts, h.edges.astype(np.float32), np.float32(h.minimum), np.float32(h.maximum)), 128
    )
    assert entropy_range(h) == (pytest.approx(float(ort_lo), rel=1e-6), pytest.approx(float(ort_hi), rel=1e-6))


def test_range_growth_is_exact_and_independent_of_batch_order():
    rng = np.random.default_rng(3)
    batches = [rng.normal(scale=s, size=10_000) for s in (0.01, 1.0, 30.0, 0.5)]
    one_pass = hist_of(np.concatenate(batches))
    streamed = hist_of(*batches)
    reversed_ = hist_of(*batches[::-1])
    assert streamed.half_range == one_pass.half_range == reversed_.half_range
    np.testing.assert_array_equal(streamed.counts, one_pass.counts)
    np.testing.assert_array_equal(reversed_.counts, one_pass.counts)
    assert streamed.counts.sum() == 40_000


def test_bins_are_half_open_and_the_range_end_lands_in_the_last_bin():
    # Values on bin edges, just either side of zero, and at -R and +R: the same counts as NumPy's
    # histogram over the same edges (half-open bins, the last one closed).
    h = TensorHistogram(16)
    edge = np.float32(0.25)  # R = 2, 16 bins: each bin 0.25 wide
    values = np.array([-2.0, -edge, -1e-30, 0.0, 1e-30, edge, 1.999, 2.0, 2.0, -0.3, 0.3], dtype=np.float32)
    h.update(values)
    assert h.half_range == 2.0
    expected, _ = np.histogram(values, bins=h.edges)
    np.testing.assert_array_equal(h.counts, expected)


def test_merge_equals_streaming():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=5000), rng.normal(scale=9, size=5000)
    merged = hist_of(a)
    merged.merge(hist_of(b))
    np.testing.assert_array_equal(merged.counts, hist_of(a, b).counts)


def test_memory_does_not_grow_with_samples():
    h = TensorHistogram(2048)
    rng = np.random.default_rng(5)
    for _ in range(200):
        h.update(rng.normal(size=5000))
    assert h.counts.nbytes == 2048 * 8 and h.total == 1_000_000


def test_non_finite_values_are_counted_and_left_out():
    h = hist_of(np.array([1.0, -2.0, np.inf, np.nan, -np.inf, 0.5], dtype=np.float32))
    assert h.nonfinite == 3 and h.total == 3
    assert minmax_range(h) == (-2.0, 1.0)
    only_bad = hist_of(np.array([np.nan, np.inf]))
    assert only_bad.total == 0 and minmax_range(only_bad) == (0.0, 0.0)


def test_constant_tensors_get_a_range_that_holds_them():
    zeros = hist_of(np.zeros(1000))
    assert entropy_range(zeros) == (0.0, 0.0) == percentile_range(zeros)
    sevens = hist_of(np.full(1000, 7.0))
    lo, hi = entropy_range(sevens)
    assert lo == 7.0 and hi == 7.0  # quantizers widen a range to include zero


def test_bins_must_allow_exact_doubling():
    with pytest.raises(ValueError, match="power of two"):
        TensorHistogram(1000)


def test_search_is_deterministic():
    counts = np.random.default_rng(6).integers(0, 1000, size=2048)
    assert entropy_threshold_indices(counts) == entropy_threshold_indices(counts.copy())


def _fake_quant_mse(x: np.ndarray, lo: float, hi: float) -> float:
    """Measured squared error of asymmetric UINT8 quantization of x over [lo, hi]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255
    zero = np.round(-lo / scale)
    q = np.clip(np.round(x / scale) + zero, 0, 255)
    return float(np.mean(((q - zero) * scale - x) ** 2))


@pytest.mark.parametrize("kind", ["gaussian-with-outliers", "uniform", "laplace"])
def test_histogram_mse_predicts_the_measured_error(kind):
    rng = np.random.default_rng(1)
    x = {
        "gaussian-with-outliers": np.concatenate([rng.normal(size=100_000), [60.0, -50.0]]),
        "uniform": rng.uniform(-3, 5, size=100_000),
        "laplace": rng.laplace(size=100_000),
    }[kind]
    hist = hist_of(x)
    for lo, hi in (minmax_range(hist), entropy_range(hist), percentile_range(hist, 99.9)):
        predicted, measured = quantization_mse(hist, lo, hi), _fake_quant_mse(x, lo, hi)
        assert predicted == pytest.approx(measured, rel=0.25), (kind, lo, hi)


def test_auto_clips_a_heavy_tail_and_keeps_the_full_range_of_a_uniform_tensor():
    from glmopt.stages.quantize import QuantizeConfig, tensor_range

    config = QuantizeConfig(calibration="unused.yaml", method="auto")
    rng = np.random.default_rng(2)
    # Student's t with 2 degrees of freedom: many large values, so range spent on the tail costs
    # more rounding error everywhere than clipping the tail does.
    heavy = hist_of(rng.standard_t(2, size=200_000))
    (lo, hi), method, errors = tensor_range(heavy, "auto", config)
    assert method in ("entropy", "percentile") and hi < heavy.maximum and errors[method] < errors["minmax"]
    uniform = hist_of(rng.uniform(-1, 1, size=200_000))
    _, method, errors = tensor_range(uniform, "auto", config)
    assert errors[method] == min(errors.values())
    assert errors[method] <= errors["minmax"] * 1.0001  # nothing to clip: MinMax is (close to) the best
