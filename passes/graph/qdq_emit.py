"""Relax code that ``fold_qdq`` emits: integer products, requantization, float views.

Every piece is a plain elementwise Relax operator after the integer ``conv2d``/``matmul``, so
``FuseOps`` fuses the requantization into the product's epilogue:

    acc = nn.conv2d(xq, wq, out_dtype="int32")   # or matmul(xq, wq[K, N])
    t = astype(acc, "int64") * M + B             # M, B: int64, per output channel or scalar
    odd = (t >> n) & 1                           # ties to even
    y = astype(clip((t + odd + R) >> n, lo, hi), "uint8")   # R = 2**(n-1) - 1 + (zy << n)

With ``requant="vta32"`` a requantization to 8 bits of one accumulator that the accelerator can
compute (``conv2d`` with groups 1 and dilation 1, ``matmul``) is the accelerator's int32 form
instead (``qdq_reps.requant32_constants``; ``vta_partition`` recognizes exactly this chain):

    v = acc + offset;  u = v >> pre;  p = u * mult;  q = p + rounding
    y = astype(clip(q >> post, lo, hi), "uint8")       # every constant int32
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax

from .qdq_reps import (
    INT8_DTYPES,
    Affine,
    QTensor,
    channel_shape,
    compact,
    requant32_constants,
    requant_constants,
)

REQUANT_MODES = ("int64", "vta32")


def const(values, dtype: str) -> relax.Expr:
    # np.array, not np.ascontiguousarray: that one turns 0-d arrays into 1-d ones.
    return relax.const(np.array(values, dtype=dtype, order="C"), dtype)


def _channel_const(aff: Affine, values: np.ndarray, dtype: str) -> relax.Expr:
    return const(channel_shape(compact(np.asarray(values)), aff.axis, aff.ndim), dtype)


def emit_requant(bb: relax.BlockBuilder, aff: Affine, scale: float, zero_point: int,
                 dtype: str, mode: str = "int64") -> relax.Expr:
    """``quantize(aff, scale, zero_point, dtype)`` in integer arithmetic (see ``qdq_reps``).

    ``mode="vta32"`` emits the int32 form for one accumulator of an accelerator product
    requantized to 8 bits; the rest (sums of several terms, pooling and depthwise sums, other
    dtypes) runs on the CPU in every compile and keeps the int64 form, which rounds exactly."""
    if mode not in REQUANT_MODES:
        raise ValueError(f"requant mode must be one of {REQUANT_MODES}, got {mode!r}")
    if mode == "vta32" and len(aff.terms) == 1 and dtype in INT8_DTYPES and \
            _accelerator_product(bb, aff.terms[0].expr):
        return emit_requant32(bb, aff, scale, zero_point, dtype)
    r = requant_constants(aff, scale, zero_point, dtype)
    total = None
    for term, mult in zip(aff.terms, r.multipliers, strict=True):
        x = bb.emit(relax.op.astype(term.expr, "int64"))
        x = bb.emit(relax.op.multiply(x, _channel_const(aff, mult, "int64")))
        total = x if total is None else bb.emit(relax.op.add(total, x))
    assert total is not None
    total = bb.emit(relax.op.add(total, _channel_const(aff, r.offset, "int64")))
    shift = _channel_const(aff, r.shift, "int64")
    odd = bb.emit(relax.op.bitwise_and(bb.emit(relax.op.right_shift(total, shift)),
                                       const(1, "int64")))
    total = bb.emit(relax.op.add(total, odd))
    total = bb.emit(relax.op.add(total, _channel_const(aff, r.rounding, "int64")))
    total = bb.emit(relax.op.right_shift(total, shift))
    total = bb.emit(relax.op.clip(total, r.lo, r.hi))
    return relax.op.astype(total, dtype)


def _accelerator_product(bb: relax.BlockBuilder, expr: relax.Expr) -> bool:
    """Whether ``expr`` is bound to an int32 product the VTA accelerator can compute."""
    value = bb.lookup_binding(expr) if isinstance(expr, relax.Var) else None
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
        return False
    if value.op.name == "relax.matmul":
        return True
    return value.op.name == "relax.nn.conv2d" and int(value.attrs.groups) == 1 and \
        all(int(d) == 1 for d in value.attrs.dilation)


def emit_requant32(bb: relax.BlockBuilder, aff: Affine, scale: float, zero_point: int,
                   dtype: str) -> relax.Expr:
    """The vta32 chain (module docstring) on ``aff``'s single accumulator."""
    r = requant32_constants(aff, scale, zero_point, dtype)
    x = aff.terms[0].expr
    if str(x.ty.dtype) != "int32":
        x = bb.emit(relax.op.astype(x, "int32"))
    v = bb.emit(relax.op.add(x, _channel_const(aff, r.offset, "int32")))
    u = bb.emit(relax.op.right_shift(v, _channel_const(aff, r.pre, "int32")))
    p = bb.emit(relax.op.multiply(u, _channel_const(aff, r.mult, "int32")))
    q = bb.emit(relax.op.add(p, _channel_const(aff, r.rounding, "int32")))
    y = bb.emit(relax.op.right_shift(q, _channel_const(aff, r.post, "int32")))
    y = bb.emit(relax.op.clip(y, r.lo, r.hi))
    return relax.op.astype(y, dtype)


