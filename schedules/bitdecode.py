"""Decoding packed low-bit weights back to float32 inside the compiled model.

Layers without a low-bit kernel for their inputs (float activations with binary, ternary or
residual weights: Binary-Weight-Networks, TWN; power-of-two weights: INQ; int4 convolutions)
still *store* their weights packed; a decode kernel rebuilds the float weight on every call
and the layer runs as the float operator, with its tuned kernels. Decoding writes each weight
once, which for a convolution is small next to the product (a 3x3 conv reuses each weight at
every output pixel); for a matrix-vector product it is not (see the compile log).

The codes are packed in the float operator's own element order (a convolution's
``(O, C, KH, KW)``, a matmul constant's ``(K, N)``, flattened), so consecutive outputs read
consecutive bits of one word: a vector of outputs is one broadcast word shifted per lane.
Per-row scales are indexed by the output channel (axis 0, or the last axis of a matmul
constant, ``rows_last``).

Each decode takes the layer's input ``X`` as a last, unread argument: with only constant
arguments Relax's ``FoldConstant`` would evaluate the decode at compile time and store the float
weight again. The result is bit-identical to the format's ``reconstruct()``
(:mod:`squeezer.passes.graph.weight_formats`).

Parameters, per format (``T`` elements in the weight):

- planes (binary, ternary, residual): ``(WB (P, ceil(T / bits)) words, ALPHA (P, R), X)``;
- pow2: ``(CODES (5, ceil(T / bits)) words, X)``: bit planes of the 5-bit codes, sign last;
- int4: ``(NIB (ceil(T / 2),) uint8, SCALE (R, groups) float32, X)``, low nibble first.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from tvm import s_tir, te, tirx
from tvm.target import Target

from ._common import num_cores, pick_vector_tile, vector_lanes, worth_parallel
from .bitpack import WORD_DTYPES, pack_bits, words

KERNEL = "weight_decode"


def operator_order(rows: np.ndarray, rows_last: bool) -> np.ndarray:
    """Per-row values ``(..., R, K)`` in the float operator's element order, flattened over the
    last two axes: ``R * K`` row-major, or ``K * R`` for a matmul constant (``rows_last``)."""
    a = np.swapaxes(rows, -1, -2) if rows_last else rows
    return np.ascontiguousarray(a).reshape(*rows.shape[:-2], -1)


def planes_words(bits: np.ndarray, rows_last: bool, word_bits: int = 64) -> np.ndarray:
    """Bipolar planes ``(P, R, K)`` packed for :func:`planes_decode_func`."""
    return pack_bits(operator_order(bits, rows_last), word_bits)


def pow2_words(codes: np.ndarray, rows_last: bool, word_bits: int = 64) -> np.ndarray:
    """``(R, K)`` uint8 codes (sign << 4 | index) as 5 packed bit planes."""
    flat = operator_order(codes.reshape(codes.shape[0], -1), rows_last)
    return pack_bits(np.stack([(flat >> i) & 1 for i in range(5)]).astype(bool), word_bits)


def int4_nibbles(codes: np.ndarray, rows_last: bool = False) -> np.ndarray:
    """``(R, K)`` int8 codes in [-8, 7] as nibbles in operator order, low nibble first."""
    flat = operator_order(codes, rows_last)
    padded = np.zeros(2 * -(-flat.size // 2), np.uint8)
    padded[: flat.size] = flat.astype(np.int16) & 15
    return np.ascontiguousarray(padded[0::2] | (padded[1::2] << 4))


def _index(shape: tuple[int, ...], rows_last: bool):
    """``fn(idx) -> (flat, row, k)`` for an output index of the operator's weight."""
    rows = shape[-1] if rows_last else shape[0]
    k_len = math.prod(shape) // rows

    def index(idx):
        flat = 0
        for i, extent in zip(idx, shape, strict=True):
            flat = flat * extent + i
        if rows_last:
            return flat, flat % rows, flat // rows
        return flat, flat // k_len, flat % k_len

    return index


def _finish(params: list, shape, value, index) -> tirx.PrimFunc:
    i64 = functools.partial(tirx.IntImm, "int64")
    out = te.compute(tuple(i64(d) for d in shape), lambda *idx: value(*index(idx)),
                     name="decode", attrs={"squeezer.kernel": KERNEL})
    func = te.create_prim_func([*params, out])
    # opaque: nothing is fused into or around it (it runs once per call, before the layer)
    func = func.with_attr({"squeezer.kernel": KERNEL, "op_pattern": 8})
    return func.without_attr("global_symbol")


