"""Low-bit weight formats recognized from a float weight's values alone (DESIGN.md, decision 2).

A quantization method (squeezer's, or any other tool's) leaves a float weight that holds exactly
the quantized values. This module finds which format those values are in, per output channel
(axis 0; the other axes are flattened row-major into the reduction axis ``K``):

- ``binary``: every row is ``{-a, +a}`` (BNN, BWN, XNOR-Net; ``a`` per row).
- ``ternary``: every row is ``{-a, 0, +a}`` (TWN).
- ``residual``: every row is ``sum_i a_i * s_i`` with ``s_i`` in ``{-1, +1}``, 2 or 3 terms
  (HORQ of order 2 or 3; ``a_i`` per row).
- ``pow2``: every value is 0 or ``+-2^e`` with at most 15 consecutive exponents in the tensor,
  all in float32's normal range (INQ; a 5-bit code: sign and a 4-bit exponent index whose 0
  means zero).
- ``int4``: groups of ``g`` (128, 64 or 32, coarsest that fits) consecutive values along ``K``
  are integer multiples in ``[-8, 7]`` of a per-group scale.

Values may be off by float rounding: a value is accepted within ``rtol`` times the largest
magnitude of its row (its group for int4; the tensor for pow2). ``reconstruct()`` returns the
stored values; it is bit-identical to the weight whenever the weight holds the format's values
computed in float32 (scales are nudged by a few ulps until they reproduce every value exactly
where such scales exist), and within the tolerance otherwise.

``binary``, ``ternary`` and ``residual`` share one representation, :class:`BitPlanes`:
bipolar planes ``s_i = 2 * bits[i] - 1`` with per-row coefficients, ``w = sum_i alpha[i] * s_i``.
Ternary uses two planes with ``alpha = a / 2``: ``bits[0] = w >= 0`` and ``bits[1] = w > 0``,
so ``(a/2) * (s_0 + s_1)`` is ``a``, ``0`` or ``-a`` (the same two bits as ``a * (p - q)`` with
``p = w > 0``, ``q = w < 0 = ~bits[0]``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

RTOL = 1e-5
INT4_GROUPS = (128, 64, 32)
POW2_EXPONENTS = 15  # a 5-bit code: sign bit and a 4-bit index, index 0 meaning zero
WORD_BITS = 64  # packed sizes count whole 64-bit words per row and plane

Format = Literal["binary", "ternary", "residual", "pow2", "int4"]
FORMATS: tuple[Format, ...] = ("binary", "ternary", "residual", "pow2", "int4")


@dataclass(frozen=True)
class BitPlanes:
    """``binary``, ``ternary`` or ``residual`` weights as bipolar bit planes.

    Attributes
    ----------
    kind : the format found.
    shape : the weight's shape (axis 0: output channels).
    bits : ``(planes, O, K)`` bool; plane ``i`` stands for ``s_i = 2 * bits[i] - 1``.
    alpha : ``(planes, O)`` float32 coefficients, ``w[o] = sum_i alpha[i, o] * s_i[o]``.
    """

    kind: Literal["binary", "ternary", "residual"]
    shape: tuple[int, ...]
    bits: np.ndarray
    alpha: np.ndarray

    @property
    def planes(self) -> int:
        return int(self.bits.shape[0])

    def reconstruct(self) -> np.ndarray:
        """The float32 weight, summed plane by plane in order."""
        out = np.zeros(self.bits.shape[1:], np.float32)
        for b, a in zip(self.bits, self.alpha, strict=True):
            out = out + a[:, None] * np.where(b, np.float32(1), np.float32(-1))
        return out.reshape(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes stored: each plane's rows in whole 64-bit words, plus the float32 alphas."""
        planes, rows, k = self.bits.shape
        return planes * rows * math.ceil(k / WORD_BITS) * 8 + self.alpha.size * 4