def emit_float(bb: relax.BlockBuilder, aff: Affine) -> relax.Expr:
    """The float value of ``aff`` for float consumers: ``sum s * x + (bias - sum s * z)``."""
    total = None
    base = np.asarray(aff.bias, np.float64)
    for term in aff.terms:
        x = bb.emit(relax.op.astype(term.expr, "float32"))
        x = bb.emit(relax.op.multiply(x, _channel_const(aff, term.scale, "float32")))
        base = base - term.scale * term.zero
        total = x if total is None else bb.emit(relax.op.add(total, x))
    assert total is not None
    out = relax.op.add(total, _channel_const(aff, base, "float32"))
    if aff.lo > -math.inf:
        out = relax.op.maximum(bb.emit(out), const(aff.lo, "float32"))
    if aff.hi < math.inf:
        out = relax.op.minimum(bb.emit(out), const(aff.hi, "float32"))
    return out


def emit_dequantize(q: QTensor) -> relax.Expr:
    return relax.op.dequantize(q.q, const(q.scale, "float32"), const(q.zero_point, "int32"))


def emit_sum_pool(bb: relax.BlockBuilder, x: QTensor, channels: int, pool: tuple[int, int],
                  strides, dilation, padding) -> relax.Expr:
    """Window sums of an NCHW tensor as an int32 depthwise convolution with ones; padding is
    filled with the zero point (the padded positions count as real zeros)."""
    ones = np.ones((channels, 1, *pool), np.int8)
    return emit_conv(bb, x, ones, strides, dilation, padding, channels)


def emit_conv(bb: relax.BlockBuilder, x: QTensor, w: np.ndarray, strides, dilation, padding,
              groups: int) -> relax.Expr:
    """``conv2d(xq, wq, out_dtype="int32")``; a nonzero zero point pads explicitly with it, so
    the zero-point correction ``zx * sum(w)`` is exact at the borders too."""
    data = x.q
    pad = [int(p) for p in padding]  # top, left, bottom, right
    if any(pad) and x.zero_point != 0:
        data = bb.emit(relax.op.nn.pad(data, [0, 0, 0, 0, pad[0], pad[2], pad[1], pad[3]],
                                       "constant", float(x.zero_point)))
        pad = [0, 0, 0, 0]
    return bb.emit(relax.op.nn.conv2d(data, const(w, str(w.dtype)), strides=strides,
                                      padding=pad, dilation=dilation, groups=groups,
                                      out_dtype="int32"))
