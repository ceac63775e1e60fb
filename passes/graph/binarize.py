"""Rewrite products with low-bit constant weights to bit-serial kernels or packed storage.

Matches ``nn.conv2d(x, W)`` (NCHW/OIHW) and ``matmul(x, W)`` (a linear layer after
``FoldConstant``, ``W`` of shape ``(K, N)``) whose weight is a float32 constant, and reads the
weight's format from its values alone (:func:`squeezer.passes.graph.weight_formats.detect`), so a
model quantized by another tool takes the same path:

- **binary, ternary or residual weights with an encoded input** become
  :mod:`~squeezer.schedules.bitserial_conv2d` / :mod:`~squeezer.schedules.bitserial_dense`
  calls on the input before its encoding. Input encodings recognized
  (:class:`~squeezer.schedules.bitpack.ActBits`):

  - ``where(greater_equal(x, 0), 1, -1)`` and ``where(less(x, 0), -1, 1)``: binary (BNN,
    XNOR-Net, HORQ input planes; what ``torch.where(x >= 0, 1.0, -1.0)`` imports as);
  - ``sign(x)``: sign, exactly (sign(0) = 0 is the second plane's job, not rounded to +-1);
  - ``clip(round(x), 0, 3)`` and ``round(clip(x, 0, 3))``: unsigned 2-bit.

  Convolutions need groups 1 (depthwise excluded), dilation 1, equal strides and symmetric
  padding; the scales that follow (XNOR-Net's ``K`` map, a bias) stay float ops after the call,
  which ``FuseOps`` fuses into the kernel's epilogue.
- **the same weights with a float input** (Binary-Weight-Networks, TWN): a matmul of at most
  :data:`MASKED_ROWS` rows (times planes) becomes :mod:`~squeezer.schedules.bitmask_dense`
  (masked float sums over the bits: a matrix-vector product is bound by reading the weight, and
  reads 1 bit per value instead of 32); larger matmuls and convolutions keep the float operator,
  whose multiply-adds beat masked adds once the weight is reused, fed by a decode kernel
  (:mod:`~squeezer.schedules.bitdecode`) that rebuilds the weight on every call from the packed
  bits (decoding writes each weight once; a 3x3 conv reuses it at every pixel).
- **power-of-two** (INQ) weights and **int4 convolution** weights: stored packed and decoded the
  same way (no kernel reads them directly). int4 *matmul* weights are left to
  ``int4_weights``, which has a kernel for them.

Every decision is appended to ``log`` as ``{"op", "where", "reason", "kernel", "format",
"bytes", "float_bytes"}``; those that leave a layer computing in float also go to
``float_fallback`` (``{"op", "where", "reason"}``, the compile report's table).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import tvm
from tvm import relax
from tvm.ir import Op
from tvm.relax import PyExprMutator, expr_functor

from squeezer.schedules import bitdecode
from squeezer.schedules.bitmask_dense import bitmask_dense_func
from squeezer.schedules.bitpack import (
    ActBits,
    alphas_for_conv,
    alphas_for_dense,
    conv_weight_words,
    dense_weight_popcounts,
    dense_weight_words,
    pack_bits,
)
from squeezer.schedules.bitserial_conv2d import ConvGeometry, bitserial_conv2d_func
from squeezer.schedules.bitserial_dense import bitserial_dense_func

from .sparsify_weights import _is_const, _static_shape
from .weight_formats import BitPlanes, Int4Groups, Pow2Codes, WeightFormat, detect

DECODED = "float (weights decoded per call)"
# Float rows (times weight planes) up to which a matmul sums masked float rows instead of
# decoding the weight: a matrix-vector product is bound by reading the weight (1 bit per
# value here, 32 decoded); with more rows the float kernel's multiply-adds win.
MASKED_ROWS = 4


def _scalar(expr: relax.Expr) -> float | None:
    """The value of a constant whose elements are all equal, else None."""
    if not _is_const(expr):
        return None
    v = expr.value.numpy()
    if v.size == 0 or not np.all(v == v.flat[0]):
        return None
    return float(v.flat[0])


def _prim(expr: relax.Expr) -> float | None:
    """A clip bound: an integer or float immediate (or a constant)."""
    if isinstance(expr, tvm.tirx.IntImm | tvm.tirx.FloatImm):
        return float(expr.value)
    value = getattr(expr, "value", None)  # a PrimValue wrapping an immediate
    if isinstance(value, tvm.tirx.IntImm | tvm.tirx.FloatImm):
        return float(value.value)
    return _scalar(expr)


def _op(expr: relax.Expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, Op):
        return str(expr.op.name)
    return None


def _nbytes(consts: list[relax.Expr]) -> int:
    return sum(int(c.value.numpy().nbytes) for c in consts)


def word_bits_for(k: int) -> int:
    """32-bit words when they pad ``k`` bits less than 64-bit words do (same popcount work)."""
    return 32 if -(-k // 32) * 32 < -(-k // 64) * 64 else 64


@expr_functor.mutator
class _Binarize(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, log: list[dict], float_log: list[dict] | None):
        super().__init__(mod)
        self.log = log
        self.float_log = float_log
        # one packed copy per weight: HORQ's input planes (and shared layers) reuse a weight
        self.formats: dict[tuple, WeightFormat | None] = {}
        self.consts: dict[tuple, list[relax.Expr]] = {}

    def _packed(self, key: tuple, arrays) -> list[relax.Expr]:
        """The constants for ``key``, made once from ``arrays()``."""
        if key not in self.consts:
            self.consts[key] = [relax.const(np.ascontiguousarray(a)) for a in arrays()]
        return self.consts[key]

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        name = _op(call)
        new = None
        if name == "relax.nn.conv2d":
            new = self._conv(call)
        elif name == "relax.matmul":
            new = self._matmul(call)
        return call if new is None else new

    # -- the input encoding --------------------------------------------------------------------
    def _bound(self, expr: relax.Expr) -> relax.Expr:
        while isinstance(expr, relax.Var):
            value = self.lookup_binding(expr)
            if value is None:
                return expr
            expr = value
        return expr

    def _encoding(self, x: relax.Expr) -> tuple[ActBits, relax.Expr] | None:
        """The input encoding applied to ``x`` and the tensor before it, or None."""
        value = self._bound(x)
        name = _op(value)
        if name == "relax.reshape":  # the encoding is elementwise: it commutes with reshapes
            inner = self._encoding(value.args[0])
            if inner is None:
                return None
            shape = _static_shape(value)
            return inner[0], self.builder_.emit(relax.op.reshape(inner[1], shape))
        if name == "relax.where":
            cond = self._bound(value.args[0])
            hi, lo = _scalar(value.args[1]), _scalar(value.args[2])
            cname = _op(cond)
            if cname in ("relax.greater_equal", "relax.less") and _scalar(cond.args[1]) == 0.0:
                want = (1.0, -1.0) if cname == "relax.greater_equal" else (-1.0, 1.0)
                if (hi, lo) == want:
                    return self._source(ActBits("binary"), cond.args[0])
            return None
        if name == "relax.sign":
            return self._source(ActBits("sign"), value.args[0])
        if name in ("relax.clip", "relax.round"):
            inner = self._bound(value.args[0])
            clip, rnd = (value, inner) if name == "relax.clip" else (inner, value)
            if _op(rnd) == "relax.round" and _op(clip) == "relax.clip" and \
                    (_prim(clip.args[1]), _prim(clip.args[2])) == (0.0, 3.0):
                return self._source(ActBits("uint2"), inner.args[0])
        return None

    @staticmethod
    def _source(act: ActBits, x: relax.Expr) -> tuple[ActBits, relax.Expr] | None:
        ty = x.ty
        if isinstance(ty, relax.TensorType) and ty.dtype == "float32" and _static_shape(x):
            return act, x
        return None

    # -- operators -----------------------------------------------------------------------------
    def _detect(self, w: np.ndarray, formats) -> WeightFormat | None:
        key = (hashlib.sha1(w.tobytes()).hexdigest(), w.shape, formats)
        if key not in self.formats:
            self.formats[key] = detect(w, formats=formats)
        return self.formats[key]

    def _weight(self, w: relax.Expr, formats) -> WeightFormat | None:
        if not _is_const(w) or str(w.value.dtype) != "float32":
            return None
        return self._detect(w.value.numpy(), formats)

    def _conv(self, call: relax.Call) -> relax.Expr | None:
        x, w = call.args
        a = call.attrs
        xs, ws = _static_shape(x), _static_shape(w)
        if xs is None or ws is None or (a.data_layout, a.kernel_layout) != ("NCHW", "OIHW"):
            return None
        fmt = self._weight(w, ("binary", "ternary", "residual", "pow2", "int4"))
        enc = self._encoding(x)
        where = f"conv2d {tuple(xs)} x {tuple(ws)}"
        if fmt is None:
            if enc is not None:
                self._note("conv2d", where, f"{enc[0].kind} input, float weights", "float",
                           None, ws)
            return None
        reason = self._conv_unsupported(call, xs)
        if isinstance(fmt, BitPlanes) and enc is not None and reason is None:
            return self._bit_conv(call, fmt, enc, xs, ws, where)
        if isinstance(fmt, BitPlanes):
            reason = reason if enc is not None else "float input"
        else:
            reason = f"no {fmt.kind} kernel for conv2d"
        wdec = self._decoded(fmt, ws, x, rows_last=False, where=where, op="conv2d",
                             reason=reason)
        return relax.Call(call.op, [x, wdec], call.attrs)

    @staticmethod
    def _conv_unsupported(call: relax.Call, xs: list[int]) -> str | None:
        a = call.attrs
        pad = [int(v) for v in a.padding]  # top, left, bottom, right
        strides = [int(v) for v in a.strides]
        if int(a.groups) != 1:
            return f"groups {int(a.groups)} (bit-serial conv2d needs groups 1)"
        if any(int(v) != 1 for v in a.dilation):
            return "dilation (bit-serial conv2d needs dilation 1)"
        if strides[0] != strides[1]:
            return f"strides {strides} (bit-serial conv2d needs equal strides)"
        if pad[0] != pad[2] or pad[1] != pad[3]:
            return f"padding {pad} (bit-serial conv2d needs symmetric padding)"
        if a.out_layout != "NCHW" or str(a.out_dtype) not in ("", "float32", "void", "None"):
            return f"output {a.out_layout} {a.out_dtype}"
        return None

    def _bit_conv(self, call, fmt: BitPlanes, enc, xs, ws, where) -> relax.Expr:
        act, src = enc
        a = call.attrs
        pad = [int(v) for v in a.padding]
        o, c, kh, kw = ws
        wbits = word_bits_for(c)
        geo = ConvGeometry(xs[0], c, xs[2], xs[3], o, kh, kw, int(a.strides[0]), pad[0],
                           pad[1], wbits)
        bits = fmt.bits.reshape(fmt.planes, o, c, kh, kw)
        consts = self._packed(("conv", id(fmt), wbits), lambda: (
            conv_weight_words(bits, wbits), alphas_for_conv(fmt.alpha)))
        gv = self.builder_.add_func(bitserial_conv2d_func(geo, fmt.planes, act),
                                    "bitserial_conv2d")
        self._note("conv2d", where, f"{fmt.kind} weights ({fmt.planes} plane(s)), {act.kind} "
                   "input", "bitserial_conv2d", fmt.kind, ws, _nbytes(consts))
        out = relax.TensorType((xs[0], o, geo.oh, geo.ow), "float32")
        return relax.call_tir(gv, [src, *consts], out_ty=out)

    def _matmul(self, call: relax.Call) -> relax.Expr | None:
        x, w = call.args
        xs, ws = _static_shape(x), _static_shape(w)
        if xs is None or ws is None or len(ws) != 2 or len(xs) < 1:
            return None
        if not _is_const(w) or str(w.value.dtype) != "float32":
            return None
        k, n = ws
        weight = np.ascontiguousarray(w.value.numpy().T)  # (N, K): rows are outputs
        fmt = self._detect(weight, ("binary", "ternary", "residual", "pow2"))
        enc = self._encoding(x)
        where = f"matmul {tuple(xs)} x {k}x{n}"
        if fmt is None:
            if enc is not None:
                self._note("matmul", where, f"{enc[0].kind} input, float weights", "float",
                           None, ws)
            return None
        if isinstance(fmt, BitPlanes) and enc is not None and len(xs) >= 2:
            return self._bit_dense(fmt, enc, xs, k, n, where)
        if isinstance(fmt, BitPlanes) and len(xs) >= 2 and \
                math.prod(xs[:-1]) * fmt.planes <= MASKED_ROWS:
            return self._masked_dense(fmt, x, xs, k, n, where)
        reason = "float input" if isinstance(fmt, BitPlanes) else f"no {fmt.kind} kernel for matmul"
        wdec = self._decoded(fmt, ws, x, rows_last=True, where=where, op="matmul",
                             reason=reason)
        return relax.Call(call.op, [x, wdec], call.attrs)

    def _masked_dense(self, fmt: BitPlanes, x, xs, k, n, where) -> relax.Expr:
        """Float rows times bit planes, undecoded (a batch-1 linear layer's product)."""
        m = math.prod(xs[:-1])
        x2 = x if len(xs) == 2 else self.builder_.emit(relax.op.reshape(x, (m, k)))
        consts = self._packed(("masked", id(fmt)), lambda: (
            pack_bits(fmt.bits, 64), np.asarray(fmt.alpha, np.float32)))
        gv = self.builder_.add_func(bitmask_dense_func(m, k, n, fmt.planes), "bitmask_dense")
        self._note("matmul", where, f"{fmt.kind} weights ({fmt.planes} plane(s)), float input, "
                   f"{m} row(s): masked sums of the bits", "bitmask_dense", fmt.kind, [k, n],
                   _nbytes(consts))
        y = relax.call_tir(gv, [x2, *consts], out_ty=relax.TensorType((m, n), "float32"))
        if len(xs) == 2:
            return y
        return relax.op.reshape(self.builder_.emit(y), (*xs[:-1], n))

    def _bit_dense(self, fmt: BitPlanes, enc, xs, k, n, where) -> relax.Expr:
        act, src = enc
        m = math.prod(xs[:-1])
        wbits = word_bits_for(k)
        src2 = src if len(xs) == 2 else self.builder_.emit(relax.op.reshape(src, (m, k)))
        consts = self._packed(("dense", id(fmt), wbits), lambda: (
            dense_weight_words(fmt.bits, wbits), alphas_for_dense(fmt.alpha),
            dense_weight_popcounts(fmt.bits)))
        args = [src2, *consts[:2]] if act.bipolar else [src2, *consts]
        gv = self.builder_.add_func(bitserial_dense_func(m, k, n, fmt.planes, act, wbits),
                                    "bitserial_dense")
        stored = _nbytes(args[1:])
        self._note("matmul", where, f"{fmt.kind} weights ({fmt.planes} plane(s)), {act.kind} "
                   "input", "bitserial_dense", fmt.kind, [k, n], stored)
        y = relax.call_tir(gv, args, out_ty=relax.TensorType((m, n), "float32"))
        if len(xs) == 2:
            return y
        return relax.op.reshape(self.builder_.emit(y), (*xs[:-1], n))

    # -- packed storage, decoded per call ------------------------------------------------------
    def _decoded(self, fmt: WeightFormat, ws: list[int], x: relax.Expr, *, rows_last: bool,
                 where: str, op: str, reason: str) -> relax.Expr:
        shape = tuple(ws)
        xs = tuple(_static_shape(x) or ())
        if isinstance(fmt, BitPlanes):
            func = bitdecode.planes_decode_func(shape, fmt.planes, xs, rows_last)
            arrays = (bitdecode.planes_words(fmt.bits, rows_last),
                      np.asarray(fmt.alpha, np.float32))
        elif isinstance(fmt, Pow2Codes):
            func = bitdecode.pow2_decode_func(shape, fmt.e_min, xs, rows_last)
            arrays = (bitdecode.pow2_words(fmt.codes, rows_last),)
        else:
            assert isinstance(fmt, Int4Groups)
            func = bitdecode.int4_decode_func(shape, fmt.group, xs, rows_last)
            arrays = (bitdecode.int4_nibbles(fmt.codes, rows_last), fmt.scales)
        consts = self._packed(("decode", id(fmt)), lambda: arrays)
        gv = self.builder_.add_func(func, f"decode_{fmt.kind}")
        stored = _nbytes(consts)
        self._note(op, where, f"{fmt.kind} weights, {reason}: stored packed, decoded per call",
                   DECODED, fmt.kind, ws, stored)
        args = [*consts, x]
        return self.builder_.emit(relax.call_tir(gv, args, out_ty=relax.TensorType(
            shape, "float32")))

    def _note(self, op: str, where: str, reason: str, kernel: str, fmt: str | None,
              ws, stored: int | None = None) -> None:
        float_bytes = 4 * math.prod(ws)
        self.log.append({"op": op, "where": where, "reason": reason, "kernel": kernel,
                         "format": fmt, "bytes": stored if stored is not None else float_bytes,
                         "float_bytes": float_bytes})
        if self.float_log is not None and kernel in (DECODED, "float"):
            self.float_log.append({"op": op, "where": where, "reason": reason})


def binarize(log: list[dict] | None = None,
             float_fallback: list[dict] | None = None) -> tvm.transform.Pass:
    """The pass: low-bit constant weights of conv2d and matmul to bit-serial kernels or
    packed storage (see the module docstring).

    Parameters
    ----------
    log : list, optional
        Receives one entry per low-bit weight (and per encoded input whose weight is float).
    float_fallback : list, optional
        Receives ``{"op", "where", "reason"}`` for each low-bit layer that computes in float.
    """
    entries = log if log is not None else []

    @tvm.transform.module_pass(opt_level=0, name="squeezer.Binarize")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _Binarize(mod, entries, float_fallback)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.finalize()

    return _pass
