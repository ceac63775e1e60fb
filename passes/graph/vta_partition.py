"""Partition an int8 model between the VTA accelerator and the CPU.

Runs after ``fold_qdq(requant="vta32")``. A *layer* is an int8 ``conv2d`` (groups 1, dilation 1,
NCHW/OIHW, constant int8 weight) or a 2-D ``matmul`` by a constant int8 weight, with int32
accumulators followed by exactly the vta32 chain that ``qdq_emit.emit_requant32`` writes
(``add offset, >> pre, * mult, + rounding, >> post, clip, astype int8|uint8``; every intermediate
used once). An explicit ``nn.pad`` with the input zero point before a conv (``fold_qdq`` pads
nonzero zero points itself) joins the layer when the accelerator can pad with that value. Each
layer becomes a :class:`~squeezer.targets.vta.layer.ConvLayer` or ``DenseLayer``, is compiled by
:func:`~squeezer.targets.vta.layer.compile_layer`, and its subgraph is replaced by

    xp = layout_transform(astype(x - 128, int8), NCHW -> NCHWnc)       # pack (uint8 shifted)
    yp = call_dps_packed("squeezer.vta.run", [xp, prim_value(key)], int8[packed out])
    y  = astype(strided_slice(layout_transform(yp, NCHWnc -> NCHW)) + 128, uint8)   # unpack

where ``key`` names the program (``targets/vta/runtime.py``). A layer whose input is the output
of another layer with the same packed layout takes the packed tensor directly; unpacks nobody
uses are removed. Everything else stays on the CPU and is listed in ``result.cpu`` with why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.ir import Op
from tvm.relax import PyExprMutator, expr_functor

from .qdq_rules import shape_of

_CHAIN = ("relax.add", "relax.right_shift", "relax.multiply", "relax.add", "relax.right_shift",
          "relax.clip", "relax.astype")
# Not listed as CPU work: data movement, and the elementwise integer epilogue of a product
# (the product itself is listed).
_QUIET = {"relax.reshape", "relax.permute_dims", "relax.expand_dims", "relax.squeeze",
          "relax.flatten", "relax.strided_slice", "relax.layout_transform", "relax.astype",
          "relax.multiply", "relax.right_shift", "relax.bitwise_and", "relax.clip",
          "relax.maximum", "relax.minimum", "relax.subtract", "relax.call_dps_packed"}


@dataclass
class PartitionResult:
    """What ``vta_partition`` did: compiled layers (in graph order) and CPU operators."""

    layers: list = field(default_factory=list)  # LayerProgram
    entries: list = field(default_factory=list)  # runtime LayerEntry, same order
    cpu: list[dict] = field(default_factory=list)  # {"op", "where", "reason"}
    tuned: set[str] = field(default_factory=set)  # layers compiled with given (tuned) knobs


@dataclass
class _Match:
    layer: object  # ConvLayer | DenseLayer
    x: relax.Var  # the layer's input
    chain: list[relax.Var]  # acc ... final astype (and the absorbed pad first, if any)


def _op(expr) -> str | None:
    return expr.op.name if isinstance(expr, relax.Call) and isinstance(expr.op, Op) else None


def _const(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.GenericConst) else None


def _shape(expr) -> tuple[int, ...] | None:
    shape = shape_of(expr)
    return None if shape is None else tuple(shape)


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _same(a, b) -> bool:
    return a is not None and b is not None and a.same_as(b)


def _per_channel(values: np.ndarray, axis: int, ndim: int, channels: int) -> np.ndarray | None:
    """A () or channel-shaped constant as (channels,), or None if it varies along another axis."""
    if values.size == 1:
        return np.full(channels, values.reshape(()), np.int64)
    full = values.reshape((1,) * (ndim - values.ndim) + values.shape)
    if full.ndim != ndim or full.shape[axis] != channels or \
            any(d != 1 for i, d in enumerate(full.shape) if i != axis):
        return None
    return full.reshape(-1).astype(np.int64)


class _Graph:
    """Bindings of a function by variable, and the users of each variable."""

    def __init__(self, func: relax.Function):
        self.value: dict[relax.Var, relax.Expr] = {}
        self.users: dict[relax.Var, list[relax.Var]] = {}
        self.order: list[relax.Var] = []
        for block in func.body.blocks:
            for b in block.bindings:
                self.value[b.var] = b.value
                self.order.append(b.var)
                for used in relax.analysis.free_vars(b.value):
                    self.users.setdefault(used, []).append(b.var)
        for used in relax.analysis.free_vars(func.body.body):
            self.users.setdefault(used, []).append(None)

    def only_user(self, var: relax.Var) -> relax.Var | None:
        users = self.users.get(var, [])
        return users[0] if len(users) == 1 else None


def _requant(graph: _Graph, acc: relax.Var, axis: int, ndim: int, channels: int):
    """The vta32 chain after ``acc``: (Requant32, chain vars) or a reason string."""
    from squeezer.targets.vta.layer import LayerError, Requant32

    chain, cur, arrays = [acc], acc, []
    for op in _CHAIN:
        nxt = graph.only_user(cur)
        value = graph.value.get(nxt) if nxt is not None else None
        if value is None or _op(value) != op or not value.args[0].same_as(cur):
            return ("its int32 result is not requantized to 8 bits by the vta32 epilogue "
                    "(a float or multi-term consumer)")
        if op == "relax.clip":
            lo, hi = (int(a.value) for a in value.args[1:3])
        elif op == "relax.astype":
            out_dtype = str(value.attrs.dtype)
        else:
            c = _const(value.args[1])
            vec = None if c is None else _per_channel(c, axis, ndim, channels)
            if vec is None:
                return f"{op.removeprefix('relax.')} by a non-constant or non-channel operand"
            arrays.append(vec)
        chain.append(nxt)
        cur = nxt
    offset, pre, mult, rounding, post = arrays
    try:
        rq = Requant32(offset=offset, pre=pre, mult=mult, rounding=rounding, post=post, lo=lo,
                       hi=hi, out_dtype=out_dtype)
    except LayerError as err:
        return str(err)
    return rq, chain


def _conv_match(graph: _Graph, acc: relax.Var, call: relax.Call, name: str, cfg):
    from squeezer.targets.vta.layer import ConvLayer
    from squeezer.targets.vta.lower import padding_supported

    a = call.attrs
    x, w = call.args[:2]
    weight = _const(w)
    if (a.data_layout, a.kernel_layout, a.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return f"layout {a.data_layout}/{a.kernel_layout}"
    if int(a.groups) != 1:
        return f"grouped conv2d (groups={int(a.groups)}): the GEMM core runs groups=1 only"
    if any(int(d) != 1 for d in a.dilation):
        return "dilated conv2d"
    if weight is None or weight.dtype != np.int8:
        return "weight is not a constant int8 array"
    in_shape = _shape(x)
    if in_shape is None or _dtype(x) not in ("int8", "uint8"):
        return "input is not a static-shape 8-bit tensor"
    got = _requant(graph, acc, 1, 4, weight.shape[0])
    if isinstance(got, str):
        return got
    rq, chain = got
    padding = tuple(int(p) for p in a.padding)  # top, left, bottom, right
    strides = tuple(int(s) for s in a.strides)
    layer = ConvLayer(name, in_shape, _dtype(x), 0, weight, strides, padding, rq)
    pad = graph.value.get(x)
    if isinstance(pad, relax.Call) and _op(pad) == "relax.nn.pad" and \
            _same(graph.only_user(x), acc) and str(pad.attrs.pad_mode) == "constant":
        # fold_qdq pads a nonzero zero point explicitly; the accelerator pads with 0 or the
        # minimum (once stored as int8), so such a pad joins the layer when it can.
        w = [int(p) for p in pad.attrs.pad_width]
        value = float(pad.attrs.pad_value)
        if w[:4] == [0, 0, 0, 0] and value.is_integer():
            joined = ConvLayer(name, _shape(pad.args[0]), _dtype(x), int(value), weight, strides,
                               (padding[0] + w[4], padding[1] + w[6], padding[2] + w[5],
                                padding[3] + w[7]), rq)
            if padding_supported(joined, cfg):
                return _Match(joined, pad.args[0], [x, *chain])
    return _Match(layer, x, chain)


def _dense_match(graph: _Graph, acc: relax.Var, call: relax.Call, name: str, _cfg):
    from squeezer.targets.vta.layer import DenseLayer

    x, w = call.args[:2]
    weight = _const(w)
    in_shape = _shape(x)
    if weight is None or weight.dtype != np.int8 or weight.ndim != 2:
        return "weight is not a constant 2-D int8 array"
    if in_shape is None or len(in_shape) != 2 or _dtype(x) not in ("int8", "uint8"):
        return "input is not a static 2-D 8-bit tensor"
    got = _requant(graph, acc, 1, 2, weight.shape[1])
    if isinstance(got, str):
        return got
    rq, chain = got
    return _Match(DenseLayer(name, in_shape, _dtype(x), 0, np.ascontiguousarray(weight.T), rq),
                  x, chain)


def _where(var: relax.Var, value: relax.Call) -> str:
    first = next((a for a in value.args if isinstance(a.ty, relax.TensorType)), None)
    shape = _shape(first) if first is not None else None
    text = "x".join(map(str, shape)) if shape else "?"
    out = _shape(var)
    return f"{var.name} ({text} -> {'x'.join(map(str, out)) if out else '?'})"


def _pack(bb: relax.BlockBuilder, x: relax.Expr, lay) -> relax.Expr:
    """Logical 8-bit tensor -> the packed int8 layout (``PackedLayout``) the program reads."""
    nb, cb, h, w, b, bc = lay.blocked
    if lay.value_offset:
        x = bb.emit(relax.op.add(relax.op.astype(x, "int32"),
                                 relax.const(lay.value_offset, "int32")))
    if str(x.ty.dtype) != "int8":
        x = bb.emit(relax.op.astype(x, "int8"))
    if len(lay.shape) == 2:
        x = bb.emit(relax.op.reshape(x, (*lay.shape, 1, 1)))
    return bb.emit(relax.op.layout_transform(
        x, lambda n, c, y, z: (n // b, c // bc, y, z, n % b, c % bc), pad_value=0))


def _unpack(bb: relax.BlockBuilder, xp: relax.Expr, lay) -> relax.Expr:
    """The packed int8 output -> the logical tensor (inverse of :func:`_pack`)."""
    nb, cb, h, w, b, bc = lay.blocked
    x = bb.emit(relax.op.layout_transform(
        xp, lambda n0, c0, y, z, n1, c1: (n0 * b + n1, c0 * bc + c1, y, z)))
    n, c = lay.shape[:2]
    if (nb * b, cb * bc) != (n, c):
        x = bb.emit(relax.op.strided_slice(x, [0, 1], [0, 0], [n, c]))
    if len(lay.shape) == 2:
        x = bb.emit(relax.op.reshape(x, lay.shape))
    if lay.value_offset:
        x = bb.emit(relax.op.subtract(relax.op.astype(x, "int32"),
                                      relax.const(lay.value_offset, "int32")))
    return relax.op.astype(x, lay.dtype)


def _same_layout(a, b) -> bool:
    return (a.shape, a.blocked, a.dtype, a.value_offset, a.bits) == \
        (b.shape, b.blocked, b.dtype, b.value_offset, b.bits)


@expr_functor.mutator
class _Partition(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, matches: dict[relax.Var, tuple]):
        super().__init__(mod)
        self.ends = matches  # final var -> (match, LayerProgram, LayerEntry)
        self.skip = {v for m, _, _ in matches.values() for v in m.chain[:-1]}
        self.packed: dict[relax.Var, tuple[relax.Var, object]] = {}  # old var -> packed, layout

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        var = binding.var
        if var in self.skip:
            return
        if var not in self.ends:
            super().visit_var_binding_(binding)
            return
        match, prog, entry = self.ends[var]
        bb = self.builder_
        prev = self.packed.get(match.x)
        if prev is not None and _same_layout(prev[1], prog.input_layout):
            xp = prev[0]
        else:
            xp = _pack(bb, self.visit_expr(match.x), prog.input_layout)
        out_ty = relax.TensorType(prog.output_layout.blocked, "int8")
        yp = bb.emit(relax.call_dps_packed(
            "squeezer.vta.run", relax.Tuple([xp, relax.prim_value(entry.key)]), out_ty),
            name_hint=f"{entry.name}_packed")
        self.packed[var] = (yp, prog.output_layout)
        new = bb.emit(_unpack(bb, yp, prog.output_layout), name_hint=var.name)
        self.set_var_remap(var, new)


def _cpu_reason(graph: _Graph, var: relax.Var, value: relax.Call) -> str | None:
    """Why an operator left in the graph runs on the CPU, or None for one not worth listing."""
    op = _op(value)
    if op is None or op in _QUIET:
        return None
    if op == "relax.add" and any(_const(a) is not None for a in value.args):
        return None  # a bias or rounding constant: the epilogue of the product listed before
    if isinstance(var.ty, relax.TensorType) and str(var.ty.dtype).startswith("float"):
        return "float operator (not quantized to int8)"
    return f"no VTA form for {op.removeprefix('relax.')} (the accelerator runs int8 conv2d/dense)"


def _partition_func(func: relax.Function, config, result: PartitionResult, knobs) -> dict:
    from squeezer.targets.vta.layer import LayerError, compile_layer
    from squeezer.targets.vta.runtime import LayerEntry

    graph = _Graph(func)
    matches: dict[relax.Var, tuple] = {}
    listed: set[relax.Var] = set()
    for var in graph.order:
        value = graph.value[var]
        op = _op(value)
        int32 = isinstance(var.ty, relax.TensorType) and str(var.ty.dtype) == "int32"
        if op not in ("relax.nn.conv2d", "relax.matmul") or not int32:
            continue
        kind = "conv" if op == "relax.nn.conv2d" else "dense"
        name = f"{kind}{len(result.layers)}_{var.name}"
        got = (_conv_match if kind == "conv" else _dense_match)(graph, var, value, name, config)
        if not isinstance(got, str):
            given = knobs(got.layer) if callable(knobs) else (knobs or {}).get(name)
            if given is not None:
                result.tuned.add(name)
            try:
                prog = compile_layer(got.layer, config, given)
            except LayerError as err:
                got = f"the layer compiler refused it: {err}"
        if not isinstance(got, str) and prog.input_layout.bits != 8:
            got = "the core takes bit-packed inputs, which the graph side does not pack"
        if isinstance(got, str):
            result.cpu.append({"op": op.removeprefix("relax."), "where": _where(var, value),
                               "reason": got})
            listed.add(var)
            continue
        entry = LayerEntry(name, prog.program, "inp", "out", prog.input_layout.blocked, "int8",
                           prog.output_layout.blocked, "int8")
        result.layers.append(prog)
        result.entries.append(entry)
        matches[got.chain[-1]] = (got, prog, entry)
    taken = {v for m, _, _ in matches.values() for v in m.chain}
    for var in graph.order:
        if var in taken or var in listed:
            continue
        value = graph.value[var]
        reason = _cpu_reason(graph, var, value)
        if reason is not None:
            result.cpu.append({"op": str(_op(value)).removeprefix("relax."),
                               "where": _where(var, value), "reason": reason})
    return matches


def vta_partition(config, result: PartitionResult, knobs: dict | None = None
                  ) -> tvm.transform.Pass:
    """The pass: int8 conv2d/dense layers with their vta32 requantization onto the accelerator.

    Parameters
    ----------
    config : VtaConfig | str
        The accelerator configuration (preset name, JSON path or object).
    result : PartitionResult
        Receives the compiled layers, their runtime entries and the operators left on the CPU
        (``{"op", "where", "reason"}``).
    knobs : dict or callable, optional
        Schedule knobs by layer name (``conv0_lv1``), or a function of the layer spec
        returning knobs or None (tuning records: ``targets.vta.tune.knobs_from_records``); the
        analytic default knobs otherwise.
    """
    from squeezer.targets.vta.config import load_config

    cfg = load_config(config)

    @tvm.transform.module_pass(opt_level=0, name="squeezer.VtaPartition")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        found = {}
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                func = relax.analysis.remove_all_unused(func)
                mod[gv] = func
                found[gv] = _partition_func(func, cfg, result, knobs)
        if not any(found.values()):
            return mod
        matches = {k: v for m in found.values() for k, v in m.items()}
        rewriter = _Partition(mod, matches)
        for gv in found:
            new = rewriter.visit_expr(mod[gv])
            rewriter.builder_.update_func(gv, relax.analysis.remove_all_unused(new))
        return rewriter.builder_.finalize()

    return _pass
