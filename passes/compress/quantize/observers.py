"""Calibrators: the range of an activation from the values seen on calibration data.

- ``minmax``: the smallest and largest value seen.
- ``percentile``: the ``p``-th and ``(100 - p)``-th percentiles (e.g. 99.99), from a histogram
  of ``BINS`` bins over the min-max range (exact to one bin width, linearly interpolated inside
  the bin).
- ``kl``: the entropy calibration of TensorRT (Migacz, "8-bit Inference with TensorRT", GTC
  2017): a histogram of ``|x|`` in ``BINS`` bins; for every threshold of ``i >= levels`` bins the
  reference distribution (bins ``[0, i)``, the outliers added to the last one) is compared with
  its quantization into ``levels`` levels (each level's count spread over its non-empty bins,
  empty bins smoothed to probability 1e-4 as in MXNet's and TVM's calibrators), and the
  threshold with the least KL divergence wins; the first bin (the exact zeros of a ReLU output)
  counts as its neighbour, as in NVIDIA's pytorch-quantization. ``levels`` is 256 for one-sided data
  (min >= 0: all uint8 codes cover ``[0, T]``) and 128 for two-sided data (``[-T, T]``).

The histogram calibrators need the min-max range before they can bin, so they take two passes
over the calibration data (``passes = 2``); the driver sets ``pass_index`` before each pass. Every
range returned lies inside the min-max range.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch

__all__ = [
    "BINS",
    "EntropyObserver",
    "MinMaxObserver",
    "Observer",
    "PercentileObserver",
    "kl_threshold_bins",
    "make_observer",
]

BINS = 2048
Calibration = Literal["minmax", "percentile", "kl"]


class Observer(torch.nn.Module):
    """Running min and max of everything observed (the first pass of every calibrator).

    Attributes
    ----------
    passes : int
        Passes over the calibration data this calibrator needs.
    pass_index : int
        The pass now running (set by the calibration driver).
    """

    passes: ClassVar[int] = 1
    lo: torch.Tensor
    hi: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.pass_index = 0
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))

    @property
    def seen(self) -> bool:
        """Whether any value was observed."""
        return bool(self.lo <= self.hi)

    def observe(self, x: torch.Tensor) -> None:
        """Record a batch of values (any shape)."""
        if self.pass_index == 0:
            if x.numel():
                self.lo.fill_(min(float(self.lo), float(x.min())))
                self.hi.fill_(max(float(self.hi), float(x.max())))
        else:
            self.observe_binned(x)

    def observe_binned(self, x: torch.Tensor) -> None:
        """Second pass: record ``x`` with the min-max range known."""

    def range(self) -> tuple[float, float]:
        """``(lo, hi)`` to quantize to."""
        return float(self.lo), float(self.hi)


class MinMaxObserver(Observer):
    """The min-max range."""


class _HistogramObserver(Observer):
    passes: ClassVar[int] = 2
    hist: torch.Tensor

    def __init__(self, bins: int = BINS) -> None:
        super().__init__()
        self.register_buffer("hist", torch.zeros(bins, dtype=torch.float64))

    def _edges(self) -> tuple[float, float]:
        return float(self.lo), float(self.hi)

    def _values(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def observe_binned(self, x: torch.Tensor) -> None:
        lo, hi = self._edges()
        if hi <= lo:  # constant data: nothing to bin, the range is the point
            return
        values = self._values(x.reshape(-1).to(torch.float32))
        self.hist += torch.histc(values, len(self.hist), lo, hi).to(torch.float64)


class PercentileObserver(_HistogramObserver):
    """The ``(100 - p)``-th and ``p``-th percentiles of the observed values."""

    def __init__(self, percentile: float = 99.99, bins: int = BINS) -> None:
        super().__init__(bins)
        if not 50 < percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def range(self) -> tuple[float, float]:
        lo, hi = float(self.lo), float(self.hi)
        hist = self.hist.numpy()
        total = hist.sum()
        if hi <= lo or total == 0:
            return lo, hi
        width = (hi - lo) / len(hist)
        q = self.percentile / 100
        return lo + width * _rank(hist, (1 - q) * total), lo + width * _rank(hist, q * total)


def _rank(hist: np.ndarray, count: float) -> float:
    """Position in bins (fractional) where the cumulative count reaches ``count``."""
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, count, side="left"))
    if i >= len(hist):
        return float(len(hist))
    before = cum[i - 1] if i else 0.0
    return i + (count - before) / hist[i] if hist[i] else float(i)


class EntropyObserver(_HistogramObserver):
    """TensorRT's entropy (KL-divergence) calibration over the histogram of ``|x|``."""

    def _edges(self) -> tuple[float, float]:
        return 0.0, max(abs(float(self.lo)), abs(float(self.hi)))

    def _values(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()

    def range(self) -> tuple[float, float]:
        lo, hi = float(self.lo), float(self.hi)
        _, amax = self._edges()
        hist = self.hist.numpy()
        if amax == 0 or hist.sum() == 0:
            return lo, hi
        levels = 256 if lo >= 0 else 128
        # The exact zeros of a ReLU output (half the values here) fill the first bin; every
        # quantization keeps that bin exact, so its mass dilutes the divergence of the rest
        # and the search clips at the smallest threshold it tries (12.9 points lost on a
        # digits ResNet-18). As NVIDIA's pytorch-quantization does, the first bin counts as
        # its neighbour.
        hist = hist.copy()
        hist[0] = hist[1] if len(hist) > 1 else hist[0]
        threshold = amax * kl_threshold_bins(hist, levels) / len(hist)
        return max(lo, -threshold), min(hi, threshold)


def kl_threshold_bins(hist: np.ndarray, levels: int) -> int:
    """The number of leading bins of ``hist`` whose ``levels``-level quantization loses least.

    Returns ``len(hist)`` (no clipping) when the histogram has no more bins than levels.
    """
    hist = np.asarray(hist, dtype=np.float64)
    n = len(hist)
    if n <= levels:
        return n
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    best, best_i = np.inf, n
    for i in range(levels, n + 1):
        ref = hist[:i].copy()
        ref[i - 1] += tail[i]
        nonzero = hist[:i] != 0
        merged = i // levels
        starts = np.arange(levels) * merged
        sums = np.add.reduceat(hist[:i], starts)
        counts = np.add.reduceat(nonzero.astype(np.float64), starts)
        lengths = np.diff(np.append(starts, i))
        per_bin = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        quant = np.repeat(per_bin, lengths) * nonzero
        kl = _kl(ref, quant)
        if kl < best:
            best, best_i = kl, i
    return best_i


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    ps, qs = p.sum(), q.sum()
    if ps == 0 or qs == 0:
        return np.inf
    # Smoothing as MXNet's and TVM's calibrators do: an empty quantized bin where the reference
    # has mass (the clipped outliers land in the last bin) costs a finite, not infinite, penalty;
    # otherwise only thresholds ending on a non-empty bin could ever win.
    p, q = p / ps, q / qs
    q = np.where(q == 0, eps, q)
    q = q / q.sum()
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def make_observer(calibration: Calibration, percentile: float = 99.99) -> Observer:
    """The calibrator named ``calibration``."""
    if calibration == "minmax":
        return MinMaxObserver()
    if calibration == "percentile":
        return PercentileObserver(percentile)
    if calibration == "kl":
        return EntropyObserver()
    raise ValueError(f"unknown calibration {calibration!r}; known: minmax, percentile, kl")
