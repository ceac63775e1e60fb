"""Fold quantize/dequantize (QDQ) pairs into integer operators with fixed-point requantization.

Quantized models reach Relax as QDQ graphs (ONNX ``QuantizeLinear``/``DequantizeLinear`` from
``onnxruntime.quantization.quantize_static``, torch ``quantized_decomposed`` ops from squeezer's
quantizer): every quantized operator computes in float between ``dequantize`` and
``quantize``. This pass walks each function in order and tracks what every float value is in
integer terms (``qdq_reps``); the rules (``qdq_rules``, ``qdq_rules_move``) rewrite:

- ``conv2d`` (regular, grouped, depthwise) and ``matmul`` with a per-tensor quantized input and
  an int8 constant weight (per tensor or per output channel, zero point 0) into
  ``conv2d``/``matmul`` on the raw integers with ``out_dtype="int32"``; zero-point corrections,
  bias, ReLU/ReLU6/clip and the following ``quantize`` become one fixed-point requantization
  (elementwise int64 operators that ``FuseOps`` fuses into the kernel's epilogue). Without a
  following quantize, the int32 accumulator is converted to float (``acc * sx * sw + b``).
- inference ``batch_norm`` after such a product (a model quantized before its batch norms were
  folded) joins the requantization as one more per-channel scale and shift.
- ``add`` of two quantized tensors, average pooling and means (int32 sums), max pooling and data
  movement (on the integer tensor), ``concat`` and ``relu``/``clip`` between dequantize and
  quantize; ``quantize(dequantize(q))`` becomes ``q`` or a requantization.

Everything else stays float with its QDQ around it. In a function that holds any QDQ, every
operator left in float is appended to ``log`` as ``{"op", "where", "reason"}`` (the compile
report and the artifact manifest show the list); data movement on tensors that were never
quantized (a flatten before the first quantize) does no arithmetic and is not listed. Scales
that are NaN, infinite, zero or negative raise :class:`~squeezer.errors.SqueezerError` naming
the node.

The pass runs before the first ``FoldConstant`` of the graph stage, which would fold the
``dequantize`` of each int8 weight into a float constant; constants the frontends reshape or
transpose are therefore computed here.
"""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.ir import Op
from tvm.relax import PyExprMutator, expr_functor

from squeezer.errors import SqueezerError

from .qdq_emit import REQUANT_MODES
from .qdq_reps import Weight
from .qdq_rules import ACTIVATIONS, RULES, Fallback, LowBit, Out, shape_of
from .qdq_rules_move import MOVE_RULES

_ALL_RULES = {**RULES, **MOVE_RULES}
# Errors raised inside the pass cross TVM's FFI; registered, they keep their type.
tvm_ffi.register_error(SqueezerError)
_QDQ = ("relax.quantize", "relax.dequantize")
_DATA_MOVEMENT = {"relax.reshape", "relax.permute_dims", "relax.expand_dims", "relax.squeeze",
                  "relax.flatten", "relax.strided_slice", "relax.concat", "relax.split",
                  "relax.take"}


def _has_qdq(func: relax.Function) -> bool:
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, Op) and expr.op.name in _QDQ:
            found.append(expr)

    relax.analysis.post_order_visit(func.body, visit)
    return bool(found)


def _shape_text(expr: relax.Expr) -> str:
    shape = shape_of(expr)
    return "?" if shape is None else "x".join(str(d) for d in shape) or "scalar"


def _is_float(ty) -> bool:
    if isinstance(ty, relax.TupleType):
        return any(_is_float(f) for f in ty.fields)
    return isinstance(ty, relax.TensorType) and str(ty.dtype).startswith(("float", "bfloat"))


