"""Masks on weights, exact top-k selection, and the stored size of sparse weights.

A mask is a ``torch.nn.utils.parametrize`` parametrization holding a ``mask`` buffer: the module's
``weight`` becomes ``original * mask`` while the dense ``original`` stays a parameter, so masks
appear in ``state_dict()`` (``<layer>.parametrizations.weight.original`` and
``<layer>.parametrizations.weight.<i>.mask``) and come back with ``load_state_dict()``.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch.nn.utils import parametrize

__all__ = [
    "WeightMask",
    "attach_mask",
    "bsr_bytes",
    "csr_bytes",
    "dense_of",
    "detach_mask",
    "index_bytes",
    "keep_mask",
    "matrix_view",
]


class WeightMask(torch.nn.Module):
    """The parametrization ``weight = original * mask``.

    Parameters
    ----------
    weight : torch.Tensor
        The weight to mask (its shape and dtype); the mask starts all ones.
    straight_through : bool
        If true, the gradient reaches every dense weight, pruned ones included (Dynamic Network
        Surgery); otherwise pruned weights get no gradient from the loss.
    """

    mask: torch.Tensor

    def __init__(self, weight: torch.Tensor, straight_through: bool = False) -> None:
        super().__init__()
        self.straight_through = straight_through
        self.register_buffer("mask", torch.ones_like(weight, memory_format=torch.contiguous_format))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.straight_through:
            # Value w * mask exactly (w - w = 0 where pruned), gradient the identity.
            return w - (w * (1 - self.mask)).detach()
        return w * self.mask


def attach_mask(owner: torch.nn.Module, attr: str, straight_through: bool = False) -> WeightMask:
    """Parametrize ``owner.<attr>`` with an all-ones ``WeightMask`` (results unchanged)."""
    mask = WeightMask(getattr(owner, attr).detach(), straight_through)
    parametrize.register_parametrization(owner, attr, mask)
    return mask


def _plist(owner: torch.nn.Module, attr: str) -> parametrize.ParametrizationList:
    plists = cast(torch.nn.ModuleDict, owner.parametrizations)
    return cast(parametrize.ParametrizationList, plists[attr])


def dense_of(owner: torch.nn.Module, attr: str) -> torch.nn.Parameter:
    """The dense parameter under the parametrizations of ``owner.<attr>``."""
    return cast(torch.nn.Parameter, _plist(owner, attr).original)


def detach_mask(owner: torch.nn.Module, attr: str, mask: WeightMask) -> None:
    """Multiply ``mask`` into the dense weight and remove it (other parametrizations stay).

    Baking the mask into ``original`` is exact when the parametrizations before this one map
    zero to zero, as masks and symmetric quantizers do.
    """
    plist = _plist(owner, attr)
    with torch.no_grad():
        plist.original.mul_(mask.mask)
    index = next(i for i, p in enumerate(plist) if p is mask)
    if len(plist) == 1:
        parametrize.remove_parametrizations(owner, attr, leave_parametrized=False)
    else:
        del plist[index]


def keep_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of ``scores``' shape keeping all but the ``k`` lowest scores.

    Ties are broken by position: among equal scores the earlier ones (flattened, row-major) go
    first, so the result is deterministic and removes exactly ``k`` entries.
    """
    flat = scores.reshape(-1)
    if not 0 <= k <= flat.numel():
        raise ValueError(f"cannot remove {k} of {flat.numel()} entries")
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.sort(flat, stable=True).indices[:k]] = False
    return keep.reshape(scores.shape)


def matrix_view(weight: torch.Tensor) -> torch.Tensor:
    """The ``(out, in * kh * kw)`` matrix a sparse kernel multiplies: rows are output channels.

    Columns follow PyTorch's ``(in, kh, kw)`` order, the im2col order of the sparse kernels.
    """
    return weight.reshape(weight.shape[0], -1)


def index_bytes(extent: int) -> int:
    """Bytes of the narrowest index type holding ``0 .. extent - 1``: uint8, int16 or int32."""
    if extent <= 1 << 8:
        return 1
    if extent <= 1 << 15:
        return 2
    return 4


def csr_bytes(weight: torch.Tensor) -> int:
    """Bytes of ``matrix_view(weight)`` in CSR: fp32 values, narrow column indices, int32 rows."""
    m = matrix_view(weight)
    nnz = int(torch.count_nonzero(m))
    return nnz * (4 + index_bytes(m.shape[1])) + 4 * (m.shape[0] + 1)


def bsr_bytes(weight: torch.Tensor, block: tuple[int, int]) -> int:
    """Bytes of ``matrix_view(weight)`` in BSR with ``block = (r, c)``.

    Partial blocks at the right and bottom edges are stored padded to full blocks.
    """
    m = matrix_view(weight)
    r, c = block
    rows, cols = math.ceil(m.shape[0] / r), math.ceil(m.shape[1] / c)
    padded = torch.nn.functional.pad(m, (0, cols * c - m.shape[1], 0, rows * r - m.shape[0]))
    nonzero = padded.reshape(rows, r, cols, c).ne(0).any(dim=3).any(dim=1)
    blocks = int(nonzero.sum())
    return blocks * (4 * r * c + index_bytes(cols)) + 4 * (rows + 1)
