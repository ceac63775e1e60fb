"""Bit packing for the bit-serial kernels: activation encodings, weight planes in kernel layouts.

Bits are packed along the reduction axis (input channels of a convolution, features of a dense
layer) into unsigned words of 32 or 64 bits, little-endian: bit ``b`` of word ``w`` holds element
``w * bits + b``. Bits past the end of the axis are 0 in every packed array, so they never count:
XNOR products subtract the true length, AND products see a zero.

Activations come in three encodings (:class:`ActBits`):

- ``binary``: ``where(x >= 0, 1, -1)``, one *bipolar* plane (bit 1 means +1, bit 0 means -1);
- ``sign``: ``sign(x)`` in ``{-1, 0, 1}``, two *unipolar* planes ``x > 0`` (weight +1) and
  ``x < 0`` (weight -1); sign(0) = 0 is exact this way, which one bipolar plane could not hold;
- ``uint2``: ``round(clip(x, 0, 3))`` (round half to even, as torch and LLVM's ``nearbyint``),
  two unipolar planes, its bits 0 and 1 (weights 1 and 2).

Weights are bipolar planes (:class:`squeezer.passes.graph.weight_formats.BitPlanes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from tvm import tirx
from tvm.target import Target
from tvm.target.codegen import llvm_cpu_has_features

ActKind = Literal["binary", "sign", "uint2"]
WORD_DTYPES = {32: "uint32", 64: "uint64"}
ACC_DTYPES = {32: "int32", 64: "int64"}


@dataclass(frozen=True)
class ActBits:
    """How an activation is encoded in bit planes (see the module docstring)."""

    kind: ActKind

    def __post_init__(self) -> None:
        if self.kind not in ("binary", "sign", "uint2"):
            raise ValueError(
                f"activation encoding must be binary, sign or uint2, got {self.kind!r}")

    @property
    def planes(self) -> int:
        return 1 if self.kind == "binary" else 2

    @property
    def bipolar(self) -> bool:
        return self.kind == "binary"

    @property
    def betas(self) -> tuple[int, ...]:
        """The value of a set bit in each plane (unipolar planes)."""
        return {"binary": (1,), "sign": (1, -1), "uint2": (1, 2)}[self.kind]

    def bit(self, v: tirx.PrimExpr, j: tirx.PrimExpr | int) -> tirx.PrimExpr:
        """Plane ``j``'s bit of the float ``v`` as a TIR boolean (no select: vectorizes)."""
        zero = tirx.const(0.0, v.dtype)
        if self.kind == "binary":
            return v >= zero
        if self.kind == "sign":
            return tirx.Or(tirx.And(j == 0, v > zero), tirx.And(j == 1, v < zero))
        code = tirx.Cast("int32", tirx.round(tirx.max(tirx.min(v, tirx.const(3.0, v.dtype)),
                                                      zero)))
        return tirx.Cast("bool", tirx.bitwise_and(tirx.shift_right(code, tirx.Cast("int32", j)),
                                                  tirx.const(1, "int32")))

    def numpy_planes(self, x: np.ndarray) -> np.ndarray:
        """``(planes, *x.shape)`` bool: the reference for :meth:`bit`."""
        if self.kind == "binary":
            return (x >= 0)[None]
        if self.kind == "sign":
            return np.stack([x > 0, x < 0])
        code = np.round(np.clip(x, 0, 3)).astype(np.int64)
        return np.stack([(code & 1) == 1, (code & 2) == 2])

    def values(self, x: np.ndarray) -> np.ndarray:
        """The activation as numbers (what the float graph computes)."""
        if self.kind == "binary":
            return np.where(x >= 0, 1.0, -1.0).astype(np.float32)
        if self.kind == "sign":
            return np.sign(x).astype(np.float32)
        return np.round(np.clip(x, 0, 3)).astype(np.float32)


