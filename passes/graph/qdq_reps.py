"""What ``fold_qdq`` knows about a value: its integer form, and the fixed-point arithmetic.

A float tensor in a QDQ graph is tracked as one of:

- :class:`QTensor`: exactly ``dequantize(q, scale, zero_point)`` with one scale for the tensor
  (an 8-bit activation; what integer conv2d/matmul take as input).
- :class:`Affine`: ``clip(sum_i s_i * (x_i - z_i) + bias, lo, hi)`` over integer tensors
  ``x_i`` (an int32 accumulator, a quantized tensor), with ``s_i``, ``z_i`` and ``bias`` one per
  channel along ``axis`` or one for the tensor. Bias adds, ReLU/clip and adds of two quantized
  tensors extend it; a following ``quantize`` becomes one fixed-point requantization.
- :class:`Weight`: ``dequantize`` of a constant integer array (weights, int32 biases).
- :class:`Concat`: a concatenation of QTensors with different scales, requantized per part.
- :class:`PerAxis`: an activation dequantized per channel (kept float; named in the report).
- a numpy array: a constant computed from constants.

Requantization (:func:`requant_constants`) is fixed point, TFLite/gemmlowp style but in int64:
each real multiplier ``m = s_i / s_out`` becomes an integer mantissa ``M < 2**31`` and a right
shift ``n`` shared by the terms of a channel. With ``t = sum_i M_i * x_i + B`` (``B``: input zero
points and bias), ``y = zy + round(t / 2**n)`` rounds to nearest with ties to even, as float
``quantize`` (TVM, onnxruntime, torch) does: ``(t + 2**(n-1) - 1 + ((t >> n) & 1)) >> n``.
Ties are common where the multiplier is a power of two (average pooling over 4 values with
equal scales, requantization to the same scale); rounding them up instead would move up to
half of those outputs by one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from tvm import relax

INT8_DTYPES = ("int8", "uint8")


def dtype_range(dtype: str) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


@dataclass(frozen=True)
class QTensor:
    q: relax.Expr
    scale: float
    zero_point: int
    dtype: str

    def deviation(self) -> float:
        """Largest ``|q - zero_point|`` the dtype allows."""
        lo, hi = dtype_range(self.dtype)
        return float(max(self.zero_point - lo, hi - self.zero_point))

    def same_params(self, other: QTensor) -> bool:
        return (self.dtype, self.zero_point) == (other.dtype, other.zero_point) and \
            np.float32(self.scale) == np.float32(other.scale)

    def as_affine(self, ndim: int) -> Affine:
        one = np.float64(self.scale)
        return Affine((Term(self.q, np.array(one), np.array(self.zero_point, np.int64),
                            np.array(self.deviation())),), np.zeros(()), 0, ndim)


@dataclass(frozen=True)
class Term:
    """``scale * (expr - zero)``; ``bound`` is the largest ``|expr - zero|``."""

    expr: relax.Expr
    scale: np.ndarray  # float64, () or (C,)
    zero: np.ndarray  # int64, () or (C,)
    bound: np.ndarray  # float64, () or (C,)


@dataclass(frozen=True)
class Affine:
    terms: tuple[Term, ...]
    bias: np.ndarray  # float64, () or (C,)
    axis: int  # the channel axis of per-channel arrays (non-negative)
    ndim: int
    lo: float = -math.inf
    hi: float = math.inf

    @property
    def clamped(self) -> bool:
        return self.lo > -math.inf or self.hi < math.inf

    def channels(self) -> int | None:
        sizes = {a.size for t in self.terms for a in (t.scale, t.zero)} | {self.bias.size}
        sizes.discard(1)
        return sizes.pop() if sizes else None

    def clip(self, lo: float, hi: float) -> Affine:
        """``clip(self, lo, hi)``: clip composed with clip is one clip."""
        return replace(self, lo=min(max(self.lo, lo), hi), hi=min(max(self.hi, lo), hi))

    def add_bias(self, bias: np.ndarray) -> Affine:
        return replace(self, bias=self.bias + bias)


@dataclass(frozen=True)
class Weight:
    """``(q - zero) * scale`` of a constant; ``scale``/``zero`` broadcast against ``q``."""

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    axis: int | None  # the source's quantization axis (None: per tensor)

    def values(self) -> np.ndarray:
        return (self.q.astype(np.float64) - self.zero) * self.scale

    def full(self) -> Weight:
        shape = self.q.shape
        return replace(self, scale=np.broadcast_to(self.scale, shape).copy(),
                       zero=np.broadcast_to(self.zero, shape).copy())

    def per_axis(self, axis: int) -> np.ndarray | None:
        """The scale as one value per index of ``axis``, or None if it varies along another."""
        s = np.broadcast_to(self.scale, self.q.shape)
        moved = np.moveaxis(s, axis, 0).reshape(s.shape[axis], -1)
        if not (moved == moved[:, :1]).all():
            return None
        return moved[:, 0].astype(np.float64)


@dataclass(frozen=True)
class Concat:
    parts: tuple[QTensor, ...]
    axis: int


@dataclass(frozen=True)
class PerAxis:
    axis: int


@dataclass(frozen=True)
class Requant:
    """Constants of ``t = sum_i M_i * x_i + offset``,
    ``y = clip((t + ((t >> shift) & 1) + rounding) >> shift, lo, hi)`` (one value per channel).
    """

    multipliers: list[np.ndarray] = field(default_factory=list)  # int64 per term
    offset: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    rounding: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    lo: int = 0
    hi: int = 0

    def apply(self, xs: list[np.ndarray]) -> np.ndarray:
        """The same arithmetic in numpy (channels on the last axis): the tests' reference."""
        t = sum(np.asarray(x, np.int64) * m for x, m in zip(xs, self.multipliers, strict=True))
        t = t + self.offset
        y = (t + ((t >> self.shift) & 1) + self.rounding) >> self.shift
        return np.clip(y, self.lo, self.hi)


def requant_constants(aff: Affine, scale: float, zero_point: int, dtype: str) -> Requant:
    """Fixed-point constants requantizing ``aff`` to ``(scale, zero_point, dtype)``.

    The shift keeps every multiplier below 2**31 and every intermediate of
    ``sum M_i * x_i + B`` below 2**62 (from the terms' bounds), so int64 never overflows.
    """
    c = aff.channels() or 1
    ms = [np.broadcast_to(t.scale / scale, (c,)).astype(np.float64) for t in aff.terms]
    zs = [np.broadcast_to(t.zero, (c,)).astype(np.int64) for t in aff.terms]
    bounds = [np.broadcast_to(t.bound, (c,)) for t in aff.terms]
    bias = np.broadcast_to(aff.bias / scale, (c,)).astype(np.float64)
    biggest = np.max(np.stack([np.abs(m) for m in ms]), axis=0)
    exponent = np.frexp(np.maximum(biggest, np.finfo(np.float64).tiny))[1]
    ymax = sum(np.abs(m) * (b + np.abs(z)) for m, b, z in zip(ms, bounds, zs, strict=True))
    ymax = ymax + np.abs(bias) + abs(zero_point) + 2.0
    room = 61 - np.ceil(np.log2(ymax)).astype(np.int64)
    shift = np.minimum(np.minimum(31 - exponent, room), 62).astype(np.int64)
    if (shift < 1).any():
        raise ValueError(f"requantization multiplier {biggest.max():.3g} out of range")
    mults = [np.round(m * np.exp2(shift)).astype(np.int64) for m in ms]
    offset = np.round(bias * np.exp2(shift)).astype(np.int64)
    for m, z in zip(mults, zs, strict=True):
        offset -= m * z
    rounding = (np.int64(1) << (shift - 1)) - 1 + (np.int64(zero_point) << shift)
    lo, hi = clip_bounds(aff, scale, zero_point, dtype)
    return Requant(mults, offset, rounding, shift, lo, hi)


def clip_bounds(aff: Affine, scale: float, zero_point: int, dtype: str) -> tuple[int, int]:
    """The output range: the dtype's, narrowed by the affine's clamp (a ReLU: ``lo = zp``)."""
    qmin, qmax = dtype_range(dtype)
    lo, hi = qmin, qmax
    if aff.lo > -math.inf:
        lo = max(qmin, min(qmax, zero_point + int(np.rint(aff.lo / scale))))
    if aff.hi < math.inf:
        hi = min(qmax, max(qmin, zero_point + int(np.rint(aff.hi / scale))))
    return lo, hi


