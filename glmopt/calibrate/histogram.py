"""Streaming activation histograms and the range searches that read them (entropy, MinMax, percentile).

Memory is O(bins) per tensor whatever the number of samples: each batch is binned and dropped.
The range is symmetric, [-R, R] with R a power of two, and grows by doubling: after a doubling every
new central bin is exactly the sum of two old bins, so growth never redistributes or loses mass, and
the final histogram equals the one computed in a single pass over all data with the final R (results
do not depend on batch order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class TensorHistogram:
    num_bins: int = 2048
    counts: np.ndarray = field(init=False)
    half_range: float = 0.0  # R; 0 until a non-zero value is seen
    minimum: float = math.inf
    maximum: float = -math.inf
    total: int = 0  # finite values seen
    nonfinite: int = 0  # NaN/inf values seen and left out of the histogram

    def __post_init__(self) -> None:
        if self.num_bins < 8 or self.num_bins & (self.num_bins - 1):
            raise ValueError(f"num_bins must be a power of two and at least 8, got {self.num_bins}")
        self.counts = np.zeros(self.num_bins, dtype=np.int64)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.half_range, self.half_range, self.num_bins + 1)

    def _double(self) -> None:
        folded = self.counts.reshape(-1, 2).sum(axis=1)
        quarter = self.num_bins // 4
        self.counts = np.zeros_like(self.counts)
        self.counts[quarter : quarter + folded.size] = folded
        self.half_range *= 2.0

    def update(self, values: np.ndarray) -> None:
        x = np.asarray(values, dtype=np.float32).ravel()
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN or inf somewhere: the slow path
            finite = np.isfinite(x)
            self.nonfinite += int(x.size - finite.sum())
            x = x[finite]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        self.minimum, self.maximum = min(self.minimum, lo), max(self.maximum, hi)
        amax = max(abs(lo), abs(hi))
        if amax > 0.0:
            if self.half_range == 0.0:
                self.half_range = 2.0 ** math.ceil(math.log2(amax))
            while amax > self.half_range:
                self._double()
        self.total += int(x.size)
        if self.half_range == 0.0:  # all zeros so far: they belong to the bin right of zero
            self.counts[self.num_bins // 2] += x.size
            return
        # R and num_bins are powers of two, so x * scale is exact in float32 and its floor is the
        # exact bin offset from zero: every range gives bins that fold exactly. Every |x| <= R, so the
        # only index past the end is x == R, counted in an extra slot and folded into the last bin.
        # torch rather than NumPy: its int32 bincount takes half the time of NumPy's (which first
        # converts to int64), and binning is the largest cost of calibration after inference itself.
        import torch

        scale = float(self.num_bins / (2.0 * self.half_range))
        with torch.inference_mode():
            # (torch warns on read-only arrays though nothing here writes to x: copy those, rarely needed)
            position = torch.mul(torch.from_numpy(x if x.flags.writeable else x.copy()), scale)
            position.floor_().add_(self.num_bins // 2)
            counts = torch.bincount(position.to(torch.int32), minlength=self.num_bins + 1).numpy()
        counts[self.num_bins - 1] += counts[self.num_bins]
        self.counts += counts[: self.num_bins]

    def merge(self, other: TensorHistogram) -> None:
        """Add another histogram of the same tensor (e.g. from another worker)."""
        if other.num_bins != self.num_bins:
            raise ValueError("cannot merge histograms with different bin counts")
        if other.total == 0:
            self.nonfinite += other.nonfinite
            return
        src = other.counts.copy()
        src_range = other.half_range
        if self.half_range == 0.0 and src_range > 0.0:
            zeros = self.counts[self.num_bins // 2]
            self.counts = np.zeros_like(self.counts)
            self.counts[self.num_bins // 2] = zeros
            self.half_range = src_range
        while src_range and src_range < self.half_range:
            quarter = self.num_bins // 4
            folded = src.reshape(-1, 2).sum(axis=1)
            src = np.zeros_like(src)
            src[quarter : quarter + folded.size] = folded
            src_range *= 2.0
        while src_range > self.half_range:
            self._double()
        self.counts += src
        self.total += other.total
        self.nonfinite += other.nonfinite
        self.minimum, self.maximum = min(self.minimum, other.minimum), max(self.maximum, other.maximum)


def _prefix(values: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])


def entropy_threshold_indices(counts: np.ndarray, num_quantized_bins: int = 128, eps: float = 1e-4) -> tuple[int, int]:
    """KL-divergence threshold search over a symmetric histogram (TensorRT's method, as ONNX Runtime runs it).

    Same candidates, reference distribution p (outliers folded into the edge bins), merged-and-expanded
    distribution q (integer division, remainder bins left empty), smoothing and divergence as ONNX
    Runtime's HistogramCalibrater, but with no loop over thresholds and no per-bin work per candidate:
    every sum a candidate needs is a difference of prefix sums, and q is constant over each merged
    bucket, so all candidates cost O(candidates x quantized bins) together. The smoothing's tiny
    correction inside p*log(p) is taken to first order (error below 1e-8 of a bin's weight).
    Returns the (start, end) edge indices of the chosen range.
    """
    h = np.asarray(counts, dtype=np.float64)
    num_bins = h.size
    zero_bin = num_bins // 2
    q_bins = num_quantized_bins
    if q_bins // 2 > zero_bin:
        raise ValueError(f"num_quantized_bins ({q_bins}) exceeds the histogram's bins ({num_bins})")
    total = h.sum()
    if total <= 0:
        return zero_bin - q_bins // 2, zero_bin + q_bins // 2

    half = np.arange(q_bins // 2, zero_bin + 1)
    start = zero_bin - half
    end = np.minimum(zero_bin + half + 1, num_bins)
    length = end - start
    merged = length // q_bins

    nonzero = (h > 0).astype(np.float64)
    safe = np.where(h > 0, h, 1.0)
    c_h, c_nz = _prefix(h), _prefix(nonzero)
    c_hlogh, c_logh = _prefix(h * np.log(safe)), _prefix(np.log(safe))
    log_eps = np.log(eps)

    left = c_h[start]
    right = total - c_h[end]
    first, last = start, end - 1
    p_first, p_last = h[first] + left, h[last] + right

    # p: the slice with outliers added to its first and last bins.
    inner_nz = (c_nz[end] - c_nz[start]) - nonzero[first] - nonzero[last]
    nnz_p = inner_nz + (p_first > 0) + (p_last > 0)
    eps1_p = eps * (length - nnz_p) / nnz_p

    def edge_plogp(v: np.ndarray) -> np.ndarray:
        shifted = np.where(v > 0, v - eps1_p, 1.0)
        return np.where(v > 0, shifted * np.log(shifted), eps * log_eps)

    inner_hlogh = (c_hlogh[end] - c_hlogh[start]) - h[first] * np.log(safe[first]) - h[last] * np.log(safe[last])
    inner_logh1 = (c_logh[end] - c_logh[start]) - np.log(safe[first]) - np.log(safe[last]) + inner_nz
    sum_plogp = (
        inner_hlogh
        - eps1_p * inner_logh1
        + (length - 2 - inner_nz) * eps * log_eps
        + edge_plogp(p_first)
        + edge_plogp(p_last)
    )

    # q: buckets of `merged` bins; its sums use the slice without outliers, the last bucket takes the remainder.
    b = np.arange(q_bins)
    b_start = start[:, None] + b[None, :] * merged[:, None]
    b_end = b_start + merged[:, None]
    q_end = b_end.copy()
    q_end[:, -1] = end
    q_sum = c_h[q_end] - c_h[b_start]
    no_remainder = length == merged * q_bins
    norm = c_nz[b_end] - c_nz[b_start]
    norm[:, 0] += (p_first > 0) - nonzero[first]
    norm[:, -1] += np.where(no_remainder, (p_last > 0).astype(np.float64) - nonzero[last], 0.0)
    level = np.zeros_like(q_sum)
    np.divide(q_sum, norm, out=level, where=norm > 0)
    level = np.trunc(level)

    filled = level > 0
    nnz_q = (filled * merged[:, None]).sum(axis=1)
    sum_q = (level * merged[:, None]).sum(axis=1)
    eps1_q = eps * (length - nnz_q) / np.maximum(nnz_q, 1)
    log_q = np.where(filled, np.log(np.where(filled, level - eps1_q[:, None], 1.0)), log_eps)

    # Smoothed p summed over each bucket (the first/last bins carry the outliers) and over the remainder.
    p_bucket = c_h[b_end] - c_h[b_start]
    p_bucket[:, 0] += left
    p_bucket[:, -1] += np.where(no_remainder, right, 0.0)
    ps_bucket = p_bucket + eps * (merged[:, None] - norm) - eps1_p[:, None] * norm
    rem_start = start + merged * q_bins
    rem = length - merged * q_bins
    rem_nz = np.where(rem > 0, c_nz[end] - c_nz[rem_start] - nonzero[last] + (p_last > 0), 0.0)
    ps_rem = np.where(rem > 0, c_h[end] - c_h[rem_start] + right, 0.0) + eps * (rem - rem_nz) - eps1_p * rem_nz
    sum_plogq = (log_q * ps_bucket).sum(axis=1) + log_eps * ps_rem

    with np.errstate(divide="ignore", invalid="ignore"):
        divergence = sum_plogp / total - np.log(total) - sum_plogq / total + np.log(sum_q)
    divergence[(nnz_q == 0) | ~np.isfinite(divergence)] = np.inf
    best = int(np.argmin(divergence))
    return int(start[best]), int(end[best])


def entropy_range(hist: TensorHistogram, num_quantized_bins: int = 128) -> tuple[float, float]:
    if hist.half_range == 0.0:
        return _degenerate_range(hist)
    lo_i, hi_i = entropy_threshold_indices(hist.counts, num_quantized_bins)
    edges = hist.edges
    return max(float(edges[lo_i]), hist.minimum), min(float(edges[hi_i]), hist.maximum)


def minmax_range(hist: TensorHistogram) -> tuple[float, float]:
    if hist.half_range == 0.0:
        return _degenerate_range(hist)
    return hist.minimum, hist.maximum


def percentile_range(hist: TensorHistogram, percentile: float = 99.999) -> tuple[float, float]:
    """Symmetric range holding `percentile` % of |values|, clipped to the observed min/max."""
    if hist.half_range == 0.0:
        return _degenerate_range(hist)
    zero_bin = hist.num_bins // 2
    magnitude = hist.counts[zero_bin:] + hist.counts[:zero_bin][::-1]
    cdf = np.cumsum(magnitude) / max(hist.total, 1)
    index = int(np.searchsorted(cdf, percentile / 100.0))
    width = 2.0 * hist.half_range / hist.num_bins
    threshold = min((index + 1) * width, hist.half_range)
    return max(-threshold, hist.minimum), min(threshold, hist.maximum)


def _degenerate_range(hist: TensorHistogram) -> tuple[float, float]:
    # Constant zero tensor (or none seen): a range that still contains zero, as quantizers require.
    return 0.0, 0.0


RANGE_METHODS = ("entropy", "minmax", "percentile")


def quantization_mse(hist: TensorHistogram, lo: float, hi: float, symmetric: bool = False) -> float:
    """Expected squared error of 8-bit quantization over [lo, hi] for the values in the histogram.

    Values inside the range get rounding noise (step^2 / 12); values outside are clipped to its ends.
    Each bin's values are taken at its centre, which is exact enough to rank candidate ranges: a bin is
    1/8 of a step or narrower for any range the searches return.
    """
    if hist.total == 0:
        return 0.0
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # the quantized range always holds zero
    if symmetric:
        lo, hi = -max(-lo, hi), max(-lo, hi)
    edges = hist.edges
    centres = (edges[:-1] + edges[1:]) / 2
    step = (hi - lo) / 255
    error = np.where(centres < lo, (lo - centres) ** 2, np.where(centres > hi, (centres - hi) ** 2, step * step / 12))
    return float((hist.counts * error).sum() / hist.total)


def compact_histogram(hist: TensorHistogram, max_bins: int = 96) -> dict:
    """The occupied part of a histogram, merged down to at most max_bins bins, for plots in the report."""
    occupied = np.flatnonzero(hist.counts)
    if occupied.size == 0 or hist.half_range == 0.0:
        return {"lo": 0.0, "hi": 0.0, "counts": []}
    first, last = int(occupied[0]), int(occupied[-1]) + 1
    group = -(-(last - first) // max_bins)
    last = min(first + group * -(-(last - first) // group), hist.num_bins)
    counts = hist.counts[first:last]
    counts = np.pad(counts, (0, -len(counts) % group)).reshape(-1, group).sum(axis=1)
    edges = hist.edges
    width = edges[1] - edges[0]
    return {
        "lo": float(edges[first]),
        "hi": float(edges[first] + width * group * len(counts)),
        "counts": counts.tolist(),
    }
