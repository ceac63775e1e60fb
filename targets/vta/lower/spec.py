"""From a layer spec to what the compiler works on: geometry in blocks, the ALU epilogue,
blocked weights, the requant vectors, the padding value and the packed layouts.

Input signedness: the GEMM multiplies int8 by int8. A uint8 input is stored shifted by -128
(``PackedLayout.value_offset``); the shift changes the accumulator by ``-128 * sum(w)`` per output
channel, which the epilogue's first ADD adds back (int32 wraparound makes this exact). Padding
with the zero point needs the stored pad value 0 (zero fill) or -128 (``pad_min``): uint8 with
zero point 0 or 128, int8 with 0 or -128. Any other zero point with nonzero padding is rejected
(:func:`padding_supported`): the graph side pads such inputs on the CPU.

On a binary-input core inputs and weights are +-1; zero bits pad to -1, so the padding value
must be -1, and the channels padded to the block add ``(C_pad - C) * KH * KW`` to every
accumulator (-1 times -1), which the epilogue subtracts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import isa
from ..config import VtaConfig
from ..layer import ConvLayer, DenseLayer, LayerError, PackedLayout
from .tir import AluStage, ConvGeometry

_IMM = (-(1 << (isa.ALU_IMM_BITS - 1)), (1 << (isa.ALU_IMM_BITS - 1)) - 1)
WEIGHT_RANGE = {8: (-128, 127), 4: (-8, 7), 1: (-1, 1)}


@dataclass
class LayerSpec:
    """A layer prepared for a config (see the module docstring)."""

    where: str
    geometry: ConvGeometry
    stages: list[AluStage]
    par: np.ndarray | None        # (P, Ob, b, bo) int32
    weight_blocks: np.ndarray     # (Ob, Cb, KH, KW, bo, bi)
    pad_value: int                # stored value the padding holds
    pad_min: bool
    input_layout: PackedLayout
    output_layout: PackedLayout


def _as_conv(layer: ConvLayer | DenseLayer):
    if isinstance(layer, ConvLayer):
        return (layer.in_shape, layer.weight, layer.stride, layer.padding, layer.out_shape())
    m, k = layer.in_shape
    return ((m, k, 1, 1), layer.weight.reshape(*layer.weight.shape, 1, 1), (1, 1), (0, 0, 0, 0),
            (m, layer.weight.shape[0], 1, 1))


def _stored_pad(layer: ConvLayer | DenseLayer, cfg: VtaConfig) -> tuple[int, bool] | str:
    """(stored pad value, pad_min) or the reason the padding cannot be expressed."""
    if cfg.inp_bits == 1:
        return (-1, False) if layer.in_zero == -1 else \
            f"a binary-input core pads with -1, the layer's zero point is {layer.in_zero}"
    stored = layer.in_zero - (128 if layer.in_dtype == "uint8" else 0)
    if stored == 0:
        return 0, False
    if stored == -128:
        return -128, True
    return (f"zero point {layer.in_zero} ({layer.in_dtype}) is neither 0 nor the minimum once "
            "stored as int8: pad on the CPU")


def padding_supported(layer: ConvLayer | DenseLayer, config: VtaConfig) -> bool:
    """Whether the accelerator can pad this layer's input itself (else pad it on the CPU)."""
    padding = layer.padding if isinstance(layer, ConvLayer) else (0, 0, 0, 0)
    return not any(padding) or not isinstance(_stored_pad(layer, config), str)


def _param(values: np.ndarray, channels: int, op: str, rows: list[np.ndarray],
           skip: int | None) -> AluStage | None:
    real = values[:channels]
    if skip is not None and (real == skip).all():
        return None
    if (real == real[0]).all() and _IMM[0] <= int(real[0]) <= _IMM[1]:
        return AluStage(op, imm=int(real[0]))
    rows.append(values)
    return AluStage(op, row=len(rows) - 1)