@dataclass(frozen=True)
class Pow2Codes:
    """Powers of two: ``code = sign << 4 | index``; ``index`` 0 is zero, else
    ``value = +-2 ** (e_min + index - 1)``. ``codes`` has the weight's shape (uint8)."""

    shape: tuple[int, ...]
    codes: np.ndarray
    e_min: int

    kind = "pow2"

    def reconstruct(self) -> np.ndarray:
        index = (self.codes & 15).astype(np.int32)
        mag = np.ldexp(np.float32(1), self.e_min + index - 1).astype(np.float32)
        val = np.where(index == 0, np.float32(0), mag)
        return np.where(self.codes & 16, -val, val).astype(np.float32).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes stored: the 5 bits of the codes as bit planes, each row in whole 64-bit words
        (the exponent offset is a compile-time constant)."""
        rows = self.codes.shape[0]
        k = self.codes.size // max(rows, 1)
        return 5 * rows * math.ceil(k / WORD_BITS) * 8


@dataclass(frozen=True)
class Int4Groups:
    """Integer codes in ``[-8, 7]`` with one float32 scale per group of ``group`` consecutive
    values of a row (the last group of a row may be shorter).

    ``codes`` is ``(O, K)`` int8, ``scales`` ``(O, ceil(K / group))`` float32.
    """

    shape: tuple[int, ...]
    group: int
    codes: np.ndarray
    scales: np.ndarray

    kind = "int4"

    def reconstruct(self) -> np.ndarray:
        s = np.repeat(self.scales, self.group, axis=1)[:, : self.codes.shape[1]]
        return (self.codes.astype(np.float32) * s).astype(np.float32).reshape(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes stored: two codes per byte (rows padded to whole bytes), plus the scales."""
        rows, k = self.codes.shape
        return rows * math.ceil(k / 2) + self.scales.size * 4


WeightFormat = BitPlanes | Pow2Codes | Int4Groups


def detect(w: np.ndarray, rtol: float = RTOL,
           formats: tuple[Format, ...] = FORMATS) -> WeightFormat | None:
    """The first of ``formats`` (in :data:`FORMATS` order) that ``w`` holds, or None.

    The order puts the formats with bit kernels first: a ternary weight whose rows happen to be
    powers of two is reported ternary.
    """
    finders = {"binary": as_binary, "ternary": as_ternary, "residual": as_residual,
               "pow2": as_pow2, "int4": as_int4}
    x = _rows(w)
    if x is None:
        return None
    # A cheap look at the first row rules out most formats for a float weight (distinct values
    # within the tolerance): a float model's compile then pays almost nothing here.
    distinct = _count_distinct(x[0], rtol)
    group_distinct = _count_distinct(x[0, : min(INT4_GROUPS)], rtol)
    most = {"binary": 2, "ternary": 3, "residual": 8, "pow2": 2 * POW2_EXPONENTS + 1}
    for name in FORMATS:
        if name not in formats:
            continue
        if name == "int4" and group_distinct > 16 or distinct > most.get(name, distinct):
            continue
        found = finders[name](w, rtol=rtol)
        if found is not None:
            return found
    return None


def _rows(w: np.ndarray) -> np.ndarray | None:
    w = np.asarray(w)
    if w.ndim < 1 or w.size == 0 or not np.all(np.isfinite(w)):
        return None
    return w.reshape(w.shape[0], -1).astype(np.float64)


def as_binary(w: np.ndarray, rtol: float = RTOL) -> BitPlanes | None:
    """``w`` as one bipolar plane if every row is ``{-a, +a}``."""
    x = _rows(w)
    if x is None:
        return None
    a = np.abs(x).max(axis=1)
    if np.any(np.abs(np.abs(x) - a[:, None]) > rtol * a[:, None]):
        return None
    return _finish("binary", w, (x >= 0)[None], a[None])


def as_ternary(w: np.ndarray, rtol: float = RTOL) -> BitPlanes | None:
    """``w`` as two bipolar planes of ``a / 2`` if every row is ``{-a, 0, +a}``."""
    x = _rows(w)
    if x is None:
        return None
    a = np.abs(x).max(axis=1)[:, None]
    zero = np.abs(x) <= rtol * a
    if np.any(~zero & (np.abs(np.abs(x) - a) > rtol * a)):
        return None
    bits = np.stack([(x >= 0) | zero, (x > 0) & ~zero])
    half = np.float32(a[:, 0]) / np.float32(2)
    return _finish("ternary", w, bits, np.stack([half, half]))


def as_residual(w: np.ndarray, rtol: float = RTOL, orders: tuple[int, ...] = (2, 3)
                ) -> BitPlanes | None:
    """``w`` as ``sum_i a_i * s_i`` (per row, ``a_1 >= a_2 >= ...``) with the fewest terms in
    ``orders`` that fit every row; rows that need fewer get zero coefficients."""
    x = _rows(w)
    if x is None:
        return None
    for k in orders:
        fit = _fit_residual(x, k, rtol)
        if fit is not None:
            bits, alpha = fit
            return _finish("residual", w, bits, alpha)
    return None


