"""Affine index arithmetic of the codegen: scratchpad tiles, operand maps, instruction loops.

A block's access (:class:`~.walk.Access`) is ``index = base + coef @ loops``. A scratchpad buffer
is laid out per *tile*: the region its defining block (the copy or the reset that fills it)
covers below its attach loop, row-major over the non-element dimensions (the last two dims are
the element block of one entry). An operand of an instruction is then an :class:`EntryMap`:
``entry = base + coef @ inner_loops`` relative to the tile's first entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ProgramError
from .walk import Access, Loop

ITER_MAX = (1 << 14) - 1


@dataclass(frozen=True)
class Tile:
    """The region of a scratchpad buffer one tile covers (attached below ``depth`` loops)."""

    buffer: str
    depth: int
    coef_outer: np.ndarray
    base: np.ndarray
    extents: tuple[int, ...]

    @property
    def strides(self) -> np.ndarray:
        """Entry strides per dimension (element dims: 0)."""
        return entry_strides(self.extents)

    @property
    def entries(self) -> int:
        return int(np.prod(self.extents[:-2]))

    def origin(self, outer: np.ndarray) -> np.ndarray:
        return self.base + self.coef_outer @ outer[:self.depth]


def tile_of(acc: Access, loops: list[Loop], depth: int) -> Tile:
    """The tile an access covers over its loops below ``depth`` (element dims fully covered)."""
    inner = np.array([lp.extent - 1 for lp in loops[depth:]], np.int64)
    cin = acc.coef[:, depth:]
    if (cin < 0).any():
        raise ProgramError(f"{acc.buffer}: negative loop coefficient in its copy")
    ext = tuple(int(v) for v in cin @ inner + np.array(acc.extent))
    if ext[-2:] != acc.shape[-2:]:
        raise ProgramError(f"{acc.buffer}: a copy covers {ext[-2:]} of the element block "
                           f"{acc.shape[-2:]}")
    return Tile(acc.buffer, depth, acc.coef[:, :depth], acc.base, ext)


@dataclass(frozen=True)
class EntryMap:
    """``entry = base + coef @ inner`` over a block's loops below the tile's attach depth."""

    base: int
    coef: np.ndarray

    def at(self, inner: np.ndarray) -> np.ndarray:
        return self.base + inner @ self.coef


def entry_map(acc: Access, tile: Tile, nloops: int) -> EntryMap:
    """An access relative to its tile; the outer part must cancel (the same tile every time)."""
    st = tile.strides
    d = tile.depth
    outer = st @ (acc.coef[:, :d] - tile.coef_outer)
    if outer.any():
        raise ProgramError(f"{acc.buffer}: an access moves with the tile loops unlike its copy")
    mid = st @ acc.coef[:, d:nloops]
    if mid.any():
        raise ProgramError(f"{acc.buffer}: an access moves with loops outside the block's own")
    return EntryMap(int(st @ (acc.base - tile.base)), st @ acc.coef[:, nloops:])


def flat_map(acc: Access, nloops: int) -> EntryMap:
    """A DRAM tensor access as flat entry indices (row-major over non-element dims) over the
    block's own loops; the part from the outer loops is left in ``coef_outer``."""
    shape = acc.shape[:-2]
    st = np.zeros(len(acc.shape), np.int64)
    run = 1
    for dim in range(len(shape) - 1, -1, -1):
        st[dim] = run
        run *= shape[dim]
    return EntryMap(int(st @ acc.base), st @ acc.coef[:, nloops:])


def entry_strides(shape: tuple[int, ...]) -> np.ndarray:
    """Row-major strides in entries of a blocked shape whose last two dims are one entry."""
    st = np.zeros(len(shape), np.int64)
    run = 1
    for dim in range(len(shape) - 3, -1, -1):
        st[dim] = run
        run *= shape[dim]
    return st


def dram_strides(acc: Access) -> np.ndarray:
    return entry_strides(tuple(acc.shape))


@dataclass
class LoopNest:
    """Loops of one instruction after dropping element loops and fusing contiguous ones:
    ``extents[i]`` and one coefficient column per operand."""

    extents: list[int]
    coefs: list[np.ndarray]  # per operand: (nloops,)

    @classmethod
    def of(cls, extents: list[int], maps: list[np.ndarray]) -> LoopNest:
        keep = [i for i in range(len(extents))
                if extents[i] > 1 and any(m[i] for m in maps)]
        return cls([extents[i] for i in keep], [m[keep] for m in maps])

    def fuse(self) -> LoopNest:
        """Merge an outer loop into the next inner one when every operand is contiguous."""
        ext, cols = list(self.extents), [list(c) for c in self.coefs]
        i = len(ext) - 2
        while i >= 0:
            inner = i + 1
            if ext[i] * ext[inner] <= ITER_MAX and all(c[i] == c[inner] * ext[inner]
                                                       for c in cols):
                ext[inner] *= ext[i]
                del ext[i]
                for c in cols:
                    del c[i]
            i -= 1
        return LoopNest(ext, [np.array(c, np.int64) for c in cols])

    def split(self, allowed: np.ndarray | None = None) -> tuple[list[int], list[int]]:
        """(instruction loops (<= 2, outer first), micro-op loops): the two largest loops
        among ``allowed`` go into the instruction; the rest are enumerated as micro-ops."""
        cand = [i for i in range(len(self.extents))
                if (allowed is None or allowed[i]) and self.extents[i] <= ITER_MAX]
        best = sorted(sorted(cand, key=lambda i: -self.extents[i])[:2])
        return best, [i for i in range(len(self.extents)) if i not in best]

    def enumerate(self, loops: list[int]) -> np.ndarray:
        """All index combinations of ``loops`` (rows, nest order), shape (n, len(loops))."""
        if not loops:
            return np.zeros((1, 0), np.int64)
        grids = np.meshgrid(*[np.arange(self.extents[i]) for i in loops], indexing="ij")
        return np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