@expr_functor.mutator
class _FoldQDQ(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, log: list[dict], requant: str):
        super().__init__(mod)
        self.bb = self.builder_
        self.log = log
        self.requant = requant
        self.reps: dict[relax.Var, object] = {}
        self.tuples: dict[relax.Var, list[relax.Expr]] = {}
        self.floats: set[relax.Var] = set()  # results of operators reported as left in float
        # results of low-bit weight products (a later pass's kernels) and of the float
        # operators after them (their epilogue): not fallbacks of this pass
        self.lowbit: set[relax.Var] = set()
        self.where = ""
        self.quantized = False

    # -- the context the rules see ---------------------------------------------------------
    def rep(self, expr: relax.Expr) -> object | None:
        if isinstance(expr, tvm.ir.expr.GenericConst):
            return expr.value.numpy()
        if isinstance(expr, relax.Var):
            return self.reps.get(expr)
        return None

    def fields(self, expr: relax.Expr) -> list[relax.Expr] | None:
        if isinstance(expr, relax.Tuple):
            return list(expr.fields)
        return self.tuples.get(expr) if isinstance(expr, relax.Var) else None

    # -- the walk --------------------------------------------------------------------------
    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        var, value = binding.var, binding.value
        if isinstance(value, relax.Tuple):
            self.tuples[var] = list(value.fields)
        if isinstance(value, relax.Var) and value in self.reps:
            self.reps[var] = self.reps[value]
        if isinstance(value, relax.Var | relax.TupleGetItem):  # e.g. batch_norm's field 0
            source = value if isinstance(value, relax.Var) else value.tuple_value
            if source in self.lowbit:
                self.lowbit.add(var)
        if isinstance(value, relax.TupleGetItem):  # a rep per field: [rep of field 0, ...]
            fields = self.reps.get(value.tuple_value)
            if isinstance(fields, list) and value.index < len(fields):
                self.reps[var] = fields[value.index]
        if not (isinstance(value, relax.Call) and isinstance(value.op, Op)):
            super().visit_var_binding_(binding)
            return
        call = self.visit_expr(value)
        self.where = f"{var.name} ({call.op.name.removeprefix('relax.')})"
        rule = _ALL_RULES.get(call.op.name)
        result = rule(self, call) if rule is not None else None
        if isinstance(result, Out):
            new = self.builder_.normalize(result.value)
            if not tvm_ffi.structural_equal(new.ty, var.ty):
                raise AssertionError(f"fold_qdq changed the type of {self.where}: "
                                     f"{var.ty} -> {new.ty}")
            self.builder_.emit_normalized(relax.VarBinding(var, new))
            if result.rep is not None:
                self.reps[var] = result.rep
            return
        if self.quantized:
            self._note_float(var, call, result)
        super().visit_var_binding_(binding)

    def _note_float(self, var: relax.Var, call: relax.Call, result: Fallback | None) -> None:
        op = call.op.name.removeprefix("relax.")
        args = []
        for a in call.args:
            args.extend(self.fields(a) or [a])
        if isinstance(result, LowBit):
            self.lowbit.add(var)
            return
        if result is None:
            if call.op.name in _QDQ or not _is_float(var.ty):
                return
            if any(a in self.lowbit for a in args) and not any(a in self.floats for a in args):
                self.lowbit.add(var)
                return
            reps = [self.rep(a) for a in args if isinstance(a.ty, relax.TensorType)]
            if all(isinstance(r, np.ndarray | Weight) for r in reps):
                return  # constants only: FoldConstant computes it
            if any(isinstance(r, ACTIVATIONS) for r in reps):
                reason = f"no integer form for {op}"
            elif call.op.name in _DATA_MOVEMENT:
                # No arithmetic: as fast on floats (e.g. a flatten before the quantize).
                if any(a in self.floats for a in args):
                    self.floats.add(var)
                return
            elif any(a in self.floats for a in args):
                reason = "its input comes from an operator left in float"
            else:
                reason = "not quantized in the model (no dequantize before it)"
        else:
            reason = result.reason
        self.floats.add(var)
        first = next((a for a in call.args if isinstance(a.ty, relax.TensorType)), None)
        shapes = f"{_shape_text(first)} -> " if first is not None else ""
        self.log.append({"op": op, "where": f"{var.name} ({shapes}{_shape_text(var)})",
                         "reason": reason})


def fold_qdq(log: list[dict] | None = None, requant: str = "int64") -> tvm.transform.Pass:
    """The pass: QDQ around conv2d, matmul, add and pooling to integer operators.

    Parameters
    ----------
    log : list, optional
        Receives one ``{"op", "where", "reason"}`` entry per operator left in float in a
        function that holds quantize/dequantize operators.
    requant : {"int64", "vta32"}
        The requantization arithmetic: int64 fixed point (CPU default), or the VTA
        accelerator's int32 form for single-accumulator requantizations to 8 bits (the CPU
        reference of a VTA compile; see ``qdq_emit``).
    """
    if requant not in REQUANT_MODES:
        raise ValueError(f"fold_qdq: requant must be one of {REQUANT_MODES}, got {requant!r}")
    entries = log if log is not None else []

    @tvm.transform.module_pass(opt_level=0, name="squeezer.FoldQDQ")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        funcs = [(gv, f) for gv, f in mod.functions_items()
                 if isinstance(f, relax.Function) and _has_qdq(f)]
        if not funcs:
            return mod
        mod = relax.transform.CanonicalizeBindings()(mod)
        rewriter = _FoldQDQ(mod, entries, requant)
        for gv, _ in funcs:
            rewriter.quantized = True
            # Dead code first (e.g. the unused indices of a max pool): it is not reported.
            func = rewriter.visit_expr(relax.analysis.remove_all_unused(mod[gv]))
            rewriter.builder_.update_func(gv, relax.analysis.remove_all_unused(func))
        return relax.transform.CanonicalizeBindings()(rewriter.builder_.finalize())

    return _pass