def prepare(layer: ConvLayer | DenseLayer, cfg: VtaConfig) -> LayerSpec:
    """Check a layer against a config and build its :class:`LayerSpec`."""
    kind = "conv" if isinstance(layer, ConvLayer) else "dense"
    where = f"{kind} {layer.name!r} on {cfg.name}"
    (n, c, h, w), weight, stride, padding, out_shape = _as_conv(layer)
    o, _, kh, kw = weight.shape
    b, bi, bo = cfg.batch, cfg.block_in, cfg.block_out
    nb, cb, ob = -(-n // b), -(-c // bi), -(-o // bo)
    lo, hi = WEIGHT_RANGE[cfg.wgt_bits]
    wv = np.asarray(weight, np.int64)
    if wv.size and (wv.min() < lo or wv.max() > hi or (cfg.wgt_bits == 1 and (wv == 0).any())):
        raise LayerError(f"{where}: weights in [{wv.min()}, {wv.max()}] do not fit the core's "
                         f"{cfg.wgt_bits}-bit weights ({'+-1' if cfg.wgt_bits == 1 else (lo, hi)})")
    if cfg.inp_bits == 1 and layer.in_dtype != "int8":
        raise LayerError(f"{where}: a binary-input core takes +-1 int8 inputs, got "
                         f"{layer.in_dtype}")
    pad = _stored_pad(layer, cfg)
    if any(padding) and isinstance(pad, str):
        raise LayerError(f"{where}: padding: {pad}")
    pad_value, pad_min = pad if not isinstance(pad, str) else (0, False)
    fill = -1 if cfg.wgt_bits == 1 else 0
    wfull = np.full((ob * bo, cb * bi, kh, kw), fill, np.int8)
    wfull[:o, :c] = wv
    blocks = wfull.reshape(ob, bo, cb, bi, kh, kw).transpose(0, 2, 4, 5, 1, 3)

    rq = layer.requant
    with np.errstate(over="ignore"):
        offset = rq.offset.astype(np.int64)
        if cfg.inp_bits == 8 and layer.in_dtype == "uint8":
            offset = offset + 128 * wv.sum(axis=(1, 2, 3))
        if cfg.inp_bits == 1:
            offset = offset - (cb * bi - c) * kh * kw
    offset = ((offset + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)

    def full(v: np.ndarray) -> np.ndarray:
        out = np.zeros(ob * bo, np.int64)
        out[:o] = v
        return out

    rows: list[np.ndarray] = []
    stages = [_param(full(offset), o, "add", rows, 0), _param(full(rq.pre), o, "shr", rows, 0),
              _param(full(rq.mult), o, "mul", rows, 1),
              _param(full(rq.rounding), o, "add", rows, 0),
              _param(full(rq.post), o, "shr", rows, 0),
              AluStage("max", imm=rq.lo), AluStage("min", imm=rq.hi)]
    out_offset = -128 if rq.out_dtype == "uint8" else 0
    if out_offset:
        stages.append(AluStage("add", imm=out_offset))
    par = None
    if rows:
        par = np.ascontiguousarray(np.broadcast_to(
            np.stack(rows).astype(np.int32).reshape(len(rows), ob, 1, bo), (len(rows), ob, b, bo)))
    geo = ConvGeometry(nb, cb, h, w, ob, kh, kw, tuple(stride), tuple(padding))
    oh, ow = geo.out_hw
    in_off = -128 if (layer.in_dtype == "uint8" and cfg.inp_bits == 8) else 0
    in_layout = PackedLayout(tuple(layer.in_shape), (nb, cb, h, w, b, bi), layer.in_dtype, in_off,
                             cfg.inp_bits)
    out_layout = PackedLayout(tuple(out_shape if kind == "conv" else layer.out_shape()),
                              (nb, ob, oh, ow, b, bo), rq.out_dtype, out_offset)
    return LayerSpec(where, geo, [s for s in stages if s is not None], par, blocks, pad_value,
                     pad_min, in_layout, out_layout)
