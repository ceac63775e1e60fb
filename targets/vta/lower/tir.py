"""The TensorIR PrimFunc of a layer in the packed layout.

Buffers (``b`` = batch, ``bi`` / ``bo`` = block in / out, channel and batch counts in blocks):

* ``data``   (N/b, C/bi, H, W, b, bi) int8 — stored values (a uint8 input shifted by -128),
* ``kernel`` (O/bo, C/bi, KH, KW, bo, bi) int8,
* ``par``    (P, O/bo, b, bo) int32 — the requant vectors the ALU reads (absent when P = 0),
* ``out``    (N/b, O/bo, OH, OW, b, bo) int8.

Blocks: ``data_pad`` (when padded: ``if_then_else`` with the padding value), ``conv`` (int32
accumulation over ci, kh, kw, k), one ``alu<i>`` block per epilogue op (``add``, ``shr``, ``mul``,
``max``, ``min`` with an immediate or a ``par`` row), and ``out`` (the narrowing to int8). A dense
layer is the 1x1 convolution of 1x1 images, one per row.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import te, tirx

from ..config import VtaConfig

ALU_OPS = ("add", "shr", "mul", "max", "min")


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of a layer in blocks: the conv problem the PrimFunc computes."""

    nb: int
    cb: int
    h: int
    w: int
    ob: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]

    @property
    def out_hw(self) -> tuple[int, int]:
        pt, pl, pb, pr = self.padding
        return ((self.h + pt + pb - self.kh) // self.stride[0] + 1,
                (self.w + pl + pr - self.kw) // self.stride[1] + 1)


@dataclass(frozen=True)
class AluStage:
    """One epilogue op: ``acc = op(acc, imm)`` or ``acc = op(acc, par[row])``."""

    op: str
    imm: int | None = None
    row: int | None = None


def _apply(op: str, x, y):
    if op == "add":
        return x + y
    if op == "shr":
        return x >> y
    if op == "mul":
        return x * y
    if op == "max":
        return tirx.max(x, y)
    if op == "min":
        return tirx.min(x, y)
    raise ValueError(f"unknown ALU op {op!r} (expected one of {ALU_OPS})")


def _stage_fn(prev: te.Tensor, st: AluStage, par: te.Tensor | None):
    if st.row is not None:
        assert par is not None
        row = st.row
        return lambda n, co, y, x, i, o: _apply(st.op, prev[n, co, y, x, i, o], par[row, co, i, o])
    imm = tirx.const(st.imm, "int32")
    return lambda n, co, y, x, i, o: _apply(st.op, prev[n, co, y, x, i, o], imm)


def layer_primfunc(cfg: VtaConfig, geo: ConvGeometry, stages: list[AluStage], pad_value: int,
                   name: str = "main") -> tirx.PrimFunc:
    """The layer's PrimFunc (see the module docstring); ``pad_value`` is a stored int8 value."""
    b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out
    pt, pl, pb, pr = geo.padding
    sh, sw = geo.stride
    oh, ow = geo.out_hw
    data = te.placeholder((geo.nb, geo.cb, geo.h, geo.w, b, bi), "int8", name="data")
    kernel = te.placeholder((geo.ob, geo.cb, geo.kh, geo.kw, bo, bi), "int8", name="kernel")
    rows = 1 + max((s.row for s in stages if s.row is not None), default=-1)
    par = te.placeholder((rows, geo.ob, b, bo), "int32", name="par") if rows else None
    src = data
    if any(geo.padding):
        hp, wp = geo.h + pt + pb, geo.w + pl + pr

        def padded(n, c, y, x, i, j):
            inside = tirx.all(y >= pt, y < pt + geo.h, x >= pl, x < pl + geo.w)
            return tirx.if_then_else(inside, data[n, c, y - pt, x - pl, i, j],
                                     tirx.const(pad_value, "int8"))

        src = te.compute((geo.nb, geo.cb, hp, wp, b, bi), padded, name="data_pad")
    ci = te.reduce_axis((0, geo.cb), "ci")
    ky = te.reduce_axis((0, geo.kh), "ky")
    kx = te.reduce_axis((0, geo.kw), "kx")
    k = te.reduce_axis((0, bi), "k")
    shape = (geo.nb, geo.ob, oh, ow, b, bo)
    acc = te.compute(shape, lambda n, co, y, x, i, o: te.sum(
        src[n, ci, y * sh + ky, x * sw + kx, i, k].astype("int32")
        * kernel[co, ci, ky, kx, o, k].astype("int32"), axis=[ci, ky, kx, k]), name="conv")
    for idx, st in enumerate(stages):
        acc = te.compute(shape, _stage_fn(acc, st, par), name=f"alu{idx}")
    out = te.compute(shape, lambda *ix: acc(*ix).astype("int8"), name="out")
    args = [data, kernel, *([par] if par is not None else []), out]
    return te.create_prim_func(args).with_attr("global_symbol", name)