def _bit(word_buf, plane: int, flat, word_bits: int):
    w = word_buf[plane, flat // word_bits]
    return tirx.bitwise_and(tirx.shift_right(w, tirx.Cast(w.dtype, flat % word_bits)),
                            tirx.const(1, w.dtype))


def _anchor(x_shape: tuple[int, ...]):
    return te.placeholder(tuple(tirx.IntImm("int64", d) for d in x_shape), "float32", name="X")


def planes_decode_func(shape: tuple[int, ...], planes: int, x_shape: tuple[int, ...],
                       rows_last: bool = False, word_bits: int = 64) -> tirx.PrimFunc:
    """``w = sum_p alpha[p, row] * (2 * bit_p - 1)``, summed plane by plane in order."""
    rows = shape[-1] if rows_last else shape[0]
    wb = te.placeholder((planes, words(math.prod(shape), word_bits)), WORD_DTYPES[word_bits],
                        name="WB")
    alpha = te.placeholder((planes, rows), "float32", name="ALPHA")
    one = tirx.const(1.0, "float32")

    def value(flat, row, _k):
        out = tirx.const(0.0, "float32")
        for p in range(planes):
            sign = tirx.Select(_bit(wb, p, flat, word_bits) == 1, one, -one)
            out = out + alpha[p, row] * sign
        return out

    return _finish([wb, alpha, _anchor(x_shape)], shape, value, _index(shape, rows_last))


def pow2_decode_func(shape: tuple[int, ...], e_min: int, x_shape: tuple[int, ...],
                     rows_last: bool = False, word_bits: int = 64) -> tirx.PrimFunc:
    """``0`` for index 0, else ``+-2 ** (e_min + index - 1)`` built in the float's bits."""
    if e_min < -126 or e_min + 14 > 127:
        raise ValueError(f"power-of-two exponents from {e_min} leave the float32 normal range")
    cb = te.placeholder((5, words(math.prod(shape), word_bits)), WORD_DTYPES[word_bits],
                        name="CODES")

    def value(flat, _row, _k):
        index = tirx.Cast("uint32", _bit(cb, 0, flat, word_bits))
        for i in range(1, 4):
            index = index | tirx.shift_left(tirx.Cast("uint32", _bit(cb, i, flat, word_bits)),
                                            tirx.const(i, "uint32"))
        sign = tirx.shift_left(tirx.Cast("uint32", _bit(cb, 4, flat, word_bits)),
                               tirx.const(31, "uint32"))
        biased = index + tirx.const(e_min - 1 + 127, "uint32")
        mag = tirx.reinterpret("float32", sign | tirx.shift_left(biased, tirx.const(23, "uint32")))
        return tirx.Select(index == tirx.const(0, "uint32"), tirx.const(0.0, "float32"), mag)

    return _finish([cb, _anchor(x_shape)], shape, value, _index(shape, rows_last))


def int4_decode_func(shape: tuple[int, ...], group: int, x_shape: tuple[int, ...],
                     rows_last: bool = False) -> tirx.PrimFunc:
    """``code * scale[row, k // group]`` with the code sign-extended from its nibble."""
    rows = shape[-1] if rows_last else shape[0]
    k_len = math.prod(shape) // rows
    nib = te.placeholder((-(-math.prod(shape) // 2),), "uint8", name="NIB")
    scale = te.placeholder((rows, -(-k_len // group)), "float32", name="SCALE")

    def value(flat, row, k):
        byte = tirx.Cast("int32", nib[flat // 2])
        code = tirx.bitwise_and(tirx.shift_right(byte, tirx.Cast("int32", flat % 2) * 4),
                                tirx.const(15, "int32"))
        signed = tirx.Select(code >= 8, code - 16, code)
        return tirx.Cast("float32", signed) * scale[row, k // group]

    return _finish([nib, scale, _anchor(x_shape)], shape, value, _index(shape, rows_last))


def schedule_decode(sch: s_tir.Schedule, target: Target) -> None:
    """All output elements as one loop: parallel chunks, vectors of consecutive elements (one
    broadcast word per vector, shifted per lane)."""
    block = sch.get_sblock("decode")
    loops = sch.get_loops(block)
    flat = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    total = int(sch.get(flat).extent)
    lanes = pick_vector_tile(total, vector_lanes(target))
    outer, inner = sch.split(flat, [None, lanes])
    if worth_parallel(target, total) and total // lanes >= num_cores(target):
        sch.parallel(outer)
    if lanes > 1:
        sch.vectorize(inner)
