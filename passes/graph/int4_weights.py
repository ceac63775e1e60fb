"""Rewrite products with int4-per-group constant weights to squeezer's ``int4_matmul`` kernel.

Matches ``matmul(x, W)`` (a linear layer after ``FoldConstant``; ``x`` float32 of any rank with
a static shape) whose weight ``W`` (``k x n``) is a float32 constant holding int4 values: per
output ``n``, groups of 32, 64 or 128 consecutive ``k`` that are integer multiples in ``[-8, 7]``
of one scale (:func:`squeezer.passes.graph.weight_formats.detect`, which reads the values
alone, so a model quantized by another tool takes the same path). Binary, ternary, residual and
power-of-two weights are left for the bit kernels even though their values also fit int4.

The weight becomes two constants, packed nibbles and per-group scales
(:class:`squeezer.schedules.int4_matmul.Int4Weight`), so the artifact stores it at about half a
byte per value. Bias and activation that follow are fused into the kernel's epilogue by
``FuseOps`` (the kernel is output-elementwise-fusable). Each low-bit weight met is logged as
``{"op", "where", "reason", "kernel", "format", ...}``; an int4 layer left as a float matmul
(an input without a static shape) also goes to ``float_fallback``.

Activations (``act``): ``"int16"`` quantizes them per row inside the kernel to 15 bits, split
in two int8 planes multiplied with VNNI (``vpdpbusd``): the results differ from the float
product by under 1e-4 of the largest output. ``"int8"`` uses one plane (half the multiplies):
about 0.7 %, more than the compiler's verification tolerance (1e-3 of the largest output) allows.
``"float"`` multiplies the float activations with the unpacked weights (float rounding only; no
VNNI needed, more instructions per weight). ``"auto"`` (default) is ``"int16"`` on AVX512-VNNI
targets and ``"float"`` elsewhere.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import tvm
from tvm import relax
from tvm.ir import Op
from tvm.relax import PyExprMutator, expr_functor

from squeezer.schedules.int4_matmul import Int4Weight, has_vnni, int4_matmul_func

from .weight_formats import Int4Groups, as_int4, detect

Activations = Literal["auto", "int8", "int16", "float"]
PROBE_ROWS = 8


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
class _Int4(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, act: str, log: list[dict],
                 float_log: list[dict] | None):
        super().__init__(mod)
        self.act = act
        self.log = log
        self.float_log = float_log

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if isinstance(call, relax.Call) and isinstance(call.op, Op) \
                and call.op.name == "relax.matmul":
            new = self._matmul(call)
            if new is not None:
                return new
        return call

    def _note(self, where: str, reason: str, **extra) -> None:
        self.log.append({"op": "matmul", "where": where, "reason": reason, **extra})
        if self.float_log is not None and extra.get("kernel") == "float":
            self.float_log.append({"op": "matmul", "where": where, "reason": reason})

    def _matmul(self, call: relax.Call) -> relax.Expr | None:
        x, w = call.args
        if not isinstance(w, tvm.ir.expr.GenericConst):
            return None
        ws = _static_shape(w)
        if ws is None or len(ws) != 2 or str(w.value.dtype) != "float32":
            return None
        k, n = ws
        xs = _static_shape(x)
        where = f"matmul {tuple(xs) if xs else '?'} x {k}x{n}"
        weight = np.ascontiguousarray(w.value.numpy().T)  # (n, k): rows are outputs
        # the full detector reads the whole weight many times (about 1 s for 3072 x 768): a
        # few rows rule out ordinary float weights first
        if as_int4(weight[:PROBE_ROWS]) is None:
            return None
        fmt = detect(weight)
        if fmt is None:
            return None  # an ordinary float weight: nothing to say
        if not isinstance(fmt, Int4Groups):
            self._note(where, f"{fmt.kind} weights: left to the bit kernels", format=fmt.kind)
            return None
        if xs is None or len(xs) < 1 or x.ty.dtype != "float32":
            self._note(where, "int4 weights kept float: the input needs a static float32 shape",
                       kernel="float", format="int4")
            return None
        iw = Int4Weight.from_codes(fmt.codes, fmt.scales, fmt.group)
        func = int4_matmul_func(tuple(xs), iw, self.act)
        gv = self.builder_.add_func(func, "int4_matmul")
        self._note(where, f"int4 group {fmt.group}, {self.act} activations",
                   kernel="int4_matmul", format="int4",
                   group=fmt.group, act=self.act, bytes=iw.nbytes, float_bytes=weight.nbytes)
        return relax.call_tir(gv, [x, relax.const(iw.packed), relax.const(iw.scales)],
                              out_ty=relax.TensorType((*xs[:-1], n), "float32"))


def int4_weights(log: list[dict] | None = None, act: Activations = "auto",
                 float_fallback: list[dict] | None = None) -> tvm.transform.Pass:
    """The pass: matmuls with int4-per-group constant weights to ``int4_matmul``.

    Parameters
    ----------
    log : optional; receives ``{"op", "where", "reason", ...}`` per weight that holds low-bit
        values: rewritten (with group, activations and bytes) or left alone, and why.
    act : ``"int16"`` or ``"int8"`` (need AVX512-VNNI in the current target), ``"float"``, or
        ``"auto"`` (``"int16"`` where the target has VNNI, else ``"float"``).
    float_fallback : optional; receives ``{"op", "where", "reason"}`` for each int4 layer that
        stays a float matmul (the compile report's table).

    Raises
    ------
    ValueError
        ``act="int8"``/``"int16"`` on a target without AVX512-VNNI, or an unknown ``act``.
    """
    if act not in ("auto", "int8", "int16", "float"):
        raise ValueError(f"int4_weights: act must be 'auto', 'int8', 'int16' or 'float', got "
                         f"{act!r}")
    entries = log if log is not None else []

    @tvm.transform.module_pass(opt_level=0, name="squeezer.Int4Weights")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        target = tvm.target.Target.current(allow_none=True)
        vnni = target is not None and has_vnni(target)
        mode = ("int16" if vnni else "float") if act == "auto" else act
        if mode != "float" and not vnni:
            raise ValueError(f"int4_weights: act={mode!r} needs an AVX512-VNNI target, got "
                             f"{target}")
        rewriter = _Int4(mod, mode, entries, float_fallback)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.finalize()

    return _pass
