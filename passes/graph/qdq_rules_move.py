"""``fold_qdq`` rules for pooling and data movement on quantized tensors.

Data movement (reshape, permute, squeeze, slices) and max pooling commute with a per-tensor
dequantize (it is monotone and elementwise): they run on the integer tensor. Average pooling and
means become int32 window sums with the count folded into the requantization multiplier.
Constants (weights, biases) moved by the same operators are computed here in numpy, because
the pass runs before ``FoldConstant`` (which would fold the int8 weights into float).
"""

from __future__ import annotations

import math

import numpy as np
from tvm import relax

from .qdq_emit import const, emit_dequantize, emit_float, emit_sum_pool
from .qdq_reps import Affine, Concat, QTensor, Term, Weight
from .qdq_rules import ACTIVATIONS, Ctx, Fallback, Out, Rule, input_reason, shape_of

_RESHAPES = {"relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten"}


def _with_input(call: relax.Call, data: relax.Expr) -> relax.Call:
    return relax.Call(call.op, [data, *call.args[1:]], call.attrs, call.ty_args)


def _move_array(call: relax.Call, values: np.ndarray, out: list[int]) -> np.ndarray | None:
    name = call.op.name
    if name in _RESHAPES:
        return values.reshape(out)
    if name == "relax.permute_dims":
        axes = call.attrs.axes
        return np.transpose(values, None if axes is None else [int(a) for a in axes])
    return None


def move(ctx: Ctx, call: relax.Call) -> Out | Fallback | None:
    """Reshape-like ops, permutes, slices and max pooling on the integer tensor."""
    rep = ctx.rep(call.args[0])
    out = shape_of(call)
    if isinstance(rep, QTensor):
        q = ctx.bb.emit(_with_input(call, rep.q))
        moved = QTensor(q, rep.scale, rep.zero_point, rep.dtype)
        return Out(emit_dequantize(moved), moved)
    if out is not None and isinstance(rep, np.ndarray):
        values = _move_array(call, rep, out)
        return None if values is None else Out(const(values, str(values.dtype)), values)
    if out is not None and isinstance(rep, Weight):
        full = rep.full()
        q, scale, zero = (_move_array(call, a, out) for a in (full.q, full.scale, full.zero))
        if q is None or scale is None or zero is None:
            return None
        moved_w = Weight(q, scale, zero, None)
        return Out(const(moved_w.values(), "float32"), moved_w)
    if isinstance(rep, ACTIVATIONS):
        return Fallback(input_reason(rep))
    return None


def astype(ctx: Ctx, call: relax.Call) -> Out | None:
    rep = ctx.rep(call.args[0])
    if isinstance(rep, np.ndarray):
        values = rep.astype(str(call.attrs.dtype))
        return Out(const(values, str(values.dtype)), values)
    return None


def concat(ctx: Ctx, call: relax.Call) -> Out | Fallback | None:
    fields = ctx.fields(call.args[0])
    if fields is None:
        return None
    reps = [ctx.rep(f) for f in fields]
    if not any(isinstance(r, ACTIVATIONS) for r in reps):
        return None
    if not all(isinstance(r, QTensor) for r in reps):
        return Fallback(input_reason(next(r for r in reps if not isinstance(r, QTensor))))
    parts = tuple(r for r in reps if isinstance(r, QTensor))
    out = shape_of(call)
    if out is None:
        return None
    axis = int(call.attrs.axis) % len(out)
    if all(p.same_params(parts[0]) for p in parts):
        q = ctx.bb.emit(relax.op.concat([p.q for p in parts], axis))
        joined = QTensor(q, parts[0].scale, parts[0].zero_point, parts[0].dtype)
        return Out(emit_dequantize(joined), joined)
    return Out(call, Concat(parts, axis))


def _pooled(ctx: Ctx, x: QTensor, total: relax.Expr, count: int, ndim: int) -> Out | Fallback:
    if count * x.deviation() >= 2**31:
        return Fallback(f"window of {count} values overflows the int32 sum")
    term = Term(total, np.array(x.scale / count), np.array(count * x.zero_point, np.int64),
                np.array(count * x.deviation()))
    aff = Affine((term,), np.zeros(()), 0, ndim)
    return Out(emit_float(ctx.bb, aff), aff)


