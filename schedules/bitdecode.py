"""Decoding packed low-bit weights back to float32 inside the compiled model.

Layers without a low-bit kernel for their inputs (float activations with binary, ternary or
residual weights: Binary-Weight-Networks, TWN; power-of-two weights: INQ; int4 convolutions)
still *store* their weights packed; a decode kernel rebuilds the float weight on every call
and the layer runs as a float operator. Decoding touches each weight once, which for a
convolution is small next to the product (a 3x3 conv reuses each weight at every pixel).

Each decode takes the layer's input ``X`` as a last, unread argument: with only constant
arguments Relax's ``FoldConstant`` would evaluate the decode at compile time and store the float
weight again. The result is bit-identical to the format's ``reconstruct()``
(:mod:`squeezer.passes.graph.weight_formats`).

Parameters, per format:

- planes (binary, ternary, residual): ``(WB (P, R, KW) words, ALPHA (P, R) float32, X)``;
- pow2: ``(CODES (5, R, KW) words, X)``: bit planes of the 5-bit codes, sign last;
- int4: ``(NIB (R, ceil(K / 2)) uint8, SCALE (R, groups) float32, X)``, low nibble first.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from tvm import te, tirx

from .bitpack import WORD_DTYPES, pack_bits, words

KERNEL = "weight_decode"


def _out(shape: tuple[int, ...], rows_last: bool):
    """``(out shape, fn(idx) -> (row, k))``: the weight as the float operator reads it; a
    matmul constant is ``(K, N)`` (rows last), a convolution's ``(O, C, KH, KW)``."""
    if rows_last:
        return shape, lambda idx: (idx[1], idx[0])
    rest = shape[1:]

    def index(idx):
        k = 0
        for i, extent in zip(idx[1:], rest, strict=True):
            k = k * extent + i
        return idx[0], k

    return shape, index


def _finish(params: list, out_shape, value, index) -> tirx.PrimFunc:
    i64 = functools.partial(tirx.IntImm, "int64")
    out = te.compute(tuple(i64(d) for d in out_shape), lambda *idx: value(*index(idx)),
                     name="decode")
    func = te.create_prim_func([*params, out])
    # opaque: nothing is fused into or around it (it runs once per call, before the layer)
    func = func.with_attr({"squeezer.kernel": KERNEL, "op_pattern": 8})
    return func.without_attr("global_symbol")


def _bit(word_buf, plane, row, k, word_bits: int):
    w = word_buf[plane, row, k // word_bits]
    return tirx.bitwise_and(tirx.shift_right(w, tirx.Cast(w.dtype, k % word_bits)),
                            tirx.const(1, w.dtype))


def _anchor(x_shape: tuple[int, ...]):
    return te.placeholder(tuple(tirx.IntImm("int64", d) for d in x_shape), "float32", name="X")


def planes_decode_func(shape: tuple[int, ...], planes: int, x_shape: tuple[int, ...],
                       rows_last: bool = False, word_bits: int = 64) -> tirx.PrimFunc:
    """``w = sum_p alpha[p, row] * (2 * bit_p - 1)``, summed plane by plane in order."""
    rows = shape[-1] if rows_last else shape[0]
    k = math.prod(shape) // rows
    wb = te.placeholder((planes, rows, words(k, word_bits)), WORD_DTYPES[word_bits], name="WB")
    alpha = te.placeholder((planes, rows), "float32", name="ALPHA")
    one = tirx.const(1.0, "float32")

    def value(row, kk):
        out = tirx.const(0.0, "float32")
        for p in range(planes):
            sign = tirx.Select(_bit(wb, p, row, kk, word_bits) == 1, one, -one)
            out = out + alpha[p, row] * sign
        return out

    out_shape, index = _out(shape, rows_last)
    return _finish([wb, alpha, _anchor(x_shape)], out_shape, value, index)


def pow2_codes_planes(codes: np.ndarray, word_bits: int = 64) -> np.ndarray:
    """``(R, K)`` uint8 codes (sign << 4 | index) as 5 packed bit planes ``(5, R, KW)``."""
    rows = codes.reshape(codes.shape[0], -1)
    bits = np.stack([(rows >> i) & 1 for i in range(5)]).astype(bool)
    return pack_bits(bits, word_bits)


def pow2_decode_func(shape: tuple[int, ...], e_min: int, x_shape: tuple[int, ...],
                     rows_last: bool = False, word_bits: int = 64) -> tirx.PrimFunc:
    """``0`` for index 0, else ``+-2 ** (e_min + index - 1)`` built in the float's bits."""
    if e_min < -126 or e_min + 14 > 127:
        raise ValueError(f"power-of-two exponents from {e_min} leave the float32 normal range")
    rows = shape[-1] if rows_last else shape[0]
    k = math.prod(shape) // rows
    cb = te.placeholder((5, rows, words(k, word_bits)), WORD_DTYPES[word_bits], name="CODES")

    def value(row, kk):
        index = tirx.Cast("uint32", _bit(cb, 0, row, kk, word_bits))
        for i in range(1, 4):
            index = index | tirx.shift_left(tirx.Cast("uint32", _bit(cb, i, row, kk, word_bits)),
                                            tirx.const(i, "uint32"))
        sign = tirx.shift_left(tirx.Cast("uint32", _bit(cb, 4, row, kk, word_bits)),
                               tirx.const(31, "uint32"))
        biased = index + tirx.const(e_min - 1 + 127, "uint32")
        bits = sign | tirx.shift_left(biased, tirx.const(23, "uint32"))
        mag = tirx.reinterpret("float32", bits)
        return tirx.Select(index == tirx.const(0, "uint32"), tirx.const(0.0, "float32"), mag)

    out_shape, index_fn = _out(shape, rows_last)
    return _finish([cb, _anchor(x_shape)], out_shape, value, index_fn)


def int4_nibbles(codes: np.ndarray) -> np.ndarray:
    """``(R, K)`` int8 codes in [-8, 7] as ``(R, ceil(K / 2))`` uint8, low nibble first."""
    rows, k = codes.shape
    padded = np.zeros((rows, 2 * -(-k // 2)), np.uint8)
    padded[:, :k] = codes.astype(np.int16) & 15
    return np.ascontiguousarray(padded[:, 0::2] | (padded[:, 1::2] << 4))


def int4_decode_func(shape: tuple[int, ...], group: int, x_shape: tuple[int, ...],
                     rows_last: bool = False) -> tirx.PrimFunc:
    """``code * scale[row, k // group]`` with the code sign-extended from its nibble."""
    rows = shape[-1] if rows_last else shape[0]
    k = math.prod(shape) // rows
    nib = te.placeholder((rows, -(-k // 2)), "uint8", name="NIB")
    scale = te.placeholder((rows, -(-k // group)), "float32", name="SCALE")

    def value(row, kk):
        byte = tirx.Cast("int32", nib[row, kk // 2])
        code = tirx.bitwise_and(tirx.shift_right(byte, (kk % 2) * 4), tirx.const(15, "int32"))
        signed = tirx.Select(code >= 8, code - 16, code)
        return tirx.Cast("float32", signed) * scale[row, kk // group]

    out_shape, index = _out(shape, rows_last)
    return _finish([nib, scale, _anchor(x_shape)], out_shape, value, index)
