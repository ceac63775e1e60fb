"""Per-operator rules of ``fold_qdq``: quantize/dequantize, products, adds, activations.

A rule looks at one call whose arguments ``ctx.rep`` describes (see ``qdq_reps``) and returns
:class:`Out` (the float value to bind, with what is known about it), :class:`Fallback` (the call
stays float, with the reason for the report) or ``None`` (nothing quantized is involved).
Pooling and data movement are in ``qdq_rules_move``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tvm import relax

from squeezer.errors import SqueezerError

from .qdq_emit import const, emit_conv, emit_float, emit_requant
from .qdq_reps import INT8_DTYPES, Affine, Concat, PerAxis, QTensor, Term, Weight
from .weight_formats import detect


class Ctx(Protocol):
    bb: relax.BlockBuilder
    where: str
    requant: str  # "int64" | "vta32" (qdq_emit.emit_requant)

    def rep(self, expr: relax.Expr) -> object | None: ...

    def fields(self, expr: relax.Expr) -> list[relax.Expr] | None: ...


@dataclass(frozen=True)
class Out:
    value: relax.Expr
    rep: object | None = None


@dataclass(frozen=True)
class Fallback:
    reason: str


@dataclass(frozen=True)
class LowBit(Fallback):
    """The weight holds a low-bit format (int4 groups, binary, ternary, residual, powers of two):
    not a float fallback, ``int4_weights`` or ``binarize`` takes the operator later and reports
    it if it stays float."""


Rule = Callable[[Ctx, relax.Call], "Out | Fallback | None"]
ACTIVATIONS = (QTensor, Affine, Concat, PerAxis)


def shape_of(expr: relax.Expr) -> list[int] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return [int(d) for d in ty.shape.values]
    except TypeError:
        return None


def input_reason(rep: object | None) -> str:
    if isinstance(rep, PerAxis):
        return (f"input quantized per channel (axis {rep.axis}); integer operators need one "
                "scale per activation tensor")
    if isinstance(rep, Affine):
        return "input is the float result of an integer operator with no quantize after it"
    if isinstance(rep, Concat):
        return "input concatenates differently quantized tensors with no quantize after it"
    if isinstance(rep, Weight | np.ndarray):
        return "input is a constant"
    return "input is not quantized (no dequantize before it)"


def check_scale(scale: np.ndarray, where: str, what: str) -> None:
    if not np.isfinite(scale).all() or (scale <= 0).any():
        bad = scale.reshape(-1)[~(np.isfinite(scale.reshape(-1)) & (scale.reshape(-1) > 0))]
        raise SqueezerError(f"{where}: {what} scale must be finite and > 0, got {bad[0]}")


def affine_of(rep: object | None, ndim: int) -> Affine | None:
    if isinstance(rep, QTensor):
        return rep.as_affine(ndim)
    return rep if isinstance(rep, Affine) else None


def varying_axes(w: Weight) -> list[int]:
    s = np.broadcast_to(w.scale, w.q.shape)
    return [ax for ax in range(s.ndim) if s.shape[ax] > 1 and
            not (np.diff(s, axis=ax) == 0).all()]


# -- quantize / dequantize -------------------------------------------------------------------
def dequantize(ctx: Ctx, call: relax.Call) -> Out | None:
    x, s, z = call.args
    sv, zv, xv = ctx.rep(s), ctx.rep(z), ctx.rep(x)
    if not isinstance(sv, np.ndarray) or not isinstance(zv, np.ndarray):
        return None
    check_scale(sv.astype(np.float64), ctx.where, "dequantize")
    shape = shape_of(call)
    if shape is None:
        return None
    ndim = len(shape)
    axis = int(call.attrs.axis) % max(ndim, 1)
    if isinstance(xv, np.ndarray):
        per = [1] * ndim
        if sv.size > 1:
            per[axis] = sv.size
        scale = np.broadcast_to(sv.astype(np.float64).reshape(-1), (sv.size,)).reshape(per)
        zero = np.broadcast_to(zv.astype(np.int64).reshape(-1), (sv.size,)).reshape(per)
        return Out(call, Weight(xv, scale, zero, axis if sv.size > 1 else None))
    if sv.size > 1:
        return Out(call, PerAxis(axis))
    if zv.size == 1 and str(x.ty.dtype) in INT8_DTYPES:
        return Out(call, QTensor(x, float(sv.reshape(-1)[0]), int(zv.reshape(-1)[0]),
                                 str(x.ty.dtype)))
    return None


def quantize(ctx: Ctx, call: relax.Call) -> Out | None:
    y, s, z = call.args
    sv, zv = ctx.rep(s), ctx.rep(z)
    if not isinstance(sv, np.ndarray) or not isinstance(zv, np.ndarray):
        return None
    check_scale(sv.astype(np.float64), ctx.where, "quantize")
    if sv.size != 1 or zv.size != 1:
        return None  # per-axis activations stay float; their consumers report it
    scale, zp, dtype = float(sv.reshape(-1)[0]), int(zv.reshape(-1)[0]), call.attrs.out_dtype
    dtype = str(dtype)
    rep = ctx.rep(y)
    ndim = len(shape_of(call) or [])
    if isinstance(rep, np.ndarray):  # a float weight quantized in the graph
        info = np.iinfo(np.dtype(dtype))
        q = np.rint(rep.astype(np.float32) / np.float32(scale)) + zp
        values = np.clip(q, info.min, info.max).astype(dtype)
        return Out(const(values, dtype), values)
    if isinstance(rep, QTensor):
        target = QTensor(rep.q, scale, zp, dtype)
        if rep.same_params(target):
            return Out(rep.q)
        rep = rep.as_affine(ndim)
    if isinstance(rep, Affine):
        return Out(emit_requant(ctx.bb, rep, scale, zp, dtype, ctx.requant))
    if isinstance(rep, Concat):
        parts = []
        for p in rep.parts:
            same = p.same_params(QTensor(p.q, scale, zp, dtype))
            parts.append(p.q if same else ctx.bb.emit(
                emit_requant(ctx.bb, p.as_affine(ndim), scale, zp, dtype, ctx.requant)))
        return Out(relax.op.concat(parts, rep.axis))
    return None


# -- products --------------------------------------------------------------------------------
def _weight_checks(w: Weight, op: str) -> str | None:
    if str(w.q.dtype) not in INT8_DTYPES:
        return f"weight dtype {w.q.dtype}: integer {op} needs 8-bit weights"
    if (w.zero != 0).any():
        return "weight zero point is not 0 (asymmetric weights)"
    return None


def _operands(ctx: Ctx, call: relax.Call, op: str) -> tuple[QTensor, Weight] | Fallback | None:
    x, w = call.args[:2]
    rx, rw = ctx.rep(x), ctx.rep(w)
    if not isinstance(rx, ACTIVATIONS) and not isinstance(rw, ACTIVATIONS + (Weight,)):
        return None
    if isinstance(rx, QTensor) and isinstance(rw, QTensor):
        return Fallback(f"both operands are activations: no integer kernel for activation x "
                        f"activation {op}")
    if not isinstance(rx, QTensor):
        return Fallback(input_reason(rx))
    if isinstance(rw, np.ndarray):
        rows = rw.T if op == "matmul" and rw.ndim == 2 else rw  # one row per output
        fmt = detect(rows)
        if fmt is not None:
            return LowBit(f"{fmt.kind} weights: left to the low-bit kernels")
        return Fallback("weight is a float constant (not quantized)")
    if not isinstance(rw, Weight):
        return Fallback("weight is not a dequantized integer constant")
    bad = _weight_checks(rw, op)
    return Fallback(bad) if bad else (rx, rw)


def conv2d(ctx: Ctx, call: relax.Call) -> Out | Fallback | None:
    got = _operands(ctx, call, "conv2d")
    if not isinstance(got, tuple):
        return got
    x, w = got
    a = call.attrs
    if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return Fallback(f"layout {a.data_layout}/{a.kernel_layout}: integer conv2d needs "
                        "NCHW/OIHW")
    sw = w.per_axis(0)
    if sw is None:
        return Fallback(f"weight scale varies along axis {varying_axes(w)}: integer conv2d "
                        "needs one scale per output channel (axis 0) or per tensor")
    o = w.q.shape[0]
    acc = emit_conv(ctx.bb, x, w.q, a.strides, a.dilation, a.padding, int(a.groups))
    flat = w.q.reshape(o, -1).astype(np.int64)
    term = Term(acc, x.scale * sw, x.zero_point * flat.sum(1),
                np.abs(flat).sum(1) * x.deviation())
    aff = Affine((term,), np.zeros(o), 1, 4)
    return Out(emit_float(ctx.bb, aff), aff)


def matmul(ctx: Ctx, call: relax.Call) -> Out | Fallback | None:
    got = _operands(ctx, call, "matmul")
    if not isinstance(got, tuple):
        return got
    x, w = got
    if w.q.ndim != 2:
        return Fallback(f"weight of rank {w.q.ndim}: integer matmul needs a 2-D weight")
    sw = w.per_axis(1)
    if sw is None:
        return Fallback("weight scale varies along axis 0 (input features): integer matmul "
                        "needs one scale per output feature or per tensor")
    out = shape_of(call)
    if out is None:
        return None
    acc = ctx.bb.emit(relax.op.matmul(x.q, const(w.q, str(w.q.dtype)), out_dtype="int32"))
    wq = w.q.astype(np.int64)
    term = Term(acc, x.scale * sw, x.zero_point * wq.sum(0), np.abs(wq).sum(0) * x.deviation())
    aff = Affine((term,), np.zeros(w.q.shape[1]), len(out) - 1, len(out))
    return Out(emit_float(ctx.bb, aff), aff)


# -- add and activations ---------------------------------------------------------------------
def _bias_vector(bias: np.ndarray, shape: list[int]) -> tuple[np.ndarray, int | None] | None:
    """A constant that varies along at most one axis of ``shape`` as (values, axis)."""
    if bias.ndim > len(shape):
        return None
    full = bias.reshape([1] * (len(shape) - bias.ndim) + list(bias.shape))
    axes = [i for i, d in enumerate(full.shape) if d != 1]
    if len(axes) > 1 or any(full.shape[i] != shape[i] for i in axes):
        return None
    if not axes:
        return full.reshape(()).astype(np.float64), None
    return full.reshape(-1).astype(np.float64), axes[0]


def add(ctx: Ctx, call: relax.Call) -> Out | Fallback | None:
    a, b = call.args
    out = shape_of(call)
    if out is None:
        return None
    reps = [ctx.rep(a), ctx.rep(b)]
    affs = [affine_of(r, len(out)) for r in reps]
    if affs[0] is None and affs[1] is None:
        if any(isinstance(r, ACTIVATIONS) for r in reps):
            return Fallback(input_reason(next(r for r in reps if isinstance(r, ACTIVATIONS))))
        return None
    if affs[0] is not None and affs[1] is not None:
        return _add_two(ctx, affs[0], affs[1], [shape_of(a), shape_of(b)], out)
    lin, other = (affs[0], reps[1]) if affs[0] is not None else (affs[1], reps[0])
    assert lin is not None
    if isinstance(other, Weight):
        other = other.values()
    if not isinstance(other, np.ndarray):
        return Fallback("the other operand is " + input_reason(other).removeprefix("input is "))
    if lin.clamped:
        return Fallback("add after a clamp with no quantize between them")
    vec = _bias_vector(other, out)
    if vec is None or (vec[1] is not None and lin.channels() is not None and vec[1] != lin.axis):
        return Fallback("constant operand varies along more than the channel axis")
    values, axis = vec
    aff = lin.add_bias(values) if axis is None else Affine(lin.terms, lin.bias + values, axis,
                                                           lin.ndim)
    return Out(emit_float(ctx.bb, aff), aff)


def _add_two(ctx: Ctx, a: Affine, b: Affine, shapes, out) -> Out | Fallback:
    if shapes[0] != out or shapes[1] != out:
        return Fallback("add broadcasts one activation against another")
    if a.clamped or b.clamped:
        return Fallback("an operand is clamped (ReLU/clip) with no quantize after the clamp")
    ca, cb = a.channels(), b.channels()
    if ca is not None and cb is not None and (a.axis != b.axis or ca != cb):
        return Fallback("operands have per-channel scales on different axes")
    axis = a.axis if ca is not None else b.axis
    aff = Affine(a.terms + b.terms, a.bias + b.bias, axis, len(out))
    return Out(emit_float(ctx.bb, aff), aff)


def _clamp(ctx: Ctx, call: relax.Call, lo: float, hi: float) -> Out | Fallback | None:
    rep = ctx.rep(call.args[0])
    aff = affine_of(rep, len(shape_of(call) or []))
    if aff is None:
        return Fallback(input_reason(rep)) if isinstance(rep, ACTIVATIONS) else None
    aff = aff.clip(lo, hi)
    return Out(emit_float(ctx.bb, aff), aff)


def relu(ctx: Ctx, call: relax.Call) -> Out | Fallback | None:
    return _clamp(ctx, call, 0.0, math.inf)


def relu6(ctx: Ctx, call: relax.Call) -> Out | Fallback | None:
    return _clamp(ctx, call, 0.0, 6.0)


def clip(ctx: Ctx, call: relax.Call) -> Out | Fallback | None:
    bounds = []
    for arg in call.args[1:3]:
        value = getattr(arg, "value", None)
        if value is None:
            return Fallback("clip bounds are not constants")
        bounds.append(float(value))
    return _clamp(ctx, call, bounds[0], bounds[1])


def batch_norm(ctx: Ctx, call: relax.Call) -> Out | Fallback | None:
    """Inference batch norm after an integer product: one more per-channel scale and shift
    (a model quantized before its batch norms were folded into the convolutions)."""
    rep = ctx.rep(call.args[0])
    out = shape_of(call.args[0])
    aff = affine_of(rep, len(out or []))
    if aff is None or out is None:
        return Fallback(input_reason(rep)) if isinstance(rep, ACTIVATIONS) else None
    stats = [ctx.rep(a) for a in call.args[1:5]]
    if not all(isinstance(v, np.ndarray) for v in stats):
        return Fallback("batch_norm statistics are not constants")
    a = call.attrs
    if a.training:
        return Fallback("batch_norm in training mode")
    axis = int(a.axis) % len(out)
    if aff.clamped:
        return Fallback("batch_norm after a clamp with no quantize between them")
    if aff.channels() is not None and aff.axis != axis:
        return Fallback("batch_norm axis differs from the per-channel scales' axis")
    gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in stats)
    k = (gamma if a.scale else np.ones_like(var)) / np.sqrt(var + float(a.epsilon))
    shift = beta if a.center else np.zeros_like(var)
    terms = tuple(Term(t.expr, t.scale * k, np.broadcast_to(t.zero, k.shape).copy(),
                       np.broadcast_to(t.bound, k.shape).copy()) for t in aff.terms)
    new = Affine(terms, k * (aff.bias - mean) + shift, axis, aff.ndim)
    value = ctx.bb.emit(emit_float(ctx.bb, new))
    return Out(relax.Tuple([value, call.args[3], call.args[4]]), [new])


RULES: dict[str, Rule] = {
    "relax.dequantize": dequantize,
    "relax.quantize": quantize,
    "relax.nn.conv2d": conv2d,
    "relax.matmul": matmul,
    "relax.add": add,
    "relax.nn.relu": relu,
    "relax.nn.relu6": relu6,
    "relax.clip": clip,
    "relax.nn.batch_norm": batch_norm,
}