def _sum(ctx: Ctx, x: QTensor, axes: list[int], keepdims: bool) -> relax.Expr:
    wide = ctx.bb.emit(relax.op.astype(x.q, "int32"))
    return ctx.bb.emit(relax.op.sum(wide, axes, keepdims))


def mean(ctx: Ctx, call: relax.Call) -> Out | Fallback | None:
    rep = ctx.rep(call.args[0])
    shape, out = shape_of(call.args[0]), shape_of(call)
    if not isinstance(rep, QTensor) or shape is None or out is None:
        return Fallback(input_reason(rep)) if isinstance(rep, ACTIVATIONS) else None
    axes = list(range(len(shape))) if call.attrs.axis is None else \
        sorted(int(a) % len(shape) for a in call.attrs.axis)
    count = math.prod(shape[a] for a in axes)
    total = _sum(ctx, rep, axes, bool(call.attrs.keepdims))
    return _pooled(ctx, rep, total, count, len(out))


def adaptive_avg_pool2d(ctx: Ctx, call: relax.Call) -> Out | Fallback | None:
    rep = ctx.rep(call.args[0])
    shape, out = shape_of(call.args[0]), shape_of(call)
    if not isinstance(rep, QTensor) or shape is None or out is None:
        return Fallback(input_reason(rep)) if isinstance(rep, ACTIVATIONS) else None
    if call.attrs.layout != "NCHW" or call.attrs.out_layout != "NCHW":
        return Fallback(f"layout {call.attrs.layout}: integer pooling needs NCHW")
    (h, w), (oh, ow) = shape[2:], out[2:]
    if (oh, ow) == (1, 1):
        return _pooled(ctx, rep, _sum(ctx, rep, [2, 3], True), h * w, 4)
    if h % oh or w % ow:
        return Fallback(f"adaptive pooling {h}x{w} -> {oh}x{ow}: windows of unequal size")
    kh, kw = h // oh, w // ow
    total = emit_sum_pool(ctx.bb, rep, shape[1], (kh, kw), (kh, kw), (1, 1), (0, 0, 0, 0))
    return _pooled(ctx, rep, total, kh * kw, 4)


def avg_pool2d(ctx: Ctx, call: relax.Call) -> Out | Fallback | None:
    rep = ctx.rep(call.args[0])
    shape, out = shape_of(call.args[0]), shape_of(call)
    if not isinstance(rep, QTensor) or shape is None or out is None:
        return Fallback(input_reason(rep)) if isinstance(rep, ACTIVATIONS) else None
    a = call.attrs
    if a.layout != "NCHW" or a.out_layout != "NCHW":
        return Fallback(f"layout {a.layout}: integer pooling needs NCHW")
    pool = [int(v) for v in a.pool_size]
    pad = [int(v) for v in a.padding]
    if any(pad) and not a.count_include_pad:
        return Fallback("avg_pool2d with padding left out of the count: the divisor varies "
                        "per position")
    strides, dilation = [int(v) for v in a.strides], [int(v) for v in a.dilation]
    for i in range(2):
        span = dilation[i] * (pool[i] - 1) + 1
        if (shape[2 + i] + pad[i] + pad[i + 2] - span) // strides[i] + 1 != out[2 + i]:
            return Fallback("avg_pool2d with ceil_mode windows past the border")
    total = emit_sum_pool(ctx.bb, rep, shape[1], (pool[0], pool[1]), strides, dilation, pad)
    return _pooled(ctx, rep, total, pool[0] * pool[1], 4)


MOVE_RULES: dict[str, Rule] = {
    **{name: move for name in (*_RESHAPES, "relax.permute_dims", "relax.strided_slice",
                               "relax.nn.max_pool2d")},
    "relax.astype": astype,
    "relax.concat": concat,
    "relax.mean": mean,
    "relax.nn.adaptive_avg_pool2d": adaptive_avg_pool2d,
    "relax.nn.avg_pool2d": avg_pool2d,
}