def _finish(kind, w: np.ndarray, bits: np.ndarray, alpha: np.ndarray) -> BitPlanes | None:
    """Nudge the float32 alphas until they reproduce ``w`` exactly where they can."""
    target = np.asarray(w, np.float32).reshape(bits.shape[1], -1)
    alpha = _exact_alphas(bits, np.asarray(alpha, np.float32), target)
    return BitPlanes(kind, tuple(np.shape(w)), np.ascontiguousarray(bits, bool), alpha)


def _recon_rows(bits: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    out = np.zeros(bits.shape[1:], np.float32)
    for b, a in zip(bits, alpha, strict=True):
        out = out + a[:, None] * np.where(b, np.float32(1), np.float32(-1))
    return out


def _exact_alphas(bits: np.ndarray, alpha: np.ndarray, target: np.ndarray) -> np.ndarray:
    bad = np.any(_recon_rows(bits, alpha) != target, axis=1)
    if not bad.any():
        return alpha
    alpha = alpha.copy()
    rows = np.nonzero(bad)[0]
    sub_bits, sub_t = bits[:, rows], target[rows]
    best = alpha[:, rows]
    done = np.zeros(rows.size, bool)
    steps = (0, 1, -1, 2, -2)
    for combo in itertools.product(steps, repeat=bits.shape[0]):
        if not any(combo):
            continue
        trial = np.stack([_ulps(best[i], s) for i, s in enumerate(combo)])
        ok = ~done & np.all(_recon_rows(sub_bits, trial) == sub_t, axis=1)
        alpha[:, rows[ok]] = trial[:, ok]
        done |= ok
        if done.all():
            break
    return alpha


def _ulps(x: np.ndarray, n: int) -> np.ndarray:
    x = x.astype(np.float32)
    toward = np.float32(np.inf if n > 0 else -np.inf)
    for _ in range(abs(n)):
        x = np.nextafter(x, toward)
    return x


def _residual_templates(k: int) -> list[np.ndarray]:
    """Sign matrices (2^k x k) listing ``sum_i a_i s_i`` in ascending order for
    ``a_1 >= a_2 >= ... >= 0``; for k = 3 the middle pair swaps when ``a_1 < a_2 + a_3``."""
    signs = np.array(list(itertools.product((-1, 1), repeat=k)), np.float64)
    # an ordering witness: a = (4, 2, 1) sorts the sums with a_1 > a_2 + a_3
    order = np.argsort(signs @ (2.0 ** np.arange(k - 1, -1, -1)), kind="stable")
    first = signs[order]
    if k < 3:
        return [first]
    swapped = first.copy()
    mid = len(first) // 2
    swapped[[mid - 1, mid]] = swapped[[mid, mid - 1]]
    return [first, swapped]


def _count_distinct(row: np.ndarray, rtol: float) -> int:
    """Distinct values of ``row`` (gaps above ``rtol`` times its largest magnitude)."""
    s = np.sort(row)
    return 1 + int(np.count_nonzero(np.diff(s) > rtol * np.abs(s).max()))


def _clusters(row: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of ``row`` (gaps above ``tol`` separate them): centers and labels."""
    order = np.argsort(row, kind="stable")
    s = row[order]
    starts = np.concatenate([[True], np.diff(s) > tol])
    ids = np.cumsum(starts) - 1
    labels = np.empty(row.size, np.int64)
    labels[order] = ids
    bounds = np.flatnonzero(starts)[1:]
    centers = np.array([np.median(part) for part in np.split(s, bounds)])
    return centers, labels


def _fit_residual(x: np.ndarray, k: int, rtol: float
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    rows, n = x.shape
    bits = np.zeros((k, rows, n), bool)
    alpha = np.zeros((k, rows), np.float64)
    templates = _residual_templates(k)
    pinv_cache: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
    for r in range(rows):
        scale = np.abs(x[r]).max()
        if _count_distinct(x[r], rtol) > 2 ** k:
            return None
        centers, labels = _clusters(x[r], rtol * scale)
        m = centers.size
        found = None
        for t, tmpl in enumerate(templates):
            for slots in itertools.combinations(range(2 ** k), m):
                key = (t, slots)
                if key not in pinv_cache:
                    pinv_cache[key] = np.linalg.pinv(tmpl[list(slots)])
                a = pinv_cache[key] @ centers
                if np.all(np.abs(tmpl[list(slots)] @ a - centers) <= rtol * max(scale, 1e-30)):
                    found = tmpl[list(slots)], a
                    break
            if found is not None:
                break
        if found is None:
            return None
        signs, a = found
        alpha[:, r] = a
        bits[:, r] = (signs[labels] > 0).T
    return bits, alpha.astype(np.float32)


def as_pow2(w: np.ndarray, rtol: float = RTOL) -> Pow2Codes | None:
    """``w`` as 5-bit power-of-two codes if every value is 0 or ``+-2^e`` and the exponents
    span at most :data:`POW2_EXPONENTS` consecutive values."""
    x = _rows(w)
    if x is None:
        return None
    mag = np.abs(x)
    top = mag.max()
    if top == 0:
        return None
    zero = mag <= rtol * top
    e = np.round(np.log2(np.where(zero, top, mag))).astype(np.int64)
    if np.any(~zero & (np.abs(mag - np.ldexp(1.0, e)) > rtol * mag)):
        return None
    e_min, e_max = int(e[~zero].min()), int(e[~zero].max())
    if e_max - e_min + 1 > POW2_EXPONENTS or e_min < -126 or e_max > 127:
        return None  # too wide for the code, or outside float32's normal range
    index = np.where(zero, 0, e - e_min + 1)
    codes = (index | np.where(x < 0, 16, 0)).astype(np.uint8)
    return Pow2Codes(tuple(np.shape(w)), codes.reshape(np.shape(w)), e_min)


def as_int4(w: np.ndarray, rtol: float = RTOL, groups: tuple[int, ...] = INT4_GROUPS
            ) -> Int4Groups | None:
    """``w`` as int4 codes with per-group scales, the coarsest group size in ``groups`` that
    fits (groups run along the flattened reduction axis)."""
    x = _rows(w)
    if x is None:
        return None
    for g in groups:
        found = _fit_int4(x, g, rtol)
        if found is not None:
            codes, scales = found
            codes, scales = codes[:, : x.shape[1]], scales
            target = np.asarray(w, np.float32).reshape(x.shape)
            scales = _exact_scales(codes, scales, g, target)
            return Int4Groups(tuple(np.shape(w)), g, codes.astype(np.int8), scales)
    return None


def _fit_int4(x: np.ndarray, g: int, rtol: float) -> tuple[np.ndarray, np.ndarray] | None:
    rows, k = x.shape
    ng = -(-k // g)
    v = np.zeros((rows, ng * g))
    v[:, :k] = x
    v = v.reshape(rows, ng, g)
    top = np.abs(v).max(axis=2)
    scales = np.zeros((rows, ng))
    codes = np.zeros(v.shape, np.int64)
    done = top == 0
    # the largest magnitude has code c in 1..8 (8 only as -8): try the largest scale first
    for c in range(1, 9):
        s = np.where(top > 0, top / c, 1.0)
        q = np.round(v / s[..., None])
        ok = ~done & np.all((np.abs(v - q * s[..., None]) <= rtol * top[..., None])
                            & (q >= -8) & (q <= 7), axis=2)
        scales[ok] = s[ok]
        codes[ok] = q[ok]
        done |= ok
    if not done.all():
        return None
    return codes.reshape(rows, ng * g), scales.astype(np.float32)


def _exact_scales(codes: np.ndarray, scales: np.ndarray, g: int,
                  target: np.ndarray) -> np.ndarray:
    rows, k = codes.shape
    ng = scales.shape[1]
    pad = np.zeros((rows, ng * g), np.float32)
    pad[:, :k] = target
    t = pad.reshape(rows, ng, g)
    c = np.zeros((rows, ng * g), np.float32)
    c[:, :k] = codes
    c = c.reshape(rows, ng, g)
    best = scales.copy()
    done = np.all(c * best[..., None] == t, axis=2)
    for n in (1, -1, 2, -2, 3, -3):
        trial = _ulps(scales, n)
        ok = ~done & np.all(c * trial[..., None] == t, axis=2)
        best[ok] = trial[ok]
        done |= ok
    return best
