"""int4 weights per group, packed as the ``int4_matmul`` kernel reads them.

``W[n, k] = s_w[n, k // g] * w_q[n, k]``, ``w_q`` in ``[-8, 7]``, one float32 scale per group of
``g`` (32, 64 or 128) consecutive ``k``. The codes are stored as unsigned nibbles ``u = w_q + 8``,
two per byte, in tiles of 16 outputs x 8 reductions = 64 bytes: byte ``4 * i + j`` of a tile
holds ``u[i, j]`` in its low nibble and ``u[i, 4 + j]`` in its high one. One 64-byte load then
unpacks with ``& 0x0F`` and ``>> 4`` alone (no shuffles) into two 16 x 4 operands, each exactly
what one ``vpdpbusd`` multiplies lane by lane (and, seen as 16 int32 lanes, each lane holds one
output's 8 values: shifts by ``8 * j + 4 * h`` and ``& 15`` unpack them for float arithmetic).

Tiles come in chunks of :data:`ILV` (64 outputs) whose 64-byte blocks are interleaved step by
step, so a chunk's weights are one contiguous stream over all of ``k`` (a matrix-vector product
streams from memory; separate per-tile streams 32 KB apart ran at a third of the bandwidth on
4 KB pages, depending on where the pages fell). The scales are interleaved the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LANES = 16  # outputs per tile: one 512-bit vector of int32 / float32
STEP = 8  # reductions per tile: 4 in the low nibbles, 4 in the high ones
GROUPS = (32, 64, 128)
ILV = 4  # tiles per interleaved chunk


@dataclass(frozen=True)
class Int4Weight:
    """An ``(n, k)`` weight as the kernel reads it.

    Attributes
    ----------
    shape : ``(n, k)`` of the weight (padding not included).
    group : reductions per scale.
    packed : uint8 ``(Np / 64, Kp / 8, 4, 16, 4)``: chunk, step, tile in the chunk, lane, byte;
        ``Np`` is ``n`` up to whole chunks, ``Kp`` is ``k`` up to whole groups (padding holds
        ``u = 8``, i.e. zero).
    scales : float32 ``(Np / 64, Kp / group, 4, 16)``; zero on padded outputs.
    """

    shape: tuple[int, int]
    group: int
    packed: np.ndarray
    scales: np.ndarray

    @classmethod
    def from_codes(cls, codes: np.ndarray, scales: np.ndarray, group: int) -> Int4Weight:
        """Pack int codes ``(n, k)`` in ``[-8, 7]`` with scales ``(n, ceil(k / group))``.

        Raises
        ------
        ValueError
            On a group size outside :data:`GROUPS`, codes out of range, or shapes that disagree.
        """
        if group not in GROUPS:
            raise ValueError(f"int4 group size must be one of {GROUPS}, got {group}")
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.size == 0:
            raise ValueError(f"int4 codes must be a non-empty 2-D (n, k) array, got {codes.shape}")
        n, k = codes.shape
        ng = -(-k // group)
        scales = np.asarray(scales, np.float32)
        if scales.shape != (n, ng):
            raise ValueError(f"int4 scales must have shape {(n, ng)} for codes {codes.shape} "
                             f"and group {group}, got {scales.shape}")
        if codes.min() < -8 or codes.max() > 7:
            raise ValueError(f"int4 codes must lie in [-8, 7], got [{codes.min()}, {codes.max()}]")
        chunk = ILV * LANES
        np_, kp = -(-n // chunk) * chunk, ng * group
        u = np.full((np_, kp), 8, np.uint8)
        u[:n, :k] = codes.astype(np.int16) + 8
        # (chunk, tile, lane, step, half, j) -> (chunk, step, tile, lane, half, j)
        t = u.reshape(np_ // chunk, ILV, LANES, kp // STEP, 2, 4).transpose(0, 3, 1, 2, 4, 5)
        packed = t[..., 0, :] | (t[..., 1, :] << 4)  # low half | high half << 4
        s = np.zeros((np_, ng), np.float32)
        s[:n] = scales
        s = s.reshape(np_ // chunk, ILV, LANES, ng).transpose(0, 3, 1, 2)
        return cls((n, k), group, np.ascontiguousarray(packed, np.uint8),
                   np.ascontiguousarray(s))

    def codes(self) -> np.ndarray:
        """The int8 codes ``(n, k)`` back from the packed nibbles."""
        n, k = self.shape
        lo, hi = self.packed & 15, self.packed >> 4
        t = np.stack([lo, hi], axis=4)  # (chunk, step, tile, lane, half, j)
        u = t.transpose(0, 2, 3, 1, 4, 5).reshape(t.shape[0] * ILV * LANES, -1)
        return (u[:n, :k].astype(np.int16) - 8).astype(np.int8)

    def group_scales(self) -> np.ndarray:
        """The float32 scales ``(n, ceil(k / group))``."""
        n, k = self.shape
        s = self.scales.transpose(0, 2, 3, 1).reshape(-1, self.scales.shape[1])
        return s[:n, : -(-k // self.group)]

    def to_dense(self) -> np.ndarray:
        """The float32 weight ``(n, k)``: code times its group's scale."""
        s = np.repeat(self.group_scales(), self.group, axis=1)[:, : self.shape[1]]
        return (self.codes().astype(np.float32) * s).astype(np.float32)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes
