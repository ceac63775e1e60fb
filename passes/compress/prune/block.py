"""Coarse-grain block pruning: Kadetotad, Arunachalam, Chakrabarti and Seo (2016), "Efficient
Memory Compression in Deep Neural Networks Using Coarse-Grain Sparsification for Speech
Applications", ICCAD.

Whole ``r x c`` blocks of the ``(out, in * kh * kw)`` matrix view (``masks.matrix_view``) are
removed, the ones of smallest mean magnitude: the block's L2 norm divided by the square root of
its weight count (``norm: l2``, an RMS) or its L1 norm divided by the count (``norm: l1``). That
view is the matrix a BSR kernel multiplies, so the removed blocks are exactly the blocks a BSR
weight leaves out; the report counts the pruned tensors at their BSR size. When ``r`` or ``c``
does not divide the matrix, the last block row or column is partial: it is treated as padded to a
full block, kept or removed as a whole, scored by its real weights only, and logged.
``round(sparsity * blocks)`` blocks are removed, so the fraction of weights removed differs
from ``sparsity`` by the partial blocks.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import field_validator

from ..base import CompressContext, register_method
from .base import PruneSettings, PruningMethod
from .layers import Layer
from .masks import bsr_bytes, matrix_view


class BlockSettings(PruneSettings):
    """Settings of ``block``.

    Attributes
    ----------
    block : (int, int)
        Block shape ``(rows, columns)`` over the ``(out, in * kh * kw)`` matrix; per tensor too.
    norm : {"l2", "l1"}
        Block score: RMS or mean absolute value of the block's weights.
    sparsity
        Fraction of blocks removed.
    """

    per_tensor: ClassVar[tuple[str, ...]] = ("sparsity", "block")

    block: tuple[int, int] = (4, 4)
    norm: Literal["l2", "l1"] = "l2"

    @field_validator("block")
    @classmethod
    def _positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError(f"block sides must be positive, got {value[0]}x{value[1]}")
        return value


def _blocked(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """``matrix_view(x)`` zero-padded to whole blocks, as ``(R, r, C, c)``."""
    m = matrix_view(x)
    r, c = block
    rows, cols = math.ceil(m.shape[0] / r), math.ceil(m.shape[1] / c)
    padded = F.pad(m, (0, cols * c - m.shape[1], 0, rows * r - m.shape[0]))
    return padded.reshape(rows, r, cols, c)


@register_method("block")
class BlockPruning(PruningMethod[BlockSettings]):
    """Remove whole blocks of the weight matrix by block norm (Kadetotad et al., 2016)."""

    Settings = BlockSettings

    def scores(
        self, model: torch.nn.Module, ctx: CompressContext, names: list[str]
    ) -> dict[str, torch.Tensor]:
        return {n: self.layers[n].weight.detach().abs() for n in names}

    def layer_note(self, layer: Layer) -> str | None:
        r, c = self.settings.for_tensor(layer.tensor).block
        rows, cols = matrix_view(layer.weight).shape
        if rows % r or cols % c:
            return (
                f"{layer.tensor}: the {rows}x{cols} matrix is not a multiple of {r}x{c} blocks; "
                "the partial last block row/column is padded, kept or removed as a whole"
            )
        return None

    def group_scores(self, score: torch.Tensor, settings: BlockSettings) -> torch.Tensor:
        blocks = _blocked(score, settings.block)
        count = _blocked(torch.ones_like(score), settings.block).sum(dim=(1, 3))
        if settings.norm == "l1":
            return blocks.abs().sum(dim=(1, 3)) / count
        return (blocks.square().sum(dim=(1, 3)) / count).sqrt()

    def expand_units(
        self, keep: torch.Tensor, shape: torch.Size, settings: BlockSettings
    ) -> torch.Tensor:
        r, c = settings.block
        full = keep.repeat_interleave(r, dim=0).repeat_interleave(c, dim=1)
        rows, cols = shape[0], math.prod(shape[1:])
        return full[:rows, :cols].reshape(shape)

    def sparse_bytes(self, weight: torch.Tensor, name: str) -> int:
        return bsr_bytes(weight, self.settings.for_tensor(name).block)