def channel_shape(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A () or (C,) array reshaped to broadcast along ``axis`` of an ``ndim`` tensor."""
    if values.size == 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def compact(values: np.ndarray) -> np.ndarray:
    """One value when all channels agree (scalar constants keep the epilogue small)."""
    flat = values.reshape(-1)
    return flat[:1].reshape(()) if (flat == flat[0]).all() else values


INT32_MAX = 2**31 - 1


def requant32_constants(aff: Affine, scale: float, zero_point: int, dtype: str):
    """Constants of the accelerator's 32-bit requantization ("vta32") of ``aff`` to
    ``(scale, zero_point, dtype)``: a :class:`~squeezer.targets.vta.layer.Requant32` for

        y = clip((((acc + offset) >> pre) * mult + rounding) >> post, lo, hi)

    in int32 arithmetic that cannot overflow for any input (VTA's ALU: ADD, SHR, MUL, MAX, MIN
    on 32-bit accumulators). ``aff`` has one term ``m * (acc - zero)`` with ``|acc - zero| <= B``
    (its bound); with ``h = 2**(pre-1)`` (0 for ``pre = 0``), ``offset = h - zero``, so
    ``|acc + offset| <= B + h``, ``u = (acc + offset) >> pre`` rounds ``(acc - zero) / 2**pre``
    half up, and ``|u * mult + rounding| <= U * |mult| + |rounding| < 2**31`` for ``U`` the
    largest ``|u|``. The output constant (bias and zero point) sits in ``rounding`` with
    ``2**-post`` resolution. Per channel every ``pre`` in 0..31 and ``post`` in 0..31 that keeps
    all of this in int32 is scored by its error bound in output steps where the output is not
    clipped, ``|m| h + (U' |mult - m 2**(pre+post)| + 1/2) / 2**post`` (``U'``: the largest
    ``|u|`` whose output lies within ``lo..hi``), and the smallest wins: ``mult`` is as large
    (precise) as the bound allows. Rounding is half up (the ALU has no AND for ties to
    even), so a result may differ from :func:`requant_constants` by one step near a tie.

    Raises
    ------
    ValueError
        more than one term, an 8-bit ``dtype`` not given, an accumulator whose bound exceeds
        int32, or a multiplier no int32 constants can express.
    """
    from squeezer.targets.vta.layer import Requant32

    if len(aff.terms) != 1:
        raise ValueError(f"vta32 requantization takes one accumulator, got {len(aff.terms)} "
                         "terms")
    if dtype not in INT8_DTYPES:
        raise ValueError(f"vta32 requantization writes int8 or uint8, not {dtype}")
    term = aff.terms[0]
    c = aff.channels() or 1
    m = np.broadcast_to(term.scale / scale, (c,)).astype(np.float64)
    zero = np.broadcast_to(term.zero, (c,)).astype(np.int64)
    bound = np.ceil(np.broadcast_to(term.bound, (c,))).astype(np.int64)
    out_const = np.broadcast_to(aff.bias / scale, (c,)).astype(np.float64) + zero_point
    if (np.abs(zero) + bound > INT32_MAX).any():
        raise ValueError(f"accumulator bound {int((np.abs(zero) + bound).max())} exceeds int32")
    lo, hi = clip_bounds(aff, scale, zero_point, dtype)
    # Precision matters up to the clip bounds: beyond them both forms clip.
    reach = np.maximum(np.abs(lo - out_const), np.abs(hi - out_const)) + 1.0
    with np.errstate(divide="ignore"):
        v_reach = np.where(m != 0, reach / np.abs(np.where(m != 0, m, 1.0)), np.inf)
    best = np.full(c, np.inf)
    pick = np.zeros((2, c), np.int64)  # pre, post
    post = np.arange(32, dtype=np.int64)[:, None]
    for pre in range(32):
        h = (1 << pre) >> 1
        umax = np.maximum(np.abs((h - bound) >> pre), np.abs((h + bound) >> pre)).astype(float)
        u_reach = np.minimum(umax, np.ceil(v_reach / 2.0**pre) + 1.0)
        exact = m * np.exp2(pre + post)
        mult = np.round(exact)
        rnd = np.round(out_const * np.exp2(post)) + ((1 << post) >> 1)
        ok = (np.abs(mult) <= INT32_MAX) & (umax * np.abs(mult) + np.abs(rnd) <= INT32_MAX)
        ok &= (bound + h <= INT32_MAX) & (np.abs(h - zero) <= INT32_MAX)
        err = np.abs(m) * h + (u_reach * np.abs(mult - exact) + 0.5) / np.exp2(post)
        err = np.where(ok, err, np.inf)
        j = np.argmin(err, axis=0)
        e = err[j, np.arange(c)]
        better = e < best
        best = np.where(better, e, best)
        pick[0] = np.where(better, pre, pick[0])
        pick[1] = np.where(better, j, pick[1])
    if not np.isfinite(best).all():
        raise ValueError(f"requantization multiplier {np.abs(m).max():.3g} has no int32 form")
    pre, post = pick
    offset = ((np.int64(1) << pre) >> 1) - zero
    mult = np.round(m * np.exp2(pre + post)).astype(np.int64)
    rounding = np.round(out_const * np.exp2(post)).astype(np.int64) + ((np.int64(1) << post) >> 1)
    return Requant32(offset=offset.astype(np.int32), pre=pre.astype(np.int32),
                     mult=mult.astype(np.int32), rounding=rounding.astype(np.int32),
                     post=post.astype(np.int32), lo=lo, hi=hi, out_dtype=dtype)
