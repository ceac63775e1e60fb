"""Rewrite products with sparse constant weights to squeezer's ``sparse_matmul`` kernel.

Matches ``matmul(x, W)`` (a linear layer after ``FoldConstant``; ``x`` of any rank), 1x1
``conv2d(x, W)`` (NCHW, batch 1, no padding, groups 1; stride 2 becomes a strided slice of
``x`` first) and KxK ``conv2d`` (NCHW, batch 1, groups 1, stride 1 or 2, symmetric padding:
the direct sparse convolution of :mod:`squeezer.schedules.sparse_conv2d`) whose weight is a
constant. Depthwise and grouped convolutions stay dense. For each, a cost model
(:func:`squeezer.schedules.sparse_cost.choose_format`) compares the dense kernel with the
sparse kernel for every supported block shape, using the weight's actual zero pattern, and
rewrites only where a sparse format is predicted faster. A model pruned by another tool (zeros
in an ONNX initializer or a state dict) takes exactly this path: nothing but the values is read.

The weight becomes three constants (BSR data, narrow indices, row pointers), so the artifact
stores it compressed. Bias and activation that follow are fused into the kernel's epilogue by
``FuseOps`` (the kernel is marked output-elementwise-fusable).
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax
from tvm.ir import Op
from tvm.relax import PyExprMutator, expr_functor

from squeezer.schedules.sparse_conv2d import conv_geometry, conv_offsets, sparse_conv2d_func
from squeezer.schedules.sparse_cost import choose_format
from squeezer.schedules.sparse_matmul import SparseWeight, sparse_matmul_func

CONV_BLOCKS = ((1, 1), (4, 1), (8, 1), (16, 1))  # direct convolution: blocks of output rows


def _is_const(expr: relax.Expr) -> bool:
    return isinstance(expr, tvm.ir.expr.GenericConst)


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


@expr_functor.mutator
class _Sparsify(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, target, log: list[dict]):
        super().__init__(mod)
        self.target = target
        self.log = log

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call, relax.Call) or not isinstance(call.op, Op):
            return call
        new = None
        if call.op.name == "relax.matmul":
            new = self._matmul(call)
        elif call.op.name == "relax.nn.conv2d":
            new = self._conv1x1(call)
            if new is None:
                new = self._conv_direct(call)
        return call if new is None else new

    def _sparse_call(self, w: np.ndarray, b: relax.Expr, p: int, b_layout: str,
                     y_layout: str, where: str,
                     y_image: tuple[int, int] | None = None) -> relax.Expr | None:
        block = choose_format(w, p, self.target, log=self.log, where=where)
        if block is None:
            return None
        sw = SparseWeight.for_product(w, block, p)
        func = sparse_matmul_func(sw, p, b_layout=b_layout, y_layout=y_layout, y_image=y_image)
        gv = self.builder_.add_func(func, "sparse_matmul")
        n = w.shape[0]
        args = [b, relax.const(sw.data), relax.const(sw.indices), relax.const(sw.indptr),
                relax.const(np.zeros(n, np.float32))]
        shape = (n, p) if y_layout == "np" else (p, n)
        if y_image is not None:
            shape = (1, n, *y_image)
        return relax.call_tir(gv, args, out_ty=relax.TensorType(shape, "float32"))

    def _matmul(self, call: relax.Call) -> relax.Expr | None:
        x, w = call.args
        xs, ws = _static_shape(x), _static_shape(w)
        if not _is_const(w) or xs is None or ws is None or len(ws) != 2:
            return None
        if len(xs) < 2 or x.ty.dtype != "float32" or str(w.value.dtype) != "float32":
            return None
        k, n = ws
        m = math.prod(xs[:-1])
        x2 = x if len(xs) == 2 else self.builder_.emit(relax.op.reshape(x, (m, k)))
        weight = np.ascontiguousarray(w.value.numpy().T)
        y = self._sparse_call(weight, x2, m, "pk", "pn", f"matmul {tuple(xs)} x {k}x{n}")
        if y is None or len(xs) == 2:
            return y
        return relax.op.reshape(self.builder_.emit(y), (*xs[:-1], n))

    def _conv1x1(self, call: relax.Call) -> relax.Expr | None:
        x, w = call.args
        a = call.attrs
        xs, ws = _static_shape(x), _static_shape(w)
        if not _is_const(w) or xs is None or ws is None:
            return None
        if (a.data_layout, a.kernel_layout) != ("NCHW", "OIHW") or a.out_layout != "NCHW":
            return None
        if int(a.groups) != 1 or ws[2:] != [1, 1] or xs[0] != 1 or x.ty.dtype != "float32":
            return None
        if any(int(v) != 1 for v in a.dilation) or any(int(v) != 0 for v in a.padding):
            return None
        sh, sw_ = (int(v) for v in a.strides)
        if (sh, sw_) != (1, 1):
            x = self.builder_.emit(relax.op.strided_slice(
                x, axes=[2, 3], begin=[0, 0], end=[xs[2], xs[3]], strides=[sh, sw_]))
            xs = _static_shape(x)
            assert xs is not None
        _, c, h, wd = xs
        o = ws[0]
        b = self.builder_.emit(relax.op.reshape(x, (c, h * wd)))
        weight = w.value.numpy().reshape(o, c)
        return self._sparse_call(weight, b, h * wd, "kp", "np", f"conv1x1 {tuple(xs)} -> {o}",
                                 y_image=(h, wd))


    def _conv_direct(self, call: relax.Call) -> relax.Expr | None:
        """A KxK convolution (K > 1) with sparse weights: the direct sparse kernel."""
        x, w = call.args
        a = call.attrs
        xs, ws = _static_shape(x), _static_shape(w)
        if not _is_const(w) or xs is None or ws is None or xs[0] != 1:
            return None
        if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW"):
            return None
        if int(a.groups) != 1 or x.ty.dtype != "float32" or ws[2:] == [1, 1]:
            return None
        if any(int(v) != 1 for v in a.dilation):
            return None
        strides = [int(v) for v in a.strides]
        pad = [int(v) for v in a.padding]  # top, left, bottom, right
        if strides[0] != strides[1] or strides[0] not in (1, 2):
            return None
        if pad[0] != pad[2] or pad[1] != pad[3]:
            return None
        geo = conv_geometry(tuple(xs[1:]), tuple(ws[2:]), strides[0], (pad[0], pad[1]))
        weight = w.value.numpy()
        o = ws[0]
        block = choose_format(weight.reshape(o, -1), geo["oh"] * geo["ow"], self.target,
                              log=self.log, where=f"conv{ws[2]}x{ws[3]} {tuple(xs)} -> {o}",
                              blocks=CONV_BLOCKS)
        if block is None:
            return None
        sw = conv_offsets(weight, block, geo)
        gv = self.builder_.add_func(sparse_conv2d_func(sw, geo), "sparse_conv2d")
        args = [x, relax.const(sw.data), relax.const(sw.indices), relax.const(sw.indptr),
                relax.const(np.zeros(o, np.float32))]
        return relax.call_tir(gv, args, out_ty=relax.TensorType(
            (1, o, geo["oh"], geo["ow"]), "float32"))


def sparsify_weights(log: list[dict] | None = None) -> tvm.transform.Pass:
    """The pass: sparse constant weights of matmul and 1x1 conv2d to ``sparse_matmul``.

    ``log`` (optional) receives one entry per candidate layer: where, density, chosen format,
    estimated dense and sparse times.
    """
    entries = log if log is not None else []

    @tvm.transform.module_pass(opt_level=0, name="squeezer.SparsifyWeights")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        target = tvm.target.Target.current(allow_none=True)
        rewriter = _Sparsify(mod, target, entries)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.finalize()

    return _pass
