"""Packing of low-bit elements into DRAM bytes, as the accelerator reads them.

* int4: two's-complement nibbles, element ``2i`` in the low nibble of byte ``i``.
* binary (+-1): one bit per element, ``1`` for +1 and ``0`` for -1, element ``i`` in bit
  ``i % 8`` of byte ``i // 8`` (little bit order). A zero byte therefore decodes to -1s: the
  padding a LOAD writes into a binary scratchpad is -1, not 0.

Packing runs along the last axis, whose length must be a multiple of the elements per byte.
"""

from __future__ import annotations

import numpy as np


def pack_int4(values: np.ndarray) -> np.ndarray:
    """int values in [-8, 7], last axis even -> uint8 with half the last axis."""
    v = np.asarray(values)
    if v.size and (v.min() < -8 or v.max() > 7):
        raise ValueError(f"int4 values must lie in [-8, 7], got [{v.min()}, {v.max()}]")
    if v.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even last axis, got {v.shape}")
    u = (v.astype(np.int16) & 0xF).astype(np.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_int4`: uint8 -> int8 values, last axis doubled."""
    p = np.asarray(packed, dtype=np.uint8)
    out = np.empty(p.shape[:-1] + (2 * p.shape[-1],), dtype=np.int8)
    out[..., 0::2] = ((p & 0xF) ^ 8).astype(np.int8) - 8
    out[..., 1::2] = ((p >> 4) ^ 8).astype(np.int8) - 8
    return out


def pack_bits(values: np.ndarray) -> np.ndarray:
    """+-1 values, last axis a multiple of 8 -> uint8 bits (1 for +1), last axis / 8."""
    v = np.asarray(values)
    if v.size and not np.isin(v, (-1, 1)).all():
        raise ValueError("binary values must be -1 or +1")
    if v.shape[-1] % 8:
        raise ValueError(f"bit packing needs a last axis that is a multiple of 8, got {v.shape}")
    return np.packbits(v > 0, axis=-1, bitorder="little")


def unpack_bits(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_bits`: uint8 -> int8 values in {-1, +1}, last axis * 8."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, bitorder="little")
    return (bits.astype(np.int8) << 1) - 1


def pack_elements(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack int values of a width (8, 4 or 1) into bytes along the last axis."""
    if bits == 8:
        v = np.asarray(values)
        if v.size and (v.min() < -128 or v.max() > 127):
            raise ValueError(f"int8 values must lie in [-128, 127], got [{v.min()}, {v.max()}]")
        return v.astype(np.int8).view(np.uint8)
    if bits == 4:
        return pack_int4(values)
    if bits == 1:
        return pack_bits(values)
    raise ValueError(f"element width must be 8, 4 or 1 bits, got {bits}")
