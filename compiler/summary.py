"""Per-layer summary of a Relax model: operator, shapes, parameters, bytes and FLOPs.

Computed once at compile time from the module after the graph passes (so folded batch norms are
gone) and stored in the manifest; ``squeezer info`` reads it back without TVM or the model.
"""

from __future__ import annotations

import math

import numpy as np
import tvm
from tvm import relax

_REDUCTIONS = {"mean", "sum", "max", "min", "prod", "variance", "nn.softmax", "nn.log_softmax"}
# Operators that move or reshape data: listed, but they do no arithmetic.
_NO_FLOPS = {
    "reshape", "permute_dims", "concat", "split", "strided_slice", "take", "squeeze",
    "expand_dims", "flatten", "broadcast_to", "layout_transform", "astype",
}


def _shape(ty) -> list[int] | None:
    shape = getattr(ty, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return None
    try:
        return [int(v) for v in shape.values]
    except TypeError:  # symbolic
        return None


def _nbytes(ty) -> int:
    shape = _shape(ty) or []
    return math.prod(shape) * tvm.runtime.DataType(str(ty.dtype)).bits // 8


def _flops(op: str, call: relax.Call, out: list[int] | None) -> int:
    out_n = math.prod(out) if out else 0
    if op == "nn.conv2d":
        w = _shape(call.args[1].ty)
        if w and out:
            _, cin_g, kh, kw = w
            return 2 * out_n * cin_g * kh * kw
    if op in ("matmul", "nn.dense", "linear"):
        a = _shape(call.args[0].ty)
        if a and out:
            return 2 * out_n * a[-1]
    if op.endswith("pool2d") or op.startswith("nn.adaptive") or op in _REDUCTIONS:
        a = _shape(call.args[0].ty)
        return math.prod(a) if a else out_n
    if op in _NO_FLOPS:
        return 0
    return out_n


def layer_table(mod: tvm.IRModule) -> list[dict]:
    """One row per operator call in ``main``, in program order."""
    rows: list[dict] = []

    def visit(expr):
        if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
            return
        op = expr.op.name.removeprefix("relax.")
        out = _shape(expr.ty)
        params = [a for a in expr.args if isinstance(a, tvm.ir.expr.Constant)]
        n_params = sum(int(np.prod(_shape(a.ty) or [0])) for a in params)
        n_bytes = sum(_nbytes(a.ty) for a in params)
        rows.append({
            "op": op,
            "inputs": [_shape(a.ty) for a in expr.args
                       if not isinstance(a, tvm.ir.expr.Constant)
                       and isinstance(a.ty, relax.TensorType)],
            "output": out,
            "params": n_params,
            "bytes": n_bytes,
            "flops": _flops(op, expr, out),
        })

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Totals over a layer table."""
    return {
        "layers": len(rows),
        "params": sum(r["params"] for r in rows),
        "param_bytes": sum(r["bytes"] for r in rows),
        "flops": sum(r["flops"] for r in rows),
        "ops": sorted({r["op"] for r in rows}),
    }