def has_vector_popcount(target: Target) -> bool:
    """Whether ``target`` (an LLVM CPU target) has AVX512-VPOPCNTDQ: LLVM then lowers a vector
    ``popcount`` to ``vpopcntq``/``vpopcntd``; without it, to a byte-table sequence (``vpshufb``)
    slower than scalar ``popcnt`` on 64-bit words."""
    if str(target.kind.name) != "llvm":
        return False
    try:
        return bool(llvm_cpu_has_features("avx512vpopcntdq", target))
    except Exception:  # noqa: BLE001 - a target LLVM cannot query (no mcpu): assume none
        return False


def words(k: int, word_bits: int) -> int:
    """Words holding ``k`` bits."""
    return -(-k // word_bits)


def pack_bits(bits: np.ndarray, word_bits: int = 64) -> np.ndarray:
    """Pack the last axis of a bool array into little-endian words (zero bits past the end)."""
    if word_bits not in WORD_DTYPES:
        raise ValueError(f"word_bits must be 32 or 64, got {word_bits}")
    k = bits.shape[-1]
    nw = words(k, word_bits)
    padded = np.zeros((*bits.shape[:-1], nw * word_bits), np.uint8)
    padded[..., :k] = bits
    as_bytes = np.packbits(padded, axis=-1, bitorder="little")
    dtype = np.dtype(WORD_DTYPES[word_bits]).newbyteorder("<")
    out = as_bytes.reshape(*bits.shape[:-1], nw * word_bits // 8).view(dtype)
    return np.ascontiguousarray(out.astype(WORD_DTYPES[word_bits]))


def unpack_bits(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``k`` bits of the last axis, as bool."""
    as_bytes = np.ascontiguousarray(packed).view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :k].astype(bool)


def conv_weight_words(bits: np.ndarray, word_bits: int = 64) -> np.ndarray:
    """Bipolar planes ``(P, O, C, KH, KW)`` as the convolution kernel reads them:
    ``(O * P, KH, KW, CW)`` words, row ``o * P + p`` (one output channel's planes adjacent),
    channels packed per tap."""
    p, o, c, kh, kw = bits.shape
    per_tap = bits.transpose(1, 0, 3, 4, 2).reshape(o * p, kh, kw, c)
    return pack_bits(per_tap, word_bits)


DENSE_ALIGN = 16  # the dense kernel's outputs per plane are padded to whole vectors


def dense_columns(n: int) -> int:
    """Columns per weight plane in the dense kernel's layout (``n`` padded to whole vectors)."""
    return -(-n // DENSE_ALIGN) * DENSE_ALIGN


def dense_weight_words(bits: np.ndarray, word_bits: int = 64) -> np.ndarray:
    """Bipolar planes ``(P, N, K)`` as the dense kernel reads them: ``(KW, P * NP)`` words,
    column ``p * NP + n`` (each plane's outputs contiguous, for vectors along ``n``; ``NP``:
    :func:`dense_columns`, the padding columns all zero)."""
    p, n, k = bits.shape
    np_ = dense_columns(n)
    padded = np.zeros((p, np_, k), bool)
    padded[:, :n] = bits
    packed = pack_bits(padded.reshape(p * np_, k), word_bits)  # (P*NP, KW)
    return np.ascontiguousarray(packed.T)


def dense_weight_popcounts(bits: np.ndarray) -> np.ndarray:
    """``(P * NP,)`` int32: set bits of each weight row, the dense kernel's layout (needed with
    unipolar activation planes: ``sum (2w - 1) x = popcount(w) - popcount(w ^ x)``)."""
    p, n, _ = bits.shape
    out = np.zeros((p, dense_columns(n)), np.int32)
    out[:, :n] = bits.sum(axis=2)
    return out.reshape(-1)


def alphas_for_conv(alpha: np.ndarray) -> np.ndarray:
    """``(P, O)`` plane coefficients as ``(O * P,)``, the conv kernel's row order."""
    return np.ascontiguousarray(np.asarray(alpha, np.float32).T.reshape(-1))


def alphas_for_dense(alpha: np.ndarray) -> np.ndarray:
    """``(P, N)`` plane coefficients as ``(P * NP,)``, the dense kernel's column order."""
    p, n = alpha.shape
    out = np.zeros((p, dense_columns(n)), np.float32)
    out[:, :n] = alpha
    return out.reshape(-1)
