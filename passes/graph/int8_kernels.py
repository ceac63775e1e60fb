"""Rewrite integer ``conv2d``/``matmul`` (what ``fold_qdq`` emits) to squeezer's int8 kernels.

Matched (``x`` uint8 or int8, the weight an int8 constant, ``out_dtype="int32"``):

- ``matmul(x, W[K, N])``, ``x`` of any rank with last dimension ``K``: the GEMM of
  :mod:`squeezer.schedules.int8_matmul` (weight prepacked for the target's dot-product ISA);
- ``conv2d(x, W)`` in NCHW/OIHW, dilation 1, any strides, padding and groups, optionally on
  ``nn.pad(x0, pad_value=z)`` (the zero-point padding ``fold_qdq`` makes explicit; the pad is
  then absorbed into the kernel's packing stage): groups == channels with one input channel per
  group is the depthwise kernel (:mod:`squeezer.schedules.int8_depthwise`), everything else
  the direct convolution of :mod:`squeezer.schedules.int8_conv2d`.

Each becomes ``call_tir`` of a kernel with the weight (and the int32 compensation of signed
inputs on VNNI) as constants in the kernel's layout. The kernels are output-elementwise
fusable, so the requantization after them fuses into their epilogue. The instruction set comes
from the target in scope (``Target.current()``, the running CPU without one); a target without
AVX2 (or not x86) keeps the operators as they are.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir import Op
from tvm.relax import PyExprMutator, expr_functor

from squeezer.schedules.int8_conv2d import int8_conv2d_func, pack_conv_weight
from squeezer.schedules.int8_conv_geometry import ConvGeometry
from squeezer.schedules.int8_depthwise import int8_depthwise_func
from squeezer.schedules.int8_matmul import int8_matmul_func, pack_matmul_weight
from squeezer.schedules.vnni import DotIsa, select_isa

_ACT_DTYPES = ("uint8", "int8")


def _static_shape(expr: relax.Expr) -> list[int] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = []
    for d in ty.shape.values:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        dims.append(int(d))
    return dims


def _int8_const(expr: relax.Expr) -> np.ndarray | None:
    if not isinstance(expr, tvm.ir.expr.GenericConst):
        return None
    value = expr.value.numpy()
    return value if value.dtype == np.int8 else None


def _int32_product(call: relax.Call) -> bool:
    x = call.args[0]
    return str(call.attrs.out_dtype) == "int32" and isinstance(x.ty, relax.TensorType) \
        and str(x.ty.dtype) in _ACT_DTYPES


@expr_functor.mutator
class _Int8Kernels(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, isa: DotIsa):
        super().__init__(mod)
        self.isa = isa

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call, relax.Call) or not isinstance(call.op, Op):
            return call
        new = None
        if call.op.name == "relax.matmul" and _int32_product(call):
            new = self._matmul(call)
        elif call.op.name == "relax.nn.conv2d" and _int32_product(call):
            new = self._conv2d(call)
        return call if new is None else new

    def _matmul(self, call: relax.Call) -> relax.Expr | None:
        x, w = call.args
        weight, xs = _int8_const(w), _static_shape(x)
        if weight is None or weight.ndim != 2 or xs is None or not xs or xs[-1] != weight.shape[0]:
            return None
        dtype = str(x.ty.dtype)
        packed, comp = pack_matmul_weight(weight, self.isa, dtype)
        n = weight.shape[1]
        gv = self.builder_.add_func(int8_matmul_func(tuple(xs), dtype, n, self.isa),
                                    "int8_matmul")
        return relax.call_tir(gv, [x, relax.const(packed), relax.const(comp)],
                              out_ty=relax.TensorType((*xs[:-1], n), "int32"))

    def _conv2d(self, call: relax.Call) -> relax.Expr | None:
        x, w = call.args
        a = call.attrs
        weight = _int8_const(w)
        if weight is None or weight.ndim != 4:
            return None
        if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW"):
            return None
        if any(int(v) != 1 for v in a.dilation):
            return None
        pad = [int(v) for v in a.padding]  # top, left, bottom, right
        pad_value = 0
        x, pad, pad_value = self._absorb_pad(x, pad)
        xs = _static_shape(x)
        if xs is None or len(xs) != 4:
            return None
        n, c, h, wd = xs
        o, cg, kh, kw = weight.shape
        groups = int(a.groups)
        dtype = str(x.ty.dtype)
        sh, sw = (int(v) for v in a.strides)
        geo = ConvGeometry(n, c, h, wd, o, kh, kw, groups, sh, sw, pad[0], pad[1], pad[2],
                           pad[3], self.isa.lanes)
        out = relax.TensorType((n, o, geo.oh, geo.ow), "int32")
        if groups == c and cg == 1:
            gv = self.builder_.add_func(int8_depthwise_func(geo, dtype, pad_value),
                                        "int8_depthwise")
            return relax.call_tir(gv, [x, relax.const(weight)], out_ty=out)
        packed, comp = pack_conv_weight(weight, self.isa, dtype)
        gv = self.builder_.add_func(int8_conv2d_func(geo, dtype, pad_value, self.isa),
                                    "int8_conv2d")
        return relax.call_tir(gv, [x, relax.const(packed), relax.const(comp)], out_ty=out)

    def _absorb_pad(self, x: relax.Expr, pad: list[int]) -> tuple[relax.Expr, list[int], int]:
        """``x = nn.pad(x0, ...)`` (constant, spatial only) with the convolution's own padding
        zero: ``(x0, the pad's widths, its value)``; else ``(x, pad, 0)``."""
        if any(pad) or not isinstance(x, relax.Var):
            return x, pad, 0
        bound = self.lookup_binding(x)
        if not (isinstance(bound, relax.Call) and isinstance(bound.op, Op)
                and bound.op.name == "relax.nn.pad"):
            return x, pad, 0
        attrs = bound.attrs
        widths = [int(v) for v in attrs.pad_width]
        value = float(attrs.pad_value)
        lo, hi = (0, 255) if str(x.ty.dtype) == "uint8" else (-128, 127)
        if str(attrs.pad_mode) != "constant" or len(widths) != 8 or any(widths[:4]) \
                or value != int(value) or not lo <= value <= hi:
            return x, pad, 0
        # pad_width is (before, after) per axis: H then W; the conv's order is t, l, b, r
        return bound.args[0], [widths[4], widths[6], widths[5], widths[7]], int(value)


def int8_kernels() -> tvm.transform.Pass:
    """The pass: integer conv2d and matmul on int8 constant weights to squeezer's kernels."""

    @tvm.transform.module_pass(opt_level=0, name="squeezer.Int8Kernels")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        target = tvm.target.Target.current(allow_none=True)
        if target is None:
            from squeezer.targets.cpu import make_target

            target = make_target()
        if str(target.kind.name) != "llvm":
            return mod
        try:
            isa = select_isa(target)
        except ValueError:
            return mod  # no AVX2 (or not x86): the generic integer operators stay
        rewriter = _Int8Kernels(mod, isa)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.finalize()

    return _pass
